"""JupyterHub 6's rename of a stopped named server: its workspace (the audit record of the
server) moves to the new name's directory, with a `rename` record; a per-server home volume
keeps its name and stays the server's: its record names it, and its workspace's owner becomes
the new name, so a new server under the old name gets a volume of its own, never this one's
(storage.resolve).

Refused, with the reason, while anything of the server exists in LXD (a kept container, or
one whose clean-up failed): their Terraform state and labels name the old workspace, and
provider v1.5.0 can only bring a kept container's labels up to date by replacing it, which
would lose its files.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..errors import SpawnError
from ..homes import storage
from ..systems.workspace import Workspace, workspace_path
from .keeper import RecordKeeper
from .record import Phase, legacy_record, read_record


async def rename(keeper: RecordKeeper, state_dir: str, user: str, old: str, new: str, *, instance: str,
                 keep_before_records: bool, volume_per_server: bool, log: logging.Logger) -> None:
    """Move the server's workspace from `old` to `new` and commit its renamed record.
    `instance`: the name a workspace from before records was made under; `keep_before_records`:
    such a workspace's instance holds files (remove = False); `volume_per_server`: the home
    volume template names the server, so its volume is this server's."""
    old_ws = Workspace(workspace_path(os.path.abspath(state_dir), user, old))
    new_path = workspace_path(os.path.abspath(state_dir), user, new)
    label = f"{user}/{old}"
    async with old_ws.lock(create=False):
        if not await asyncio.to_thread(old_ws.path.is_dir):
            return  # never started: nothing of it on disk or in LXD
        record = await asyncio.to_thread(read_record, old_ws.path)
        if record is None:
            record = legacy_record(await asyncio.to_thread(old_ws.state_resources),
                                   instance, str(old_ws.path), keep=keep_before_records)
        if record.exists:
            what = ("its kept container " if record.phase is Phase.KEPT else "its container ") + record.instance
            raise SpawnError(
                f"cannot rename {label}: {what} still exists (phase {record.phase.value}), and its Terraform "
                "state and labels name this server's workspace; renaming would make its next start replace it "
                "and lose its files. Delete the server to start afresh under the new name, or keep its name.",
                reason="rename", status_code=409)
        if await asyncio.to_thread(os.path.lexists, new_path):
            raise SpawnError(
                f"cannot rename {label} to {new!r}: the workspace {new_path} already exists (the record of an "
                "earlier server of that name); an operator may archive it first", reason="rename", status_code=409)
        await asyncio.to_thread(new_path.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(os.rename, old_ws.path, new_path)
        moved = Workspace(new_path)
        await keeper.commit(moved, record.renamed(str(new_path)))
        volume = await asyncio.to_thread(storage.from_workspace, record.volume) if record.volume else None
        # Per-server (a default server's volume made by 0.1.0 looks shared: the template says)
        if volume is not None and (not volume.shared or volume_per_server):
            await asyncio.to_thread(storage.set_owner, volume.workspace, user, new, False)
            await Workspace(volume.workspace).audit({"operation": "rename", "user": user, "server": new,
                                                     "from": old, "to": new, "volume": volume.name, "outcome": "ok"})
        await moved.audit({"operation": "rename", "user": user, "server": new, "from": old,
                           "to": new, "outcome": "ok", "workspace_from": str(old_ws.path)})
    log.info("Renamed the workspace of %s to %s", label, new_path)
