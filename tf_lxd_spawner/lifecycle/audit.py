"""Audit record assembly: what each start, stop and clean-up writes to the workspace's
audit.jsonl, and which binary, provider and daemon it ran with."""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

from ..systems import lxd
from ..systems.terraform import Terraform
from ..systems.workspace import Workspace

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner

#: Per binary (resolved path): its version, probed once per hub process.
_tool_versions: dict[str, str] = {}


#: Per daemon endpoint: which daemon and version answered GET /1.0 last (for the audit).
_daemons: dict[lxd.Endpoint, dict] = {}


async def read_daemon(endpoint: lxd.Endpoint, backend: str) -> dict:
    """GET /1.0, remembering which daemon and version answered at that endpoint."""
    info = await lxd.server_info(endpoint)
    env = info.get("environment") or {}
    # A daemon says what it is only to a trusted client: otherwise record what is configured.
    _daemons[endpoint] = {"backend": env.get("server") or backend, "version": env.get("server_version", ""),
                          "endpoint": endpoint.where}
    return info


async def versions(tf: Terraform, ws: Workspace, endpoint: lxd.Endpoint, backend: str,
                   log: logging.Logger) -> dict:
    """Which binary, provider and daemon ran, for an audit record. Never raises: a failing
    probe must not hide the error of the operation being recorded (a failure is simply not
    cached)."""
    binary = shutil.which(tf.binary) or tf.binary
    found = {"terraform_binary": binary, "terraform_version": "", "providers": {},
             "daemon": _daemons.get(endpoint)}
    try:
        if binary not in _tool_versions:
            info = await tf.runner.version()
            if info.get("terraform_version"):
                _tool_versions[binary] = info["terraform_version"]
        found["terraform_version"] = _tool_versions.get(binary, "")
        found["providers"] = await asyncio.to_thread(ws.provider_versions)
        if found["daemon"] is None:
            await read_daemon(endpoint, backend)
            found["daemon"] = _daemons.get(endpoint)
    except Exception as e:
        log.warning("Could not read tool versions for the audit: %s", e)
    return found


def server_fields(spawner: LxdSpawner) -> dict:
    """Who and what a record is about."""
    return {"user": spawner.user.name, "server": spawner.name or "", "instance": spawner.instance}


def start_record(spawner: LxdSpawner) -> dict:
    profile = {"profile": spawner.profile} if getattr(spawner, "profile", "") else {}
    return {"operation": "start", **server_fields(spawner), "image": spawner.chosen_image, **profile}


def stop_record(who: dict, started: dict, member: str, image: str, reason: str, kept: bool) -> dict:
    """`started`: the inputs the last start saved (terraform.tfvars.json): the record describes
    what ran (its member and image first), not today's configuration."""
    return {"operation": "stop", **who, "member": member or started.get("target") or "",
            "image": started.get("image") or image, "kept": kept, **({"reason": reason} if reason else {})}
