"""Groups' shared folders in LXD: each one a custom volume made by the storage module in a
workspace of its own (`<state_dir>/_shared/<name>/`, with its audit.jsonl), on the first start
of a user who gets it. Its rules are a home's (see storage.ensure): grown in place, never
replaced, refused rather than made anew when missing. No server's stop and no user's deletion
touch it; an operator deletes it (`tf-lxd-spawner shared delete`).

Which folders a server mounts, and how, is `shared.access` of the user's JupyterHub groups at
this start: a read-only member's device is `readonly=true`, a user in no group of it has no
device for it. A change since the server's last start is audited in its workspace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpawnError
from ..systems import initialising, lxd
from ..systems.workspace import Workspace
from . import retention, shared, snapshots, storage

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner

#: Under state_dir: no escaped user name starts with '_', so no user's directory is called this.
SHARED_DIR = "_shared"
#: The spawner's labels on a volume: user.tf-lxd-spawner.<key> config keys (kind, shared...).
LABEL = "user.tf-lxd-spawner."
#: The disk device of a shared folder in the notebook module: `tf-lxd-shared-<name>`.
DEVICE_PREFIX = "tf-lxd-shared-"


@dataclasses.dataclass(frozen=True)
class Mount:
    """One shared folder a server mounts: the setting's entry, its volume, and whether the
    daemon mounts it read-only for this user."""
    folder: shared.SharedVolume
    volume: storage.Volume
    readonly: bool

    @property
    def device(self) -> str:
        return DEVICE_PREFIX + self.folder.name


def shared_dir(state_dir: str) -> Path:
    return Path(os.path.abspath(state_dir)) / SHARED_DIR


def user_groups(spawner: LxdSpawner) -> list[str]:
    """The user's JupyterHub groups, by name (none for a stand-in user of an operator command)."""
    return sorted(getattr(g, "name", str(g)) for g in (getattr(spawner.user, "groups", None) or []))


def mounts_for(spawner: LxdSpawner, home: str) -> list[Mount]:
    """The shared folders this user's server mounts now (`home`: where relative paths start).
    Raises SpawnError naming a wrong entry of shared_volumes."""
    try:
        folders = shared.parse(spawner.shared_volumes)
    except shared.SharedConfigError as e:
        raise SpawnError(str(e), reason="config") from None
    given = shared.access(folders, user_groups(spawner))
    found = []
    for folder in folders:
        if folder.name not in given:
            continue
        path = folder.path if folder.path.startswith("/") else f"{home.rstrip('/')}/{folder.path}"
        if path.rstrip("/") in ("", home.rstrip("/")):
            raise SpawnError(f"shared_volumes ({folder.name}): path {folder.path!r} is the home itself: give "
                             "it a folder of its own (e.g. \"course-data\")", reason="config")
        try:
            storage.size_bytes(folder.size)
        except ValueError as e:
            raise SpawnError(f"shared_volumes ({folder.name}): size: {e}", reason="config") from None
        vol = storage.Volume(folder.volume_name, folder.pool or spawner.storage_pool, folder.size,
                             path.rstrip("/"), shared_dir(spawner.state_dir) / folder.name, shared=True)
        found.append(Mount(folder, vol, given[folder.name]))
    return found


def role(spawner: LxdSpawner, folder: shared.SharedVolume) -> storage.Role:
    """How storage.ensure makes and names a shared folder: nobody's, with the home's snapshot
    schedule and the folder's own config over it."""
    config = {k: v for k, v in storage.volume_config(spawner).items() if k.startswith("snapshots.")}
    config.update(dict(folder.config))
    return storage.Role("shared", "", "", f"the shared folder {folder.name}", config,
                        size_setting=f"shared_volumes ({folder.name}) size",
                        name_setting="shared_volumes (its name)", shared=folder.name)


async def check(spawner: LxdSpawner, mounts: list[Mount]) -> None:
    """Before anything is made: every folder's pool exists and no size shrinks."""
    for m in mounts:
        try:
            driver = await lxd.pool_driver(spawner.endpoint, m.volume.pool)
        except lxd.LxdUnavailable as e:
            raise SpawnError(str(e)) from None
        if driver is None:
            raise SpawnError(f"shared_volumes ({m.folder.name}): storage pool {m.volume.pool!r} does not exist on "
                             f"the {spawner.backend_info.display} server", reason="config")
        await storage.refuse_shrinking(spawner, m.volume, role(spawner, m.folder))


async def locations(spawner: LxdSpawner, mounts: list[Mount]) -> dict[str, str]:
    """{title: member} of the folders already made on a pool local to one member."""
    found = {}
    for m in mounts:
        where = await storage.location(spawner, m.volume)
        if where:
            found[f"the shared folder {m.folder.name}"] = where
    return found


