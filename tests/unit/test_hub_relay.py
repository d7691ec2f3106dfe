"""The hub API's unix socket relay (hub_relay) and when a server uses it (hub_api_via): a real
relay between a real unix socket and a real TCP server on loopback; the choice from settings,
members and the image's property."""

import asyncio
import os
import stat
from types import SimpleNamespace

import pytest

from tf_lxd_spawner.errors import SpawnError
from tf_lxd_spawner.lifecycle.module_inputs import hub_address
from tf_lxd_spawner.lifecycle.preflight import hub_api_by_socket
from tf_lxd_spawner.systems import hub_relay
from tf_lxd_spawner.systems.lxd import Member


async def _http_like_server():
    """A TCP server on loopback that reads a request to its end (the client's half-close) and
    answers with what it got, as the hub answers a request only once it has all of it."""
    async def answer(reader, writer):
        request = await reader.read()  # until the relay passes the client's end of file on
        writer.write(b"got " + request)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_connection_to_the_socket_reaches_the_hub_and_the_answer_comes_back(tmp_path):
    async def scenario():
        server, port = await _http_like_server()
        try:
            relay = await hub_relay.ensure(tmp_path, "127.0.0.1", port)
            path = tmp_path / hub_relay.SOCKET_NAME
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666  # the containers' root is not the hub's
            assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755
            answers = []
            for body in (b"GET /hub/api", b"x" * 300_000):  # small, and larger than one read
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(body)
                writer.write_eof()
                answers.append(await reader.read())
                writer.close()
            assert answers == [b"got GET /hub/api", b"got " + b"x" * 300_000]
            assert relay.connections == 2
            assert await hub_relay.ensure(tmp_path, "127.0.0.1", port) is relay  # one per path
        finally:
            hub_relay.stop(tmp_path)
            server.close()
        assert not (tmp_path / hub_relay.SOCKET_NAME).exists()
    asyncio.run(scenario())


def test_a_restarted_hub_replaces_the_stale_socket_and_a_dead_hub_closes_the_connection(tmp_path):
    (tmp_path / hub_relay.SOCKET_NAME).write_text("left by an earlier hub")  # not even a socket

    async def scenario():
        server, port = await _http_like_server()
        server.close()
        await server.wait_closed()  # nothing listens at `port` now
        try:
            await hub_relay.ensure(tmp_path, "127.0.0.1", port)
            assert stat.S_ISSOCK(os.stat(tmp_path / hub_relay.SOCKET_NAME).st_mode)
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / hub_relay.SOCKET_NAME))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left hanging
            writer.close()
        finally:
            hub_relay.stop(tmp_path)
    asyncio.run(scenario())


def spawner(via="auto", remote=False, endpoint="", excluded=(), module="notebook"):
    warnings = []
    return SimpleNamespace(hub_api_via=via, module_source=module, trait_defaults=lambda name: "notebook", remote_endpoint=remote, lxd_endpoint=endpoint, excluded_members=list(excluded),
                           chosen_image="jupyter-notebook", backend_info=SimpleNamespace(display="LXD"),
                           log=SimpleNamespace(warning=lambda *a: warnings.append(a)), warnings=warnings)


RELAY = {hub_relay.IMAGE_PROPERTY: "/var/lib/tf-lxd-spawner/hub/hub-api.sock"}
HERE = Member("m1", "Online", "127.0.0.1")
ELSEWHERE = Member("m2", "Online", "192.0.2.7")  # TEST-NET-1: never this host's


def by_socket(sp, members=(), image=RELAY):
    return asyncio.run(hub_api_by_socket(sp, list(members), image))


