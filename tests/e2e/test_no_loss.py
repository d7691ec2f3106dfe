"""The side paths where a user's files were lost (issue 26), through a real JupyterHub on LXD +
terraform and on Incus + tofu: a profile that keeps servers across a hub restart, renames (a named
server's and the default server's) with per-server home volumes, deleting a user whose shared home
a kept server still holds, a volume kept with a deleted user (delete_storage = False) and the user
made again, a kept container deleted by hand, two users whose names used to collide, and a
workspace whose module went away.

One hub per daemon serves every scenario (one user each, side by side); the hub restarts once, in
the middle, for the scenario that needs it. Each test reports its scenario's findings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CACHE, IMAGE, REPO
from hubtools import Control, Hub, control_hook, custom_volumes, shut_down, wait_for

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}


def hub_config(daemon: str, work: Path) -> str:
    return f"""
c.JupyterHub.allow_named_servers = True
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_name_template = "home-{{username}}-{{servername}}"
c.LxdSpawner.storage_capacity = "200MiB"
c.LxdSpawner.storage_retention_days = 0  # what deletion deletes is tested here; retention in test_homes.py
c.LxdSpawner.environment = {{"BASE": "from-config", "SHARED": "base"}}
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300

from tf_lxd_spawner import LxdSpawner as _LxdSpawner
from traitlets import default as _default

class _Spawner(_LxdSpawner):
    # User rel's volume is kept with the user (delete_storage is read by delete_forever, when
    # no pre_spawn_hook runs).
    @_default("delete_storage")
    def _keep_rels(self):
        return self.user.name != "rel"

c.JupyterHub.spawner_class = _Spawner

def _place(spawner, members):  # a callable trait in a profile's override
    return members[0].name if members else None

c.LxdSpawner.profile_list = [
    {{"display_name": "Plain", "slug": "plain", "default": True}},
    {{"display_name": "Keep my container", "slug": "keep",
      "kubespawner_override": {{"remove": False, "placement": _place,
                                "environment": {{"PROFILE": "keep", "SHARED": None}}}},
      "profile_options": {{"tag": {{"display_name": "Tag", "choices": {{}},
          "unlisted_choice": {{"enabled": True, "display_name": "Tag",
                               "kubespawner_override": {{"environment": {{"TAG": "{{value}}"}}}}}}}}}}}},
]
""" + control_hook(work / "control.json")


class Findings(list):
    def expect(self, ok, what: str) -> bool:
        if not ok:
            self.append(what)
        return bool(ok)


class Ctx:
    def __init__(self, daemon, client, hub: Hub, control: Control, work: Path):
        self.daemon, self.client, self.hub, self.control, self.work = daemon, client, hub, control, work
        self.tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self.tokens:
            self.tokens[user] = self.hub.user_token(user)
        return self.tokens[user]

    def spawn(self, user: str, server: str = "", options: dict | None = None) -> None:
        r = self.hub.start_server(user, server, options)
        assert r.status_code in (201, 202), f"start {user}/{server}: {r.status_code} {r.text}"
        self.hub.wait_ready(user, server, timeout=300)

    def stop(self, user: str, server: str = "") -> None:
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        r = self.hub.api("DELETE", path)
        assert r.status_code in (202, 204), f"stop {user}/{server}: {r.status_code} {r.text}"
        self.hub.wait_stopped(user, server)

    def run(self, user: str, code: str, server: str = "") -> str:
        return self.hub.run_code(user, self.token(user), code, server=server)

    def write(self, user: str, path: str, text: str, server: str = "") -> None:
        self.run(user, f"import os; p = os.path.expanduser({path!r}); open(p, 'w').write({text!r})", server)

    def read(self, user: str, path: str, server: str = "") -> str:
        return self.run(user, f"import os\np = os.path.expanduser({path!r})\n"
                              "print(open(p).read() if os.path.exists(p) else '<no file>', end='')", server)

    def instance(self, user: str, server: str = "") -> str:
        model = self.hub.server_model(user, server) or {}
        return (model.get("state") or {}).get("instance") or self.audit_instance(user, server)

    def audit(self, user: str, server: str = "") -> list[dict]:
        found = []
        for path in sorted(self.hub.state_dir.glob(f"{user}/*/audit.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("server", "") == server:
                    found.append(record)
        return found

    def audit_instance(self, user: str, server: str = "") -> str:
        starts = [r for r in self.audit(user, server) if r.get("operation") == "start" and r.get("outcome") == "ok"]
        return starts[-1]["instance"] if starts else ""

    def volumes_of(self, user: str) -> list[str]:
        return [v["name"] for v in custom_volumes(self.client)
                if (v.get("config") or {}).get("user.tf-lxd-spawner.user") == user
                and (v.get("config") or {}).get("user.tf-lxd-spawner.workspace", "").startswith(str(self.hub.state_dir))]


# -- the scenarios: each returns its findings ------------------------------------------------------

KEEP_OPTIONS = {"profile": "keep", "tag": "unlisted-choice", "tag--unlisted-choice": "xyz"}
ENV = "import os; print(os.environ.get('BASE'), os.environ.get('PROFILE'), os.environ.get('TAG'), " \
      "os.environ.get('SHARED'), end='')"


def profile_keep_before(c: Ctx) -> dict:
    """A profile's remove = False (base True): the user works in the container itself."""
    user = "pkeep"
    c.spawn(user, options=KEEP_OPTIONS)
    env = c.run(user, ENV)
    c.run(user, "open('/var/tmp/in-container.txt', 'w').write('kept by the profile')")
    name = c.instance(user)
    return {"env": env, "name": name, "created": c.client.instances.get(name).created_at}


