"""A cluster whose members are separate hosts (network namespaces the test creates, netns.py):
each server is reached at the address of the member it landed on, whoever chose the member."""

import json

import netns
import pytest
from conftest import IMAGE
from hubtools import Hub, shut_down

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with netns.running(2, True, IMAGE, tmp_path_factory.mktemp("image")) as lxd:
        yield lxd


def test_servers_on_members_chosen_by_lxd_and_by_the_spawner(cluster, tmp_path, lxd_client):
    hub = Hub(tmp_path, f"""
c.JupyterHub.hub_ip = {cluster.host_address!r}
c.LxdSpawner.lxd_endpoint = {cluster.first.url!r}
c.LxdSpawner.lxd_cert = {str(cluster.cert)!r}
c.LxdSpawner.lxd_key = {str(cluster.key)!r}
c.LxdSpawner.lxd_verify = {str(cluster.server_cert)!r}
c.LxdSpawner.image = {IMAGE!r}
# Where LXD puts servers is the subject here: with a home volume on a pool local to each member
# the volume's member decides instead (tested in test_incus_cluster).
c.LxdSpawner.storage_enabled = False

def hook(spawner):
    if spawner.user.name.startswith("bylxd"):
        spawner.placement = "lxd"
c.Spawner.pre_spawn_hook = hook
""").start()
    users = ["bylxd1", "bylxd2", "ours1", "ours2"]
    try:
        tokens = {u: hub.user_token(u) for u in users}
        for u in users:
            assert hub.start_server(u).status_code in (201, 202)
        for u in users:
            hub.wait_ready(u)
        where = {i["name"]: i for i in cluster.api("GET", "/1.0/instances?recursion=1")["metadata"]}
        address = {m.name: m.address for m in cluster.members}
        for u in users:
            inst = where[f"jupyter-{u}"]
            record = json.loads((hub.state_dir / u / "_default" / "audit.jsonl").read_text().splitlines()[-1])
            # Reached at the address of the member it landed on, not at 127.0.0.1.
            assert record["url"].startswith(f"http://{address[inst['location']]}:"), (u, record, inst["location"])
            assert record["member"] == inst["location"]
            listen = inst["devices"]["jupyter-server"]["listen"]
            if u.startswith("bylxd"):  # the member is known only after LXD chose it
                assert listen.startswith("tcp:0.0.0.0:"), listen
            else:
                assert listen.startswith(f"tcp:{address[inst['location']]}:"), listen
            out = hub.run_code(u, tokens[u], "import socket; print(socket.gethostname())")
            assert out.strip() == f"jupyter-{u}"
        for u in users:
            hub.api("DELETE", f"/users/{u}/server")
        for u in users:
            hub.wait_stopped(u)
        assert cluster.api("GET", "/1.0/instances")["metadata"] == []
    finally:
        shut_down(hub, lxd_client)
