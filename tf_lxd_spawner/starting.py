"""The steps of a start after preflight: lock the workspace, choose a member, render, init,
apply, write files, start, run commands, wait for the server; a failure is cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from urllib.parse import urlparse

from jupyterhub.utils import maybe_future
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from . import audit, commands, lxd, metrics, provider, stopping
from .errors import SpawnError
from .module_inputs import container_env, hub_address, module_inputs
from .placement import least_loaded, reservations
from .ports import ports, resolve
from .stages import Stages
from .terraform import TerraformError, planned_replacements
from .workspace import SECRET_INPUTS, StateUnreadable, Workspace, render_root, secret_env

WILDCARD = "0.0.0.0"


async def start(spawner, plan, stages: Stages) -> str:
    """Make the server under the workspace's lock; returns its URL."""
    ws = spawner.workspace_dir()
    spawner.workspace = str(ws.path)
    spawner.progress_bar.emit(5, f"Preparing workspace for {spawner.instance}")
    async with contextlib.AsyncExitStack() as held:
        with stages.timed("lock"):  # another start or stop of this server may hold it
            await held.enter_async_context(ws.lock())
        try:  # an unreadable state may hold a kept instance: decide nothing, touch nothing
            resuming = bool(await asyncio.to_thread(ws.state_resources))
        except StateUnreadable as e:
            raise SpawnError(f"cannot start {spawner.instance}: {e}") from None
        with stages.timed("placement"):
            async with reservations.decide:  # choose and reserve as one step
                plan.target = await place(spawner, plan)
                reservations.reserve(plan.target)
            metrics.PLACEMENTS.labels(plan.target or "daemon").inc()
        try:
            return await _create(spawner, plan, ws, stages, resuming)
        finally:
            reservations.release(plan.target)


async def place(spawner, plan) -> str | None:
    """The member to create the server on; None lets LXD choose (or standalone LXD)."""
    members = plan.members  # listed by preflight for this spawn
    if not members or spawner.placement == "lxd":
        return None
    if callable(spawner.placement):
        return await maybe_future(spawner.placement(spawner, members))
    load = await lxd.instance_counts(spawner.endpoint, spawner.count_managed_only)
    load.update(reservations.snapshot())
    return least_loaded(members, load, spawner.host_weights, spawner.excluded_members)


def member_address(spawner, plan, name: str | None) -> str:
    """The address of a cluster member (as an IP address), the remote standalone server's, or
    127.0.0.1 for LXD on this host."""
    if plan.members:
        by_name = {m.name: m for m in plan.members}
        if name in by_name and by_name[name].address:
            return resolve(by_name[name].address)
        raise SpawnError(f"LXD reports no address for cluster member {name!r}")
    if spawner.remote_endpoint:
        return resolve(urlparse(spawner.lxd_endpoint).hostname or "127.0.0.1")
    return "127.0.0.1"


async def _listen_on(spawner, plan, ws: Workspace, resuming: bool) -> tuple[str, int | None]:
    """Address and port for the server's proxy device: on the chosen member (all its addresses
    when LXD chooses the member), and for a kept instance the port it already had when that is
    still free."""
    if spawner.connect_via != "proxy":
        return "127.0.0.1", None
    if plan.members and not plan.target:
        address = WILDCARD  # placement = "lxd": the member is known only after apply
    else:
        address = await asyncio.to_thread(member_address, spawner, plan, plan.target)
    previous = (await asyncio.to_thread(ws.saved_inputs)).get("listen_port") if resuming else None
    return address, ports.reuse_or_allocate(address, previous, *spawner.proxy_port_range)


async def _connect_url(spawner, plan, outputs: dict) -> str:
    """Where the hub reaches the server: the module's connect address, or, when the proxy
    listens on all addresses, the address of the member the instance landed on."""
    address = outputs["connect_address"]
    if address in (WILDCARD, "::", ""):
        address = await asyncio.to_thread(member_address, spawner, plan, outputs.get("location") or plan.target)
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{outputs['connect_port']}"


