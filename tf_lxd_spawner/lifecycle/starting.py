"""The steps of a start after preflight: lock the workspace, choose a member, render, init,
apply, write files, start, run commands, wait for the server; a failure is cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jupyterhub.utils import maybe_future
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from .. import metrics
from ..errors import SpawnError
from ..homes import shared_folders, storage
from ..systems import initialising, lxd, modules, provider
from ..systems.terraform import TerraformError, planned_replacements
from ..systems.workspace import SECRET_INPUTS, Workspace, render_root, secret_env
from . import audit, prepare_commands, stopping
from .connect import connect_url, listen_on
from .module_inputs import container_env, hub_address, module_inputs
from .placement import (
    NoMemberAvailable,
    eligible,
    least_loaded,
    reservations,
    restricted,
)
from .server import Server
from .stages import Stages

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner
    from .preflight import Checked

#: The resume check's plan, applied as it is (it holds the server's environment: deleted after).
RESUME_PLAN = "resume.tfplan"


@dataclass
class Attempt:
    """What one start chose and made so far: read by the spawner after it succeeds or fails
    (which port to release, which member it went to), written only here."""
    resuming: bool = False
    #: A kept instance gets its home volume for the first time: copy its home's files into it.
    import_home: bool = False
    target: str | None = None
    listen_address: str = "127.0.0.1"
    listen_port: int | None = None
    member: str = ""
    url: str = ""
    record: dict = field(default_factory=dict)


async def start(spawner: LxdSpawner, server: Server, checked: Checked, stages: Stages, attempt: Attempt) -> str:
    """Make (or resume) the server; the caller holds the workspace's lock and has recorded that
    a start is in progress. `spawner` is read for settings only; what this start works on is
    `server`. Returns its URL; a failure propagates with `attempt` saying what was chosen, for
    the caller's clean-up."""
    spawner.progress_bar.emit(5, f"Preparing workspace for {server.instance}")
    attempt.record = audit.start_record(spawner)
    pinned = {}  # {what: member} of the volumes it mounts that are on one member's pool
    if checked.volume is not None:
        pinned["your home volume"] = await storage.location(spawner, checked.volume)
        attempt.record["volume"] = checked.volume.name
    if checked.shared:
        pinned.update(await shared_folders.locations(spawner, checked.shared))
        attempt.record["shared"] = {m.folder.name: "ro" if m.readonly else "rw" for m in checked.shared}
    pinned = {what: member for what, member in pinned.items() if member}
    if pinned and attempt.resuming and checked.members:
        # A kept instance resumes only where it is: its member counts as one more pin, so one
        # of its volumes elsewhere is refused by name (never a replaced instance).
        info = await lxd.instance(server.endpoint, server.instance)
        if info is not None and info.location:
            pinned[f"your kept server {server.instance}"] = info.location
    with stages.timed("placement"):
        async with reservations.decide:  # choose and reserve as one step
            if pinned:
                target = await volume_target(spawner, server, checked, pinned)
            elif attempt.resuming:
                target = await resume_target(spawner, server, checked)
            else:
                target = await place(spawner, server, checked)
            checked.target = attempt.target = target
            reservations.reserve(checked.target)
        metrics.PLACEMENTS.labels(checked.target or "daemon").inc()
    try:
        if checked.volume is not None:
            with stages.timed("storage"):
                where = await storage.ensure(spawner, checked.volume, checked.target)
                checked.home_full = await storage.report_use(spawner, checked.volume, where)
            if checked.members and where and where != checked.target:
                # LXD chose the volume's member, or another server of this user made the volume
                # first, elsewhere: the server goes where the volume is.
                pinned["your home volume"] = where
                checked.target = attempt.target = await volume_target(spawner, server, checked, pinned)
        # Before the inputs are written: a folder revoked since the last start is audited too.
        await shared_folders.audit_access(spawner, server.ws, checked.shared)
        if checked.shared:
            with stages.timed("shared"):
                made = await shared_folders.ensure_all(spawner, checked.shared, checked.target)
            if checked.members and any(made[what] != checked.target for what in made):
                pinned.update(made)
                checked.target = attempt.target = await volume_target(spawner, server, checked, pinned)
        async with contextlib.AsyncExitStack() as first:
            # Volumes no instance has used yet are attached by one start at a time (each one's
            # first attach shifts its files).
            for vol in [checked.volume, *(m.volume for m in checked.shared)]:
                if vol is not None:
                    await first.enter_async_context(storage.first_attach(spawner, vol, checked.target))
            return await _create(spawner, server, checked, stages, attempt)
    finally:
        reservations.release(target)


