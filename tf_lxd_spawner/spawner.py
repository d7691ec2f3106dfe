"""LxdSpawner: JupyterHub's lifecycle calls (start, poll, stop, delete_forever, rename, state,
progress), as glue over the rooms of the package (docs/layout.md has the picture):

- settings.py: every setting an operator gives it, with its help;
- lifecycle/: the record of what exists (record.py: phases, named transitions, the action each
  phase asks of a start or stop, the one rule for what is kept), its one writer (keeper.py),
  and the steps: preflight, starting, stopping, recovery, renaming, with the Server value a
  stop or clean-up works on (server.py);
- homes/: each user's home volume, its snapshots, retention and operations;
- systems/: LXD/Incus, Terraform, the workspace on disk, ports, names (plain values in, no
  JupyterHub);
- operator/: the `tf-lxd-spawner` command, doctor, orphans, the snapshots service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid

from jupyterhub.spawner import Spawner
from markupsafe import escape
from traitlets import default

from . import metrics
from .errors import SpawnError
from .homes import retention, storage
from .lifecycle import audit, preflight, profiles, recovery, renaming, settings_values, starting, stopping
from .lifecycle.connect import server_bind_ip
from .lifecycle.keeper import RecordKeeper
from .lifecycle.module_inputs import start_hub_relay
from .lifecycle.progress import Progress
from .lifecycle.record import Action, Phase, ServerState, legacy_record, read_record
from .lifecycle.server import Server
from .lifecycle.settings_values import ConfigError
from .lifecycle.stages import Stages
from .lifecycle.tokens import revoke_forgotten_tokens
from .settings import LxdSpawnerSettings, default_module_source
from .systems import backends, lxd, naming
from .systems.ports import ports
from .systems.terraform import Terraform, TerraformError, TerraformRunner, concurrency_gate, pick_binary
from .systems.workspace import StateUnreadable, Workspace, WorkspaceBusy, hub_id, workspace_path

#: Tasks started from synchronous hub callbacks (load_state), kept until they end.
_background: set[asyncio.Task] = set()

__all__ = ["LxdSpawner", "SpawnError", "default_module_source"]


class LxdSpawner(Spawner, LxdSpawnerSettings):
    """One LXD container per JupyterHub server, made and destroyed by Terraform."""

    # ---- runtime state (not configuration) ------------------------------------------------------
    @property
    def record(self) -> ServerState:
        """What exists for this server; changed only through self.keeper (lifecycle/keeper.py)."""
        return self.keeper.record

    @property
    def instance(self) -> str:
        """The instance's name: the record's, or the deterministic one this server gets."""
        return self.record.instance or self.instance_name()

    @property
    def member(self) -> str:
        return self.record.member

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def workspace(self) -> str:
        return self.record.workspace

    @property
    def listen_address(self) -> str:
        return self.record.listen_address

    @property
    def listen_port(self) -> int | None:
        return self.record.listen_port

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    # ---- what the step modules read -----------------------------------------------------------
    @property
    def backend_info(self) -> backends.Backend:
        return backends.BACKENDS[self.backend]

    @property
    def endpoint_url(self) -> str:
        return backends.endpoint_url(self.backend_info, self.lxd_endpoint)

    @property
    def remote_endpoint(self) -> bool:
        """The daemon may be on another host (an https endpoint), not behind a local socket."""
        return backends.is_remote(self.lxd_endpoint)

    #: What an unset terraform_path picked: chosen (and logged) once per hub process, not
    #: looked up on PATH again for every Terraform run.
    _picked_binary: str | None = None

    @property
    def terraform_binary(self) -> str:
        if self.terraform_path:
            return self.terraform_path
        if LxdSpawner._picked_binary is None:
            binary = pick_binary("")
            found = shutil.which(binary)
            if found is None:  # neither installed: preflight says so; look again next time
                return binary
            self.log.info("terraform_path is not set: running %s (%s)", binary, found)
            LxdSpawner._picked_binary = binary
        return LxdSpawner._picked_binary

    @property
    def endpoint(self) -> lxd.Endpoint:
        return lxd.Endpoint(
            url=self.endpoint_url,
            cert=self.lxd_cert or None,
            key=self.lxd_key or None,
            verify=self.lxd_verify,
            timeout=self.lxd_timeout,
            daemon=self.backend_info.display,
        )

    @property
    def runner(self) -> TerraformRunner:  # only inside the event loop: the gate belongs to it
        env = {"TF_CLI_CONFIG_FILE": self.terraform_cli_config} if self.terraform_cli_config else {}
        if self.terraform_gogc:
            env["GOGC"] = str(self.terraform_gogc)
        return TerraformRunner(self.terraform_binary, env=env, gate=concurrency_gate(self.terraform_concurrency),
                               inherit=self.host_environment_allowlist, niceness=self.terraform_niceness)

    def workspace_dir(self) -> Workspace:
        if self.workspace:
            return Workspace(self.workspace)
        return Workspace(workspace_path(os.path.abspath(self.state_dir), self.user.name, self.name or ""))

    def expand(self, text: str) -> str:
        return text.format(username=self.user.name, servername=self.name or "")

    def instance_name(self) -> str:
        template = self.instance_name_template
        if not self.name:
            template = template.replace("{servername}", "").rstrip("-_")
        return naming.instance_name(template, self.user.name, self.name or "")

    @property
    def account(self) -> dict:
        name = naming.posix_username(self.user.name)
        return {"name": name, "home": f"/home/{name}"}

    async def owner_id(self) -> str:
        """This hub's id (kept in state_dir): the label that says an instance is ours."""
        if not self._hub_id:
            self._hub_id = await asyncio.to_thread(hub_id, os.path.abspath(self.state_dir))
        return self._hub_id

    @property
    def terraform(self) -> Terraform:  # only inside the event loop, as the runner
        return Terraform(self.runner, os.path.abspath(self.state_dir), self.share_terraform_init)

    async def server_in(self, ws: Workspace, instance: str = "") -> Server:
        """The value a stop, clean-up or deletion of this server works on."""
        return Server(user=self.user.name, name=self.name or "", instance=instance or self.instance_name(),
                      ws=ws, endpoint=self.endpoint, backend=self.backend, terraform=self.terraform,
                      owner=await self.owner_id(), log=self.log, stop_grace=self.stop_grace_period,
                      module_source=self.module_source, token=self.api_token or "")

    # ---- JupyterHub lifecycle ---------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        self.keeper = RecordKeeper()  # the one writer of the record (before traitlets may read it)
        super().__init__(*args, **kwargs)
        self.progress_bar = Progress()
        self.checked = preflight.Checked()  # what the last start checked and chose
        self._start_task: asyncio.Task | None = None
        self._cleanup_task: asyncio.Task | None = None  # a cancelled start's clean-up, still running
        self._hub_id = ""
        self._polling = False
        self.chosen_image = self.image
        self.profile = ""  # the slug of the profile this start chose ("" without profile_list)
        self._profile_saved: dict = {}  # settings as they were before the profile's overrides

    async def offered_profiles(self) -> list:
        """The profiles of profile_list (resolved when a callable) this user may choose."""
        return profiles.offered(await profiles.listed(self), self.user_groups())

    def user_groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", None) or []]

    async def apply_profile(self, options: dict) -> None:
        """The chosen profile's and options' overrides, on settings as they were before the
        last start's profile changed them; refused (ConfigError) when not on offer."""
        profiles.restore(self, self._profile_saved)
        offer = await profiles.listed(self)
        if not offer:
            self.profile = ""
            return
        selection = profiles.select(offer, options, self.user_groups())
        changed = profiles.apply_overrides(self, selection.overrides, self._profile_saved,
                                           f"profile {selection.profile.slug!r}")
        self.profile = selection.profile.slug
        self.log.info("%s uses profile %s %s%s", self.instance, self.profile, selection.values or "",
                      f", setting {', '.join(sorted(set(changed)))}" if changed else "")

    async def load_user_options(self) -> None:
        """The user's choices, first thing in a start (as KubeSpawner's): the chosen profile's
        overrides applied to this spawner, then the image; refused (SpawnError) when not on
        offer, before anything is made."""
        try:
            options = settings_values.checked_user_options(self.user_options)
            await self.apply_profile(options)
            if self.profile:  # the profile chose the image (an "image" option is the profile's)
                self.chosen_image = self.image
            else:
                self.chosen_image = settings_values.chosen_image(self.allowed_images, options.get("image"),
                                                                 self.image)
        except ConfigError as e:
            raise SpawnError(str(e)) from None

    @default("options_form")
    def _default_options_form(self):
        async def form(spawner):
            if spawner.profile_list:
                return profiles.render_form(await spawner.offered_profiles(), spawner.user_options)
            choices = settings_values.image_choices(spawner.allowed_images)
            if len(choices) < 2:
                return ""
            options = "".join(
                f'<option value="{escape(name)}"{" selected" if i == 0 else ""}>{escape(name)}</option>'
                for i, name in enumerate(choices)
            )
            return (
                '<label for="tf-lxd-image">Image</label>'
                f'<select class="form-control" name="image" id="tf-lxd-image">{options}</select>'
            )

        return form

    def options_from_form(self, formdata):
        if self.profile_list:
            return profiles.from_form(formdata)
        image = (formdata.get("image") or [""])[0]
        return {"image": image} if image else {}

    async def start(self):
        self.progress_bar.begin()
        retention.keep_purging(self)
        self._start_task = asyncio.ensure_future(self._start())
        try:
            return await self._start_task
        finally:
            self.progress_bar.end()

    async def progress(self):
        async for event in self.progress_bar.stream():
            yield event

    async def poll(self):
        if self._start_task is not None and not self._start_task.done():
            return None
        if self._cleanup_task is not None and not self._cleanup_task.done():
            return 0  # a cancelled start is being cleaned up: no server
        if self.record.phase is not Phase.RUNNING:
            await self._recover_unattended()
            return 0
        if self._polling:  # the last poll is still waiting on LXD: no pile of hung requests
            return None
        self._polling = True
        try:
            return await self._poll_running()
        finally:
            self._polling = False

    async def stop(self, now=False):
        await self._end_start_in_progress()
        await self._stop()

    async def delete_forever(self):
        """The server or its user is deleted: destroy everything it has, a kept instance too, and
        archive its workspace; then its home volume (storage). JupyterHub logs and swallows an
        error here, so it is also logged and audited (the record keeps what is left, for the
        orphans command)."""
        used = await self._delete_server()
        await self._delete_home(used)

    async def rename(self, old_name, new_name):
        """JupyterHub 6: a stopped named server is renamed; its workspace moves (renaming)."""
        await renaming.rename(self.keeper, self.state_dir, self.user.name, old_name, new_name,
                              instance=self.instance_name(), keep_before_records=not self.remove,
                              volume_per_server="{servername}" in self.storage_name_template, log=self.log)

    # -- a start --------------------------------------------------------------------------------
    async def _start(self) -> str:
        stages = Stages()
        ws = self.workspace_dir()
        self.progress_bar.emit(2, f"Checking the request for {self.instance}")
        outcome = "failed"
        try:
            with stages.timed("preflight"):
                try:
                    await self.load_user_options()
                    self.checked = await preflight.run(self)
                except SpawnError as e:  # refused before anything was made or touched
                    await self._audit_refusal(ws, e, stages)
                    raise
            async with contextlib.AsyncExitStack() as held:
                with stages.timed("lock"):  # another start or stop of this server may hold it
                    await held.enter_async_context(ws.lock())
                url = await self._start_locked(ws, stages, held)
            outcome = "ok"
            metrics.server_placed(self.user.name, self.name or "", self.member)
            return url
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.observe_spawn(stages, outcome, self.profile)

    async def _start_locked(self, ws: Workspace, stages: Stages, held: contextlib.AsyncExitStack) -> str:
        checked = self.checked
        try:  # an unreadable Terraform state may hold a kept instance: decide nothing, touch nothing
            await asyncio.to_thread(ws.state_resources)
            current = await self._recover(ws, await self._current(ws), "start")
        except (StateUnreadable, WorkspaceBusy) as e:
            error = SpawnError(f"cannot start {self.instance}: {e}", reason="state")
            await self._audit_refusal(ws, error, stages)
            raise error from None
        resuming = current.resumable
        if resuming and await lxd.instance(self.endpoint, current.instance) is None:
            current = await self._forget_vanished(ws, current)
            resuming = False
        instance = current.instance if resuming else self.instance_name()
        if resuming and checked.hub_socket and self.hub_api_via == "auto":
            checked.hub_socket = await preflight.resumed_by_socket(self, instance)
        volume = str(checked.volume.workspace) if checked.volume is not None else ""
        # A kept instance that never had a home volume gets its home's files copied into it: the
        # record names the volume only once that is done, so a failed copy is tried again.
        import_home = resuming and bool(volume) and not current.volume
        await self.keeper.commit(ws, current.creating(instance, str(ws.path), self.chosen_image, resuming,
                                                      "" if import_home else volume))
        attempt = starting.Attempt(resuming=resuming, import_home=import_home)
        self.ip, self.port = server_bind_ip(self), self.server_port  # where the server binds, inside
        try:
            url = await starting.start(self, await self.server_in(ws, instance), checked, stages, attempt)
        except asyncio.CancelledError as e:
            # Stopped mid-spawn (the pending page's Stop button, start_timeout): JupyterHub waits
            # one second for the spawn to end, then stops it, and refuses (500) while it is
            # still pending. So the start ends now; its clean-up goes on with the workspace's
            # lock, which every later start, stop and poll of this server waits for or sees.
            lock = held.pop_all()

            async def clean_up(cancelled=e):  # (`e` itself is unbound when the except block ends)
                try:
                    async with lock:
                        # First the interrupted Terraform and any LXD call the cancel left
                        # running in its thread end (either may be starting the instance this
                        # clean-up stops or destroys), then the clean-up.
                        await TerraformRunner.wait_for_interrupted()
                        await lxd.wait_for_abandoned()
                        await self._failed_start(ws, stages, attempt, cancelled)
                except Exception as failure:  # recorded by _failed_start; said here too
                    self.log.error("Cleaning up the cancelled start of %s failed: %s", self.instance, failure)

            self._cleanup_task = asyncio.ensure_future(clean_up())
            raise
        except BaseException as e:
            error = await asyncio.shield(self._failed_start(ws, stages, attempt, e))
            if error is None:
                raise  # BaseException (CancelledError, KeyboardInterrupt...) stays what it is
            raise error from e
        await self.keeper.commit(ws, self.record.running(
            attempt.member, url, attempt.listen_address, attempt.listen_port, keep_on_stop=not self.remove,
            settings=profiles.applied_values(self, self._profile_saved), profile=self.profile,
            volume=str(checked.volume.workspace) if checked.volume is not None else self.record.volume))
        return url

    async def _forget_vanished(self, ws: Workspace, current: ServerState) -> ServerState:
        """A kept instance deleted outside the hub (by hand on the daemon, or by another tool):
        its Terraform state still names it, and resuming it would fail at every start. Say so,
        audit it, forget it, and let this start make a new one (the home volume is untouched)."""
        volume = "; the home volume is kept" if self.checked.volume is not None else ""
        note = (f"the kept instance {current.instance} was deleted outside the hub: whatever was only in "
                f"it is gone{volume}; a new instance is made")
        self.log.warning("%s: %s", self.user.name, note)
        forgotten = await self.runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
        await ws.audit({"operation": "vanished", **audit.server_fields(self), "instance": current.instance,
                        "outcome": "ok", "note": note, "forgotten": forgotten})
        self.progress_bar.emit(4, f"Your kept server {current.instance} no longer exists (it was deleted outside "
                                  f"JupyterHub){volume}: making a new one")
        return await self.keeper.commit(ws, current.gone())

    async def _failed_start(self, ws: Workspace, stages: Stages, attempt: starting.Attempt,
                            e: BaseException) -> SpawnError | None:
        """Undo a failed start (a kept instance is stopped and kept, anything new destroyed),
        record what is left, and return the error the user is shown: our own messages as they
        are; Terraform's and LXD's text only in the hub's log and the audit, with a reference
        the user can quote (None for a BaseException, which is re-raised as it is)."""
        reference = uuid.uuid4().hex[:12]
        if isinstance(e, asyncio.CancelledError):
            detail = "cancelled (start_timeout exceeded or stop requested)"
        elif isinstance(e, SpawnError):
            detail = e.detail
        else:
            detail = str(e) or type(e).__name__
        # The record of what this start made, with the port it held: released once cleaned up,
        # kept (with the instance) when the clean-up fails too.
        current = self.record.placed(attempt.listen_address, attempt.listen_port, attempt.target or "")
        server = await self.server_in(ws, current.instance)
        clean = stopping.clean_failed_start(server, attempt.record, self.checked.target or "", stages, detail,
                                            keep=attempt.resuming, extra={"reference": reference})
        with contextlib.suppress(Exception):  # recorded; the user is told of the start's failure
            await self.keeper.act_then_commit(ws, current, clean, failure=detail)
        if not isinstance(e, Exception):
            return None
        kept = " Your server and its files are kept as they were." if attempt.resuming else ""
        if isinstance(e, SpawnError):
            if kept and "kept" not in e.message:
                return SpawnError(e.message + kept, reason=e.reason, log_message=e.detail,
                                  status_code=e.status_code)
            return e
        source = "Terraform" if isinstance(e, TerraformError) else self.backend_info.display
        self.log.error("Start of %s failed (reference %s): %s", self.instance, reference, detail)
        return SpawnError(
            f"Starting {self.instance} failed: {source} reported an error.{kept} The administrator can find "
            f"the details in the hub's log and in the server's audit record (reference {reference}).",
            reason="error", log_message=f"{detail} (reference {reference})", status_code=500)

    async def _audit_refusal(self, ws: Workspace, e: SpawnError, stages: Stages) -> None:
        """A server with a workspace (a kept one, or one that ran before) records its refusals;
        a new one gets no workspace for a refusal."""
        if await asyncio.to_thread(ws.path.exists):
            try:
                phase = (await self._current(ws)).phase.value
            except StateUnreadable:
                phase = "unknown (unreadable Terraform state)"
            await ws.audit({**audit.start_record(self), "outcome": "refused", "error": e.detail,
                            "phase": phase, **stages.record()})

    # -- what exists, and recovering what was left -----------------------------------------------
    async def _current(self, ws: Workspace) -> ServerState:
        """What exists: the workspace's record (written at every change, so it also knows an
        interrupted spawn); for a workspace from before records, the hub's saved state or what
        its Terraform state holds."""
        found = await asyncio.to_thread(read_record, ws.path)
        if found is not None:
            return found
        if self.record.exists:
            return self.record
        if not await asyncio.to_thread(ws.path.exists):
            return ServerState(workspace=str(ws.path))
        resources = await asyncio.to_thread(ws.state_resources)
        named = (await asyncio.to_thread(ws.state_outputs)).get("instance_name") if resources else None
        return legacy_record(resources, named or self.instance_name(), str(ws.path), keep=not self.remove)

    async def _recover(self, ws: Workspace, current: ServerState, why: str) -> ServerState:
        """Called when the hub does not consider this server running (a start, a stop of an
        interrupted spawn, or a poll after a hub restart): a spawn the record says was in
        progress, a failed clean-up, or a server the hub lost track of is cleaned up (a kept
        instance is stopped and kept: what it was started with decides, not today's settings).
        The caller holds the lock. Returns the record afterwards; raises when the clean-up fails."""
        self.keeper.load(current)
        if current.on_start() is not Action.RECOVER:
            return current
        server = await self.server_in(ws, current.instance)
        try:
            return await self.keeper.act_then_commit(
                ws, current, recovery.recover(server, current.phase.value, current.keeps_files))
        except Exception as e:
            self.log.error("Could not clean up %s (%s): %s", self.instance, why, e)
            raise SpawnError(f"cannot start {self.instance}: what an earlier run left could not be cleaned up; "
                             "the administrator can find why in the hub's log", reason="cleanup",
                             log_message=f"cleaning up {self.instance} failed: {e}") from None

    async def _recover_unattended(self) -> None:
        """The hub asks about a server it believes may run, and this spawner has no running
        one (typically the hub restarted while a spawn was in progress): when the workspace's
        record says a spawn was in progress, or a server ran, and nobody holds its lock, clean
        that up. Never on a guess: without such a record nothing is touched."""
        ws = self.workspace_dir()
        found = await asyncio.to_thread(read_record, ws.path)
        if found is None or found.on_start() is not Action.RECOVER:
            return
        try:
            async with ws.lock(wait=False):
                await self._recover(ws, await self._current(ws), "poll")
        except (WorkspaceBusy, SpawnError, StateUnreadable) as e:
            self.log.warning("poll(%s): left for later: %s", self.instance, e)

    async def _poll_running(self) -> int | None:
        """None while the server runs (its member followed when LXD moved it); 1 once a dead
        one is cleaned up."""
        reason, location = await recovery.dead_reason(self.endpoint, self.instance, self.status_max_age, self.log)
        if reason is None:
            if location and location != self.record.member:  # moved (e.g. evacuated)
                self.log.info("%s is now on %s (was %s)", self.instance, location, self.record.member or "-")
                await self.keeper.commit(self.workspace_dir(), self.record.moved(location))
            return None
        try:
            await self._stop(reason=f"found dead by poll: {reason}")
            metrics.RECOVERIES.labels("dead_server").inc()
        except Exception as e:  # recorded: the record keeps the instance and its port
            self.log.error("Cleaning up dead server %s failed: %s", self.instance, e)
        return 1

    # -- a stop, and deletion ----------------------------------------------------------------------
    async def _end_start_in_progress(self) -> None:
        """A stop during a start cancels it (its clean-up goes on under the workspace's lock)
        and waits for that clean-up."""
        if self._start_task is not None and not self._start_task.done():
            self.progress_bar.emit(90, "Spawn cancelled (start_timeout exceeded or stop requested): "
                                       "removing what it made")
            self._start_task.cancel()
            try:
                await self._start_task
            except BaseException:
                pass
        if self._cleanup_task is not None and not self._cleanup_task.done():
            await asyncio.shield(self._cleanup_task)

    async def _stop(self, reason: str = "") -> None:
        """Stop what the record says runs: destroy it (remove) or stop and keep it; a spawn that
        was interrupted or a failed clean-up is cleaned up; a kept server stays as it is."""
        ws = self.workspace_dir()
        if not await asyncio.to_thread(ws.path.exists):
            await self.keeper.commit(None, ServerState())
            return  # never got as far as a workspace: nothing to stop, nothing to record
        async with ws.lock():
            current = await self._current(ws)
            self.keeper.load(current)
            action = current.on_stop()
            if action is Action.RECOVER:
                await self._recover(ws, current, "stop")
            elif action is Action.STOP:
                server = await self.server_in(ws, current.instance)
                keep = current.keeps_files  # as the server was started (its profile), not today's remove
                started = await asyncio.to_thread(ws.saved_inputs)
                head = audit.stop_record(server.who, started, current.member, self.chosen_image, reason, keep)
                await self.keeper.act_then_commit(ws, current, stopping.stop(server, head, keep))
        metrics.server_gone(self.user.name, self.name or "")
        revoke_forgotten_tokens(self)

    async def _delete_server(self) -> str:
        """Destroy whatever the server has and archive its workspace; the home volume it
        mounted, as its record says ("" without one)."""
        ws = self.workspace_dir()
        if not await asyncio.to_thread(ws.path.exists):
            return ""
        async with ws.lock():
            current = await self._current(ws)
            self.keeper.load(current)
            server = await self.server_in(ws, current.instance)
            try:
                await stopping.delete_forever(server)
            except Exception as e:
                self.log.error("Deleting %s for good failed: %s", server.instance, e)
                await self.keeper.commit(ws, current.failed(str(e), server.instance))
                raise
        ports.release(current.listen_address, current.listen_port)
        await self.keeper.commit(None, ServerState())
        return current.volume

    async def _delete_home(self, used: str) -> None:
        """The home volume goes too (delete_storage, after retention): a shared one with the
        default server, which JupyterHub deletes only with the user (as KubeSpawner deletes a
        shared PVC), after every other server that has it attached; a per-server one with its
        server."""
        vol = await asyncio.to_thread(storage.from_workspace, used) if used else None
        if vol is None and self.storage_enabled:
            vol = await storage.resolve(self)
        if vol is None:
            return
        if vol.shared and self.name and not await asyncio.to_thread(storage.delete_pending, vol):
            return
        if not self.delete_storage:
            await storage.release(self, vol)
        elif self.storage_retention_days > 0:
            await retention.retain(self, vol)
        else:
            await storage.delete(self, vol)

    # ---- state ------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.record.exists:
            state.update(self.record.to_dict())
        return state

    def load_state(self, state):
        super().load_state(state)
        # A state from before records: the configuration now is all there is to know whether the
        # instance holds the user's files (remove = False then, and now).
        self.keeper.load(ServerState.from_dict(state, keeps_files_before_records=not self.remove))
        if self.record.settings and self.record.phase is not Phase.NONE:
            # The server was started with its profile's settings: a stop after a hub restart must
            # do what that start promised (remove, lxd_endpoint, backend ...).
            profiles.reapply(self, self.record.settings, self._profile_saved)
        self.chosen_image = self.record.image or self.chosen_image
        if self.record.listen_port and self.record.phase in (Phase.RUNNING, Phase.FAILED):
            ports.claim(self.record.listen_address, self.record.listen_port)
        if self.record.phase is Phase.RUNNING:
            metrics.server_placed(self.user.name, self.name or "", self.member)
            self._restart_hub_relay()

    def _restart_hub_relay(self) -> None:
        """A restarted hub finds servers running: those that reach its API through its unix
        socket need the relay at once, not at the next spawn."""
        if self.hub_api_via == "proxy":
            return
        try:
            task = asyncio.get_running_loop().create_task(start_hub_relay(self))
        except RuntimeError:  # no event loop (a command line tool reading state): no relay wanted
            return
        _background.add(task)
        task.add_done_callback(self._relay_started)

    def _relay_started(self, task: asyncio.Task) -> None:
        _background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("The hub API relay for running servers could not start: %s", task.exception())

    def clear_state(self):
        """JupyterHub calls this before every start and after every stop. What exists does not
        change because the hub forgets a server: the record stays (a kept instance, or one whose
        clean-up failed, is found again by the next start), as DockerSpawner keeps a kept
        container's id."""
        super().clear_state()
        profiles.restore(self, self._profile_saved)  # before the hub applies group_overrides again
        metrics.server_gone(self.user.name, self.name or "")