async def _create(spawner, plan, ws: Workspace, stages: Stages, resuming: bool) -> str:
    sp = spawner
    sp.listen_address, sp.listen_port = "127.0.0.1", None
    sp.ip, sp.port = "127.0.0.1", sp.server_port  # where the server binds, inside
    _, _, api_inside = hub_address(sp)
    record = audit.start_record(sp)
    bar = sp.progress_bar
    ticker = None
    try:
        with stages.timed("render"):
            sp.listen_address, sp.listen_port = await _listen_on(sp, plan, ws, resuming)
            environment = container_env(sp, api_inside)
            secrets = secret_env("server_environment", environment)
            inputs = await module_inputs(sp, plan, sp.listen_address, sp.listen_port)
            provider_settings = await asyncio.to_thread(
                provider.settings, sp.provider_refresh_interval, sp.endpoint_url, sp.lxd_cert,
                sp.lxd_key, sp.lxd_verify, sp.state_dir)
            main_tf = render_root(sp.module_source, [*inputs, *SECRET_INPUTS], provider_settings)
            needs_init = await ws.prepare(main_tf, inputs)
        if needs_init:
            bar.emit(10, "Initialising Terraform")
            with stages.timed("init"):
                await sp.run_terraform(ws, "init")
                await ws.mark_initialised(main_tf)
        with stages.timed("check"):
            if not resuming:
                await _remove_stray_instance(sp, ws)
            elif not sp.remove:
                await _refuse_replacing_kept_instance(sp, ws, secrets)
        bar.emit(30, f"Applying the notebook module for {sp.instance}")
        ticker = asyncio.ensure_future(bar.tick_while_creating(sp.instance))
        with stages.timed("apply"):
            await _apply(sp, plan, ws, secrets)
            ticker.cancel()
            outputs = await asyncio.to_thread(ws.state_outputs)
        by_provider = inputs.get("files_via_provider", True)
        if not by_provider:  # the module made the instance stopped: write its files, then start it
            bar.emit(75, f"Writing files into {sp.instance}")
            env_file = {**outputs["environment_file"], "content": json.dumps(environment)}
            with stages.timed("files"):
                await lxd.push_files(sp.endpoint, sp.instance, [*(outputs.get("files") or []), env_file])
        if resuming or not by_provider:  # a kept instance: apply refreshed its files
            bar.emit(80, f"Starting {'kept ' if resuming else ''}instance {sp.instance}")
            with stages.timed("start"):
                await lxd.set_running(sp.endpoint, sp.instance, True)
        url = await _connect_url(sp, plan, outputs)
        with stages.timed("commands"):
            await commands.run_prepare_commands(sp, plan)
            await commands.run_post_hub_commands(sp, plan)
        if sp.wait_for_server:
            bar.emit(88, f"Waiting for the server at {url}")
            with stages.timed("server"):
                await _wait_for_server(sp, url)
    except BaseException as e:
        if ticker:
            ticker.cancel()
        reason = "cancelled (timeout or stop)" if isinstance(e, asyncio.CancelledError) else str(e)
        keep = resuming and not sp.remove  # a kept instance holds the user's files
        await asyncio.shield(stopping.clean_failed_start(sp, plan, ws, record, stages,
                                                         reason or type(e).__name__, keep))
        if not isinstance(e, Exception) or isinstance(e, (TerraformError, SpawnError)):
            raise  # BaseException (KeyboardInterrupt, CancelledError...) stays what it is
        raise SpawnError(f"starting {sp.instance} failed: {e}") from e
    sp.member = outputs.get("location") or plan.target or ""
    sp.url = url
    await ws.audit({**record, "member": sp.member, "outcome": "ok", "url": sp.url,
                    "resumed": resuming, **stages.record(), **await audit.versions(sp, ws)})
    bar.emit(90, f"Server at {sp.url} {'answers' if sp.wait_for_server else 'is starting'}")
    return sp.url


async def _apply(spawner, plan, ws: Workspace, secrets: dict) -> None:
    on_event = spawner.progress_bar.terraform_listener(spawner.instance, plan.target)
    for attempt in range(1, spawner.apply_attempts + 1):
        try:
            await spawner.run_terraform(ws, "apply", env=secrets, on_event=on_event)
            return
        except TerraformError as e:
            if attempt == spawner.apply_attempts or not e.transient:
                raise
            spawner.log.warning("Retrying apply of %s after a transient error: %s", spawner.instance, e)
            spawner.progress_bar.emit(40, f"Retrying after a transient LXD error: {e}")


async def _wait_for_server(spawner, url: str) -> None:
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
                raise SpawnError(f"the server of {spawner.instance} did not answer at {url} within "
                                 f"{spawner.http_timeout:g} s (c.Spawner.http_timeout); its log is in the "
                                 "container's journal (journalctl -u jupyterhub-singleuser)")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
    finally:
        client.close()


async def _refuse_replacing_kept_instance(spawner, ws: Workspace, secrets: dict) -> None:
    """A kept instance holds the user's files: resuming must update it, never replace it
    (provider v1.5.0 replaces on any change of `config`, image, name...)."""
    spawner.progress_bar.emit(32, f"Checking that {spawner.instance} can be resumed in place")
    plan = await spawner.runner.run("plan", cwd=ws.path, env=secrets, log_path=ws.run_log("plan"))
    await ws.seal()
    replaced = planned_replacements(plan.events, "lxd_container")
    if replaced:
        raise SpawnError(
            f"resuming would replace the kept instance {spawner.instance} (and lose its files): the "
            "configuration changed in a way LXD cannot apply in place. Restore the previous "
            "settings, or delete the server to start afresh.")


async def _remove_stray_instance(spawner, ws: Workspace) -> None:
    """Called when the state holds nothing: an instance with our name (a hub killed mid-apply)
    is ours to remove if it carries our label and this workspace's path."""
    info = await lxd.instance(spawner.endpoint, spawner.instance)
    if lxd.made_for(info, ws.path, await spawner.owner_id()):
        spawner.log.warning("Removing stray instance %s left by an interrupted run", spawner.instance)
        await lxd.delete_instance(spawner.endpoint, spawner.instance)
        metrics.ORPHANS_CLEANED.inc()