async def volume_target(spawner: LxdSpawner, server: Server, checked: Checked, pinned: dict[str, str]) -> str | None:
    """Volumes on a pool local to one member (`pinned`: {what: member}, a home, a shared
    folder): the server goes to that member, or the spawn is refused naming it (an empty home
    elsewhere would look like lost work); volumes on two members are refused, naming both."""
    if not checked.members:
        return None
    if len(set(pinned.values())) > 1:
        where = "; ".join(f"{what} is on {member}" for what, member in sorted(pinned.items()))
        raise SpawnError(
            f"your server mounts volumes that are on different cluster members ({where}): it can only start "
            "where all of them are. Nothing was changed; ask the administrator.", reason="placement",
            status_code=409,
            log_message=f"{server.instance}: {where}. On a pool local to each member, move one of them (tf-lxd-"
                        "spawner home move; lxc storage volume move for a shared folder), or put shared folders on "
                        "a pool every member reaches (ceph, cephfs)")
    what, member_name = sorted(pinned.items())[0]
    member = {m.name: m for m in checked.members}.get(member_name)
    usable = member is not None and member.status == "Online" and member_name not in spawner.excluded_members
    if not usable:
        why = ("excluded (c.LxdSpawner.excluded_members)" if member_name in spawner.excluded_members
               else (member.status if member else "not in the cluster"))
        raise SpawnError(
            f"{what} is on cluster member {member_name}, which is {why}: your server can only "
            "start there, with your files. Try again when that member is back, or ask the administrator.",
            reason="placement")
    _refuse_disallowed(spawner, checked, member, what)
    if callable(spawner.placement) or spawner.placement == "lxd":
        server.log.info("%s goes to %s, where %s is", server.instance, member_name, what)
    return member_name


def _refuse_disallowed(spawner: LxdSpawner, checked: Checked, member, what: str) -> None:
    """What holds the user's files is on `member`: refused when this server's settings (its
    profile's allowed_members or cluster_group) do not allow that member; never moved."""
    if not restricted(spawner):
        return
    try:
        allowed = eligible(checked.members, spawner.allowed_members, spawner.cluster_group)
    except NoMemberAvailable:
        allowed = []
    if member not in allowed:
        raise SpawnError(
            f"{what} is on cluster member {member.name}, which this server's settings do not allow "
            "(allowed_members, cluster_group): your server can only start there, with your files. Choose "
            "another profile, or ask the administrator to move it or to allow that member.", reason="placement")


async def resume_target(spawner: LxdSpawner, server: Server, checked: Checked) -> str | None:
    """A kept instance resumes where it is: placing it anywhere else would make Terraform
    replace it (and lose its files). Refused when that member cannot take it now."""
    if not checked.members:
        return None
    info = await lxd.instance(server.endpoint, server.instance)
    if info is None or not info.location:
        return await place(spawner, server, checked)  # gone behind our back: nothing to keep, place afresh
    member = {m.name: m for m in checked.members}.get(info.location)
    if member is None or member.status != "Online" or member.name in spawner.excluded_members:
        why = "excluded (c.LxdSpawner.excluded_members)" if member and member.name in spawner.excluded_members \
            else f"{member.status if member else 'not in the cluster'}"
        raise SpawnError(
            f"the kept server {server.instance} is on cluster member {info.location}, which is {why}: it "
            "can only resume there, where its files are. Try again when that member is back, or ask the "
            "administrator.", reason="placement")
    _refuse_disallowed(spawner, checked, member, f"the kept server {server.instance}")
    return member.name


async def place(spawner: LxdSpawner, server: Server, checked: Checked) -> str | None:
    """The member to create the server on; None lets LXD choose (or standalone LXD)."""
    members = checked.members  # listed by preflight for this spawn
    if not members or (spawner.placement == "lxd" and not restricted(spawner)):
        return None
    try:
        members = eligible(members, spawner.allowed_members, spawner.cluster_group)
        if callable(spawner.placement):
            return await maybe_future(spawner.placement(spawner, members))
        load = await lxd.instance_counts(server.endpoint, spawner.count_managed_only)
        load.update(reservations.snapshot())
        return least_loaded(members, load, spawner.host_weights, spawner.excluded_members)
    except NoMemberAvailable as e:  # a capacity problem, said as it is (not an internal error)
        raise SpawnError(f"no cluster member can take your server now: {e}. Try again later, or ask the "
                         "administrator.", reason="placement", status_code=503) from None


