"""A user's persistent volume: an LXD custom storage volume made by the storage module, in a
workspace of its own (`<state_dir>/<user>/_volumes/<volume>/`, with its own audit.jsonl), so
no server's `destroy` can touch it. It outlives every server and goes only with the user
(or, for a per-server volume, with its named server): `delete`.

No plan that destroys or replaces the volume is ever applied, except by `delete`: a plan is
made first and read; a change of pool or member (which the provider can only do by replacing
the volume) is refused with a message saying what to do, and a smaller size is refused before
Terraform runs. A grown size is an in-place update.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

from . import audit, initialising, lxd, naming, provider
from . import state as server_state
from .errors import SpawnError
from .terraform import planned_replacements
from .workspace import Workspace, _env, write_private

VOLUMES_DIR = "_volumes"  # '_' is escaped in server directory names: no server can be called this
APPLIED_STAMP = ".applied.sha256"
PLAN_FILE = "volume.tfplan"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]i?b?|b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}


@dataclasses.dataclass(frozen=True)
class Volume:
    """One user's (or one server's) home volume, where it is and where it is mounted."""
    name: str
    pool: str
    size: str
    mount_path: str
    workspace: Path
    shared: bool  # all of the user's servers mount it (the name template has no {servername})


def size_bytes(size: str) -> int | None:
    """'10GiB' -> 10737418240 (LXD's units: kB/MB/GB decimal, KiB/MiB/GiB binary); None when empty."""
    if not size:
        return None
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"{size!r} is not a size (e.g. 10GiB, 500MiB)")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    binary = "i" in unit
    factor = 1024 ** ("kmgtpe".index(unit[0]) + 1) if binary else _UNITS[unit[:1]]
    return int(number * factor)


def volume_for(spawner) -> Volume:
    """Which volume this server mounts, from the storage traits."""
    template = spawner.storage_name_template
    shared = "{servername}" not in template
    name = naming.instance_name(template if not shared else template.replace("{servername}", ""),
                                spawner.user.name, "" if shared else (spawner.name or ""))
    ws = Path(os.path.abspath(spawner.state_dir)) / naming.path_component(spawner.user.name) / VOLUMES_DIR / name
    mount = (spawner.storage_mount_path or spawner.account["home"]).format(username=spawner.account["name"])
    if not mount.startswith("/") or "/../" in f"{mount}/":
        raise SpawnError(f"storage_mount_path {spawner.storage_mount_path!r} must be an absolute path", reason="config")
    return Volume(name, spawner.storage_pool, spawner.storage_capacity, mount, ws, shared)


async def recorded_volume(spawner, vol: Volume) -> Volume:
    """A per-server volume is the one the server's record names, when that differs from what the
    template gives now (the server was renamed, or the template changed): the server keeps its
    files. A shared volume is always the template's."""
    if vol.shared:
        return vol
    record = await asyncio.to_thread(server_state.read, spawner.workspace_dir().path)
    if record is None or not record.volume or Path(record.volume) == vol.workspace:
        return vol
    recorded = await asyncio.to_thread(from_workspace, record.volume)
    if recorded is None or recorded.shared:
        return vol
    return dataclasses.replace(vol, name=recorded.name, workspace=recorded.workspace)


def from_workspace(path: str | Path) -> Volume | None:
    """The volume a volume workspace made (from its inputs), None when it has none. Blocking."""
    inputs = Workspace(path).saved_inputs()
    if not inputs.get("name"):
        return None
    server = (inputs.get("labels") or {}).get("server", "")
    return Volume(inputs["name"], inputs.get("pool") or "default", inputs.get("size") or "", "", Path(path),
                  shared=not server)


def render(module_source: str, inputs: list[str], provider_settings: dict) -> str:
    """The storage workspace's root main.tf: provider and module call, names only."""
    return _env.get_template("storage.tf.j2").render(module_source=module_source, inputs=sorted(inputs),
                                                     provider=provider_settings)


def _digest(main_tf: str, tfvars: dict) -> str:
    return hashlib.sha256((main_tf + json.dumps(tfvars, sort_keys=True)).encode()).hexdigest()


def _applied(ws: Workspace) -> str:
    try:
        return (ws.path / APPLIED_STAMP).read_text().strip()
    except OSError:
        return ""


async def location(spawner, vol: Volume) -> str | None:
    """The member the volume is on (None: not made yet; "" on a standalone server or a pool every
    member shares)."""
    state = await asyncio.to_thread(Workspace(vol.workspace).state_outputs)
    if not state.get("name"):
        return None
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=state.get("location") or None)
    if info is None:
        return None
    return info.location


