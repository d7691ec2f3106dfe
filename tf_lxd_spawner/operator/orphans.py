"""Find (and on request clean) what the spawner's records and LXD disagree about.

- an orphan instance: LXD has an instance this hub made (its labels carry this state_dir's hub
  id and name a workspace under state_dir) that no workspace's Terraform state holds;
- a stale workspace: a workspace whose state holds an instance LXD no longer has;
- an orphan volume: a home volume this hub made that no volume workspace holds (reported only:
  it holds a user's files).

Ownership is the hub id kept in `<state_dir>/.hub-id`, not the path alone: another hub on another
host may use the same state_dir path. Instances younger than a grace period are left alone (a
spawn puts an instance into LXD before Terraform writes it into the state).

Reporting changes nothing. Cleaning takes each workspace's lock first and looks again under it,
then deletes orphan instances and runs `terraform destroy` in stale workspaces (which only drops
the vanished instance from the state); a workspace that a hub is using right now is skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..homes.shared_folders import SHARED_DIR
from ..homes.storage import VOLUMES_DIR
from ..systems import lxd
from ..systems.terraform import TerraformRunner
from ..systems.workspace import (
    DESTROY_ENV,
    StateUnreadable,
    Workspace,
    WorkspaceBusy,
    existing_hub_id,
)

DEFAULT_GRACE = 600.0


@dataclass
class Report:
    orphan_instances: list[dict] = field(default_factory=list)  # {name, location, workspace}
    stale_workspaces: list[dict] = field(default_factory=list)  # {workspace, instance}
    #: Home volumes this hub made that no volume workspace holds (a user deleted with
    #: delete_storage = False, or a workspace lost): reported, never deleted by clean (user data).
    orphan_volumes: list[dict] = field(default_factory=list)  # {name, pool, location, user, workspace}
    skipped: list[dict] = field(default_factory=list)  # {name, reason}: ours, but not judged now
    actions: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.orphan_instances and not self.stale_workspaces and not self.orphan_volumes


def _state_instances(ws: Workspace) -> set[str]:
    names = set()
    for res in ws.state_resources():
        if res.get("type") != "lxd_container":
            continue
        for inst in res.get("instances", []):
            name = (inst.get("attributes") or {}).get("name")
            if name:
                names.add(name)
    return names


def _state_volumes(state_dir: Path) -> set[tuple[str, str]]:
    """(pool, name) of every volume a volume workspace's state holds."""
    held = set()
    found = [*state_dir.glob(f"*/{VOLUMES_DIR}/*/terraform.tfstate"),
             *state_dir.glob(f"{SHARED_DIR}/*/terraform.tfstate")]
    for path in sorted(found):
        try:
            resources = Workspace(path.parent).state_resources()
        except StateUnreadable:
            continue
        for res in resources:
            if res.get("type") == "lxd_volume":
                for inst in res.get("instances", []):
                    attrs = inst.get("attributes") or {}
                    held.add((attrs.get("pool", ""), attrs.get("name", "")))
    return held


def _workspaces(state_dir: Path) -> list[Workspace]:
    return [Workspace(p.parent) for p in sorted(state_dir.glob("*/*/terraform.tfstate"))]


def _age(created_at: str, now: dt.datetime) -> float:
    """Seconds since LXD's created_at (RFC 3339, nanoseconds); 0 when it cannot be read, so an
    instance of unknown age counts as young."""
    try:
        stamp = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", created_at).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return (now - stamp).total_seconds()


