"""The one writer of a server's record: every change is a named transition of ServerState,
committed here, in memory (what the spawner's get_state saves with the hub) and in the
server's workspace (server-state.json, which decides after a hub restart)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from ..systems.ports import ports
from ..systems.workspace import Workspace
from .record import ServerState, write_record


class RecordKeeper:
    def __init__(self, record: ServerState | None = None):
        self.record = record or ServerState()

    def load(self, record: ServerState) -> None:
        """Take a record as it was found, in memory only (no transition, nothing written): the
        one the hub saved (load_state), or the workspace's before an operation acts on it."""
        self.record = record

    async def commit(self, ws: Workspace | None, record: ServerState) -> ServerState:
        """Make `record` the server's record (and its workspace's, when `ws` is given)."""
        self.record = record
        if ws is not None:
            await asyncio.to_thread(write_record, ws.path, record)
        return record

    async def act_then_commit(self, ws: Workspace, current: ServerState, act: Awaitable,
                              failure: str = "") -> ServerState:
        """Stop, recover or clean up what `current` says exists, then commit the outcome: on
        failure the record says `failed` (with `failure`, else the error: the instance may
        still exist and hold its port) and the error is raised; on success the port is free
        again and the server is kept or gone by the one rule (ServerState.ended)."""
        try:
            await act
        except Exception as e:
            await self.commit(ws, current.failed(failure or str(e)))
            raise
        ports.release(current.listen_address, current.listen_port)
        return await self.commit(ws, current.ended())