async def ensure(spawner, vol: Volume, target: str | None) -> str:
    """Make the volume on `target` (a member, or None), or update it in place; returns the
    member it is on. Runs under the volume workspace's own lock (a user's servers share it)."""
    ws = Workspace(vol.workspace)
    sp = spawner
    async with ws.lock():
        inputs = {
            "name": vol.name, "pool": vol.pool, "size": vol.size or None,
            "config": {str(k): str(v) for k, v in (sp.storage_config or {}).items()},
            "target": target or None,
            "labels": {"managed": "true", "user": sp.user.name, "server": "" if vol.shared else (sp.name or ""),
                       "workspace": str(vol.workspace), "hub_id": await sp.owner_id(), "kind": "home"},
        }
        existing = await asyncio.to_thread(ws.state_outputs)
        if existing.get("name"):
            inputs["target"] = existing.get("location") if existing.get("location") not in ("", "none") else None
            await refuse_shrinking(sp, vol)
        provider_settings = await asyncio.to_thread(
            provider.settings, sp.provider_refresh_interval, sp.endpoint_url, sp.lxd_cert,
            sp.lxd_key, sp.lxd_verify, sp.state_dir)
        main_tf = render(sp.storage_module_source, list(inputs), provider_settings)
        digest = _digest(main_tf, inputs)
        if existing.get("name") and await asyncio.to_thread(_applied, ws) == digest:
            info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target=inputs["target"])
            if info is not None:
                return info.location  # as applied last time, and still there: no Terraform run
        needs_init = await ws.prepare(main_tf, inputs)
        record = {"operation": "volume", "user": sp.user.name, "server": sp.name or "", "volume": vol.name,
                  "pool": vol.pool, "size": vol.size, "target": inputs["target"] or ""}
        try:
            if needs_init:
                await initialising.initialise(sp, ws, main_tf)
            created = not existing.get("name")
            if created:
                await refuse_existing_volume(sp, vol, inputs["target"])
            if created and not await asyncio.to_thread(ws.state_resources):
                # Nothing in the state: the apply can only create, so no plan is checked first
                # (one terraform run instead of two for a new user's volume).
                await sp.run_terraform(ws, "apply")
                plan = None
            else:
                plan = await sp.runner.run("plan", f"-out={PLAN_FILE}", cwd=ws.path, log_path=ws.run_log("plan"))
                await ws.seal()
            replaced = planned_replacements(plan.events, "lxd_volume") if plan else []
            if replaced:
                raise SpawnError(
                    f"your home volume {vol.name} would have to be replaced (and emptied) to match the "
                    "storage settings; nothing was changed. Ask the administrator.", reason="storage",
                    log_message=f"the plan for volume {vol.name} replaces it ({', '.join(replaced)}): "
                                f"storage_pool or the member changed (it is on pool {existing.get('pool') or vol.pool!r}"
                                f", member {existing.get('location') or '-'!r}); restore the setting, or move the "
                                "volume with the daemon (lxc storage volume move) and its workspace's state")
            # Provider v1.5.0 writes a volume's whole config back on an update, without the
            # daemon's volatile.idmap.* record of how its files are shifted: the next start would
            # shift them again (uid 1000 would become 101000). Read them first, put them back.
            kept = {} if created else await _idmap_record(sp, vol, inputs["target"])
            if plan:
                await sp.run_terraform(ws, "apply", PLAN_FILE)
            if kept:
                await lxd.patch_volume_config(sp.endpoint, vol.pool, vol.name, inputs["target"], kept)
        except Exception as e:
            await ws.audit({**record, "outcome": "failed", "error": getattr(e, "detail", str(e)),
                            **await audit.versions(sp, ws)})
            raise
        finally:
            await asyncio.to_thread(lambda: (ws.path / PLAN_FILE).unlink(missing_ok=True))
        await asyncio.to_thread(write_private, ws.path / APPLIED_STAMP, digest)
        # Provider v1.5.0 reports only the target it was given: ask the daemon where it is (made
        # without a target in a cluster, the member that took the request holds it).
        info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target=inputs["target"])
        where = info.location if info else ""
        await ws.audit({**record, "action": "created" if created else "updated", "outcome": "ok",
                        "location": where, **await audit.versions(sp, ws)})
        if created:
            sp.progress_bar.emit(28, f"Made your home volume {vol.name} ({vol.size or 'no quota'}): it starts "
                                     "empty and keeps your files across every stop")
        return where


