"""Upgrading from an earlier release, through real hubs: a hub of the old release (its own venv,
made by `make setup` from the archive in tests/upgrade/) gets two users with kept servers
(remove = False): `runner`, whose server runs, and `keeper`, whose server was stopped and kept,
each with files in their home. The old hub stops with `runner`'s server running; this release's
hub starts on the same database, state_dir, ports and configuration, with home volumes at their
default (on). It must adopt the running server (ready at once, the same container, its file
readable), stop it and keep it, resume it; resume `keeper`'s container, the same one, with its
files in the home (a home volume attached for the first time to a kept container whose home
already holds files gets those files); and deleting the users removes everything.

Each case (release x daemon) has its own workdir, hub database and state_dir, and cleans up
everything it made whatever happens. Cases run one after another: the users' names, and so
their containers' and volumes' names, are the same in every case. Every check of a case after
the switch is made (a failure lists all that went wrong, not just the first).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import CACHE, IMAGE
from hubtools import Hub, custom_volumes, delete_volumes, wait_for

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}
# The releases in tests/upgrade/: whether they have home volumes (storage_enabled) at all.
RELEASES = {"98db19d": {"storage": False}, "27f0bb9": {"storage": True}, "95ce0d7": {"storage": True},
            "632bc32": {"storage": True}, "f60ce3e": {"storage": True, "shared": True}}
# Each release once, on the daemons in turn: 0.3.0 (its modules all in one folder) on Incus, 0.4.0
# (its notebook module without readonly volumes or groups) on LXD.
CASES = [("98db19d", "incus"), ("27f0bb9", "incus"), ("95ce0d7", "lxd"), ("632bc32", "incus"), ("f60ce3e", "lxd")]
USERS = ("runner", "keeper")

READ = ("import os\np = os.path.expanduser({rel!r})\n"
        "print(open(p).read() if os.path.exists(p) else '<no file>', end='')")


def write_code(files: dict[str, str]) -> str:
    lines = ["import os"]
    for rel, text in files.items():
        lines.append(f"p = os.path.expanduser({rel!r}); os.makedirs(os.path.dirname(p), exist_ok=True); "
                     f"open(p, 'w').write({text!r})")
    lines.append("print('written')")
    return "\n".join(lines)


def hub_config(daemon: str) -> str:
    """The operator's configuration, the same before and after the upgrade. No storage traits:
    98db19d has none, and after the upgrade the default (a home volume per user) applies."""
    return f"""
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.remove = False
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
"""


# After an upgrade from 0.4.0 the operator adds a shared folder: the kept server resumed by this
# release gets its device (read-only for its group), in place.
SHARED = """
c.LxdSpawner.shared_volumes = [{"name": "upgrade-course", "size": "50MiB", "path": "course", "read_groups": ["class"]}]
c.JupyterHub.load_roles.append({"name": "tester-groups", "services": ["tester"], "scopes": ["admin:groups"]})
"""
SHARED_DEVICE = "tf-lxd-shared-upgrade-course"


def successor(old: Hub, config: str, env: dict) -> Hub:
    """This release's hub in the old one's place: the same workdir (database, cookie secret,
    state_dir), the same ports (the running servers reach the hub API at its port) and the same
    service token, as an operator's upgrade of the package keeps them."""
    hub = Hub(old.workdir, config, env=env)  # sys.executable: this repository's venv
    hub.port, hub.hub_port, hub.proxy_api_port, hub.token = old.port, old.hub_port, old.proxy_api_port, old.token
    hub.url = old.url
    (old.workdir / "jupyterhub_config.py").write_text(hub._config(config))
    return hub


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def audit(hub: Hub, user: str) -> list[dict]:
    path = hub.state_dir / user / "_default" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def instance_of(hub: Hub, user: str) -> str:
    return [r for r in audit(hub, user) if r.get("operation") == "start"][-1]["instance"]


def identity(client, name: str) -> tuple[str, str, str]:
    """(status, created_at, volatile.uuid): the last two say whether it is the same container."""
    inst = client.instances.get(name)
    return inst.status, str(inst.created_at), inst.config.get("volatile.uuid", "")


def spawn(hub: Hub, user: str) -> None:
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=300)


