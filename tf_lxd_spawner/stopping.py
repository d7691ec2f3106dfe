"""The steps of a stop: shut the instance down, `terraform destroy` (or stop a kept instance),
record it; also the clean-up of a failed start and deleting a server for good. The caller holds
the workspace's lock and records what exists afterwards."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

from . import audit, initialising, lxd, metrics
from .stages import Stages
from .terraform import TerraformError
from .workspace import DESTROY_ENV, Workspace


async def stop(spawner, ws: Workspace, keep: bool, reason: str = "") -> None:
    """Destroy the server, or (keep) stop its instance and keep it; the caller holds the
    workspace's lock and records the outcome. A failure is audited, then raised."""
    sp = spawner
    stages = Stages()
    record = audit.stop_record(sp, await asyncio.to_thread(ws.saved_inputs), reason, keep)
    try:
        await asyncio.to_thread(ws.state_resources)  # unreadable: touch nothing, say why
        if keep:
            with stages.timed("stop"):
                await stop_instance(sp)
        else:
            await destroy(sp, ws, stages)
    except Exception as e:
        metrics.observe_stop(stages, "failed")
        await ws.audit({**record, "outcome": "failed", "error": str(e), **stages.record(),
                        **await audit.versions(sp, ws)})
        raise
    metrics.observe_stop(stages, "ok")
    await ws.scrub_secrets({sp.api_token or ""})
    await ws.audit({**record, "outcome": "ok", **stages.record(), **await audit.versions(sp, ws)})


#: Seconds a kept instance gets to stop cleanly (its server and kernels end, its files are
#: flushed by their programs) before it is forced off; stop_grace_period when longer.
KEPT_STOP_GRACE = 30.0


async def stop_instance(spawner) -> bool:
    """Stop a kept instance (it stays, with its files); False when it is not there. A clean
    stop first; one that does not end in time (a container still booting may not heed it) is
    forced: an instance left running would hold its port while the hub counts it stopped."""
    if not await lxd.instance(spawner.endpoint, spawner.instance):
        return False
    await lxd.shut_down(spawner.endpoint, spawner.instance, max(KEPT_STOP_GRACE, spawner.stop_grace_period))
    return True


async def delete_forever(spawner, ws: Workspace) -> Path:
    """The server (or its user) is deleted: destroy whatever it has, kept instance included,
    and archive the workspace beside the others (`<server>.deleted-<time>`), audit record
    included. The caller holds the lock. Returns the archive's path."""
    sp = spawner
    try:
        await destroy(sp, ws)
    except Exception as e:
        await ws.audit({"operation": "delete_forever", **audit.server_fields(sp), "outcome": "failed",
                        "error": str(e), **await audit.versions(sp, ws)})
        raise
    await ws.scrub_secrets({sp.api_token or ""})
    await ws.audit({"operation": "delete_forever", **audit.server_fields(sp), "outcome": "ok",
                    **await audit.versions(sp, ws)})
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    archived = ws.path.with_name(f"{ws.path.name}.deleted-{stamp}")
    await asyncio.to_thread(os.rename, ws.path, archived)
    sp.log.info("Archived workspace of %s to %s", sp.instance, archived)
    return archived


async def clean_failed_start(spawner, plan, ws: Workspace, record: dict, stages: Stages, error: str,
                             keep: bool, extra: dict | None = None) -> bool:
    """Undo what a failed start made, so no container or port is left behind; a kept instance
    (keep) is stopped and stays as it was, with its files. Audited, with `extra` (the reference
    the user was given). Returns False when the clean-up failed too: the instance may still be
    there, bound to its port, and the next stop or start tries again."""
    sp = spawner
    sp.log.error("Start of %s failed: %s", sp.instance, error)
    cleanup = {"cleanup": "kept instance stopped, files kept" if keep else "destroyed"}
    ok = True
    try:
        with stages.timed("cleanup"):  # its shutdown and destroy are timed within
            if keep:
                await stop_instance(sp)
            else:
                await destroy(sp, ws, stages)
    except Exception as e:  # recorded; the original failure is what the user sees
        sp.log.error("Cleaning up %s after a failed start also failed: %s", sp.instance, e)
        cleanup = {"cleanup": "failed", "cleanup_error": str(e)}
        ok = False
    metrics.RECOVERIES.labels("failed_start").inc()
    try:
        await ws.scrub_secrets({sp.api_token or ""})
    except OSError as e:
        sp.log.error("Could not remove the token of %s from its workspace: %s", sp.instance, e)
    await ws.audit({**record, "member": plan.target or "", "outcome": "failed", "error": error, **(extra or {}),
                    **cleanup, **stages.record(), **await audit.versions(sp, ws)})
    return ok