async def ensure_all(spawner: LxdSpawner, mounts: list[Mount], target: str | None) -> dict[str, str]:
    """Make or update each folder (under its workspace's lock: a class starting at once makes
    it once); {title: member} of those on a pool local to one member."""
    found = {}
    for m in mounts:
        where = storage.member_of({"location": await storage.ensure(spawner, m.volume, target,
                                                                    role(spawner, m.folder))})
        if where:  # not on a standalone server, nor on a pool every member reaches ("none")
            found[f"the shared folder {m.folder.name}"] = where
    return found


def devices(mounts: list[Mount]) -> list[dict]:
    """The notebook module's `volumes` entries: read-only where the user only reads."""
    return [{"name": m.device, "pool": m.volume.pool, "source": m.volume.name, "path": m.volume.mount_path,
             "readonly": m.readonly} for m in mounts]


def account(mounts: list[Mount]) -> dict:
    """The notebook module's `user.groups`/`user.group_dirs` for these folders: the account is
    a member of each folder's group; the ones it writes are made setgid 2775 by the launcher."""
    if not mounts:
        return {}
    return {"groups": sorted({m.folder.gid for m in mounts}),
            "group_dirs": [{"path": m.volume.mount_path, "gid": m.folder.gid} for m in mounts if not m.readonly]}


def access_before(saved_inputs: dict) -> dict[str, bool]:
    """{folder: read-only} a server's last start mounted, from its saved inputs."""
    return {v["name"][len(DEVICE_PREFIX):]: bool(v.get("readonly"))
            for v in saved_inputs.get("volumes") or [] if str(v.get("name", "")).startswith(DEVICE_PREFIX)}


async def audit_access(spawner: LxdSpawner, ws: Workspace, mounts: list[Mount]) -> dict[str, str]:
    """Audit, in the server's workspace, what its shared folders' access changed since its last
    start (a group joined or left); returns the changes."""
    before = access_before(await asyncio.to_thread(ws.saved_inputs))
    after = {m.folder.name: m.readonly for m in mounts}
    changes = shared.access_changes(before, after)
    if changes and await asyncio.to_thread(ws.tfvars.exists):
        await ws.audit({"operation": "shared-access", "user": spawner.user.name, "server": spawner.name or "",
                        "instance": spawner.instance, "groups": user_groups(spawner), "changes": changes,
                        "outcome": "ok"})
        spawner.log.info("Shared folders of %s changed since its last start: %s", spawner.instance, changes)
    return changes


# -- an operator's commands (tf-lxd-spawner shared ...) -----------------------------------------------

def workspaces(state_dir: str) -> list[Workspace]:
    """Every shared folder's workspace that made its volume (archived ones left out). Blocking."""
    root = shared_dir(state_dir)
    return [Workspace(p.parent) for p in sorted(root.glob("*/terraform.tfvars.json")) if "." not in p.parent.name]


async def listing(spawner: LxdSpawner) -> list[dict]:
    """One row per shared folder: its volume, where it is, quota, use, snapshots, the instances
    that mount it now, and whether shared_volumes still names it."""
    try:
        configured = {f.name for f in shared.parse(spawner.shared_volumes)}
    except shared.SharedConfigError:
        configured = set()
    rows = []
    for ws in await asyncio.to_thread(workspaces, spawner.state_dir):
        inputs, outputs = await asyncio.to_thread(ws.saved_inputs), await asyncio.to_thread(ws.state_outputs)
        pool, name, where = inputs.get("pool") or "default", inputs.get("name", ""), storage.member_of(outputs)
        info = await lxd.volume(spawner.endpoint, pool, name, where, usage=True) if outputs.get("name") else None
        snaps = await lxd.volume_snapshots(spawner.endpoint, pool, name, where) if info else []
        rows.append({"folder": ws.path.name, "volume": name, "pool": pool, "member": where or "",
                     "quota": inputs.get("size") or "", "used_bytes": info.used_bytes if info else None,
                     "state": "live" if info else "missing", "snapshots": len(snaps),
                     "mounted_by": info.instances if info else [],
                     "configured": ws.path.name in configured, "workspace": str(ws.path)})
    for info in await retention.retained(spawner.endpoint, spawner.state_dir):
        if info.config.get(f"{LABEL}kind") == "shared":
            rows.append({"folder": info.config.get(f"{LABEL}shared", ""), "volume": info.name, "pool": info.pool,
                         "member": info.location, "quota": info.config.get("size", ""), "used_bytes": None,
                         "state": f"retained until {info.config.get(retention.PURGE_KEY, '')}", "snapshots": None,
                         "mounted_by": [], "configured": False,
                         "workspace": info.config.get(retention.ARCHIVE_KEY, "")})
    return rows


def _find(spawner: LxdSpawner, name: str) -> storage.Volume:
    ws = shared_dir(spawner.state_dir) / name
    vol = storage.from_workspace(ws) if shared.NAME.match(name) else None
    if vol is None:
        raise SpawnError(f"no shared folder {name!r} under {shared_dir(spawner.state_dir)} (shared list shows them)")
    return vol