def stop(hub: Hub, user: str) -> None:
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped(user, timeout=180)


def ours(obj, state_dir: Path) -> bool:
    config = obj["config"] if isinstance(obj, dict) else obj.config
    return (config or {}).get("user.tf-lxd-spawner.workspace", "").startswith(f"{state_dir}/")


RETAINED = "-del-"  # in the name of a deleted user's home while it is kept


def leftovers(client, state_dir: Path) -> list[str]:
    """Instances and custom volumes this case's hubs made (by their workspace label) still there."""
    found = [f"instance {i.name} ({i.status})" for i in client.instances.all() if ours(i, state_dir)]
    found += [f"volume {v['pool']}/{v['name']}" for v in custom_volumes(client) if ours(v, state_dir)]
    return found


def log_excerpt(hub: Hub, since: int, users=USERS, n: int = 40) -> str:
    """The new hub's warnings and errors (and any 500), from byte `since` of its log, without
    the expected ones (a test hub's start-up, a 409 for a user that exists, a 404 of the clean-up)."""
    text = hub.log_path.read_bytes()[since:].decode(errors="replace")
    names = "|".join(map(re.escape, users))
    expected = r"DummyAuthenticator|without SSL|\b(404|409) (GET|POST|DELETE) "
    wanted = [line for line in text.splitlines()
              if (re.match(r"\[[EWC] ", line) and not re.search(expected, line))
              or re.search(rf"\b500 (GET|POST|DELETE) /hub/api/users/({names})\b", line)]
    return "\n".join(line[:600] for line in wanted[-n:]) or "(no warnings or errors)"


class Findings(list):
    def expect(self, ok, what: str) -> bool:
        if not ok:
            self.append(what)
        return bool(ok)


