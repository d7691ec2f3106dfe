"""The steps of a stop: shut the instance down, `terraform destroy` (or stop a kept instance),
record it; also the clean-up of a failed start and deleting a server for good. Each takes the
Server value of the operation; the caller holds the workspace's lock and commits the record."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

from .. import metrics
from ..systems import initialising, lxd
from ..systems.terraform import TerraformError
from ..systems.workspace import DESTROY_ENV
from .server import Server
from .stages import Stages


async def stop(server: Server, record: dict, keep: bool) -> None:
    """Destroy the server, or (keep) stop its instance and keep it; `record` is the audit
    record's head (audit.stop_record). A failure is audited, then raised."""
    ws = server.ws
    stages = Stages()
    try:
        await asyncio.to_thread(ws.state_resources)  # unreadable: touch nothing, say why
        if keep:
            with stages.timed("stop"):
                await stop_instance(server)
        else:
            await destroy(server, stages)
    except Exception as e:
        metrics.observe_stop(stages, "failed")
        await ws.audit({**record, "outcome": "failed", "error": str(e), **stages.record(),
                        **await server.versions()})
        raise
    metrics.observe_stop(stages, "ok")
    await ws.scrub_secrets({server.token})
    await ws.audit({**record, "outcome": "ok", **stages.record(), **await server.versions()})


#: Seconds a kept instance gets to stop cleanly (its server and kernels end, its files are
#: flushed by their programs) before it is forced off; stop_grace_period when longer.
KEPT_STOP_GRACE = 30.0


async def stop_instance(server: Server) -> bool:
    """Stop a kept instance (it stays, with its files); False when it is not there. A clean
    stop first; one that does not end in time (a container still booting may not heed it) is
    forced: an instance left running would hold its port while the hub counts it stopped."""
    if not await lxd.instance(server.endpoint, server.instance):
        return False
    await lxd.shut_down(server.endpoint, server.instance, max(KEPT_STOP_GRACE, server.stop_grace))
    return True


async def delete_forever(server: Server) -> Path:
    """The server (or its user) is deleted: destroy whatever it has, kept instance included,
    and archive the workspace beside the others (`<server>.deleted-<time>`), audit record
    included. The caller holds the lock. Returns the archive's path."""
    ws = server.ws
    try:
        await destroy(server)
    except Exception as e:
        await ws.audit({"operation": "delete_forever", **server.who, "outcome": "failed",
                        "error": str(e), **await server.versions()})
        raise
    await ws.scrub_secrets({server.token})
    await ws.audit({"operation": "delete_forever", **server.who, "outcome": "ok", **await server.versions()})
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    archived = ws.path.with_name(f"{ws.path.name}.deleted-{stamp}")
    await asyncio.to_thread(os.rename, ws.path, archived)
    server.log.info("Archived workspace of %s to %s", server.instance, archived)
    return archived


async def clean_failed_start(server: Server, record: dict, member: str, stages: Stages, error: str,
                             keep: bool, extra: dict | None = None) -> None:
    """Undo what a failed start made, so no container or port is left behind; a kept instance
    (keep) is stopped and stays as it was, with its files. Audited (`record`: the start's
    audit record; `member`: where it was placed), with `extra` (the reference the user was
    given). Raises the clean-up's own error when it failed too (after the audit): the instance
    may still be there, bound to its port, and the next stop or start tries again."""
    log, ws = server.log, server.ws
    log.error("Start of %s failed: %s", server.instance, error)
    cleanup = {"cleanup": "kept instance stopped, files kept" if keep else "destroyed"}
    failure: Exception | None = None
    try:
        with stages.timed("cleanup"):  # its shutdown and destroy are timed within
            if keep:
                await stop_instance(server)
            else:
                await destroy(server, stages)
    except Exception as e:  # recorded; the original failure is what the user sees
        log.error("Cleaning up %s after a failed start also failed: %s", server.instance, e)
        cleanup = {"cleanup": "failed", "cleanup_error": str(e)}
        failure = e
    metrics.RECOVERIES.labels("failed_start").inc()
    try:
        await ws.scrub_secrets({server.token})
    except OSError as e:
        log.error("Could not remove the token of %s from its workspace: %s", server.instance, e)
    await ws.audit({**record, "member": member, "outcome": "failed", "error": error, **(extra or {}),
                    **cleanup, **stages.record(), **await server.versions()})
    if failure is not None:
        raise failure


