"""Find (and on request clean) what the spawner's records and LXD disagree about.

- an orphan instance: LXD has an instance this state_dir's spawner made (its labels name a
  workspace under state_dir) that no workspace's Terraform state holds;
- a stale workspace: a workspace whose state holds an instance LXD no longer has.

Reporting changes nothing. Cleaning deletes orphan instances and runs `terraform destroy` in
stale workspaces (which only drops the vanished instance from the state); a workspace that a
hub is using right now (its lock is held) is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import lxd
from .terraform import TerraformRunner
from .workspace import DESTROY_ENV, Workspace, WorkspaceBusy



@dataclass
class Report:
    orphan_instances: list[dict] = field(default_factory=list)  # {name, location, workspace}
    stale_workspaces: list[dict] = field(default_factory=list)  # {workspace, instance}
    actions: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.orphan_instances and not self.stale_workspaces


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


def _workspaces(state_dir: Path) -> list[Workspace]:
    return [Workspace(p.parent) for p in sorted(state_dir.glob("*/*/terraform.tfstate"))]


def _managed_instances(endpoint: lxd.Endpoint) -> list[dict]:
    def fetch(client):
        raw = client.api.instances.get(params={"recursion": 1}).json().get("metadata") or []
        return [i for i in raw if (i.get("config") or {}).get(lxd.MANAGED_KEY) == "true"]

    return lxd._call(endpoint, fetch)


async def scan(state_dir: str | Path, endpoint: lxd.Endpoint) -> Report:
    state_dir = Path(os.path.abspath(state_dir))
    instances = await asyncio.to_thread(_managed_instances, endpoint)
    workspaces = await asyncio.to_thread(_workspaces, state_dir)
    held = {}
    for ws in workspaces:
        for name in await asyncio.to_thread(_state_instances, ws):
            held[name] = ws
    report = Report()
    live = {i["name"] for i in instances}
    prefix = str(state_dir) + os.sep
    for inst in instances:
        path = (inst.get("config") or {}).get(lxd.WORKSPACE_KEY, "")
        if not path.startswith(prefix):
            continue  # made by another hub (or by hand): not ours to judge
        if inst["name"] not in held:
            report.orphan_instances.append({"name": inst["name"], "location": inst.get("location") or "",
                                            "workspace": path})
    for name, ws in sorted(held.items()):
        if name not in live:
            report.stale_workspaces.append({"workspace": str(ws.path), "instance": name})
    return report


async def clean(report: Report, endpoint: lxd.Endpoint, runner: TerraformRunner) -> Report:
    for inst in report.orphan_instances:
        await lxd.delete_instance(endpoint, inst["name"])
        report.actions.append(f"deleted orphan instance {inst['name']}")
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
    lines += [f"done\t{a}" for a in report.actions]
    return "\n".join(lines) if lines else "no orphans"


def as_json(report: Report) -> str:
    return json.dumps({"orphan_instances": report.orphan_instances, "stale_workspaces": report.stale_workspaces,
                       "actions": report.actions})
