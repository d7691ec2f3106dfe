"""A way back for every home (issue 27), through a real JupyterHub on LXD + terraform and on
Incus + tofu, with the snapshots service run by the hub and the operator's `tf-lxd-spawner home`
commands run as an operator would (the hub's config file):

- snapshots by default: the volume carries the schedule; the user sees the snapshots read-only
  in ~/.snapshots, taken while the server runs too, and copies a file back; the user restores
  the whole home through the service's REST API (server stopped, snapshot first, restored,
  started again, audited);
- the operator restores one path, grows the quota (a later start keeps it), exports the home,
  imports it for another user;
- deleting the user keeps the home (retained, renamed): a new user of the same name starts
  empty, `home undelete` gives the kept home to another user, `home purge` deletes one;
- a home at its quota still starts, warns on the spawn page, and its user can delete files;
- the hub itself purges a deleted user's home once its retention is over.

One hub per daemon; the scenarios run side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import CACHE, IMAGE, free_port
from hubtools import Control, Hub, control_hook, delete_volumes, shut_down
from test_no_loss import Ctx, Findings

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}
CLI = [str(Path(sys.executable).parent / "tf-lxd-spawner")]


def hub_config(daemon: str, work: Path, service_port: int) -> str:
    return f"""
import sys as _sys
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_capacity = "200MiB"
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
c.JupyterHub.services.append({{"name": "home-snapshots", "url": "http://127.0.0.1:{service_port}",
    "command": [_sys.executable, "-m", "tf_lxd_spawner.snapshot_service", "-f", "{work}/jupyterhub_config.py"]}})
c.JupyterHub.load_roles.append({{"name": "home-snapshots", "services": ["home-snapshots"],
                                 "scopes": ["read:users", "servers"]}})
c.JupyterHub.load_roles.append({{"name": "user", "scopes": ["self", "access:services!service=home-snapshots"]}})
c.LxdSpawner.storage_purge_interval = 5

from tf_lxd_spawner import LxdSpawner as _LxdSpawner
from traitlets import default as _default

class _Spawner(_LxdSpawner):
    # User briefuser's home is kept 20 s after the user is deleted (read by delete_forever,
    # when no pre_spawn_hook runs): the hub's own purge deletes it.
    @_default("storage_retention_days")
    def _brief(self):
        return 20 / 86400 if self.user.name == "briefuser" else 14.0

