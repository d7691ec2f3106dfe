"""What differs between LXD and Incus, which binary runs, and the provider block for each kind
of endpoint: pure logic, no daemon."""

import asyncio
import os

import pytest

from tf_lxd_spawner.systems import backends, provider
from tf_lxd_spawner.systems.terraform import pick_binary


def test_local_sockets_follow_the_daemons_own_variables(monkeypatch):
    for var in ("LXD_DIR", "INCUS_DIR", "INCUS_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    assert backends.LXD.local_socket() == "/var/lib/lxd/unix.socket"
    assert backends.INCUS.local_socket() == "/var/lib/incus/unix.socket"
    monkeypatch.setenv("INCUS_DIR", "/srv/incus")
    assert backends.INCUS.local_socket() == "/srv/incus/unix.socket"
    monkeypatch.setenv("INCUS_SOCKET", "/run/incus.sock")
    assert backends.INCUS.local_socket() == "/run/incus.sock"
    monkeypatch.setenv("LXD_DIR", "/srv/lxd")
    assert backends.LXD.local_socket() == "/srv/lxd/unix.socket"


def test_endpoint_and_remote():
    assert backends.endpoint_url(backends.INCUS, "") == backends.INCUS.local_socket()
    assert backends.endpoint_url(backends.LXD, "https://10.0.0.1:8443") == "https://10.0.0.1:8443"
    assert backends.is_remote("https://h:8443") and not backends.is_remote("/var/lib/incus/unix.socket")
    assert not backends.is_remote("")


@pytest.mark.parametrize("backend,server,message", [
    (backends.LXD, {"server": "lxd", "server_version": "5.0.2"}, None),
    (backends.INCUS, {"server": "incus", "server_version": "6.0.4"}, None),
    (backends.LXD, {"server": "incus", "server_version": "6.0.4"},
     "backend is 'lxd' but the daemon at X is Incus 6.0.4: set c.LxdSpawner.backend = 'incus'"),
    (backends.INCUS, {"server": "lxd", "server_version": "5.0.2"},
     "backend is 'incus' but the daemon at X is LXD 5.0.2: set c.LxdSpawner.backend = 'lxd'"),
    (backends.LXD, {"server": "other", "server_version": "1"},
     "backend is 'lxd' but the daemon at X is other 1: point lxd_endpoint at an LXD or Incus daemon"),
    (backends.INCUS, {}, None),  # an untrusted client is told nothing: later calls fail clearly
])
def test_mismatch_names_the_fix(backend, server, message):
    assert backends.mismatch(backend, {"environment": server}, "X") == message


def test_defaults_per_daemon():
    assert backends.LXD.mount_idmap == "raw.idmap" and backends.INCUS.mount_idmap == "shift"
    assert backends.LXD.provider_files and not backends.INCUS.provider_files


def test_pick_binary(tmp_path, monkeypatch):
    for name in ("terraform", "tofu"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pick_binary("") == "terraform"
    assert pick_binary("tofu") == "tofu"
    (tmp_path / "terraform").unlink()
    assert pick_binary("") == "tofu"
    (tmp_path / "tofu").unlink()
    assert pick_binary("") == "terraform"  # neither: preflight names the missing one


def test_provider_block_per_endpoint(tmp_path):
    unix = provider.settings("250ms", "/var/lib/incus/unix.socket", "", "", True, str(tmp_path))
    assert unix["remote"] == {"name": provider.REMOTE, "scheme": "unix", "address": "/var/lib/incus/unix.socket",
                              "port": ""}
    assert unix["config_dir"] is None
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_text("cert")
    key.write_text("key")
    dirs = set()
    for url in ("https://10.0.0.1:8443", "https://10.0.0.2:8443"):
        https = provider.settings("250ms", url, str(cert), str(key), True, str(tmp_path / "state"))
        assert https["remote"]["scheme"] == "https"
        dirs.add(https["config_dir"])
        assert os.stat(os.path.join(https["config_dir"], "client.key")).st_mode & 0o077 == 0
    assert len(dirs) == 2, "two endpoints in one state_dir must not share certificates"


def test_missing_socket_is_named():
    from tf_lxd_spawner.systems import lxd

    with pytest.raises(lxd.LxdUnavailable, match=r"Incus is not reachable at the local unix socket /nonexistent/unix.socket: "
                       r"it does not exist \(is the daemon running\?\)"):
        lxd._connect(lxd.Endpoint(url="/nonexistent/unix.socket", daemon="Incus"))


def test_a_cancelled_callers_lxd_call_is_waited_for(monkeypatch):
    """The thread of an LXD call outlives its cancelled caller (a start_timeout during the
    start of a kept instance): wait_for_abandoned returns only once that call has returned,
    so a clean-up after it is not overtaken by the start it abandoned."""
    import threading
    import time

    from tf_lxd_spawner.systems import lxd

    finished = threading.Event()

    def slow_start(client):
        time.sleep(0.5)
        finished.set()
        raise RuntimeError("the abandoned call's own error: nobody awaits it")

    monkeypatch.setattr(lxd, "_connect", lambda endpoint: object())
    # Only this test's calls: one an earlier test in the same process abandoned (on a daemon it
    # then stopped) may still be waiting out its timeout.
    monkeypatch.setattr(lxd, "_abandoned", set())

    async def go():
        caller = asyncio.ensure_future(lxd._run(lxd.Endpoint(url="/nonexistent"), slow_start, "start"))
        await asyncio.sleep(0.1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert not finished.is_set()
        await asyncio.wait_for(lxd.wait_for_abandoned(), 5)
        assert finished.is_set() and not lxd._abandoned
        await lxd.wait_for_abandoned()  # nothing abandoned: returns at once

    asyncio.run(go())