def profile_keep_after(c: Ctx, before: dict) -> Findings:
    f = Findings()
    user = "pkeep"
    f.expect(before["env"] == "from-config keep xyz None",
             f"the profile's environment merges into the configured one (SHARED deleted by None, the unlisted "
             f"choice's text from the REST sentinel): {before['env']!r}")
    model = c.hub.server_model(user) or {}
    f.expect(model.get("ready"), f"after the hub restart the server is adopted: {model}")
    c.stop(user)
    name = before["name"]
    if f.expect(c.client.instances.exists(name), f"the stop after the restart destroyed {name} (profile: remove False)"):
        f.expect(c.client.instances.get(name).status == "Stopped", f"{name} is kept, stopped")
        c.spawn(user, options=KEEP_OPTIONS)
        f.expect(c.client.instances.get(name).created_at == before["created"], f"{name} was resumed, not replaced")
        f.expect(c.run(user, "print(open('/var/tmp/in-container.txt').read(), end='')") == "kept by the profile",
                 "the file written in the container survived stop, restart, stop, start")
        c.stop(user)
    return f


def rename_then_reuse(c: Ctx) -> Findings:
    f = Findings()
    user = "ren"
    c.spawn(user, "alpha")
    c.write(user, "~/secret.txt", "alpha's work", "alpha")
    c.stop(user, "alpha")
    r = c.hub.api("PATCH", f"/users/{user}/servers/alpha", json={"name": "beta"})
    assert r.status_code == 200, f"rename: {r.status_code} {r.text}"
    c.spawn(user, "alpha")
    f.expect(c.read(user, "~/secret.txt", "alpha") == "<no file>",
             "a new server under the renamed server's old name mounts the renamed server's home")
    c.stop(user, "alpha")
    r = c.hub.api("DELETE", f"/users/{user}/servers/alpha", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: c.hub.server_model(user, "alpha") is None, 120, "alpha deleted")
    time.sleep(2)  # delete_forever runs after the hub's answer
    c.spawn(user, "beta")
    f.expect(c.read(user, "~/secret.txt", "beta") == "alpha's work",
             "the renamed server keeps its home, also after the new server of the old name is deleted")
    c.stop(user, "beta")
    return f


def rename_default(c: Ctx) -> Findings:
    f = Findings()
    user = "rdef"
    c.spawn(user)
    c.write(user, "~/mine.txt", "default's work")
    c.stop(user)
    r = c.hub.api("PATCH", f"/users/{user}/server", json={"name": "moved"})
    assert r.status_code == 200, f"rename of the default server: {r.status_code} {r.text}"
    c.spawn(user, "moved")
    f.expect(c.read(user, "~/mine.txt", "moved") == "default's work",
             "the renamed default server keeps its per-server home")
    c.spawn(user)
    f.expect(c.read(user, "~/mine.txt") == "<no file>", "a new default server gets a home of its own")
    c.stop(user, "moved")
    c.stop(user)
    return f