_first_attach_locks: dict[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = {}


@contextlib.asynccontextmanager
async def first_attach(spawner, vol: Volume, target: str | None):
    """Around the start of a server that mounts `vol`: a volume no instance has used yet is
    attached by one start at a time. Its first attach makes the daemon shift its files to the
    instance's id map and record that (volatile.idmap.last); two starts at once both shift
    (measured on Incus 6.0.4: 2 in 6 times), and the home then belongs to uid 100000, where the
    user can write nothing. Once recorded, starts go on side by side."""
    lock = _first_attach_locks.setdefault(asyncio.get_running_loop(), {}).setdefault(
        str(vol.workspace), asyncio.Lock())
    await lock.acquire()
    fresh = False
    try:
        info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
        fresh = info is not None and "volatile.idmap.last" not in info.config
    finally:
        if not fresh:
            lock.release()
    try:
        yield
    finally:
        if fresh:
            lock.release()


async def _idmap_record(spawner, vol: Volume, target: str | None) -> dict:
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
    return {k: v for k, v in (info.config if info else {}).items() if k.startswith("volatile.idmap.")}


async def refuse_existing_volume(spawner, vol: Volume, target: str | None) -> None:
    """A volume of that name made for another workspace (another hub's on the same daemon,
    another server's under the same name, an operator's own) is never taken over, and
    Terraform's create would fail on it with the daemon's words: say whose it is instead."""
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
    problem = info and lxd.not_ours(info.config, vol.workspace, await spawner.owner_id(), "storage_name_template")
    if problem:
        raise SpawnError(
            f"your home volume {vol.name} cannot be made: a volume of that name already exists on storage "
            f"pool {vol.pool}, and it is not yours. Nothing was changed; ask the administrator.",
            reason="storage",
            log_message=f"home volume {vol.name} on {spawner.backend_info.display} pool {vol.pool} already "
                        f"exists and {problem}")


async def refuse_shrinking(spawner, vol: Volume) -> None:
    """Volumes only grow: a smaller storage_capacity than the volume has is refused."""
    before = (await asyncio.to_thread(Workspace(vol.workspace).saved_inputs)).get("size") or ""
    try:
        old, new = size_bytes(before), size_bytes(vol.size)
    except ValueError as e:
        raise SpawnError(f"storage_capacity: {e}", reason="config") from None
    if old and (new is None or new < old):
        raise SpawnError(
            f"your home volume {vol.name} cannot shrink from {before} to {vol.size or 'no quota'}: it might hold "
            "more than that. Nothing was changed; ask the administrator.", reason="storage",
            log_message=f"storage_capacity {vol.size!r} is smaller than volume {vol.name}'s {before!r}: volumes "
                        "only grow; set it back, or resize by hand")


async def delete(spawner, vol: Volume) -> None:
    """Destroy the volume (the user is deleted) and archive its workspace beside the others,
    audit record included; a failure is logged as an error and audited, then raised."""
    ws = Workspace(vol.workspace)
    if not await asyncio.to_thread(ws.path.exists):
        return
    sp = spawner
    async with ws.lock():
        record = {"operation": "volume-delete", "user": sp.user.name, "server": sp.name or "",
                  "volume": vol.name, "pool": vol.pool}
        try:
            if await asyncio.to_thread(lambda: (ws.path / ".terraform").exists()):
                where = (await asyncio.to_thread(ws.state_outputs)).get("location")
                target = where if where not in (None, "", "none") else None
                snapshots = await lxd.delete_volume_snapshots(sp.endpoint, vol.pool, vol.name, target)
                record["snapshots_deleted"] = snapshots
                await sp.run_terraform(ws, "destroy", "-refresh=false")
        except Exception as e:
            sp.log.error("Deleting the home volume %s of %s failed (the user is gone, the volume is not): %s",
                         vol.name, sp.user.name, e)
            await ws.audit({**record, "outcome": "failed", "error": str(e), **await audit.versions(sp, ws)})
            raise
        await ws.audit({**record, "outcome": "ok", **await audit.versions(sp, ws)})
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.deleted-{stamp}"))
    sp.log.info("Deleted home volume %s of %s", vol.name, sp.user.name)


async def release(spawner, vol: Volume) -> None:
    """The user is deleted but volumes are kept (delete_storage = False): the volume stays in
    LXD with the user's files, its workspace is archived (`<volume>.released-<time>`), and the
    orphans command reports it from then on."""
    ws = Workspace(vol.workspace)
    if not await asyncio.to_thread(ws.path.exists):
        return
    async with ws.lock():
        await ws.audit({"operation": "volume-release", "user": spawner.user.name, "server": spawner.name or "",
                        "volume": vol.name, "pool": vol.pool, "outcome": "ok",
                        "note": "user deleted; volume kept (delete_storage = False)"})
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.released-{stamp}"))
    spawner.log.warning("Kept the home volume %s of deleted user %s (delete_storage = False)", vol.name,
                        spawner.user.name)
