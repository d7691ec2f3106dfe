"""A real 2-member Incus cluster on this machine (lxdcluster.py with Incus daemons on
127.0.0.21-22), reached over https with a pinned certificate, through a real JupyterHub:
least-loaded placement puts one server on each member (two spawns at once), each runs code in its kernel there;
each user's home volume is made on that member, and the user's servers follow it there."""

import json
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import IMAGE
from homemoves import follow_refuse_move
from hubtools import Control, Hub, control_hook, shut_down
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
    work = tmp_path_factory.mktemp("hub")
    hub = Hub(work, extra_config=textwrap.dedent(f"""
        c.LxdSpawner.backend = "incus"
        c.LxdSpawner.lxd_endpoint = "{cluster.first.url}"
        c.LxdSpawner.lxd_cert = "{cluster.cert}"
        c.LxdSpawner.lxd_key = "{cluster.key}"
        c.LxdSpawner.lxd_verify = "{cluster.server_cert}"
        # The cluster's pool is local to each member (dir: no quota).
        c.LxdSpawner.storage_pool = "local"
        c.LxdSpawner.storage_capacity = ""
        c.LxdSpawner.storage_retention_days = 0  # a deletion deletes (checked here); retention: test_homes.py
    """) + control_hook(work / "control.json"))
    hub.control = Control(work / "control.json")
    hub.start()
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
    # Each home volume was made on the member its user's first server landed on.
    volumes = {v["name"]: v["location"] for v in
               cluster.api("GET", "/1.0/storage-pools/local/volumes/custom?recursion=1")["metadata"]}
    assert volumes == {f"home-{u}": members[u] for u in users}, volumes

    # A user's servers follow their volume: with its member excluded the spawn is refused,
    # naming it (an empty home elsewhere would look like lost work); back in, it goes there.
    other = {"m1": "m2", "m2": "m1"}[members["ana"]]
    hub.control.set("ana", excluded_members=[members["ana"]])
    assert hub.start_server("ana").status_code in (201, 202, 400)
    events = hub.progress_events("ana")
    assert events[-1].get("failed"), events
    assert f"your home volume is on cluster member {members['ana']}, which is excluded" in events[-1]["message"]
    hub.wait_stopped("ana")
    hub.control.set("ana", host_weights={members["ana"]: 1, other: 100})  # placement would go elsewhere
    assert hub.start_server("ana").status_code in (201, 202)
    hub.wait_ready("ana")
    assert cluster.client().instances.get("jupyter-ana").location == members["ana"]
    hub.control.set("ana")
    assert hub.api("DELETE", "/users/ana/server").status_code in (202, 204)
    hub.wait_stopped("ana")
    for u in users:  # deleting the user deletes the volume, on its member
        assert hub.api("DELETE", f"/users/{u}").status_code == 204
    assert cluster.api("GET", "/1.0/storage-pools/local/volumes/custom")["metadata"] == []


GPU_PROFILES = [
    {"display_name": "CPU", "slug": "cpu", "default": True, "spawner_override": {"allowed_members": ["m1"]}},
    {"display_name": "GPU", "slug": "gpu", "spawner_override": {"cluster_group": "gpu"}},
]


def test_a_gpu_profile_lands_only_on_the_members_that_have_gpus(hub, cluster):
    """The members with GPUs are an Incus cluster group ("gpu": m2 here); a profile that sets
    cluster_group lands there only, however the load is spread; one with allowed_members goes to
    its members. Spawned at once, through the REST API's user_options."""
    cluster.api("POST", "/1.0/cluster/groups", json={"name": "gpu", "description": "members with GPUs",
                                                     "members": ["m2"]})
    users = {"gpu1": "gpu", "gpu2": "gpu", "cpu1": "cpu"}
    try:
        for user in users:
            hub.control.set(user, profile_list=GPU_PROFILES)
        for user, profile in users.items():
            assert hub.start_server(user, options={"profile": profile}).status_code in (201, 202)
        for user in users:
            hub.wait_ready(user)
        placed = {u: cluster.client().instances.get(f"jupyter-{u}").location for u in users}
        assert placed == {"gpu1": "m2", "gpu2": "m2", "cpu1": "m1"}, placed
        for user, profile in users.items():
            record = json.loads((hub.state_dir / user / "_default" / "audit.jsonl").read_text().splitlines()[-1])
            assert (record["profile"], record["member"]) == (profile, placed[user]), record
        # A group no member is in: refused before anything is made, naming the setting.
        hub.control.set("nogroup", profile_list=[{"display_name": "X", "spawner_override": {"cluster_group": "tpu"}}])
        assert hub.start_server("nogroup").status_code in (201, 202, 503)
        events = hub.progress_events("nogroup")
        assert events[-1].get("failed") and "no cluster member matches cluster_group 'tpu'" in events[-1]["message"]
        hub.wait_stopped("nogroup")
    finally:
        for user in [*users, "nogroup"]:
            hub.api("DELETE", f"/users/{user}/server")
        for user in [*users, "nogroup"]:
            hub.wait_stopped(user)
            hub.control.set(user)
            hub.api("DELETE", f"/users/{user}")
        # (the group goes with the cluster at the end of the module: Incus refuses to delete a
        # group that still has members)
    assert not [i.name for i in cluster.client().instances.all()]


def test_home_follows_a_hand_move_refuses_an_evacuated_member_and_moves_by_command(hub, cluster):
    """Issue 27 on Incus (homemoves.py; the same on the LXD cluster)."""
    follow_refuse_move(hub, cluster)
