"""Groups' shared folders (issue 29) through a real JupyterHub, on LXD + terraform and on Incus +
tofu: a course folder its staff write and its students only read, a team folder.

- a class starting at once: one volume made, once; each user gets the device their groups give
  (read-only for students: the daemon refuses their writes), a user in no group has no device;
  a folder given by JupyterHub's group_overrides comes with its group;
- staff with different uids write together: the folder belongs to the shared gid, setgid 2775,
  and one's file stays writable for the other;
- a change of groups takes effect at the next start and is audited, for a fresh server and for
  a kept one (remove = False) resumed in place;
- no stop and no user deletion touches the folder; `shared list` and `orphans` know it;
  `shared delete` is refused while mounted or configured, then keeps it for the retention
  period (`shared undelete` brings it back with its files), or deletes it at once (`--now`),
  and archives its workspace with its audit record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CACHE, IMAGE
from hubtools import Control, Hub, control_hook, custom_volumes, shut_down, wait_for
from test_no_loss import Ctx

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}
CLI = [str(Path(sys.executable).parent / "tf-lxd-spawner")]
# Staff members have uids of their own (as with a site's LDAP ids); the course's group is 3000.
IDS = {"prof": (2001, 2001), "ta": (2002, 2002), "stu1": (2101, 2101), "stu2": (2102, 2102),
       "outsider": (2201, 2201)}
GROUPS = {"staff": ["prof", "ta"], "students": ["stu1", "stu2"], "team": ["prof"]}


def hub_config(daemon: str, work: Path) -> str:
    return f"""
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_capacity = "100MiB"
_FOLDERS = [
    {{"name": "course", "size": "100MiB", "path": "course", "write_groups": ["staff"],
      "read_groups": ["students"], "gid": 3000}},
    {{"name": "team", "size": "50MiB", "path": "/srv/team", "write_groups": ["team"], "gid": 3001}},
]
c.LxdSpawner.shared_volumes = _FOLDERS
# JupyterHub's group_overrides replace a list: the team's extra folder comes with the whole list.
c.Spawner.group_overrides = {{"10-team": {{"groups": ["team"], "spawner_override": {{"shared_volumes": _FOLDERS + [
    {{"name": "extra", "size": "20MiB", "path": "extra", "read_groups": ["team"]}}]}}}}}}