def delete_user_with_shared_home_kept(c: Ctx) -> Findings:
    f = Findings()
    user = "dshared"
    c.control.set(user, storage_name_template="home-{username}", remove=False)
    c.spawn(user)
    c.write(user, "~/shared.txt", "one home")
    c.spawn(user, "nb")
    f.expect(c.read(user, "~/shared.txt", "nb") == "one home", "both servers mount the shared home")
    names = [c.instance(user), c.instance(user, "nb")]
    c.stop(user, "nb")
    c.stop(user)
    vols = c.volumes_of(user)
    f.expect(len(vols) == 1, f"one shared volume: {vols}")
    r = c.hub.api("DELETE", f"/users/{user}")
    assert r.status_code == 204, r.text
    try:
        wait_for(lambda: not c.volumes_of(user) and not any(c.client.instances.exists(n) for n in names), 180,
                 "the user's kept servers and then the volume deleted")
    except AssertionError:
        f.append(f"after deleting the user: instances {[n for n in names if c.client.instances.exists(n)]}, "
                 f"volumes {c.volumes_of(user)} are left")
    user_dir = c.hub.state_dir / user
    live = [p.name for p in user_dir.glob("*") if ".deleted-" not in p.name and p.name != "_volumes"]
    f.expect(not live, f"every server workspace of the deleted user is archived: {live}")
    return f


def released_volume_recreated_user(c: Ctx) -> Findings:
    f = Findings()
    user = "rel"  # delete_storage is False for this user (the hub's spawner class)
    c.spawn(user)
    c.write(user, "~/old.txt", "from the first account")
    c.stop(user)
    [vol] = c.volumes_of(user)
    r = c.hub.api("DELETE", f"/users/{user}")
    assert r.status_code == 204, r.text
    wait_for(lambda: bool(list((c.hub.state_dir / user / "_volumes").glob(f"{vol}.released-*"))), 60,
             "the volume's workspace archived as released")
    f.expect(vol in c.volumes_of(user), "delete_storage = False keeps the volume")
    c.tokens.pop(user, None)  # the deleted user's token went with it
    c.hub.api("POST", f"/users/{user}")
    c.hub.start_server(user)
    events = c.hub.progress_events(user)
    last = events[-1].get("message", "") if events else ""
    f.expect(c.hub.server_model(user) is None, "the re-created user's spawn does not start on the kept volume")
    f.expect("kept from a deleted user" in last and "reference" not in last,
             f"the refusal says what happened (not a generic error): {last!r}")
    cli = [sys.executable, "-m", "tf_lxd_spawner.operator.cli", "adopt-volume", "--state-dir", str(c.hub.state_dir),
           "--backend", c.daemon, "--user", user, "--volume", vol]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    if not f.expect(done.returncode == 0, f"adopt-volume: {done.returncode} {done.stdout} {done.stderr}"):
        return f
    c.spawn(user)
    f.expect(c.read(user, "~/old.txt") == "from the first account", "the adopted volume has the user's files")
    c.stop(user)
    return f


def kept_container_deleted_by_hand(c: Ctx) -> Findings:
    f = Findings()
    user = "van"
    c.control.set(user, remove=False)
    c.spawn(user)
    c.write(user, "~/home.txt", "in the home volume")
    name = c.instance(user)
    c.stop(user)
    inst = c.client.instances.get(name)
    inst.delete(wait=True)
    r = c.hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    events = c.hub.progress_events(user)
    model = c.hub.server_model(user) or {}
    if f.expect(model.get("ready"), f"a start after the kept container was deleted by hand works: {events[-3:]}"):
        f.expect(c.read(user) if False else c.read(user, "~/home.txt") == "in the home volume",
                 "the home volume is still the user's")
        f.expect(any("no longer exists" in e.get("message", "") for e in events),
                 "the spawn page says the kept server was gone")
        c.stop(user)
    f.expect(any(r.get("operation") == "vanished" for r in c.audit(user)), "the audit records the vanished instance")
    return f


