"""The steps of a stop: shut the instance down, `terraform destroy`, release the port, revoke a
forgotten token, record it; also the clean-up of a failed start and deleting a server for good."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os

from . import audit, lxd, metrics
from .ports import ports
from .stages import Stages
from .terraform import TerraformError
from .tokens import revoke_forgotten_tokens
from .workspace import DESTROY_ENV, Workspace


async def stop(spawner, reason: str = "") -> None:
    """Destroy (or, remove = False, stop) the server, under the workspace's lock."""
    sp = spawner
    ws = sp.workspace_dir()
    if not await asyncio.to_thread(ws.path.exists):
        sp.instance = ""
        return  # never got as far as a workspace: nothing to stop, nothing to record
    stages = Stages()
    # After a hub restart mid-spawn the state is empty, but the name is deterministic.
    sp.instance = sp.instance or sp.instance_name()
    record = audit.stop_record(sp, await asyncio.to_thread(ws.saved_inputs), reason)
    async with contextlib.AsyncExitStack() as held:
        with stages.timed("lock"):
            await held.enter_async_context(ws.lock())
        try:
            await asyncio.to_thread(ws.state_resources)  # unreadable: touch nothing, say why
            if sp.remove:
                await destroy(sp, ws, stages)
            elif sp.instance and await lxd.instance(sp.endpoint, sp.instance):
                with stages.timed("stop"):
                    await lxd.set_running(sp.endpoint, sp.instance, False)
        except Exception as e:
            metrics.observe_stop(stages, "failed")
            await ws.audit({**record, "outcome": "failed", "error": str(e), **stages.record(),
                            **await audit.versions(sp, ws)})
            raise
        metrics.observe_stop(stages, "ok")
        await ws.scrub_secrets({sp.api_token or ""})
        await ws.audit({**record, "outcome": "ok", **stages.record(), **await audit.versions(sp, ws)})
    ports.release(sp.listen_address, sp.listen_port)
    sp.listen_port = None
    sp.url = ""
    metrics.server_gone(sp.user.name, sp.name or "")
    revoke_forgotten_tokens(sp)


async def delete_forever(spawner) -> None:
    """The server (or its user) is deleted: destroy a kept instance and archive the workspace
    beside the others (`<server>.deleted-<time>`), audit record included."""
    sp = spawner
    ws = sp.workspace_dir()
    if not ws.path.exists():
        return
    sp.instance = sp.instance or sp.instance_name()
    async with ws.lock():
        await destroy(sp, ws)
        await ws.scrub_secrets({sp.api_token or ""})
        await ws.audit({"operation": "delete_forever", **audit.server_fields(sp), "outcome": "ok",
                        **await audit.versions(sp, ws)})
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        archived = ws.path.with_name(f"{ws.path.name}.deleted-{stamp}")
        await asyncio.to_thread(os.rename, ws.path, archived)
    sp.log.info("Archived workspace of %s to %s", sp.instance, archived)
    sp.workspace = ""


async def clean_failed_start(spawner, plan, ws: Workspace, record: dict, stages: Stages, reason: str,
                             keep: bool = False) -> None:
    """Destroy whatever a failed start made, so no container or port is left behind; a kept
    instance (remove = False) that failed to resume is stopped, not destroyed. When the clean-up
    fails too, the audit says so, and the port and instance name stay held: the instance may
    still be there and bound to it, and the hub's stop() tries again."""
    sp = spawner
    sp.log.error("Start of %s failed: %s", sp.instance, reason)
    cleanup = {"cleanup": "kept instance stopped" if keep else "destroyed"}
    try:
        with stages.timed("cleanup"):  # its shutdown and destroy are timed within
            if keep:
                if await lxd.instance(sp.endpoint, sp.instance):
                    await lxd.set_running(sp.endpoint, sp.instance, False)
            else:
                await destroy(sp, ws, stages)
    except Exception as e:  # recorded; the original failure is what the user sees
        sp.log.error("Cleaning up %s after a failed start also failed: %s", sp.instance, e)
        cleanup = {"cleanup": "failed", "cleanup_error": str(e)}
    metrics.RECOVERIES.labels("failed_start").inc()
    try:
        await ws.scrub_secrets({sp.api_token or ""})
    except OSError as e:
        sp.log.error("Could not remove the token of %s from its workspace: %s", sp.instance, e)
    await ws.audit({**record, "member": plan.target or "", "outcome": "failed", "error": reason, **cleanup,
                    **stages.record(), **await audit.versions(sp, ws)})
    if cleanup["cleanup"] != "failed":
        ports.release(sp.listen_address, sp.listen_port)
        sp.listen_port = None
        sp.instance = ""  # nothing of it is left to poll or stop


async def destroy(spawner, ws: Workspace, stages: Stages | None = None) -> None:
    """Remove everything the workspace made, and an instance of ours Terraform does not know."""
    stages = stages or Stages()
    initialised = await asyncio.to_thread(lambda: ws.tfvars.exists() and (ws.path / ".terraform").exists())
    if initialised:
        with stages.timed("shutdown"):
            await _shut_down_first(spawner, ws)
        with stages.timed("destroy"):
            await _terraform_destroy(spawner, ws)
    if spawner.instance:
        info = await lxd.instance(spawner.endpoint, spawner.instance)
        if lxd.made_for(info, ws.path, await spawner.owner_id()):
            await lxd.delete_instance(spawner.endpoint, spawner.instance)
            metrics.ORPHANS_CLEANED.inc()  # ours, but no state held it


async def _shut_down_first(spawner, ws: Workspace) -> None:
    """Stop our instance through the API before `terraform destroy`: the provider's own clean
    stop waits in 3 s steps; stopped, its destroy only deletes."""
    if not spawner.instance:
        return
    info = await lxd.instance(spawner.endpoint, spawner.instance)
    if lxd.made_for(info, ws.path, await spawner.owner_id()) and info.status != "Stopped":
        await lxd.shut_down(spawner.endpoint, spawner.instance, spawner.stop_grace_period)


async def _terraform_destroy(spawner, ws: Workspace) -> None:
    sp = spawner
    # No refresh: the instance was just stopped (or is gone, which the delete then says).
    try:
        await sp.run_terraform(ws, "destroy", "-refresh=false", env=DESTROY_ENV)
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