#: The destroy plan made while the instance shuts down; applied once it is off, then deleted.
DESTROY_PLAN = "destroy.tfplan"


async def destroy(server: Server, stages: Stages | None = None) -> None:
    """Remove everything the workspace made, and an instance of ours Terraform does not know.

    Terraform plans the destroy while the instance shuts down (a plan reads nothing from LXD
    without a refresh), and then applies that plan: the shutdown hides the plan's own cost
    (terraform and provider start-ups), and a saved plan's apply starts the provider twice,
    not four times."""
    stages = stages or Stages()
    ws = server.ws
    initialised = await asyncio.to_thread(lambda: ws.tfvars.exists() and (ws.path / ".terraform").exists())
    if initialised:
        await initialising.repoint(server.terraform, ws, server.module_source, server.log,
                                   {"user": server.user, "server": server.name})
        planning = asyncio.ensure_future(_plan_destroy(server))
        try:
            with stages.timed("shutdown"):
                await _shut_down_first(server)
            with stages.timed("destroy"):
                await _terraform_destroy(server, planning)
        finally:
            if not planning.done():  # the shutdown failed or this stop was cancelled
                planning.cancel()
            await asyncio.gather(planning, return_exceptions=True)  # its terraform has exited
            await asyncio.to_thread((ws.path / DESTROY_PLAN).unlink, missing_ok=True)
    if server.instance:
        info = await lxd.instance(server.endpoint, server.instance)
        if lxd.made_for(info, ws.path, server.owner):
            await lxd.delete_instance(server.endpoint, server.instance)
            metrics.ORPHANS_CLEANED.inc()  # ours, but no state held it


async def _plan_destroy(server: Server) -> None:
    # No refresh: the instance is being stopped (or is gone, which the apply then says).
    await server.terraform.run(server.ws, "plan", "-destroy", "-refresh=false", f"-out={DESTROY_PLAN}",
                               env=DESTROY_ENV, label="destroy-plan")


async def _shut_down_first(server: Server) -> None:
    """Stop our instance through the API before `terraform destroy`: the provider's own clean
    stop waits in 3 s steps; stopped, its destroy only deletes."""
    if not server.instance:
        return
    info = await lxd.instance(server.endpoint, server.instance)
    if lxd.made_for(info, server.ws.path, server.owner) and info.status != "Stopped":
        await lxd.shut_down(server.endpoint, server.instance, server.stop_grace)


async def _terraform_destroy(server: Server, planning: asyncio.Future) -> None:
    tf, ws = server.terraform, server.ws
    try:
        await planning
        await tf.run(ws, "apply", DESTROY_PLAN, env=DESTROY_ENV, label="destroy")
    except TerraformError as e:
        info = await lxd.instance(server.endpoint, server.instance) if server.instance else None
        if info is not None:
            # Its shutdown failed or timed out: force it off, then destroy again.
            if info.status == "Stopped":
                raise
            server.log.warning("Destroy of %s failed (%s); forcing it off and retrying", server.instance, e)
            await lxd.shut_down(server.endpoint, server.instance, grace=0)
            await tf.run(ws, "destroy", env=DESTROY_ENV)
            return
        # The instance was deleted behind Terraform's back: forget it, then destroy whatever
        # else the module made.
        forgotten = await tf.runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
        server.log.warning("Instance %s was already gone; removed %s from the state", server.instance, forgotten)
        await tf.run(ws, "destroy", env=DESTROY_ENV)