@pytest.mark.parametrize("rev,daemon", CASES, ids=[f"{rev}-{daemon}" for rev, daemon in CASES])
def test_upgrade_adopts_the_running_server_and_resumes_the_kept_one(rev, daemon, request, tmp_path_factory):
    client = request.getfixturevalue(f"{daemon}_client")  # only the daemon under test must be up
    old_python = CACHE / "upgrade" / rev / "bin" / "python"
    assert old_python.exists(), f"{old_python} is missing: `make setup` (step old-releases) makes it"
    began = time.monotonic()
    work = tmp_path_factory.mktemp(f"upgrade-{rev}-{daemon}")
    env = {"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"}  # tofu is built into the project's cache
    config = hub_config(daemon)
    old = Hub(work, config, env=env, python=str(old_python))
    state_dir = old.state_dir
    # The old hub must really run the old release (not this checkout through sys.path).
    where = subprocess.run([str(old_python), "-c", "import tf_lxd_spawner; print(tf_lxd_spawner.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(old_python.parent.parent)), where
    for user in USERS:  # names every case uses: a leftover of another run would be refused, not ours
        assert not client.instances.exists(f"jupyter-{user}"), f"jupyter-{user} already exists on {daemon}"
    hubs = [old]
    f = Findings()
    mark = {key: f"{key} {uuid.uuid4().hex}" for key in ("work", "notebook", "data")}
    new = None
    new_since = 0
    try:
        # -- the old release --------------------------------------------------------------------
        old.start()
        tokens = {user: old.user_token(user) for user in USERS}
        spawn(old, "runner")
        assert old.run_code("runner", tokens["runner"], write_code({"~/work.txt": mark["work"]})).strip() == "written"
        spawn(old, "keeper")
        assert old.run_code("keeper", tokens["keeper"], write_code(
            {"~/notebook.txt": mark["notebook"], "~/proj/data.txt": mark["data"]})).strip() == "written"
        names = {user: instance_of(old, user) for user in USERS}
        stop(old, "keeper")
        status, keeper_created, keeper_uuid = identity(client, names["keeper"])
        assert status == "Stopped", f"remove = False: the old release's stop must keep {names['keeper']} ({status})"
        old.stop()  # cleanup_servers is False: runner's server goes on running
        status, runner_created, runner_uuid = identity(client, names["runner"])
        assert status == "Running", f"{names['runner']} is {status} after the old hub stopped"
        runner_starts = len([r for r in audit(old, "runner") if r.get("operation") == "start"])
        old_done = time.monotonic()

        # -- this release, on the same database and state_dir ----------------------------------
        shared = RELEASES[rev].get("shared", False)
        new = successor(old, config + (SHARED if shared else ""), env)
        hubs.append(new)
        wait_for(lambda: ports_free(old.port, old.hub_port, old.proxy_api_port), timeout=30,
                 what="the old hub's ports to be free")
        new_since = new.log_path.stat().st_size
        new.start()
        if shared:
            r = new.api("POST", "/groups/class", json={"users": ["keeper"]})
            f.expect(r.status_code == 201, f"group class: {r.status_code} {r.text}")

        # runner: adopted, not spawned again
        try:
            wait_for(lambda: (new.server_model("runner") or {}).get("ready"), timeout=60,
                     what="the new hub to report runner's server ready")
        except AssertionError as e:
            f.append(f"runner's running server was not adopted: {e}; its model: {new.server_model('runner')}")
        model = new.server_model("runner") or {}
        f.expect(model.get("ready") and not model.get("pending"), f"runner's server after the upgrade: {model}")
        starts = [r for r in audit(new, "runner") if r.get("operation") == "start"]
        f.expect(len(starts) == runner_starts,
                 f"the new hub spawned runner's server again instead of adopting it: {starts[runner_starts:]}")
        status, created, uid = identity(client, names["runner"])
        f.expect((status, created, uid) == ("Running", runner_created, runner_uuid),
                 f"runner's container after the upgrade: {status}, created_at {created}, uuid {uid} "
                 f"(was Running, {runner_created}, {runner_uuid})")
        if model.get("ready"):
            got = new.run_code("runner", tokens["runner"], READ.format(rel="~/work.txt"))
            f.expect(got == mark["work"], f"the adopted server reads ~/work.txt as {got!r}")

        # runner: stopped and kept by the new release, then resumed
        try:
            stop(new, "runner")
        except AssertionError as e:
            f.append(f"stopping the adopted server failed: {e}")
        status, created, uid = identity(client, names["runner"])
        f.expect((status, created, uid) == ("Stopped", runner_created, runner_uuid),
                 f"after the new hub stopped runner (remove = False): {status}, created_at {created}, uuid {uid}")
        try:
            spawn(new, "runner")
            status, created, uid = identity(client, names["runner"])
            f.expect((status, created, uid) == ("Running", runner_created, runner_uuid),
                     f"runner's start after the stop did not resume its container: {status}, created_at "
                     f"{created}, uuid {uid} (was {runner_created}, {runner_uuid})")
            got = new.run_code("runner", tokens["runner"], READ.format(rel="~/work.txt"))
            f.expect(got == mark["work"], f"after runner's resume ~/work.txt reads {got!r}"
                     + ("" if RELEASES[rev]["storage"] else " (its first start with a home volume: copy-in)"))
        except AssertionError as e:
            f.append(f"runner's start after the stop failed: {e}")

        # keeper: the kept container is resumed, with the files of its home
        try:
            spawn(new, "keeper")
            status, created, uid = identity(client, names["keeper"])
            f.expect((status, created, uid) == ("Running", keeper_created, keeper_uuid),
                     f"keeper's start did not resume its kept container: {status}, created_at {created}, "
                     f"uuid {uid} (was {keeper_created}, {keeper_uuid})")
            copy_in = "" if RELEASES[rev]["storage"] else " (its first start with a home volume: copy-in)"
            for rel, key in (("~/notebook.txt", "notebook"), ("~/proj/data.txt", "data")):
                got = new.run_code("keeper", tokens["keeper"], READ.format(rel=rel))
                f.expect(got == mark[key], f"after keeper's resume {rel} reads {got!r}{copy_in}")
            if shared:
                device = client.instances.get(names["keeper"]).devices.get(SHARED_DEVICE) or {}
                f.expect(device.get("readonly") == "true", f"the resumed kept server's shared folder: {device}")
                granted = [r.get("changes") for r in audit(new, "keeper") if r.get("operation") == "shared-access"]
                f.expect(granted == [{"upgrade-course": "granted ro"}], f"keeper's shared-access audit: {granted}")
        except AssertionError as e:
            f.append(f"keeper's start failed: {e}")

        for user in USERS:
            f.expect((state_dir / user / "_default" / "audit.jsonl").is_file(),
                     f"{user}'s workspace has no audit.jsonl")

        # Deleting the users through the API removes everything they had.
        for user in USERS:
            if new.server_model(user):
                try:
                    stop(new, user)
                except AssertionError as e:
                    f.append(f"the last stop of {user} failed: {e}")
            r = new.api("DELETE", f"/users/{user}")
            f.expect(r.status_code in (202, 204), f"DELETE /users/{user}: {r.status_code} {r.text}")
        # Their homes are kept (storage_retention_days, new in 0.3.0), renamed: purged by command.
        if shared:  # never deleted with a user: by the operator's command, once nothing mounts it
            wait_for(lambda: not [x for x in leftovers(client, state_dir) if x.startswith("instance")], timeout=180,
                     what="the users' instances to go")
            r = subprocess.run([str(Path(sys.executable).parent / "tf-lxd-spawner"), "-f",
                                str(new.workdir / "jupyterhub_config.py"), "shared", "delete", "upgrade-course", "--force",
                                "--now"], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
            f.expect(r.returncode == 0, f"shared delete upgrade-course: {r.returncode} {r.stdout} {r.stderr}")
        try:
            wait_for(lambda: all(RETAINED in x for x in leftovers(client, state_dir)), timeout=180,
                     what="the users' deletion to remove all but their retained homes")
        except AssertionError:
            f.append(f"after the users were deleted, left on {daemon}: {leftovers(client, state_dir)}")
        for kept in leftovers(client, state_dir):
            r = subprocess.run([str(Path(sys.executable).parent / "tf-lxd-spawner"), "-f",
                                str(new.workdir / "jupyterhub_config.py"),
                                "home", "purge", "--volume", kept.rsplit("/", 1)[-1]], capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=300)
            f.expect(r.returncode == 0, f"home purge of {kept}: {r.returncode} {r.stdout} {r.stderr}")
        f.expect(not leftovers(client, state_dir), f"left after the purge: {leftovers(client, state_dir)}")
        print(f"\n{rev} -> this release on {daemon}: old hub {old_done - began:.0f} s, "
              f"in all {time.monotonic() - began:.0f} s")
    finally:
        left = cleanup(client, hubs, state_dir)
    f.expect(not left, f"left behind after the clean-up (now removed by the test): {left}")
    assert not f, "\n  ".join([f"upgrade from {rev} on {daemon}:", *f, "the new hub's warnings and errors:\n"
                               + (log_excerpt(new, new_since) if new else "(it did not start)")])


def cleanup(client, hubs: list[Hub], state_dir: Path) -> list[str]:
    """Whatever happened: delete the users through a hub that runs (the new one if it got that
    far), stop every hub, then remove what is left of this case on the daemon. Returns what the
    hub's clean-up left (it is gone afterwards)."""
    from pylxd.exceptions import NotFound

    running = [hub for hub in hubs if hub.proc is not None and hub.proc.poll() is None]
    for hub in running[-1:]:
        try:
            users = [user for user in USERS if hub.api("GET", f"/users/{user}").status_code == 200]
            for user in users:
                if hub.server_model(user):
                    hub.api("DELETE", f"/users/{user}/server")
            for user in users:
                try:
                    hub.wait_stopped(user, timeout=120)
                except AssertionError:
                    pass
                hub.api("DELETE", f"/users/{user}")
        except Exception as e:
            print(f"clean-up through the hub: {e}")
    for hub in hubs:
        hub.stop()
    left = leftovers(client, state_dir)
    for inst in client.instances.all():
        try:
            if ours(inst, state_dir):
                if inst.status != "Stopped":
                    inst.stop(force=True, wait=True)
                inst.delete(wait=True)
        except NotFound:
            continue
    delete_volumes(client, f"{state_dir}/")
    still = leftovers(client, state_dir)
    if left or still:
        print(f"clean-up: the hub left {left}; after the sweep: {still}")
    assert not still, f"cannot remove what the test made: {still}"
    return left
