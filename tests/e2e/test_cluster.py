"""Placement on a real 3-member LXD cluster on this machine, through pylxd and the real
Terraform provider (remote https endpoint, pinned certificate), and one full JupyterHub spawn.

The placement tests drive LxdSpawner.start()/poll()/stop() directly with a stand-in for the
hub object (only its URLs are read): what is under test is placement against real LXD and
Terraform, and a real hub adds nothing there. The last test runs a real hub on the cluster.
"""

import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import spawnerstub
from homemoves import follow_refuse_move
from hubtools import Control, Hub, control_hook
from lxdcluster import TINY, LxdCluster

from tf_lxd_spawner.lifecycle.placement import reservations

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="tf-lxd-cluster-", dir="/var/tmp"))
    base.chmod(0o711)  # unprivileged container roots must traverse to their rootfs
    c = LxdCluster(base)
    try:
        c.up()
        c.import_tiny_image()
        c.first.lxc("config", "set", "cluster.offline_threshold", "11")
        yield c
    finally:
        c.down()


def make_spawner(cluster, state_dir, username, **traits):
    settings = dict(image=TINY, lxd_endpoint=cluster.first.url, lxd_cert=str(cluster.cert),
                    lxd_key=str(cluster.key), lxd_verify=str(cluster.server_cert))
    settings.update(traits)
    return spawnerstub.make_spawner(state_dir, username, **settings)


def homes_on_local_pool(cluster) -> str:
    """Hub configuration: the cluster over https, homes on its pool local to each member (dir:
    no quota)."""
    return f"""
c.LxdSpawner.lxd_endpoint = "{cluster.first.url}"
c.LxdSpawner.lxd_cert = "{cluster.cert}"
c.LxdSpawner.lxd_key = "{cluster.key}"
c.LxdSpawner.lxd_verify = "{cluster.server_cert}"
c.LxdSpawner.storage_pool = "local"
c.LxdSpawner.storage_capacity = ""
"""


def locations(cluster):
    return {i["name"]: i["location"] for i in cluster.api("GET", "/1.0/instances?recursion=1")["metadata"]}


async def start_all(spawners):
    await asyncio.gather(*(s.start() for s in spawners))
    return spawners


async def stop_all(spawners):
    await asyncio.gather(*(s.stop() for s in spawners))


def run(coro):
    return asyncio.run(coro)


def spread_of(cluster, spawners):
    where = locations(cluster)
    return Counter(where[s.instance] for s in spawners)


def test_six_concurrent_spawns_spread_evenly(cluster, tmp_path):
    spawners = [make_spawner(cluster, tmp_path, f"even{i}") for i in range(6)]
    run(start_all(spawners))
    try:
        spread = spread_of(cluster, spawners)
        print(f"\n6 concurrent spawns on 3 equal members: {dict(sorted(spread.items()))}")
        assert spread == {"m1": 2, "m2": 2, "m3": 2}
        where = locations(cluster)
        for s in spawners:
            # The module's location output went into state and audit, and the proxy device
            # listens on the chosen member's address.
            assert s.member == where[s.instance]
            assert s.get_state()["member"] == s.member
            record = json.loads(Path(s.workspace, "audit.jsonl").read_text().splitlines()[-1])
            assert record["member"] == s.member
            member = next(m for m in cluster.members if m.name == s.member)
            device = cluster.api("GET", f"/1.0/instances/{s.instance}")["metadata"]["devices"]["jupyter-server"]
            assert device["listen"] == f"tcp:{member.address}:{s.listen_port}"
            assert s.url == f"http://{member.address}:{s.listen_port}"
        assert reservations.snapshot() == {}
    finally:
        run(stop_all(spawners))
    assert not any(s.instance in locations(cluster) for s in spawners)


def test_weights_two_one_one(cluster, tmp_path):
    spawners = [make_spawner(cluster, tmp_path, f"w{i}", host_weights={"m1": 2}) for i in range(12)]
    run(start_all(spawners))
    try:
        spread = spread_of(cluster, spawners)
        print(f"\n12 spawns with weights m1=2, m2=1, m3=1: {dict(sorted(spread.items()))}")
        assert spread == {"m1": 6, "m2": 3, "m3": 3}
    finally:
        run(stop_all(spawners))


def test_evacuated_member_gets_nothing_until_restored(cluster, tmp_path):
    cluster.first.lxc("cluster", "evacuate", "m2", "--force")
    cluster.wait_status("m2", "Evacuated")
    first = [make_spawner(cluster, tmp_path, f"ev{i}") for i in range(4)]
    later = make_spawner(cluster, tmp_path, "after-restore")
    try:
        run(start_all(first))
        spread = spread_of(cluster, first)
        print(f"\n4 spawns with m2 evacuated: {dict(sorted(spread.items()))}")
        assert spread == {"m1": 2, "m3": 2}
        cluster.first.lxc("cluster", "restore", "m2", "--force")
        cluster.wait_status("m2", "Online")
        run(later.start())
        assert locations(cluster)[later.instance] == "m2"
    finally:
        cluster.first.lxc("cluster", "restore", "m2", "--force", check=False)
        run(stop_all(first + [later]))


