"""What an operator (the `tf-lxd-spawner home` commands) or a user (the snapshots service)
does to one home volume: restore it or one path of it from a snapshot, grow its quota, move it
to another member, export it to a file and import it back.

Every operation takes the volume workspace's lock, snapshots the volume first when it changes
it (`before-<operation>-<time>`: the way back from the way back), goes through the daemon's own
API, brings Terraform's state along, and writes an audit record in the volume's workspace.
None of them replaces a volume or runs while one of the user's servers has it in use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpawnError
from ..systems import lxd
from ..systems.workspace import Workspace, write_private
from . import snapshots, storage
from .storage import Volume, member_of

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner


@dataclasses.dataclass(frozen=True)
class Home:
    """A home volume that exists: where it is, and its workspace."""
    vol: Volume
    target: str | None  # its member in a cluster with a local pool; None otherwise

    @property
    def ws(self) -> Workspace:
        return Workspace(self.vol.workspace)


async def find(spawner: LxdSpawner) -> Home:
    """The home volume of `spawner`'s user (and server, for per-server volumes), which must
    exist."""
    vol = await storage.resolve(spawner)
    outputs = await asyncio.to_thread(Workspace(vol.workspace).state_outputs)
    if not outputs.get("name"):
        raise SpawnError(f"{spawner.user.name} has no home volume yet (it is made at their first start)")
    return Home(vol, member_of(outputs))


async def _refuse_in_use(spawner: LxdSpawner, home: Home, what: str) -> None:
    using = await asyncio.to_thread(storage.holders, spawner, home.vol, True)
    if using:
        raise SpawnError(f"cannot {what} the home volume {home.vol.name} while {', '.join(using)} "
                         "has it: stop those servers first (a kept instance: delete it or its server)",
                         reason="storage", status_code=409)


async def _audit(spawner: LxdSpawner, home: Home, operation: str, **fields) -> None:
    await home.ws.audit({"operation": operation, "user": spawner.user.name, "server": spawner.name or "",
                         "volume": home.vol.name, "pool": home.vol.pool, **fields})


async def snapshot(spawner: LxdSpawner, home: Home, why: str = "manual", by: str = "operator") -> str:
    async with home.ws.lock():
        name = await snapshots.take(spawner.endpoint, home.vol.pool, home.vol.name, home.target, why)
        await _audit(spawner, home, "snapshot", snapshot=name, by=by, outcome="ok")
    return name


async def list_snapshots(spawner: LxdSpawner, home: Home) -> list[dict]:
    return await lxd.volume_snapshots(spawner.endpoint, home.vol.pool, home.vol.name, home.target)


async def known(spawner: LxdSpawner, home: Home, name: str) -> None:
    """Refuse a snapshot the home does not have."""
    if name not in {s["name"] for s in await list_snapshots(spawner, home)}:
        raise SpawnError(f"the home volume {home.vol.name} has no snapshot {name!r}", reason="storage",
                         status_code=404)


async def restore(spawner: LxdSpawner, home: Home, name: str, by: str = "operator") -> str:
    """The whole home goes back to snapshot `name`, after a snapshot of how it is now (returned).
    Its servers must be stopped."""
    await known(spawner, home, name)
    await _refuse_in_use(spawner, home, "restore")
    async with home.ws.lock():
        before = await snapshots.take(spawner.endpoint, home.vol.pool, home.vol.name, home.target, "before-restore")
        try:
            await lxd.restore_volume(spawner.endpoint, home.vol.pool, home.vol.name, home.target, name)
        except Exception as e:
            await _audit(spawner, home, "restore", snapshot=name, before=before, by=by, outcome="failed",
                         error=str(e))
            raise
        await _audit(spawner, home, "restore", snapshot=name, before=before, by=by, outcome="ok")
    return before


def _relative(path: str) -> str:
    parts = Path(path.strip("/")).parts
    if not parts or any(p in ("..", ".") for p in parts):
        raise SpawnError(f"{path!r} is not a path inside the home (e.g. work/notes.ipynb)", reason="config")
    return os.path.join(*parts)


async def restore_path(spawner: LxdSpawner, home: Home, name: str, path: str, by: str = "operator") -> str:
    """One file or folder of the home goes back to how it was in snapshot `name`, after a
    snapshot of how the home is now (returned); the rest of the home is untouched. Copied on
    the member's pool directory, so the user's servers may keep running."""
    await known(spawner, home, name)
    rel = _relative(path)
    pool_path = snapshots.pool_dir(spawner.storage_pool_dir, spawner.backend_info.local_dir(), home.vol.pool)
    source = snapshots.host_dir(pool_path, home.vol.name) / name / rel
    live = snapshots.volume_dir(pool_path, home.vol.name)
    if not await asyncio.to_thread(live.is_dir):
        raise SpawnError(f"the pool directory {pool_path} is not reachable from this host: restore the whole "
                         "home, or copy the file from ~/.snapshots inside the user's server", reason="storage")
    if not await asyncio.to_thread(lambda: source.exists() or source.is_symlink()):
        raise SpawnError(f"snapshot {name} of {home.vol.name} has no {rel}", reason="storage", status_code=404)
    async with home.ws.lock():
        before = await snapshots.take(spawner.endpoint, home.vol.pool, home.vol.name, home.target, "before-restore")
        await asyncio.to_thread(_copy_back, source, live / rel)
        await _audit(spawner, home, "restore", snapshot=name, path=rel, before=before, by=by, outcome="ok")
    return before


def _copy_back(source: Path, dest: Path) -> None:
    """Replace `dest` by `source`, owners, modes and times kept (cp -a: the ids on disk are the
    container's shifted ids, kept as they are)."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(dest)], check=True, capture_output=True)


async def grow(spawner: LxdSpawner, home: Home, size: str, by: str = "operator") -> None:
    """A larger quota for this home (in place, through Terraform); storage_capacity applies to
    it again once larger."""
    try:
        new, old = storage.size_bytes(size), storage.size_bytes(home.vol.size)
    except ValueError as e:
        raise SpawnError(str(e), reason="config") from None
    if not new or (old and new <= old):
        raise SpawnError(f"{size!r} is not larger than the home's quota {home.vol.size or '(none)'}: "
                         "homes only grow", reason="config")
    async with home.ws.lock():
        await asyncio.to_thread(write_private, home.vol.workspace / storage.GROWN_FILE,
                                json.dumps({"size": size, "by": by}) + "\n")
    try:  # the volume's workspace applies it, a snapshot first (before-resize)
        await storage.ensure(spawner, dataclasses.replace(home.vol, size=size), home.target)
    except Exception as e:
        await _audit(spawner, home, "grow", size=size, by=by, outcome="failed", error=getattr(e, "detail", str(e)))
        raise
    await _audit(spawner, home, "grow", size=size, previous=home.vol.size, by=by, outcome="ok")


async def move(spawner: LxdSpawner, home: Home, member: str, by: str = "operator") -> None:
    """Move the home to another cluster member (a pool local to each member): the daemon copies
    it with its snapshots and deletes the original; the workspace's state follows. Its servers
    must be stopped; their next start goes where it is."""
    if not home.target:
        raise SpawnError(f"{home.vol.name} is on no particular member (a standalone daemon or a shared pool): "
                         "there is nothing to move", reason="config")
    if member == home.target:
        raise SpawnError(f"{home.vol.name} is on {member} already", reason="config")
    await _refuse_in_use(spawner, home, "move")
    async with home.ws.lock():
        before = await snapshots.take(spawner.endpoint, home.vol.pool, home.vol.name, home.target, "before-move")
        try:
            await lxd.move_volume_to_member(spawner.endpoint, home.vol.pool, home.vol.name, home.target, member)
            await storage.set_volume(spawner.runner, home.ws, target=member)
        except Exception as e:
            await _audit(spawner, home, "move", to=member, before=before, by=by, outcome="failed", error=str(e))
            raise
        await _audit(spawner, home, "move", **{"from": home.target}, to=member, before=before, by=by, outcome="ok")


async def export(spawner: LxdSpawner, home: Home, file: Path, by: str = "operator") -> int:
    """Write the home (files and snapshots) to `file`, a tarball the daemon makes; returns its
    size in bytes. The file is the operator's only (0600)."""
    def opened():
        return os.fdopen(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")

    async with home.ws.lock():
        out = await asyncio.to_thread(opened)
        try:
            await lxd.export_volume(spawner.endpoint, home.vol.pool, home.vol.name, home.target, out)
        finally:
            await asyncio.to_thread(out.close)
        size = (await asyncio.to_thread(os.stat, file)).st_size
        await _audit(spawner, home, "export", file=str(file), bytes=size, by=by, outcome="ok")
    return size


async def import_(spawner: LxdSpawner, file: Path, by: str = "operator") -> Home:
    """Make the user's home from an exported file: it becomes their home volume, under the name
    the spawner gives it, made by its workspace as at a first start. Refused when the user
    has a home already (export theirs, or let it be deleted, first)."""
    vol = await storage.resolve(spawner)
    outputs = await asyncio.to_thread(Workspace(vol.workspace).state_outputs)
    if outputs.get("name"):
        raise SpawnError(f"{spawner.user.name} has a home volume already ({vol.name}): nothing was imported",
                         reason="storage", status_code=409)
    staging = f"{vol.name[:50]}-import"
    with open(file, "rb") as source:
        await lxd.import_volume(spawner.endpoint, vol.pool, staging, None, source,
                                header_prefix=spawner.backend_info.import_header)
    try:
        info = await lxd.volume(spawner.endpoint, vol.pool, staging)
        where = info.location if info else None
        # The workspace makes an empty volume as at a first start; the imported one then takes
        # its name (its config, quota included, comes with the workspace's next apply).
        made = await storage.ensure(spawner, vol, where or None)
        home = Home(vol, made or None)
        async with home.ws.lock():
            await lxd.delete_volume(spawner.endpoint, vol.pool, vol.name, home.target)
            await lxd.rename_volume(spawner.endpoint, vol.pool, staging, home.target, vol.name)
            await asyncio.to_thread(lambda: (home.vol.workspace / storage.APPLIED_STAMP).unlink(missing_ok=True))
            await _audit(spawner, home, "import", file=str(file), by=by, outcome="ok")
    except Exception:
        if await lxd.volume(spawner.endpoint, vol.pool, staging) is not None:
            await lxd.delete_volume(spawner.endpoint, vol.pool, staging)
        raise
    await storage.ensure(spawner, vol, home.target)  # its config and labels, in place
    return home