c.JupyterHub.spawner_class = _Spawner
""" + control_hook(work / "control.json")


@pytest.fixture(scope="module", params=list(BINARY))
def homes_hub(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")
    work = tmp_path_factory.mktemp(f"homes-{daemon}")
    port = free_port()
    hub = Hub(work, hub_config(daemon, work, port), env={"PATH": f"{CACHE / 'bin'}:{os.environ['PATH']}"})
    hub.start()
    ctx = Ctx(daemon, client, hub, Control(work / "control.json"), work)
    try:
        yield ctx
    finally:
        try:
            shut_down(hub, client)
        finally:
            delete_volumes(client, f"{hub.state_dir}/")


def home(ctx: Ctx, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{CACHE / 'bin'}:{os.environ['PATH']}"}
    r = subprocess.run([*CLI, "-f", str(ctx.work / "jupyterhub_config.py"), "home", *args], capture_output=True,
                       text=True, env=env, timeout=600)
    if check:
        assert r.returncode == 0, f"home {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def volume(ctx: Ctx, name: str):
    from pylxd.exceptions import NotFound
    try:
        return ctx.client.storage_pools.get("default").volumes.get("custom", name)
    except NotFound:
        return None


def service(ctx: Ctx, user: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{ctx.hub.url}/services/home-snapshots/{path}",
                            headers={"Authorization": f"token {ctx.token(user)}"}, timeout=600, **kw)


def user_restores(ctx: Ctx) -> Findings:
    """Snapshots in ~/.snapshots, a file copied back by the user, the whole home restored by the
    user through the service."""
    f, user = Findings(), "snapper"
    ctx.spawn(user)
    ctx.write(user, "~/notes.txt", "version 1")
    vol = volume(ctx, f"home-{user}")
    f.expect(vol is not None and vol.config.get("snapshots.schedule") == "@daily"
             and vol.config.get("snapshots.expiry") == "2w", f"schedule on the volume: {vol and vol.config}")
    snap = home(ctx, "snapshot", "--user", user).stdout.strip()
    ctx.write(user, "~/notes.txt", "version 2")
    seen = ctx.run(user, "import os; print(sorted(os.listdir(os.path.expanduser('~/.snapshots'))))")
    f.expect(snap in seen, f"snapshot {snap} taken while running is in ~/.snapshots: {seen}")
    copied = ctx.run(user, "import os, shutil\nh = os.path.expanduser('~')\n"
                           f"shutil.copy(h + '/.snapshots/{snap}/notes.txt', h + '/copied.txt')\n"
                           "print(open(h + '/copied.txt').read())\n"
                           f"try:\n    open(h + '/.snapshots/{snap}/x', 'w')\n    print('writable')\n"
                           "except OSError as e:\n    print('read-only', e.errno)")
    f.expect("version 1" in copied and "read-only" in copied, f"copy back, snapshot read-only: {copied!r}")
    listed = service(ctx, user, "GET", "api/snapshots")
    f.expect(listed.status_code == 200 and snap in [s["name"] for s in listed.json().get("snapshots", [])],
             f"service lists the snapshots: {listed.status_code} {listed.text[:300]}")
    page = service(ctx, user, "GET", "")
    f.expect(page.status_code == 200 and snap in page.text, f"service page: {page.status_code}")
    restored = service(ctx, user, "POST", "api/restore", json={"snapshot": snap})
    f.expect(restored.status_code == 200 and restored.json().get("restarted") == [""],
             f"restore through the service: {restored.status_code} {restored.text[:300]}")
    ctx.hub.wait_ready(user, timeout=300)
    f.expect(ctx.read(user, "~/notes.txt") == "version 1", "the home is back as in the snapshot")
    before = restored.json().get("before", "")
    f.expect(before.startswith("before-restore-") and before in home(ctx, "snapshots", "--user", user).stdout,
             f"a snapshot of the home as it was before: {before!r}")
    audit = [json.loads(line) for line in (ctx.hub.state_dir / user / "_volumes" / f"home-{user}" / "audit.jsonl")
             .read_text().splitlines()]
    f.expect(any(r["operation"] == "restore" and r.get("by") == f"user {user}" and r["outcome"] == "ok"
                 for r in audit), "the user's restore is audited")
    other = service(ctx, "nosy", "POST", "api/restore", json={"snapshot": snap})
    f.expect(other.status_code in (400, 404, 409) and f"home-{user}" not in other.text,
             f"another user reaches only their own home: {other.status_code} {other.text[:200]}")
    ctx.stop(user)
    return f


def operator_commands(ctx: Ctx) -> Findings:
    """Restore one path, grow, export; the user deleted (retained), made again (empty), the kept
    home given to another user, an export imported for a third, a retained home purged."""
    f, user = Findings(), "opsuser"
    ctx.spawn(user)
    ctx.write(user, "~/keep.txt", "precious")
    ctx.stop(user)
    snap = home(ctx, "snapshot", "--user", user).stdout.strip()
    ctx.spawn(user)
    ctx.run(user, "import os; os.remove(os.path.expanduser('~/keep.txt'))")
    r = home(ctx, "restore", "--user", user, "--snapshot", snap, "--path", "keep.txt")
    f.expect(ctx.read(user, "~/keep.txt") == "precious", f"one path restored while running: {r.stdout}")
    whole = home(ctx, "restore", "--user", user, "--snapshot", snap, check=False)
    f.expect(whole.returncode == 1 and "stop" in whole.stderr, f"whole restore refused while running: {whole.stderr}")
    ctx.stop(user)
    home(ctx, "grow", "--user", user, "--size", "300MiB")
    vol = volume(ctx, f"home-{user}")
    f.expect(vol.config.get("size") == "300MiB", f"grown: {vol.config.get('size')}")
    ctx.spawn(user)  # storage_capacity (200MiB) is smaller: kept at 300MiB, not refused
    f.expect(volume(ctx, f"home-{user}").config.get("size") == "300MiB", "the grown quota stays")
    ctx.stop(user)
    listed = home(ctx, "list").stdout
    f.expect(f"default/home-{user}" in listed and "300MiB" in listed, f"home list: {listed}")
    export = ctx.work / f"{user}.tar.gz"
    home(ctx, "export", "--user", user, "--file", str(export))
    f.expect(export.stat().st_size > 0 and oct(export.stat().st_mode & 0o777) == "0o600", "export file, 0600")

    r = ctx.hub.api("DELETE", f"/users/{user}")
    f.expect(r.status_code == 204, f"delete user: {r.status_code}")
    retained = [v for v in json.loads(home(ctx, "list", "--json").stdout)
                if v["state"].startswith("retained") and v["user"] == user]  # hub_purges' user may have one too
    f.expect(len(retained) == 1, f"retained: {retained}")
    kept = retained[0]["volume"] if retained else ""
    f.expect(volume(ctx, f"home-{user}") is None and kept and volume(ctx, kept) is not None,
             "the home was renamed out of the way, not deleted")
    ctx.hub.api("POST", f"/users/{user}")
    ctx.tokens.pop(user, None)
    ctx.spawn(user)
    f.expect(ctx.read(user, "~/keep.txt") == "<no file>", "a new user of the same name starts with an empty home")
    ctx.stop(user)

    heir = "heiruser"
    ctx.hub.api("POST", f"/users/{heir}")
    home(ctx, "undelete", "--volume", kept, "--user", heir)
    ctx.spawn(heir)
    f.expect(ctx.read(heir, "~/keep.txt") == "precious", "the retained home given to another user")
    ctx.stop(heir)

    third = "importuser"
    ctx.hub.api("POST", f"/users/{third}")
    home(ctx, "import", "--user", third, "--file", str(export))
    ctx.spawn(third)
    f.expect(ctx.read(third, "~/keep.txt") == "precious", "an exported home imported for another user")
    ctx.stop(third)
    again = home(ctx, "import", "--user", third, "--file", str(export), check=False)
    f.expect(again.returncode == 1 and "already" in again.stderr, f"import over a home refused: {again.stderr}")

    ctx.hub.api("DELETE", f"/users/{user}")
    gone = [v["volume"] for v in json.loads(home(ctx, "list", "--json").stdout)
            if v["state"].startswith("retained") and v["user"] == user]
    f.expect(len(gone) == 1, f"the second deletion retained too: {gone}")
    if gone:
        home(ctx, "purge", "--volume", gone[0])
        f.expect(volume(ctx, gone[0]) is None, "purged")
        records = [json.loads(line) for p in (ctx.hub.state_dir / user / "_volumes").glob("*.deleted-*/audit.jsonl")
                   for line in p.read_text().splitlines()]
        f.expect(any(r["operation"] == "volume-purge" for r in records), "the purge is audited")
    purged = [line for line in home(ctx, "purge").stdout.splitlines() if line.startswith("purged ")]
    # Only what is due goes: hub_purges' user's home (20 s) may be; none of this scenario's (14 days).
    f.expect(all("briefuser" in line for line in purged), f"nothing of this scenario's due yet: {purged}")
    return f


def full_home(ctx: Ctx) -> Findings:
    """A home at its quota: the server starts again, the spawn page warns, files can be deleted."""
    f, user = Findings(), "fulluser"
    ctx.spawn(user)
    filled = ctx.hub.run_code(user, ctx.token(user), "import os\np = os.path.expanduser('~/big')\ntry:\n    with open(p, 'wb') as out:\n"
                           "        while True:\n            out.write(b'x' * 1048576)\n            out.flush()\n"
                           "except OSError as e:\n    print('full', e.errno)", timeout=120)
    f.expect("full" in filled, f"filled: {filled}")
    ctx.stop(user)
    r = ctx.hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    events = " ".join(e.get("message", "") for e in ctx.hub.progress_events(user))
    ctx.hub.wait_ready(user, timeout=300)
    f.expect("full" in events, f"the spawn page warns: {events[-500:]}")
    freed = ctx.run(user, "import os; os.remove(os.path.expanduser('~/big')); open(os.path.expanduser('~/ok'), 'w')"
                          ".write('x'); print('freed')")
    f.expect("freed" in freed, f"the user deletes files and writes again: {freed}")
    used = ctx.hub.metrics().get(("tf_lxd_spawner_home_used_bytes", (("user", user), ("volume", f"home-{user}"))), 0)
    f.expect(used > 150 * 2**20, f"the home's use is a metric: {used}")
    ctx.stop(user)
    return f


def hub_purges(ctx: Ctx) -> Findings:
    """A deleted user's home is kept for its retention period, then the hub purges it."""
    f, user = Findings(), "briefuser"
    ctx.spawn(user)
    ctx.write(user, "~/x.txt", "x")
    ctx.stop(user)
    ctx.hub.api("DELETE", f"/users/{user}")
    kept = ctx.volumes_of(user)
    f.expect(len(kept) == 1 and "-del-" in kept[0], f"kept under a new name: {kept}")
    deadline = time.monotonic() + 120
    while ctx.volumes_of(user) and time.monotonic() < deadline:
        time.sleep(2)
    f.expect(not ctx.volumes_of(user), "purged by the hub once its retention was over")
    records = [json.loads(line) for p in (ctx.hub.state_dir / user / "_volumes").glob("*.deleted-*/audit.jsonl")
               for line in p.read_text().splitlines()]
    f.expect([r["operation"] for r in records if r["operation"].startswith("volume-")][-2:] ==
             ["volume-retain", "volume-purge"], f"retained, then purged, audited: {records}")
    return f


SCENARIOS = [user_restores, operator_commands, full_home, hub_purges]


@pytest.fixture(scope="module")
def findings(homes_hub):
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        futures = {s.__name__: pool.submit(s, homes_hub) for s in SCENARIOS}
    return {name: fut for name, fut in futures.items()}


@pytest.mark.parametrize("scenario", [s.__name__ for s in SCENARIOS])
def test_scenario(findings, scenario, homes_hub):
    result = findings[scenario].result()
    assert not result, f"{scenario} on {homes_hub.daemon}: " + "; ".join(result) + "\n" + homes_hub.hub.log_tail(40)