async def snapshot(spawner: LxdSpawner, name: str, by: str) -> str:
    """Take a snapshot of a shared folder now (audited in its workspace); returns its name."""
    vol = await asyncio.to_thread(_find, spawner, name)
    ws = Workspace(vol.workspace)
    where = storage.member_of(await asyncio.to_thread(ws.state_outputs))
    snap = await snapshots.take(spawner.endpoint, vol.pool, vol.name, where, "manual")
    await ws.audit({"operation": "shared-snapshot", "shared": name, "volume": vol.name, "snapshot": snap, "by": by,
                    "outcome": "ok"})
    return snap


async def delete(spawner: LxdSpawner, name: str, by: str, force: bool = False, now: bool = False) -> dict:
    """Delete a shared folder. As a deleted user's home: kept storage_retention_days first
    (snapshot, renamed out of the way, purged by the hub's purge or `home purge`; `shared
    undelete` brings it back), or at once with `now` (its volume and snapshots destroyed).
    Either way its workspace is archived with its audit record. Refused while an instance
    mounts it (a kept one too), and while shared_volumes names it (the next start would make a
    new, empty one) unless `force`. Returns what the audit record says."""
    vol = await asyncio.to_thread(_find, spawner, name)
    configured = {f.name for f in shared.parse(spawner.shared_volumes)}
    if name in configured and not force:
        raise SpawnError(f"shared folder {name!r} is still in shared_volumes: its next user's start would make a "
                         "new, empty one. Remove it from the configuration first (or use --force)")
    ws = Workspace(vol.workspace)
    async with ws.lock():
        where = storage.member_of(await asyncio.to_thread(ws.state_outputs))
        record = {"operation": "shared-delete", "shared": name, "volume": vol.name, "pool": vol.pool, "by": by}
        info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, where)
        if info is not None and info.used_by:
            holders = ", ".join(info.instances)
            await ws.audit({**record, "outcome": "refused", "error": f"mounted by {holders}"})
            raise SpawnError(f"shared folder {name!r} is mounted by {holders}: stop those servers first (their "
                             "kept instances too); nothing was deleted")
        days = float(spawner.storage_retention_days)
        if info is not None and not now and days > 0:
            kept = await retention.keep_for(spawner.endpoint, spawner.runner, ws, vol, where, days, {"shared": name})
            await ws.audit({**record, **kept, "outcome": "ok",
                            "note": "kept until purge_after (tf-lxd-spawner shared undelete brings it back)"})
            await asyncio.to_thread(os.rename, ws.path, kept["archive"])
            return kept
        try:
            await initialising.repoint(spawner.terraform, ws, spawner.storage_module_source, spawner.log,
                                       {"shared": name})
            gone = await lxd.delete_volume_snapshots(spawner.endpoint, vol.pool, vol.name, where) if info else 0
            await spawner.terraform.run(ws, "destroy", "-refresh=false")
        except Exception as e:
            await ws.audit({**record, "outcome": "failed", "error": getattr(e, "detail", str(e))})
            raise
        done = {"snapshots_deleted": gone}
        await ws.audit({**record, **done, "outcome": "ok"})
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.deleted-{stamp}"))
    return done


async def undelete(spawner: LxdSpawner, volume: str, by: str) -> str:
    """Bring back a shared folder kept after its deletion (`volume`: its retained name, as
    `shared list` shows it) under its own name; refused when a folder of that name exists.
    Returns the folder's name."""
    found = [v for v in await retention.retained(spawner.endpoint, spawner.state_dir)
             if v.name == volume and v.config.get(f"{LABEL}kind") == "shared"]
    if not found:
        raise SpawnError(f"no retained shared folder {volume!r} of this hub (tf-lxd-spawner shared list shows them)")
    info = found[0]
    name = info.config.get(f"{LABEL}shared", "")
    archive = Workspace(info.config[retention.ARCHIVE_KEY])
    place = shared_dir(spawner.state_dir) / name
    original = shared.volume_name(name)
    if await asyncio.to_thread(lambda: bool(storage.from_workspace(place))) or \
            await lxd.volume(spawner.endpoint, info.pool, original, info.location or None) is not None:
        raise SpawnError(f"a shared folder {name!r} exists already: delete it first (shared delete {name} --now), "
                         "or export what you need from the retained one")
    async with archive.lock():
        await lxd.rename_volume(spawner.endpoint, info.pool, info.name, info.location or None, original)
        await lxd.patch_volume_config(spawner.endpoint, info.pool, original, info.location or None,
                                      {retention.DELETED_KEY: "", retention.PURGE_KEY: "", retention.ARCHIVE_KEY: ""})
        await storage.set_volume(spawner.runner, archive, name=original)
        await archive.audit({"operation": "shared-undelete", "shared": name, "volume": original, "from": volume,
                             "by": by, "outcome": "ok", "note": f"back as the shared folder {name}"})
    await asyncio.to_thread(retention.move_into_place, archive.path, place)
    return name
