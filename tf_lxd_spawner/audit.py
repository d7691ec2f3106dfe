"""Audit record assembly: what each start, stop and clean-up writes to the workspace's
audit.jsonl, and which binary, provider and daemon it ran with."""

from __future__ import annotations

import asyncio
import shutil

from . import lxd
from .workspace import Workspace

#: Per binary (resolved path): its version, probed once per hub process.
_tool_versions: dict[str, str] = {}


async def read_daemon(spawner) -> dict:
    """GET /1.0, remembering on the spawner which daemon and version answered (for the audit)."""
    info = await lxd.server_info(spawner.endpoint)
    env = info.get("environment") or {}
    # A daemon says what it is only to a trusted client: otherwise record what is configured.
    spawner.daemon = {"backend": env.get("server") or spawner.backend, "version": env.get("server_version", ""),
                      "endpoint": spawner.endpoint.where}
    return info


async def versions(spawner, ws: Workspace) -> dict:
    """Which binary, provider and daemon ran, for an audit record. Never raises: a failing
    probe must not hide the error of the operation being recorded (a failure is simply not
    cached)."""
    binary = shutil.which(spawner.terraform_binary) or spawner.terraform_binary
    found = {"terraform_binary": binary, "terraform_version": "", "providers": {}, "daemon": spawner.daemon}
    try:
        if binary not in _tool_versions:
            info = await spawner.runner.version()
            if info.get("terraform_version"):
                _tool_versions[binary] = info["terraform_version"]
        found["terraform_version"] = _tool_versions.get(binary, "")
        found["providers"] = await asyncio.to_thread(ws.provider_versions)
        if spawner.daemon is None:
            await read_daemon(spawner)
            found["daemon"] = spawner.daemon
    except Exception as e:
        spawner.log.warning("Could not read tool versions for the audit: %s", e)
    return found


def server_fields(spawner) -> dict:
    """Who and what a record is about."""
    return {"user": spawner.user.name, "server": spawner.name or "", "instance": spawner.instance}


def start_record(spawner) -> dict:
    profile = {"profile": spawner.profile} if getattr(spawner, "profile", "") else {}
    return {"operation": "start", **server_fields(spawner), "image": spawner.chosen_image, **profile}


def stop_record(spawner, started: dict, reason: str, kept: bool) -> dict:
    """`started`: the inputs the last start saved (terraform.tfvars.json): the record describes
    what ran, not this spawner object, which after a hub restart knows only the configuration."""
    return {"operation": "stop", **server_fields(spawner),
            "member": spawner.member or started.get("target") or "",
            "image": started.get("image") or spawner.chosen_image,
            "kept": kept, **({"reason": reason} if reason else {})}