_IDS = {json.dumps(IDS)}
c.LxdSpawner.get_uid_gid = lambda sp: tuple(_IDS.get(sp.user.name, (1000, 1000)))
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
c.JupyterHub.load_roles.append({{"name": "tester-groups", "services": ["tester"], "scopes": ["admin:groups"]}})
""" + control_hook(work / "control.json")


@pytest.fixture(scope="module", params=list(BINARY))
def ctx(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")
    work = tmp_path_factory.mktemp(f"shared-{daemon}")
    hub = Hub(work, hub_config(daemon, work), env={"PATH": f"{CACHE / 'bin'}:{os.environ['PATH']}"})
    hub.start()
    try:
        for user in IDS:
            hub.api("POST", f"/users/{user}")
        for group, users in GROUPS.items():
            r = hub.api("POST", f"/groups/{group}", json={"users": users})
            assert r.status_code == 201, r.text
        yield Ctx(daemon, client, hub, Control(work / "control.json"), work)
    finally:
        shut_down(hub, client)


def cli(ctx: Ctx, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{CACHE / 'bin'}:{os.environ['PATH']}"}
    r = subprocess.run([*CLI, "-f", str(ctx.work / "jupyterhub_config.py"), *args], capture_output=True, text=True,
                       env=env, timeout=600)
    if check:
        assert r.returncode == 0, f"{' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def devices(ctx: Ctx, user: str) -> dict:
    return ctx.client.instances.get(ctx.instance(user)).devices


def folder_audit(ctx: Ctx, name: str) -> list[dict]:
    path = ctx.hub.state_dir / "_shared" / name / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


TRY_WRITE = ("import os\np = os.path.expanduser('~/course/{name}')\ntry:\n    open(p, 'a').write('{text}')\n"
             "    print('wrote')\nexcept OSError as e:\n    print('refused', e.errno)")


def test_a_class_starts_at_once(ctx):
    """Staff and students start side by side before the folder exists: it is made once; the
    daemon mounts it read-only for students; the outsider has no device for it."""
    users = ["prof", "ta", "stu1", "stu2", "outsider"]
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(ctx.spawn, users))
    made = [r for r in folder_audit(ctx, "course") if r["operation"] == "volume" and r.get("action") == "created"]
    assert len(made) == 1, f"the course folder is made once: {folder_audit(ctx, 'course')}"
    vols = {v["name"]: v for v in custom_volumes(ctx.client)}
    assert "shared-course" in vols and vols["shared-course"]["config"].get("user.tf-lxd-spawner.kind") == "shared"
    assert devices(ctx, "prof")["tf-lxd-shared-course"].get("readonly") in (None, "false")
    assert devices(ctx, "stu1")["tf-lxd-shared-course"].get("readonly") == "true"
    assert "tf-lxd-shared-course" not in devices(ctx, "outsider")
    assert "tf-lxd-shared-team" in devices(ctx, "prof") and "tf-lxd-shared-team" not in devices(ctx, "ta")
    assert devices(ctx, "prof")["tf-lxd-shared-extra"].get("readonly") == "true", "from the team's group_overrides"
    assert "tf-lxd-shared-extra" not in devices(ctx, "ta")

    ctx.write("prof", "~/course/syllabus.txt", "week 1: shells")
    assert ctx.run("ta", TRY_WRITE.format(name="syllabus.txt", text="; week 2: git")) == "wrote\n", \
        "staff members with different uids keep each other's files writable"
    stat = ctx.run("ta", "import os, stat\nd = os.path.expanduser('~/course')\ns = os.stat(d)\n"
                         "f = os.stat(d + '/syllabus.txt')\n"
                         "print(s.st_gid, oct(stat.S_IMODE(s.st_mode)), f.st_gid, oct(stat.S_IMODE(f.st_mode)), "
                         "3000 in os.getgroups())")
    assert stat.split() == ["3000", "0o2775", "3000", "0o664", "True"], f"group, setgid, group-writable: {stat}"
    assert ctx.read("stu1", "~/course/syllabus.txt") == "week 1: shells; week 2: git", "students read it"
    assert ctx.run("stu1", TRY_WRITE.format(name="syllabus.txt", text="cheat")) == "refused 30\n", \
        "a student's write is refused by the read-only mount (EROFS)"
    assert ctx.read("outsider", "~/course/syllabus.txt") == "<no file>"


def test_group_changes_take_effect_at_the_next_start(ctx):
    """stu2 (kept server, remove = False) becomes staff, stu1 leaves the students: at their next
    start the kept instance is resumed with a writable device, stu1 has none; both audited."""
    ctx.control.set("stu2", remove=False)
    ctx.stop("stu2")
    ctx.spawn("stu2")  # the first start with remove = False: its instance is kept from now on
    kept = ctx.instance("stu2")
    created = ctx.client.instances.get(kept).created_at
    ctx.stop("stu2")
    assert ctx.hub.api("POST", "/groups/staff/users", json={"users": ["stu2"]}).status_code == 200
    assert ctx.hub.api("DELETE", "/groups/students/users", json={"users": ["stu1"]}).status_code == 200
    ctx.stop("stu1")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(ctx.spawn, ["stu1", "stu2"]))
    assert ctx.client.instances.get(kept).created_at == created, "the kept instance was resumed, not replaced"
    assert devices(ctx, "stu2")["tf-lxd-shared-course"].get("readonly") in (None, "false")
    assert ctx.run("stu2", TRY_WRITE.format(name="stu2.txt", text="now staff")) == "wrote\n"
    assert "tf-lxd-shared-course" not in devices(ctx, "stu1")
    changes = {u: [r["changes"] for r in ctx.audit(u) if r["operation"] == "shared-access"] for u in ("stu1", "stu2")}
    assert changes["stu2"][-1] == {"course": "now rw"} and changes["stu1"][-1] == {"course": "revoked"}, changes
    ctx.control.set("stu2")


def test_the_folder_outlives_stops_and_users_and_goes_only_by_command(ctx):
    listed = json.loads(cli(ctx, "shared", "list", "--json").stdout)
    course = [r for r in listed if r["folder"] == "course"]
    assert course and course[0]["configured"] and len(course[0]["mounted_by"]) >= 3, listed
    refused = cli(ctx, "shared", "delete", "course", "--force", check=False)
    assert refused.returncode == 1 and "mounted by" in refused.stderr, refused.stderr
    assert "shared folder default/shared-course" in cli(ctx, "list").stdout
    for user in IDS:
        ctx.stop(user)
    assert ctx.hub.api("DELETE", "/users/prof").status_code == 204
    wait_for(lambda: ctx.hub.api("GET", "/users/prof").status_code == 404, 60, "prof deleted")
    assert {"shared-course", "shared-team"} <= {v["name"] for v in custom_volumes(ctx.client)}, \
        "no stop and no user deletion deletes a shared folder"
    orphans = cli(ctx, "orphans", "--json", check=False)
    assert "shared-course" not in orphans.stdout, orphans.stdout
    configured = cli(ctx, "shared", "delete", "course", check=False)
    assert configured.returncode == 1 and "still in shared_volumes" in configured.stderr, configured.stderr
    snap = cli(ctx, "shared", "snapshot", "course").stdout.strip()
    assert snap.startswith("manual-"), snap
    kept = cli(ctx, "shared", "delete", "course", "--force", check=False)
    assert kept.returncode == 1 and "jupyter-stu2" in kept.stderr, \
        f"stu2's kept (stopped) instance still has the device: {kept.stderr}"
    assert ctx.hub.api("DELETE", "/users/stu2").status_code == 204
    wait_for(lambda: not ctx.client.instances.exists("jupyter-stu2"), 120, "stu2's kept instance deleted")
    out = cli(ctx, "shared", "delete", "course", "--force").stdout
    kept = [r for r in json.loads(cli(ctx, "shared", "list", "--json").stdout) if r["folder"] == "course"]
    assert len(kept) == 1 and kept[0]["state"].startswith("retained until") and kept[0]["volume"] in out, kept
    assert "shared-course" not in {v["name"] for v in custom_volumes(ctx.client)}, "renamed out of the way"
    cli(ctx, "shared", "undelete", kept[0]["volume"])
    ctx.spawn("ta")
    assert ctx.read("ta", "~/course/syllabus.txt") == "week 1: shells; week 2: git", "undeleted with its files"
    ctx.stop("ta")
    cli(ctx, "shared", "delete", "course", "--force", "--now")
    assert "shared-course" not in {v["name"] for v in custom_volumes(ctx.client)}
    archived = sorted((ctx.hub.state_dir / "_shared").glob("course.deleted-*"))
    records = [json.loads(line) for line in (archived[0] / "audit.jsonl").read_text().splitlines()] if archived else []
    assert [r["operation"] for r in records if r["operation"].startswith("shared-")][-3:] == [
        "shared-delete", "shared-undelete", "shared-delete"], records
    assert not [r for r in json.loads(cli(ctx, "shared", "list", "--json").stdout) if r["folder"] == "course"]