#: The destroy plan made while the instance shuts down; applied once it is off, then deleted.
DESTROY_PLAN = "destroy.tfplan"


async def destroy(spawner, ws: Workspace, stages: Stages | None = None) -> None:
    """Remove everything the workspace made, and an instance of ours Terraform does not know.

    Terraform plans the destroy while the instance shuts down (a plan reads nothing from LXD
    without a refresh), and then applies that plan: the shutdown hides the plan's own cost
    (terraform and provider start-ups, 0.3 s), and a saved plan's apply starts the provider
    twice, not four times."""
    stages = stages or Stages()
    initialised = await asyncio.to_thread(lambda: ws.tfvars.exists() and (ws.path / ".terraform").exists())
    if initialised:
        await initialising.repoint(spawner, ws, spawner.module_source)
        planning = asyncio.ensure_future(_plan_destroy(spawner, ws))
        try:
            with stages.timed("shutdown"):
                await _shut_down_first(spawner, ws)
            with stages.timed("destroy"):
                await _terraform_destroy(spawner, ws, planning)
        finally:
            if not planning.done():  # the shutdown failed or this stop was cancelled
                planning.cancel()
            await asyncio.gather(planning, return_exceptions=True)  # its terraform has exited
            await asyncio.to_thread((ws.path / DESTROY_PLAN).unlink, missing_ok=True)
    if spawner.instance:
        info = await lxd.instance(spawner.endpoint, spawner.instance)
        if lxd.made_for(info, ws.path, await spawner.owner_id()):
            await lxd.delete_instance(spawner.endpoint, spawner.instance)
            metrics.ORPHANS_CLEANED.inc()  # ours, but no state held it


async def _plan_destroy(spawner, ws: Workspace) -> None:
    # No refresh: the instance is being stopped (or is gone, which the apply then says).
    await spawner.run_terraform(ws, "plan", "-destroy", "-refresh=false", f"-out={DESTROY_PLAN}",
                                env=DESTROY_ENV, label="destroy-plan")


async def _shut_down_first(spawner, ws: Workspace) -> None:
    """Stop our instance through the API before `terraform destroy`: the provider's own clean
    stop waits in 3 s steps; stopped, its destroy only deletes."""
    if not spawner.instance:
        return
    info = await lxd.instance(spawner.endpoint, spawner.instance)
    if lxd.made_for(info, ws.path, await spawner.owner_id()) and info.status != "Stopped":
        await lxd.shut_down(spawner.endpoint, spawner.instance, spawner.stop_grace_period)


async def _terraform_destroy(spawner, ws: Workspace, planning: asyncio.Future) -> None:
    sp = spawner
    try:
        await planning
        await sp.run_terraform(ws, "apply", DESTROY_PLAN, env=DESTROY_ENV, label="destroy")
    except TerraformError as e:
        info = await lxd.instance(sp.endpoint, sp.instance) if sp.instance else None
        if info is not None:
            # Its shutdown failed or timed out: force it off, then destroy again.
            if info.status == "Stopped":
                raise
            sp.log.warning("Destroy of %s failed (%s); forcing it off and retrying", sp.instance, e)
            await lxd.shut_down(sp.endpoint, sp.instance, grace=0)
            await sp.run_terraform(ws, "destroy", env=DESTROY_ENV)
            return
        # The instance was deleted behind Terraform's back: forget it, then destroy whatever
        # else the module made.
        forgotten = await sp.runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
        sp.log.warning("Instance %s was already gone; removed %s from the state", sp.instance, forgotten)
        await sp.run_terraform(ws, "destroy", env=DESTROY_ENV)