def test_excluded_member_and_managed_only_counting(cluster, tmp_path):
    # Two foreign instances on m1 count as load unless count_managed_only is set.
    for name in ("foreign1", "foreign2"):
        cluster.first.lxc("init", TINY, name, "--target", "m1")
    try:
        a = make_spawner(cluster, tmp_path, "counted", excluded_members=["m3"])
        b = make_spawner(cluster, tmp_path, "managed-only", excluded_members=["m2", "m3"], count_managed_only=True)
        run(a.start())
        run(b.start())
        where = locations(cluster)
        assert where[a.instance] == "m2"  # m1 carries two instances, m3 is excluded
        assert where[b.instance] == "m1"  # only m1 allowed
        run(stop_all([a, b]))
        c = make_spawner(cluster, tmp_path, "managed-count", count_managed_only=True, excluded_members=["m3"])
        run(c.start())
        assert locations(cluster)[c.instance] == "m1"  # foreign instances not counted: tie -> m1
        run(c.stop())
    finally:
        for name in ("foreign1", "foreign2"):
            cluster.first.lxc("delete", "--force", name, check=False)


def test_placement_lxd_and_custom_callables(cluster, tmp_path):
    by_lxd = make_spawner(cluster, tmp_path, "lxd-chooses", placement="lxd")

    async def async_policy(spawner, members):
        await asyncio.sleep(0)
        return sorted(m.name for m in members)[-1]

    custom = [make_spawner(cluster, tmp_path, f"custom{i}", placement=lambda sp, members: "m2") for i in range(2)]
    custom_async = make_spawner(cluster, tmp_path, "custom-async", placement=async_policy)
    spawners = [by_lxd, *custom, custom_async]
    run(start_all(spawners))
    try:
        where = locations(cluster)
        assert where[by_lxd.instance] in {"m1", "m2", "m3"}
        assert by_lxd.member == where[by_lxd.instance]  # from the module's location output
        tfvars = json.loads(Path(by_lxd.workspace, "terraform.tfvars.json").read_text())
        assert tfvars["target"] is None  # LXD chose
        assert [where[s.instance] for s in custom] == ["m2", "m2"]
        assert where[custom_async.instance] == "m3"
    finally:
        run(stop_all(spawners))


def test_poll_and_stop_follow_an_evacuated_instance(cluster, tmp_path):
    # Instances with member-bound devices are stopped, not moved, by a plain evacuation;
    # cluster.evacuate=migrate asks LXD to move this one.
    s = make_spawner(cluster, tmp_path, "mover", placement=lambda sp, members: "m3",
                     module_variables={"config": {"cluster.evacuate": "migrate"}})
    run(s.start())
    try:
        assert run(s.poll()) is None
        cluster.first.lxc("cluster", "evacuate", "m3", "--force")
        moved_to = locations(cluster)[s.instance]
        assert moved_to in {"m1", "m2"}
        assert run(s.poll()) is None
        assert s.member == moved_to
        run(s.stop())
        assert s.instance not in locations(cluster)
        ops = [json.loads(line) for line in Path(s.workspace, "audit.jsonl").read_text().splitlines()]
        assert [(o["operation"], o["member"]) for o in ops] == [("start", "m3"), ("stop", moved_to)]
    finally:
        cluster.first.lxc("cluster", "restore", "m3", "--force", check=False)
        cluster.wait_status("m3", "Online")


def test_full_jupyterhub_spawn_on_a_chosen_member(cluster, tmp_path_factory, lxd_client):
    work = tmp_path_factory.mktemp("cluster-hub")
    cluster.import_image_from_host("jupyter-notebook", work)
    extra = f"""
c.LxdSpawner.lxd_endpoint = "{cluster.first.url}"
c.LxdSpawner.lxd_cert = "{cluster.cert}"
c.LxdSpawner.lxd_key = "{cluster.key}"
c.LxdSpawner.lxd_verify = "{cluster.server_cert}"
c.LxdSpawner.host_weights = {{"m1": 0, "m2": 0}}
c.LxdSpawner.storage_pool = "local"  # the test daemons' pool (dir: it cannot enforce a quota)
c.LxdSpawner.storage_capacity = ""
"""
    hub = Hub(work, extra).start()
    try:
        token = hub.user_token("alice")
        assert hub.start_server("alice").status_code in (201, 202)
        hub.wait_ready("alice", timeout=240)
        assert hub.run_code("alice", token, "import socket; print(socket.gethostname())").strip() == "jupyter-alice"
        assert locations(cluster)["jupyter-alice"] == "m3"
        hub.api("DELETE", "/users/alice/server")
        hub.wait_stopped("alice")
        assert "jupyter-alice" not in locations(cluster)
        records = [json.loads(line) for line in (hub.state_dir / "alice" / "_default" / "audit.jsonl").read_text().splitlines()]
        assert [(r["operation"], r["outcome"], r["member"]) for r in records] == [("start", "ok", "m3"), ("stop", "ok", "m3")]
    finally:
        hub.stop()


