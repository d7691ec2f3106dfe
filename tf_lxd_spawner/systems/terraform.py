"""Async runner for terraform or tofu: one subprocess per command, `-json` events streamed.

Why not python-terraform: it blocks the event loop, cannot stream, and passes flags Terraform
removed long ago. This runner never blocks the hub: the process is an asyncio subprocess, every
machine-readable event is handed to a callback as it arrives and appended to a run log, and a
cancelled run is interrupted (so Terraform writes its state and releases its lock) before it is
killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import io
import json
import os
import shutil
import signal
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import metrics
from .environment import DEFAULT_ALLOWED, allowed

Event = dict
EventCallback = Callable[[Event], None]

_gates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: What Terraform before 1.9 answers to `init -json` (its usage text, or Go's flag error); the
#: binaries that answered so, once per process.
NO_INIT_JSON = ("init [options]", "flag provided but not defined: -json")
_INIT_WITHOUT_JSON: set[str] = set()


def concurrency_gate(limit: int) -> asyncio.Semaphore:
    """The hub-wide semaphore for `limit` simultaneous terraform processes (one per limit value
    and event loop: asyncio primitives belong to one loop)."""
    if limit < 1:
        raise ValueError(f"terraform_concurrency must be at least 1, not {limit}")
    per_loop = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = per_loop.get(limit)
    if gate is None:
        gate = per_loop[limit] = asyncio.Semaphore(limit)
    return gate


#: LXD errors that say "try again", not "this cannot work" (seen with LXD 5.0.2: the helper that
#: pushes files into a container sometimes is not listening yet right after creation).
TRANSIENT_ERRORS = ("forkfile.sock", "connection reset by peer", "Instance is busy running")


class TerraformError(RuntimeError):
    """A terraform command failed; the message carries Terraform's own error summaries."""

    @property
    def transient(self) -> bool:
        return any(marker in str(self) for marker in TRANSIENT_ERRORS)

    def __init__(self, command: str, returncode: int | None, errors: list[str], stderr: str = ""):
        self.command = command
        self.returncode = returncode
        self.errors = errors
        self.stderr = stderr
        stderr_lines = stderr.strip().splitlines()
        detail = "; ".join(errors) or (stderr_lines[-1] if stderr_lines else "")
        if returncode is not None and returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        else:
            how = f"exited {returncode}"
        super().__init__(f"terraform {command} {how}" + (f": {detail}" if detail else ""))


@dataclass
class RunResult:
    command: str
    returncode: int
    duration: float
    events: list[Event] = field(default_factory=list)
    stdout: str = ""


def _planned(events: list[Event], resource_type: str, actions: tuple[str, ...]) -> list[str]:
    found = []
    for ev in events:
        change = ev.get("change") or {}
        resource = change.get("resource") or {}
        if ev.get("type") == "planned_change" and resource.get("resource_type") == resource_type \
                and change.get("action") in actions:
            reason = change.get("reason")
            found.append(resource.get("addr", "") + (f" ({reason})" if reason else ""))
    return found


def planned_replacements(events: list[Event], resource_type: str) -> list[str]:
    """Addresses of `resource_type` resources a plan would delete or replace, each with
    Terraform's reason when it gives one ("tainted", "cannot_update": a setting that forces a
    new resource changed), so the operator's log says why."""
    return _planned(events, resource_type, ("delete", "replace"))


def planned_creations(events: list[Event], resource_type: str) -> list[str]:
    """Addresses of `resource_type` resources a plan would create anew (not replace): one the
    state held has vanished."""
    return _planned(events, resource_type, ("create",))


def diagnostic_errors(events: list[Event]) -> list[str]:
    """Error summaries (with detail) from Terraform's `diagnostic` events."""
    errors = []
    for ev in events:
        if ev.get("type") != "diagnostic":
            continue
        diag = ev.get("diagnostic") or {}
        if diag.get("severity") != "error":
            continue
        text = diag.get("summary") or ev.get("@message", "")
        if diag.get("detail"):
            text = f"{text}: {diag['detail']}"
        errors.append(" ".join(text.split()))
    return errors


def pick_binary(configured: str) -> str:
    """The configured binary, or what is installed: `terraform` first, else `tofu`."""
    if configured:
        return configured
    return "terraform" if shutil.which("terraform") or not shutil.which("tofu") else "tofu"


#: Interrupts of cancelled runs still waiting for their Terraform to exit (kept referenced).
_interrupting: set[asyncio.Task] = set()


