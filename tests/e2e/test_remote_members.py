"""Servers on LXD hosts other than the hub's, reachable only over their own addresses.

On the loopback cluster (lxdcluster.py) every member shares the hub's network, so a proxy that
listens on the wrong member's 127.0.0.1, or a hub-API device that connects to the member's own
loopback, still answers there. Here each LXD daemon runs in a network namespace the test
creates (netns.py), with its own address on a veth pair: only the right address works.
"""

import asyncio
import json

import netns
import pytest
import spawnerstub
from conftest import IMAGE
from hubtools import Hub, shut_down

from tf_lxd_spawner.spawner import SpawnError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    with netns.running(1, False, IMAGE, tmp_path_factory.mktemp("image")) as lxd:
        yield lxd


def endpoint_traits(lxd) -> dict:
    return dict(lxd_endpoint=lxd.first.url, lxd_cert=str(lxd.cert), lxd_key=str(lxd.key),
                lxd_verify=str(lxd.server_cert), image=IMAGE)


def remote_hub(work, lxd, extra=""):
    traits = endpoint_traits(lxd)
    config = "\n".join(f"c.LxdSpawner.{k} = {v!r}" for k, v in traits.items())
    # The hub listens on its address on the test's bridge: the one address members can reach.
    return Hub(work, f"""
c.JupyterHub.hub_ip = {lxd.host_address!r}
{config}
c.LxdSpawner.storage_pool = "local"  # the test daemons' pool (dir: it cannot enforce a quota)
c.LxdSpawner.storage_capacity = ""
{extra}
""").start()


def instances(lxd) -> dict:
    return {i["name"]: i for i in lxd.api("GET", "/1.0/instances?recursion=1")["metadata"]}


def test_a_remote_host_and_a_loopback_hub_api_is_refused_before_anything_exists(remote, tmp_path):
    """The hub API on 127.0.0.1: a container on another host could never reach it."""
    sp = spawnerstub.make_spawner(tmp_path / "state", "loopback", **endpoint_traits(remote))
    with pytest.raises(SpawnError, match=(
            rf"servers may run on the LXD server {remote.first.address}, which is not this hub's host, but the "
            r"hub API is at http://127\.0\.0\.1:8081/hub/api, a loopback address .* set c\.Spawner\.hub_connect_url")):
        asyncio.run(sp.start())
    assert not (tmp_path / "state").exists()
    assert instances(remote) == {}


def test_spawn_on_a_remote_standalone_host(remote, tmp_path, lxd_client):
    hub = remote_hub(tmp_path, remote)
    try:
        token = hub.user_token("faraway")
        r = hub.start_server("faraway")
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("faraway")
        record = json.loads((hub.state_dir / "faraway" / "_default" / "audit.jsonl").read_text().splitlines()[-1])
        assert record["url"].startswith(f"http://{remote.first.address}:"), record
        inst = instances(remote)["jupyter-faraway"]
        proxy = inst["devices"]["jupyter-server"]
        assert proxy["listen"].startswith(f"tcp:{remote.first.address}:"), proxy
        assert inst["devices"]["jupyterhub-api"]["connect"] == f"tcp:{remote.host_address}:{hub.hub_port}"
        # The kernel runs in the remote container, and the server there talks to the hub API
        # (it authenticated this request with the hub).
        out = hub.run_code("faraway", token, "import socket; print(socket.gethostname())")
        assert out.strip() == "jupyter-faraway"
        hub.api("DELETE", "/users/faraway/server")
        hub.wait_stopped("faraway")
        assert "jupyter-faraway" not in instances(remote)
    finally:
        shut_down(hub, lxd_client)
