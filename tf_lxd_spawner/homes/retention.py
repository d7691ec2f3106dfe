"""A deleted user's home is kept for a while (storage_retention_days): renamed out of the way
of a new user of the same name, marked with when it goes, restorable to its user or another
one, and purged when its time is up (by `tf-lxd-spawner home purge` from cron, and by the hub
itself every storage_purge_interval).

The volume keeps its snapshots (one more is taken as the user is deleted), and its workspace
is archived beside the user's others as `<volume>.retained-<time>` with its state pointing at
the new name, so `orphans` counts it as held and `home list` shows it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpawnError
from ..systems import lxd, naming
from ..systems.workspace import Workspace, WorkspaceBusy, existing_hub_id, write_private
from . import snapshots
from .storage import (
    Volume,
    deferred,
    member_of,
    resolve,
    set_owner,
    set_volume,
    update_inputs,
)

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner

DELETED_KEY = "user.tf-lxd-spawner.deleted"  # when its user was deleted (UTC, ISO 8601)
PURGE_KEY = "user.tf-lxd-spawner.purge_after"  # when it may be purged (UTC, ISO 8601)
ARCHIVE_KEY = "user.tf-lxd-spawner.archive"  # the archived workspace
RETAINED_FILE = "retained.json"
VOLUME_ADDRESS = "module.storage.lxd_volume.home"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def retained_name(name: str) -> str:
    """The name a retained volume goes by: the old one would be a new user's of the same name."""
    return f"{name[:naming.LXD_NAME_MAX - 13].rstrip('-')}-del-{secrets.token_hex(4)}"


async def retain(spawner: LxdSpawner, vol: Volume) -> None:
    """The user (or a per-server volume's server) is deleted: keep the volume for
    storage_retention_days instead of destroying it."""
    sp = spawner
    ws = Workspace(vol.workspace)
    if not await asyncio.to_thread(ws.path.exists):
        return
    async with ws.lock():
        record = {"operation": "volume-retain", "user": sp.user.name, "server": sp.name or "",
                  "volume": vol.name, "pool": vol.pool}
        if await deferred(sp, vol, ws, record):
            return
        target = member_of(await asyncio.to_thread(ws.state_outputs))
        info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target)
        if info is None:
            await ws.audit({**record, "outcome": "ok", "note": "the volume was already gone from the daemon"})
        else:
            if info.used_by:
                raise RuntimeError(f"volume {vol.name} is still attached to {', '.join(info.used_by)}; it was kept "
                                   "as it is")
            kept = await keep_for(sp.endpoint, sp.runner, ws, vol, target, float(sp.storage_retention_days),
                                  {"user": sp.user.name, "server": sp.name or ""})
            await ws.audit({**record, **kept, "outcome": "ok", "note": "user deleted; home kept until purge_after "
                                                                        "(tf-lxd-spawner home undelete brings it back)"})
            await asyncio.to_thread(os.rename, ws.path, kept["archive"])
            sp.log.info("Kept the home volume of deleted user %s as %s until %s (storage_retention_days)",
                        sp.user.name, kept["retained_as"], kept["purge_after"])
            return
        stamp = _now().strftime("%Y%m%dT%H%M%SZ")
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.deleted-{stamp}"))


async def keep_for(endpoint: lxd.Endpoint, runner, ws: Workspace, vol: Volume, target: str | None, days: float,
                   whose: dict) -> dict:
    """Keep a volume for `days` instead of deleting it: a snapshot first, renamed out of the
    way of a new one of its name, marked with when it goes and where its workspace will be
    archived (the caller audits, then renames the workspace to `archive`; it holds its lock).
    Returns what the audit record says of it."""
    now = _now()
    until = now + dt.timedelta(days=days)
    new = retained_name(vol.name)
    snap = await snapshots.take(endpoint, vol.pool, vol.name, target, "before-delete")
    archive = ws.path.with_name(f"{ws.path.name}.retained-{now:%Y%m%dT%H%M%SZ}")
    await lxd.rename_volume(endpoint, vol.pool, vol.name, target, new)
    await lxd.patch_volume_config(endpoint, vol.pool, new, target, {
        DELETED_KEY: now.isoformat(), PURGE_KEY: until.isoformat(), ARCHIVE_KEY: str(archive)})
    await set_volume(runner, ws, name=new)
    note = {**whose, "volume": vol.name, "retained_as": new, "pool": vol.pool, "location": target or "",
            "deleted": now.isoformat(), "purge_after": until.isoformat()}
    await asyncio.to_thread(write_private, ws.path / RETAINED_FILE, json.dumps(note, indent=2) + "\n")
    return {"retained_as": new, "snapshot": snap, "purge_after": until.isoformat(), "archive": str(archive)}


async def retained(endpoint: lxd.Endpoint, state_dir: str | Path) -> list[lxd.VolumeInfo]:
    """The retained volumes of this hub (its hub id, its state_dir)."""
    state_dir = Path(os.path.abspath(state_dir))
    ours = await asyncio.to_thread(existing_hub_id, state_dir)
    return [v for v in await lxd.managed_volumes(endpoint)
            if v.config.get(DELETED_KEY) and ours and v.config.get(lxd.HUB_ID_KEY) == ours
            and v.config.get(lxd.WORKSPACE_KEY, "").startswith(f"{state_dir}{os.sep}")]


def _due(info: lxd.VolumeInfo, now: dt.datetime) -> bool:
    try:
        when = dt.datetime.fromisoformat(info.config.get(PURGE_KEY, ""))
    except ValueError:
        return False  # never purged on a date nobody can read
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)) <= now