class TerraformRunner:
    """Runs one binary (`terraform` or `tofu`) in workspaces, under a hub-wide concurrency gate."""

    #: Commands whose stdout is a stream of JSON events (one per line).
    STREAMING = {"init", "apply", "destroy", "plan"}

    def __init__(
        self,
        binary: str = "terraform",
        env: Mapping[str, str] | None = None,
        gate: asyncio.Semaphore | None = None,
        interrupt_grace: float = 30.0,
        inherit: tuple[str, ...] | list[str] = DEFAULT_ALLOWED,
        niceness: int = 0,
    ):
        self.binary = binary
        self.niceness = niceness
        self.env = dict(env or {})
        self.gate = gate
        self.interrupt_grace = interrupt_grace
        self.inherit = tuple(inherit)

    def _environ(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        """Only allow-listed names of the hub's environment, then the runner's and the run's own:
        the hub's secrets never reach Terraform or its providers."""
        env = allowed(self.inherit)
        env.update(self.env)
        env.update(extra or {})
        env["CHECKPOINT_DISABLE"] = "1"  # never phone home
        env["TF_IN_AUTOMATION"] = "1"
        env.setdefault("TF_INPUT", "0")
        return env

    def argv(self, command: str, *args: str) -> list[str]:
        argv = [self.binary, command]
        if command in ("apply", "destroy"):
            # -lock-timeout: a run interrupted a moment ago may still be saving its state.
            argv += ["-auto-approve", "-input=false", "-json", "-lock-timeout=120s"]
        elif command == "plan":
            argv += ["-input=false", "-json", "-lock-timeout=120s"]
        elif command == "init":
            argv += ["-input=false"] + ([] if self.binary in _INIT_WITHOUT_JSON else ["-json"])
        elif command == "version":
            argv += ["-json"]
        return argv + list(args)

    async def run(
        self,
        command: str,
        *args: str,
        cwd: str | Path,
        env: Mapping[str, str] | None = None,
        on_event: EventCallback | None = None,
        log_path: str | Path | None = None,
        check: bool = True,
        label: str = "",
    ) -> RunResult:
        """Run `binary command args` in cwd; stream its events; raise TerraformError on failure.

        `env` is where secrets go (TF_VAR_*): never into argv, which every local user can read.
        `label` names the run in the metrics when its purpose is not its command (a saved
        destroy plan's `apply` is a "destroy").
        """
        async with metrics.terraform_slot(self.gate, label or command):
            try:
                return await self._run(command, args, cwd, env, on_event, log_path, check)
            except TerraformError as e:
                if (command != "init" or self.binary in _INIT_WITHOUT_JSON
                        or not any(marker in e.stderr for marker in NO_INIT_JSON)):
                    raise
                # Terraform before 1.9 has no `init -json`: its init speaks text (the run log
                # keeps it; errors come from stderr), every other command still -json.
                _INIT_WITHOUT_JSON.add(self.binary)
                return await self._run(command, args, cwd, env, on_event, log_path, check)

    async def _run(self, command, args, cwd, env, on_event, log_path, check) -> RunResult:
        """Streaming commands write their events straight into the run log (not a pipe) and are
        followed from there: if the hub dies mid-run, Terraform is not killed by a broken pipe
        but stops gracefully (it gets SIGTERM), saving its state and releasing its lock."""
        argv = self.argv(command, *args)
        started = time.monotonic()
        streaming = command in self.STREAMING
        scratch = None
        if streaming and log_path is None:
            scratch = tempfile.NamedTemporaryFile(prefix="tf-lxd-run-", suffix=".jsonl", delete=False)
            scratch.close()
            log_path = scratch.name
        out_fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if streaming else None
        offset = os.fstat(out_fd).st_size if out_fd is not None else 0  # this run's events start here
        err_file = tempfile.TemporaryFile()
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=str(cwd),
                    env=self._environ(env),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out_fd if streaming else asyncio.subprocess.PIPE,
                    stderr=err_file,
                    start_new_session=True,  # a hub's Ctrl-C must not reach it: we interrupt it ourselves
                    umask=0o077,  # state, plans and .terraform/ may hold secrets: owner-only
                    preexec_fn=functools.partial(_prepare_child, self.niceness),
                )
            except FileNotFoundError:
                raise TerraformError(
                    command, None, [f"terraform_path {self.binary!r} was not found (is it installed and on PATH?)"]
                ) from None
            finally:
                if out_fd is not None:
                    os.close(out_fd)
            events: list[Event] = []
            stdout = ""
            try:
                if streaming:
                    await self._follow(proc, log_path, offset, events, on_event)
                    returncode = proc.returncode
                else:
                    out, _ = await proc.communicate()
                    stdout = out.decode("utf-8", "replace")
                    if log_path:
                        await asyncio.to_thread(_append_private, log_path, stdout)
                    returncode = proc.returncode
            except asyncio.CancelledError:
                # Interrupted Terraform takes seconds to save its state and exit; the caller's
                # cancellation must not wait for that (JupyterHub's Stop during a spawn allows
                # one second). It goes on in the background; whatever runs next in this
                # workspace waits for Terraform's state lock (-lock-timeout) meanwhile.
                task = asyncio.ensure_future(self._interrupt(proc))
                _interrupting.add(task)
                task.add_done_callback(_interrupting.discard)
                raise
            err_file.seek(0)
            stderr = err_file.read().decode("utf-8", "replace")
        finally:
            err_file.close()
            if scratch is not None:
                os.unlink(scratch.name)
        result = RunResult(command, returncode, time.monotonic() - started, events, stdout)
        if check and returncode != 0:
            raise TerraformError(command, returncode, diagnostic_errors(events), stderr)
        return result

    async def _follow(self, proc, log_path, offset: int, events: list[Event],
                      on_event: EventCallback | None) -> None:
        """Hand each complete event line this run adds to the log (from `offset`) to on_event
        until the process has exited."""
        pending = ""
        waiter: asyncio.Future | None = None  # proc.wait(), made once: a timeout never cancels it
        with open(log_path, "rb") as raw:
            raw.seek(offset)
            log = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
            while True:
                exited = proc.returncode is not None
                chunk = await asyncio.to_thread(log.read)
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    events.append(event)
                    if on_event:
                        on_event(event)
                if exited:
                    return
                if not chunk:
                    # asyncio.wait, not wait_for: on Python 3.11 a cancellation that lands as
                    # wait_for's own 50 ms timeout fires comes out as TimeoutError, and was lost
                    # here (seen: a start_timeout that never stopped a spawn).
                    waiter = waiter or asyncio.ensure_future(proc.wait())
                    await asyncio.wait({waiter}, timeout=0.05)

    @staticmethod
    async def wait_for_interrupted() -> None:
        """Until every interrupted Terraform process of this hub has exited."""
        while _interrupting:
            await asyncio.wait(set(_interrupting))

    async def _interrupt(self, proc: asyncio.subprocess.Process) -> None:
        """SIGINT first (Terraform then saves state and unlocks), SIGKILL after the grace period."""
        if proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.interrupt_grace)
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()

    async def forget_containers(self, cwd: str | Path, log_path: str | Path | None = None) -> list[str]:
        """`state rm` every lxd_container in the state: for instances already gone from LXD,
        which provider v1.5.0 cannot refresh away (its read fails with "Instance not found")."""
        listed = await self.run("state", "list", cwd=cwd)
        gone = [a for a in listed.stdout.split() if a.split(".")[-2:-1] == ["lxd_container"]]
        if gone:
            await self.run("state", "rm", "-lock-timeout=120s", *gone, cwd=cwd, log_path=log_path)
        return gone

    async def rewrite_state(self, cwd: str | Path, change: Callable[[dict], None]) -> None:
        """Change a workspace's state the supported way: `state pull`, `change(state)` in place,
        a higher serial, `state push`. For what the daemon changed on its own or by our hand and
        the provider cannot read back (a volume renamed or moved to another member)."""
        pulled = await self.run("state", "pull", cwd=cwd)
        state = json.loads(pulled.stdout)
        change(state)
        state["serial"] = int(state.get("serial") or 0) + 1
        fd, path = tempfile.mkstemp(prefix=".state-push-", suffix=".json", dir=cwd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f)
            await self.run("state", "push", "-lock-timeout=120s", path, cwd=cwd)
        finally:
            os.unlink(path)

    async def version(self) -> dict:
        """`version -json` of the binary: {"terraform_version": ..., ...}; {} when it cannot run
        (a probe must never hide the error of the operation it describes)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv("version"),
                env=self._environ(None),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
        except OSError:
            return {}
        try:
            return json.loads(out)
        except ValueError:
            return {}


try:  # loaded here, not in the forked child: no loader work between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _prepare_child(niceness: int) -> None:
    """In the child, before exec: SIGTERM it when the hub dies, so a killed hub leaves no
    terraform behind (Terraform then stops gracefully, saving its state and unlocking it); and
    lower its priority, so Terraform and its provider (which inherits it) yield the CPU to
    the hub's event loop."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if niceness:
        os.nice(niceness)


def _append_private(path: str | Path, text: str) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


@dataclass(frozen=True)
class Terraform:
    """How this hub runs Terraform in workspaces: the runner (binary, environment, hub-wide
    gate), the state_dir whose shared init directories workspaces link to, and whether init is
    shared. Built by the spawner for each operation (the gate belongs to the running loop)."""

    runner: TerraformRunner
    state_dir: str
    share_init: bool = True

    @property
    def binary(self) -> str:
        return self.runner.binary

    async def run(self, ws, command: str, *args: str, label: str = "", **kwargs) -> RunResult:
        """Run one command in the workspace `ws` (a systems.workspace.Workspace), logging its
        events to the workspace's run log (named by `label` when given, else by the command);
        then re-seal the workspace's modes."""
        try:
            return await self.runner.run(command, *args, cwd=ws.path, log_path=ws.run_log(label or command),
                                         label=label, **kwargs)
        finally:
            await ws.seal()