def test_auto_takes_the_socket_only_on_this_host_with_an_image_that_has_the_relay():
    assert by_socket(spawner()) is True
    assert by_socket(spawner(), [HERE]) is True
    assert by_socket(spawner(), image={}) is False  # an operator's image without the relay
    assert by_socket(spawner(), [HERE, ELSEWHERE]) is False  # a server could land on m2
    assert by_socket(spawner(excluded=["m2"]), [HERE, ELSEWHERE]) is True
    assert by_socket(spawner(), [HERE, Member("m2", "Offline", "192.0.2.7")]) is True
    assert by_socket(spawner(remote=True, endpoint="https://192.0.2.7:8443")) is False
    assert by_socket(spawner(remote=True, endpoint="https://127.0.0.1:8443")) is True
    assert by_socket(spawner("proxy")) is False
    assert by_socket(spawner(module="/srv/our-module")) is False  # it may not take hub_socket_dir
    assert by_socket(spawner("socket", module="/srv/our-module")) is True  # the operator says it does


def test_socket_is_refused_for_members_elsewhere_and_warns_about_an_image_without_the_relay():
    with pytest.raises(SpawnError, match=r"hub_api_via = \"socket\".*member m2 \(192.0.2.7\)"):
        by_socket(spawner("socket"), [HERE, ELSEWHERE])
    with pytest.raises(SpawnError, match="LXD server 192.0.2.7"):
        by_socket(spawner("socket", remote=True, endpoint="https://192.0.2.7:8443"))
    sp = spawner("socket")
    assert by_socket(sp, image={}) is True and "does not say it has the hub API relay" in sp.warnings[0][0]


def test_inside_the_container_the_api_is_on_the_relays_port_or_the_proxy_devices():
    sp = SimpleNamespace(hub_connect_url="", hub=SimpleNamespace(api_url="http://127.0.0.1:8090/hub/api"))
    assert hub_address(sp) == ("127.0.0.1", 8090, "http://127.0.0.1:8090/hub/api")
    assert hub_address(sp, by_socket=True) == ("127.0.0.1", 8090, "http://127.0.0.1:8081/hub/api")


def test_the_socket_directory_is_absolute_with_a_relative_state_dir(tmp_path, monkeypatch):
    """LXD mounts only absolute host paths; an operator's state_dir may be relative to the hub's
    working directory (tests/e2e/test_installed_wheel runs a hub that way)."""
    from tf_lxd_spawner.lifecycle.module_inputs import hub_socket_dir
    monkeypatch.chdir(tmp_path)
    assert hub_socket_dir(SimpleNamespace(state_dir="relative-state")) == str(tmp_path / "relative-state" / "_hub-api")


def test_each_event_loop_serves_its_own_relay(tmp_path):
    """A hub runs one event loop; a process that runs several in turn (the spawner's tests, a
    command line tool) gets a working relay in each, never one bound to a loop that ended, and
    spawns that start it at once in each loop do not trip over the last loop's lock."""
    port = None

    async def answer(reader, writer):
        writer.write(b"got " + await reader.read())
        await writer.drain()
        writer.close()

    async def one_round(body: bytes) -> bytes:
        nonlocal port
        server = await asyncio.start_server(answer, "127.0.0.1", port or 0)  # the same hub each time
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.gather(*(hub_relay.ensure(tmp_path, "127.0.0.1", port) for _ in range(4)))
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / hub_relay.SOCKET_NAME))
            writer.write(body)
            writer.write_eof()
            got = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return got
        finally:
            server.close()
    assert asyncio.run(one_round(b"first")) == b"got first"
    assert asyncio.run(one_round(b"second")) == b"got second"


def test_a_socket_another_live_process_serves_is_left_alone(tmp_path):
    """An operator's tool (or a second hub) reading the same state_dir never takes the hub's
    socket over: its containers would lose the hub API when that process ends."""
    import socket
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(tmp_path / hub_relay.SOCKET_NAME))
    theirs.listen(4)
    try:
        assert asyncio.run(hub_relay.ensure(tmp_path, "127.0.0.1", 1)) is None
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / hub_relay.SOCKET_NAME))
        theirs.settimeout(5)
        accepted, _ = theirs.accept()  # the same listener as before: not replaced
        accepted.close()
        client.close()
    finally:
        theirs.close()