async def scan(state_dir: str | Path, endpoint: lxd.Endpoint, grace: float = DEFAULT_GRACE) -> Report:
    state_dir = Path(os.path.abspath(state_dir))
    ours = await asyncio.to_thread(existing_hub_id, state_dir)
    instances = await asyncio.to_thread(lxd.managed_instances, endpoint)
    workspaces = await asyncio.to_thread(_workspaces, state_dir)
    report = Report()
    held = {}
    for ws in workspaces:
        try:
            names = await asyncio.to_thread(_state_instances, ws)
        except StateUnreadable as e:
            report.skipped.append({"name": str(ws.path), "reason": str(e)})
            continue
        for name in names:
            held[name] = ws
    live = {i["name"] for i in instances}
    prefix = str(state_dir) + os.sep
    now = dt.datetime.now(dt.timezone.utc)
    for inst in instances:
        config = inst.get("config") or {}
        path = config.get(lxd.WORKSPACE_KEY, "")
        if not ours or config.get(lxd.HUB_ID_KEY) != ours or not path.startswith(prefix):
            continue  # made by another hub (or by hand): not ours to judge
        if inst["name"] in held:
            continue
        age = _age(inst.get("created_at") or "", now)
        if age < grace:
            report.skipped.append({"name": inst["name"], "reason": f"created {age:.0f} s ago (grace {grace:g} s): "
                                   "a spawn may be making it"})
            continue
        report.orphan_instances.append({"name": inst["name"], "location": inst.get("location") or "",
                                        "workspace": path})
    for name, ws in sorted(held.items()):
        if name not in live:
            report.stale_workspaces.append({"workspace": str(ws.path), "instance": name})
    held_volumes = await asyncio.to_thread(_state_volumes, state_dir)
    for vol in await lxd.managed_volumes(endpoint):
        path = vol.config.get(lxd.WORKSPACE_KEY, "")
        if ours and vol.config.get(lxd.HUB_ID_KEY) == ours and path.startswith(prefix) \
                and (vol.pool, vol.name) not in held_volumes:
            report.orphan_volumes.append({"name": vol.name, "pool": vol.pool, "location": vol.location,
                                          "user": vol.config.get("user.tf-lxd-spawner.user", ""), "workspace": path})
    return report


async def clean(report: Report, endpoint: lxd.Endpoint, runner: TerraformRunner) -> Report:
    for inst in report.orphan_instances:
        ws = Workspace(inst["workspace"])
        try:
            async with ws.lock(create=False):
                # Look again under the lock: a spawn that held it may have finished meanwhile.
                if inst["name"] in await asyncio.to_thread(_state_instances, ws):
                    report.actions.append(f"skipped {inst['name']}: its workspace holds it now")
                    continue
                await lxd.delete_instance(endpoint, inst["name"])
                report.actions.append(f"deleted orphan instance {inst['name']}")
        except WorkspaceBusy:
            report.actions.append(f"skipped {inst['name']}: its workspace {ws.path} is in use by a hub right now")
    for stale in report.stale_workspaces:
        ws = Workspace(stale["workspace"])
        try:
            async with ws.lock():
                await runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
                await runner.run("destroy", cwd=ws.path, env=DESTROY_ENV,
                                 log_path=ws.run_log("destroy"))
                await ws.audit({"operation": "gc", "instance": stale["instance"], "outcome": "ok",
                                "note": "instance had vanished; state cleared"})
            report.actions.append(f"cleared stale workspace {ws.path}")
        except WorkspaceBusy:
            report.actions.append(f"skipped {ws.path}: in use by a hub right now")
    return report


def render(report: Report) -> str:
    lines = []
    for inst in report.orphan_instances:
        lines.append(f"orphan instance\t{inst['name']}\t{inst['location']}\t{inst['workspace']}")
    for stale in report.stale_workspaces:
        lines.append(f"stale workspace\t{stale['workspace']}\t{stale['instance']}")
    for vol in report.orphan_volumes:
        lines.append(f"orphan volume\t{vol['pool']}/{vol['name']}\t{vol['location']}\tuser {vol['user']!r}\t"
                     "kept (it holds a user's files): delete it with the daemon's client when sure")
    lines += [f"skipped\t{s['name']}\t{s['reason']}" for s in report.skipped]
    lines += [f"done\t{a}" for a in report.actions]
    return "\n".join(lines) if lines else "no orphans"


def as_json(report: Report) -> str:
    return json.dumps({"orphan_instances": report.orphan_instances, "stale_workspaces": report.stale_workspaces,
                       "orphan_volumes": report.orphan_volumes,
                       "skipped": report.skipped, "actions": report.actions})
