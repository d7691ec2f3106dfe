"""Recovery: what an interrupted spawn or a failed clean-up left behind is removed (or, for a
kept instance, stopped and kept) and recorded; and whether a running server has died.

Only the server's record decides that something was left (state.py): an interrupted spawn is a
record in phase "creating" that no start holds the lock of, never a guess from what is missing."""

from __future__ import annotations

import logging

from .. import metrics
from ..systems import lxd
from . import stopping
from .server import Server

NOTES = {
    "creating": "removed what an interrupted spawn had made",
    "creating-kept": "stopped the kept instance an interrupted resume had left; its files are kept",
    "failed": "removed what a failed clean-up had left",
    "failed-kept": "stopped the kept instance a failed stop had left; its files are kept",
    "running": "removed a server the hub no longer knew",
    "running-kept": "stopped and kept a server the hub no longer knew; its files are kept",
}


async def recover(server: Server, phase: str, keeps_files: bool) -> None:
    """Undo what the record says was left: a kept instance (keeps_files) is only stopped, never
    destroyed; anything else is destroyed. The caller holds the lock; raises when it fails
    (after recording it)."""
    note = NOTES[f"{phase}-kept" if keeps_files else phase]
    server.log.warning("Cleaning up %s: %s", server.instance, note)
    try:
        if keeps_files:
            await stopping.stop_instance(server)
        else:
            await stopping.destroy(server)
    except Exception as e:
        await server.ws.audit({"operation": "recover", **server.who, "outcome": "failed", "note": note,
                               "error": str(e)})
        raise
    await server.ws.audit({"operation": "recover", **server.who, "outcome": "ok", "note": note,
                           "kept": keeps_files})
    metrics.RECOVERIES.labels("interrupted_spawn" if phase == "creating" else "leftover").inc()


async def dead_reason(endpoint: lxd.Endpoint, instance: str, max_age: float,
                      log: logging.Logger) -> tuple[str | None, str]:
    """Why the server is dead (None while it runs or when nobody can tell), and the member LXD
    reports it on ("" when unknown).

    The image's server unit powers its container off when it ends (exits, or fails for good),
    so the instance's status is the server's: read from one listing that every spawner shares.
    Only a clear, fresh answer ends a server: "gone" or "Stopped" in the listing is confirmed by
    asking for this instance; "cannot tell" (LXD unreachable or slow, an instance starting or
    frozen) never means dead."""
    try:
        info = await lxd.instance_status(endpoint, instance, max_age)
        if info is not None and info.status not in ("Stopped", ""):
            if info.status != "Running":
                log.warning("poll(%s): the instance is %s; not calling it dead", instance, info.status)
            return None, info.location or ""
        info = await lxd.instance(endpoint, instance)
        if info is None:
            return "the instance no longer exists", ""
        if info.status == "Stopped":
            return "the instance is Stopped (its server ended)", info.location or ""
        return None, info.location or ""  # it was (re)started since the listing
    except lxd.LxdUnavailable as e:
        # Cannot tell: do not declare a server dead because LXD is briefly unreachable.
        log.warning("poll(%s): %s", instance, e)
        return None, ""