async def _create(spawner: LxdSpawner, server: Server, checked: Checked, stages: Stages, attempt: Attempt) -> str:
    sp, ws = spawner, server.ws
    resuming = attempt.resuming
    _, _, api_inside = hub_address(sp, by_socket=checked.hub_socket)
    bar = sp.progress_bar
    ticker = None
    try:
        with stages.timed("render"):
            attempt.listen_address, attempt.listen_port = await listen_on(sp, checked, ws, resuming)
            environment = container_env(sp, api_inside, checked.home_full)
            secrets = secret_env("server_environment", environment)
            inputs = await module_inputs(sp, checked, attempt.listen_address, attempt.listen_port)
            provider_settings = await asyncio.to_thread(
                provider.settings, sp.provider_refresh_interval, sp.endpoint_url, sp.lxd_cert,
                sp.lxd_key, sp.lxd_verify, sp.state_dir)
            source = await asyncio.to_thread(modules.pin, sp.state_dir, sp.module_source)
            main_tf = render_root(source, [*inputs, *SECRET_INPUTS], provider_settings)
            needs_init = await ws.prepare(main_tf, inputs)
            await asyncio.to_thread(_remove_stale_plans, ws)
        if needs_init:
            bar.emit(10, "Initialising Terraform")
            with stages.timed("init"):
                await initialising.initialise(server.terraform, ws, main_tf)
        # A resume's check saves the plan it approved, and the apply applies exactly that one.
        # It holds the server's environment (the API token): it never outlives this start.
        saved_plan = ws.path / RESUME_PLAN if resuming else None
        try:
            with stages.timed("check"):
                if not resuming:
                    await _remove_stray_instance(server)
                else:
                    await _refuse_replacing_kept_instance(sp, server, secrets, saved_plan)
            bar.emit(30, f"Applying the notebook module for {server.instance}")
            ticker = asyncio.ensure_future(bar.tick_while_creating(server.instance))
            with stages.timed("apply"):
                await _apply(sp, server, checked, secrets, saved_plan)
                ticker.cancel()
                outputs = await asyncio.to_thread(ws.state_outputs)
        finally:
            if saved_plan:
                await asyncio.to_thread(saved_plan.unlink, missing_ok=True)
        by_provider = inputs.get("files_via_provider", True)
        if not by_provider:  # the module made the instance stopped: write its files, then start it
            bar.emit(75, f"Writing files into {server.instance}")
            env_file = {**outputs["environment_file"], "content": json.dumps(environment)}
            with stages.timed("files"):
                await lxd.push_files(server.endpoint, server.instance, [*(outputs.get("files") or []), env_file])
        if resuming or not by_provider:  # a kept instance: apply refreshed its files
            bar.emit(80, f"Starting {'kept ' if resuming else ''}instance {server.instance}")
            with stages.timed("start"):
                await lxd.start(server.endpoint, server.instance)
        if resuming and attempt.import_home and checked.volume is not None:
            with stages.timed("home-import"):
                await storage.import_home(sp, checked.volume, server.instance, ws)
        attempt.member = outputs.get("location") or checked.target or ""
        with stages.timed("address"):  # instance-ip: may wait for the instance's IPv4
            url = attempt.url = await connect_url(sp, checked, outputs)
        with stages.timed("commands"):
            await prepare_commands.run_prepare_commands(sp, checked)
            await prepare_commands.run_post_hub_commands(sp, checked)
        if sp.wait_for_server:
            bar.emit(88, f"Waiting for the server at {url}")
            with stages.timed("server"):
                await _wait_for_server(sp, server, url)
    finally:
        if ticker:
            ticker.cancel()
    await ws.audit({**attempt.record, "member": attempt.member, "outcome": "ok", "url": url,
                    "resumed": resuming, **stages.record(), **await server.versions()})
    bar.emit(90, f"Server at {url} {'answers' if sp.wait_for_server else 'is starting'}")
    return url


def _remove_stale_plans(ws: Workspace) -> None:
    """Plans a hub killed mid-operation left behind (a resume's check, a stop's destroy): never
    to be applied now, and they may hold what the state held."""
    for name in (RESUME_PLAN, stopping.DESTROY_PLAN):
        (ws.path / name).unlink(missing_ok=True)