def test_offline_member_gets_nothing_and_others_keep_working(cluster, tmp_path):
    survivor = make_spawner(cluster, tmp_path, "survivor", placement=lambda sp, members: "m1")
    run(survivor.start())
    m3 = cluster.members[2]
    m3.kill()
    try:
        cluster.wait_status("m3", "Offline", timeout=90)
        spawners = [make_spawner(cluster, tmp_path, f"off{i}") for i in range(4)]
        run(start_all(spawners))
        spread = spread_of(cluster, spawners)
        print(f"\n4 spawns with m3 offline: {dict(sorted(spread.items()))}")
        assert "m3" not in spread and sum(spread.values()) == 4
        assert run(survivor.poll()) is None
        run(stop_all(spawners + [survivor]))
    finally:
        m3.start()
        cluster.wait_status("m3", "Online", timeout=90)


def test_home_follows_a_hand_move_refuses_an_evacuated_member_and_moves_by_command(cluster, tmp_path_factory):
    """Issue 27 on LXD (homemoves.py; the same on the Incus cluster)."""
    work = tmp_path_factory.mktemp("cluster-homes")
    if "jupyter-notebook" not in cluster.first.lxc("image", "list", "--format", "csv"):
        cluster.import_image_from_host("jupyter-notebook", work)
    hub = Hub(work, homes_on_local_pool(cluster)).start()
    try:
        follow_refuse_move(hub, cluster)
    finally:
        hub.stop()


def test_shared_folder_on_a_local_pool_brings_its_users_to_its_member_or_refuses(cluster, tmp_path_factory):
    """Issue 29 on a pool local to each member: the folder is made where its first user goes;
    the next member of the group goes there too, whatever the weights say; a user whose home is
    on another member is refused, naming both, and nothing is made for them."""
    work = tmp_path_factory.mktemp("cluster-shared")
    if "jupyter-notebook" not in cluster.first.lxc("image", "list", "--format", "csv"):
        cluster.import_image_from_host("jupyter-notebook", work)
    hub = Hub(work, homes_on_local_pool(cluster) + """
c.LxdSpawner.shared_volumes = [{"name": "lab", "path": "lab", "write_groups": ["lab"]}]
c.JupyterHub.load_roles.append({"name": "tester-groups", "services": ["tester"], "scopes": ["admin:groups"]})
""" + control_hook(work / "control.json")).start()
    control = Control(work / "control.json")
    users = {"ann": {"m1": 0, "m2": 0}, "ben": {"m3": 0, "m1": 0}, "cat": {"m2": 0, "m3": 0}}
    try:
        for user, weights in users.items():
            hub.api("POST", f"/users/{user}")
            control.set(user, host_weights=weights)
        assert hub.api("POST", "/groups/lab", json={"users": ["ann", "ben"]}).status_code == 201
        for user in ("ann", "cat"):  # ann (in lab) to m3, cat (not yet) to m1
            assert hub.start_server(user).status_code in (201, 202)
            hub.wait_ready(user, timeout=300)
        folder = [v["location"] for v in cluster.api("GET", "/1.0/storage-pools/local/volumes?recursion=1")["metadata"]
                  if v["name"] == "shared-lab" and v["type"] == "custom"]
        assert folder == ["m3"] and locations(cluster)["jupyter-cat"] == "m1", (folder, locations(cluster))
        assert hub.start_server("ben").status_code in (201, 202)  # its weights say m2
        hub.wait_ready("ben", timeout=300)
        assert locations(cluster)["jupyter-ben"] == "m3", "ben goes where the lab folder is"
        for user in ("cat", "ben"):
            hub.api("DELETE", f"/users/{user}/server")
            hub.wait_stopped(user)
        assert hub.api("POST", "/groups/lab/users", json={"users": ["cat"]}).status_code == 200
        assert hub.start_server("cat").status_code in (201, 202)
        events = hub.progress_events("cat")
        message = events[-1].get("message", "")
        assert events[-1].get("failed") and "the shared folder lab is on m3" in message \
            and "your home volume is on m1" in message, events[-1]
        hub.wait_stopped("cat")
        assert "jupyter-cat" not in locations(cluster)
        hub.api("DELETE", "/users/ann/server")
        hub.wait_stopped("ann")
    finally:
        hub.stop()