async def purge(endpoint: lxd.Endpoint, runner, state_dir: str | Path, log, only: str | None = None) -> list[str]:
    """Delete the retained volumes whose time is up (or the one named `only`, whatever its
    time), their snapshots with them; audited in the archived workspace, which is renamed
    `<volume>.deleted-<time>`. Returns the names purged."""
    now = _now()
    done = []
    for info in await retained(endpoint, state_dir):
        if (only and info.name != only) or (not only and not _due(info, now)):
            continue
        ws = Workspace(info.config.get(ARCHIVE_KEY) or "")
        record = {"operation": "volume-purge", "user": info.config.get("user.tf-lxd-spawner.user", ""),
                  "volume": info.name, "pool": info.pool, "purge_after": info.config.get(PURGE_KEY, "")}
        try:
            async with ws.lock(create=False):
                await lxd.delete_volume(endpoint, info.pool, info.name, info.location or None)
                await runner.run("state", "rm", "-lock-timeout=120s", VOLUME_ADDRESS, cwd=ws.path, check=False)
                await ws.audit({**record, "outcome": "ok", "note": "retention period over" if not only
                                else "purged by an operator"})
                await asyncio.to_thread(os.rename, ws.path,
                                        ws.path.with_name(ws.path.name.split(".retained-")[0] +
                                                          f".deleted-{now:%Y%m%dT%H%M%SZ}"))
        except (WorkspaceBusy, FileNotFoundError) as e:
            log.warning("Retained home volume %s not purged: its workspace %s: %s", info.name, ws.path, e)
            continue
        log.info("Purged retained home volume %s of deleted user %s", info.name, record["user"])
        done.append(info.name)
    return done


async def undelete(spawner: LxdSpawner, name: str) -> Path:
    """Give a retained volume to `spawner`'s user (the deleted one, or another) as their home:
    refused when they have a home already. Returns its workspace."""
    sp = spawner
    found = [v for v in await retained(sp.endpoint, sp.state_dir) if v.name == name]
    if not found:
        raise SpawnError(f"no retained home volume {name!r} of this hub (tf-lxd-spawner home list shows them)")
    info = found[0]
    archive = Workspace(info.config[ARCHIVE_KEY])
    vol = await resolve(sp)
    if await asyncio.to_thread(lambda: (vol.workspace / "terraform.tfstate").exists()) and \
            await asyncio.to_thread(Workspace(vol.workspace).state_resources):
        raise SpawnError(f"{sp.user.name} has a home volume already ({vol.name}): export what you need from the "
                         "retained one, or delete theirs first")
    if await lxd.volume(sp.endpoint, vol.pool, vol.name, info.location or None) is not None:
        raise SpawnError(f"a volume called {vol.name} exists already on pool {vol.pool}: not touched")
    async with archive.lock():
        await lxd.rename_volume(sp.endpoint, info.pool, info.name, info.location or None, vol.name)
        await lxd.patch_volume_config(sp.endpoint, info.pool, vol.name, info.location or None,
                                      {DELETED_KEY: "", PURGE_KEY: "", ARCHIVE_KEY: ""})
        await set_volume(sp.runner, archive, name=vol.name)
        labels = {**archive.saved_inputs().get("labels", {}), "user": sp.user.name,
                  "server": "" if vol.shared else (sp.name or ""), "workspace": str(vol.workspace)}
        await asyncio.to_thread(update_inputs, archive, {"labels": labels})
        await archive.audit({"operation": "volume-undelete", "user": sp.user.name, "server": sp.name or "",
                             "volume": vol.name, "from": info.name, "outcome": "ok",
                             "note": f"given back to {sp.user.name} as their home; it goes on at {vol.workspace}"})
    await asyncio.to_thread(_move_into_place, archive.path, vol, sp)
    return vol.workspace


def _move_into_place(archive: Path, vol: Volume, sp) -> None:
    move_into_place(archive, vol.workspace)
    set_owner(vol.workspace, sp.user.name, "" if vol.shared else (sp.name or ""), vol.shared)


def move_into_place(archive: Path, place: Path) -> None:
    """An undeleted volume's archived workspace back at `place` (a home's, a shared folder's);
    what a refused or failed start left there (its lock, its audit) is kept beside. Blocking."""
    if place.exists():
        os.rename(place, place.with_name(f"{place.name}.replaced-{_now():%Y%m%dT%H%M%SZ}"))
    place.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.rename(archive, place)
    (place / RETAINED_FILE).unlink(missing_ok=True)



_purgers: dict[str, asyncio.Task] = {}


def keep_purging(spawner: LxdSpawner) -> None:
    """The hub's own purge of homes whose retention is over: one task per state_dir, every
    storage_purge_interval seconds, started by the first start after the hub starts."""
    interval = float(spawner.storage_purge_interval)
    if spawner.storage_retention_days <= 0 or interval <= 0 or not spawner.delete_storage:
        return
    key = os.path.abspath(spawner.state_dir)
    if key in _purgers and not _purgers[key].done():
        return
    _purgers[key] = asyncio.get_running_loop().create_task(
        _purge_every(spawner.endpoint, spawner.runner, key, interval, spawner.log))


async def _purge_every(endpoint, runner, state_dir: str, interval: float, log) -> None:
    while True:
        try:
            await purge(endpoint, runner, state_dir, log)
        except Exception as e:  # the daemon away for a while: the next round tries again
            log.warning("Purging retained home volumes failed (tried again in %g s): %s", interval, e)
        await asyncio.sleep(interval)