async def _apply(spawner: LxdSpawner, server: Server, checked: Checked, secrets: dict,
                 saved_plan: Path | None = None) -> None:
    """Apply the module; a resume applies the plan its check saved (no second refresh and
    plan: one terraform run fewer). A retry after a transient error plans afresh (a saved plan
    is stale once part of it was applied)."""
    on_event = spawner.progress_bar.terraform_listener(server.instance, checked.target)
    for attempt in range(1, spawner.apply_attempts + 1):
        try:
            args = [saved_plan.name] if saved_plan and attempt == 1 else []
            await server.terraform.run(server.ws, "apply", *args, env=secrets, on_event=on_event)
            return
        except TerraformError as e:
            if attempt == spawner.apply_attempts or not e.transient:
                raise
            server.log.warning("Retrying apply of %s after a transient error: %s", server.instance, e)
            spawner.progress_bar.emit(40, f"Retrying after a transient LXD error: {e}")


async def _wait_for_server(spawner: LxdSpawner, server: Server, url: str) -> None:
    """Return as soon as the server answers HTTP (any answer, as the hub's own check takes it).
    The hub's check backs off to seconds between tries; this one starts at 50 ms and stays
    under 250 ms, which costs the hub's event loop a few tries a second per spawn (not twenty:
    twenty spawns at once would make that hundreds)."""
    target = url + (spawner.server.base_url if spawner.server is not None else "/")
    client = AsyncHTTPClient(force_instance=True)
    deadline = time.monotonic() + spawner.http_timeout
    pause = 0.05
    try:
        while True:
            try:
                await client.fetch(target, raise_error=False, follow_redirects=False,
                                   connect_timeout=2, request_timeout=5)
                return  # any HTTP answer
            except HTTPClientError as e:  # 599: no HTTP answer (the proxy device closed it)
                if e.code != 599:
                    return
            except OSError:  # refused: the proxy device is not listening yet
                pass
            if time.monotonic() > deadline:
                message = (f"the server of {server.instance} did not answer at {url} within "
                           f"{spawner.http_timeout:g} s (c.Spawner.http_timeout); its log is in the "
                           "container's journal (journalctl -u jupyterhub-singleuser)")
                raise SpawnError(message, log_message=message + await _journal_tail(server))
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
    finally:
        client.close()


async def _journal_tail(server: Server, lines: int = 30) -> str:
    """The server's last journal lines, for the hub's log and the audit of a server that never
    answered: the container is destroyed by the clean-up that follows, and its journal with it."""
    try:
        code, out, err = await asyncio.wait_for(lxd.execute(
            server.endpoint, server.instance,
            ["journalctl", "-u", "jupyterhub-singleuser", "-n", str(lines), "--no-pager", "-o", "cat"]), 15)
    except Exception as e:  # the journal is a diagnosis; its absence must not hide the error
        return f"\n(the server's journal could not be read: {type(e).__name__}: {e})"
    return f"\nits last journal lines:\n{(out or err).rstrip()}" if (out or err).strip() else ""


async def _refuse_replacing_kept_instance(spawner: LxdSpawner, server: Server, secrets: dict, saved: Path) -> None:
    """A kept instance holds the user's files: resuming must update it, never replace it
    (provider v1.5.0 replaces on any change of `config`, image, name...). The plan it checked
    is saved at `saved` for the apply (the caller deletes it)."""
    spawner.progress_bar.emit(32, f"Checking that {server.instance} can be resumed in place")
    plan = await server.terraform.run(server.ws, "plan", f"-out={saved.name}", env=secrets)
    replaced = planned_replacements(plan.events, "lxd_container")
    if replaced:
        raise SpawnError(
            f"resuming would replace the kept instance {server.instance} (and lose its files): the "
            "configuration changed in a way LXD cannot apply in place. Your server and its files are "
            "kept as they were; ask the administrator to restore the previous settings, or delete the "
            "server to start afresh.", reason="resume",
            log_message=f"resuming {server.instance} refused: the plan replaces {', '.join(replaced)}")


async def _remove_stray_instance(server: Server) -> None:
    """Called when the state holds nothing: an instance with our name (a hub killed mid-apply)
    is ours to remove if it carries our label and this workspace's path. Any other one (another
    hub's on the same daemon, one made by hand) is left alone, and the start refused, saying
    whose it is, instead of failing in Terraform's create."""
    info = await lxd.instance(server.endpoint, server.instance)
    if info is None:
        return
    problem = lxd.not_ours(info.config, server.ws.path, server.owner, "instance_name_template")
    if problem:
        raise SpawnError(
            f"your server cannot be made: an instance named {server.instance} already exists, and it is not "
            "yours. Nothing was changed; ask the administrator.", reason="name",
            log_message=f"instance {server.instance} already exists and {problem}")
    server.log.warning("Removing stray instance %s left by an interrupted run", server.instance)
    await lxd.delete_instance(server.endpoint, server.instance)
    metrics.ORPHANS_CLEANED.inc()