def colliding_names(c: Ctx) -> Findings:
    """User na-b's default server and user na's server b were both jupyter-na-b: a kept one
    blocked the other for good. (JupyterHub's own OAuth client ids of the two collide too, so
    they cannot run at once; one after the other must work.)"""
    f = Findings()
    c.control.set("na-b", remove=False)
    c.spawn("na-b")
    a = c.instance("na-b")
    c.stop("na-b")
    c.spawn("na", "b")
    b = c.instance("na", "b")
    f.expect(a and b and a != b, f"user na-b's server and user na's server b get distinct instances: {a}, {b}")
    f.expect(c.client.instances.exists(a), f"na-b's kept {a} is untouched")
    c.stop("na", "b")
    return f


def module_moved(c: Ctx) -> Findings:
    """The module a server was started with goes away (an operator's copy deleted; the package
    reinstalled into a new venv): the server still stops."""
    f = Findings()
    user = "mod"
    copy = c.work / "module-copy"
    shutil.copytree(REPO / "terraform" / "modules" / "notebook", copy)
    c.control.set(user, module_source=str(copy))
    c.spawn(user)
    name = c.instance(user)
    shutil.rmtree(copy)
    c.stop(user)
    f.expect(not c.client.instances.exists(name), f"{name} was destroyed by the stop after its module_source went")
    c.control.set(user)
    c.spawn(user)
    # As 0.1.0 rendered it: the workspace's main.tf names the module where the package was
    # installed, and that venv is gone.
    [ws] = [p.parent for p in (c.hub.state_dir / user).glob("*/server-state.json")]
    main = ws / "main.tf"
    text = main.read_text()
    start = text.index('source = "', text.index('module "notebook"')) + len('source = "')
    main.write_text(text[:start] + "/opt/old-venv/lib/python3.11/site-packages/tf_lxd_spawner/modules/notebook"
                    + text[text.index('"', start):])
    c.stop(user)
    f.expect(not c.client.instances.exists(name), f"{name} was destroyed by the stop after the installed module went")
    f.expect(any(r.get("operation") == "module-repointed" for r in c.audit(user)),
             "the audit says the workspace was pointed at the current module")
    return f


INDEPENDENT = {
    "rename_then_reuse": rename_then_reuse,
    "rename_default": rename_default,
    "delete_user_with_shared_home_kept": delete_user_with_shared_home_kept,
    "released_volume_recreated_user": released_volume_recreated_user,
    "kept_container_deleted_by_hand": kept_container_deleted_by_hand,
    "colliding_names": colliding_names,
    "module_moved": module_moved,
}


@pytest.fixture(scope="module", params=list(BINARY))
def outcomes(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")
    work = tmp_path_factory.mktemp(f"noloss-{daemon}")
    hub = Hub(work, hub_config(daemon, work), env={"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"})
    c = Ctx(daemon, client, hub, Control(work / "control.json"), work)
    results: dict[str, object] = {}
    hub.start()
    try:
        with ThreadPoolExecutor(len(INDEPENDENT) + 1) as pool:
            before = pool.submit(profile_keep_before, c)
            running = {name: pool.submit(fn, c) for name, fn in INDEPENDENT.items()}
            for name, fut in running.items():
                try:
                    results[name] = fut.result()
                except Exception as e:  # reported by its own test
                    results[name] = e
            try:
                kept = before.result()
                hub.stop()  # servers keep running (cleanup_servers = False)
                hub.start()
                results["profile_keep_after_restart"] = profile_keep_after(c, kept)
            except Exception as e:
                results["profile_keep_after_restart"] = e
        yield results
    finally:
        c.control.set("dshared")
        try:
            for u in hub.api("GET", "/users").json() if hub.proc else []:
                if u["name"] not in ("admin",):
                    hub.api("DELETE", f"/users/{u['name']}")
        except Exception:
            pass
        shut_down(hub, client)


@pytest.mark.parametrize("scenario", [*INDEPENDENT, "profile_keep_after_restart"])
def test_no_path_loses_files(outcomes, scenario):
    found = outcomes[scenario]
    if isinstance(found, Exception):
        raise found
    assert not found, f"{scenario}: " + "; ".join(found)
