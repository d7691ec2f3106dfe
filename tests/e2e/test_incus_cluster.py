"""A real 2-member Incus cluster on this machine (lxdcluster.py with Incus daemons on
127.0.0.21-22), reached over https with a pinned certificate, through a real JupyterHub:
least-loaded placement puts one server on each member (two spawns at once), each runs code in its kernel there."""

import json
import tempfile
from pathlib import Path

import pytest

from conftest import IMAGE
from hubtools import Hub, shut_down
from lxdcluster import INCUS, LxdCluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = Path(tempfile.mkdtemp(prefix="tf-incus-cluster-", dir="/var/tmp"))
    base.chmod(0o711)  # unprivileged container roots must traverse to their rootfs
    c = LxdCluster(base, size=2, kind=INCUS)
    try:
        c.up()
        c.import_image_from_host(IMAGE, tmp_path_factory.mktemp("export"))
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, cluster):
    hub = Hub(tmp_path_factory.mktemp("hub"), extra_config=f"""
        c.LxdSpawner.backend = "incus"
        c.LxdSpawner.lxd_endpoint = "{cluster.first.url}"
        c.LxdSpawner.lxd_cert = "{cluster.cert}"
        c.LxdSpawner.lxd_key = "{cluster.key}"
        c.LxdSpawner.lxd_verify = "{cluster.server_cert}"
    """).start()
    yield hub
    try:
        client = cluster.client()
    finally:  # even when the cluster no longer answers, the hub and its proxy end here
        hub.stop()
    shut_down(hub, client)


def test_two_servers_land_on_both_members_and_run_code(hub, cluster):
    users = ["ana", "ben"]
    tokens = {u: hub.user_token(u) for u in users}
    for u in users:  # at once: the first spawn's reservation steers the second to the other member
        assert hub.start_server(u).status_code in (201, 202)
    for u in users:
        hub.wait_ready(u)
    members = {}
    for u in users:
        record = json.loads((hub.state_dir / u / "_default" / "audit.jsonl").read_text().splitlines()[-1])
        assert (record["operation"], record["outcome"]) == ("start", "ok")
        assert record["daemon"]["backend"] == "incus"
        hostname = hub.run_code(u, tokens[u], "import socket; print(socket.gethostname())").strip()
        assert hostname == record["instance"]
        inst = cluster.client().instances.get(record["instance"])
        assert inst.status == "Running"
        members[u] = inst.location
    assert sorted(members.values()) == ["m1", "m2"], members
    for u in users:
        assert hub.api("DELETE", f"/users/{u}/server").status_code in (202, 204)
    for u in users:
        hub.wait_stopped(u)
    assert not [i.name for i in cluster.client().instances.all()]
