"""Recovery: what a hub that died mid-spawn, or a server that ended on its own, left behind is
removed and recorded."""

from __future__ import annotations

import asyncio

from . import audit, lxd, metrics, stopping
from .terraform import TerraformError
from .workspace import StateUnreadable, WorkspaceBusy


async def recover_interrupted_spawn(spawner) -> None:
    """No saved state, yet the workspace may hold what a spawn made before its hub died (the
    hub saves state only when a start completes): destroy it, and say so in the audit."""
    sp = spawner
    ws = sp.workspace_dir()
    if not await asyncio.to_thread(ws.path.exists):
        return
    name = sp.instance_name()
    try:
        leftover = bool(await asyncio.to_thread(ws.state_resources))
        if not leftover:
            info = await lxd.instance(sp.endpoint, name)
            leftover = lxd.made_for(info, ws.path, await sp.owner_id())
        if not leftover:
            return
        sp.log.warning("Cleaning up %s, left by a spawn the hub did not finish", name)
        async with ws.lock():
            sp.instance = name
            try:
                await stopping.destroy(sp, ws)
                await ws.audit({"operation": "recover", **audit.server_fields(sp), "outcome": "ok",
                                "note": "removed what an interrupted spawn had made"})
                metrics.RECOVERIES.labels("interrupted_spawn").inc()
            finally:
                sp.instance = ""
    except (lxd.LxdUnavailable, TerraformError, WorkspaceBusy, StateUnreadable) as e:
        sp.log.error("Could not clean up after the interrupted spawn of %s: %s", name, e)


async def dead_reason(spawner) -> str | None:
    """Why the server is dead, or None while it runs or when nobody can tell.

    The image's server unit powers its container off when it ends (exits, or fails for good),
    so the instance's status is the server's: read from one listing that every spawner shares.
    Only a clear, fresh answer ends a server: "gone" or "Stopped" in the listing is confirmed by
    asking for this instance; "cannot tell" (LXD unreachable or slow, an instance starting or
    frozen) never means dead."""
    sp = spawner
    try:
        info = await lxd.instance_status(sp.endpoint, sp.instance, sp.status_max_age)
        if info is not None and info.status not in ("Stopped", ""):
            if info.status != "Running":
                sp.log.warning("poll(%s): the instance is %s; not calling it dead", sp.instance, info.status)
            elif info.location:
                sp.member = info.location
            return None
        info = await lxd.instance(sp.endpoint, sp.instance)
        if info is None:
            return "the instance no longer exists"
        if info.status == "Stopped":
            return "the instance is Stopped (its server ended)"
        return None  # it was (re)started since the listing
    except lxd.LxdUnavailable as e:
        # Cannot tell: do not declare a server dead because LXD is briefly unreachable.
        sp.log.warning("poll(%s): %s", sp.instance, e)
        return None


async def clean_up_dead(spawner, reason: str) -> None:
    """The hub will not call stop() for a server poll() reports dead: clean up here, so no
    container or port is left behind and the audit says what happened."""
    try:
        await stopping.stop(spawner, reason=f"found dead by poll: {reason}")
        metrics.RECOVERIES.labels("dead_server").inc()
    except Exception as e:  # recorded in the audit by stop(); the server is dead either way
        spawner.log.error("Cleaning up dead server %s failed: %s", spawner.instance, e)
    spawner.instance = ""  # done: a later poll (the hub's stop checks again) finds nothing to do
