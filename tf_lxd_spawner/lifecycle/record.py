"""What exists for one server, as an explicit record with named transitions.

JupyterHub keeps a spawner's state only as far as `get_state()` says, clears it before every
start and after every stop, and saves it only when a start or a stop completes: a hub that dies
mid-spawn never saved anything about that spawn. So the record is kept twice: in the hub's
database (get_state) and in the server's workspace (`server-state.json`, written atomically at
every transition, under the workspace's lock). The workspace's copy is the one that decides:
it is written before `terraform apply` starts, so "a spawn was in progress here" is a fact on
disk, never a guess from an empty `instance`.

Phases:
- none:     nothing of this server exists (never made, or destroyed).
- creating: a start is making the instance, or resuming a kept one (`keeps_files`). Found on
            disk with no start holding the lock, the spawn was interrupted (the hub died).
- running:  the server was started and handed to the hub.
- kept:     stopped and kept (remove = False): it holds the user's files; nothing but
            delete_forever destroys it, whatever fails.
- failed:   a clean-up failed: an instance may still exist (and hold its port); the next stop
            or start tries again (a kept one is only ever stopped, never destroyed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from pathlib import Path

from ..systems.workspace import write_private

RECORD_FILE = "server-state.json"
#: The record's format: 2 since 0.2.0 (format, settings, profile). A record without one was
#: written by 0.1.0 (phases, no settings); a hub state without a phase by a release before
#: records (its `remove` then is the only knowledge of whether the instance holds files).
FORMAT = 2


class Phase(str, enum.Enum):
    NONE = "none"
    CREATING = "creating"
    RUNNING = "running"
    KEPT = "kept"
    FAILED = "failed"


class Action(str, enum.Enum):
    """What an operation does with what a record says exists."""

    NOTHING = "nothing"  # nothing of it exists, or it is kept: leave it
    RECOVER = "recover"  # what an interrupted or failed run left: undo it (a kept instance is only stopped)
    STOP = "stop"  # it runs: destroy it, or stop and keep it


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class ServerState:
    """One server's record. Frozen: every change is a transition that returns a new record."""

    phase: Phase = Phase.NONE
    instance: str = ""
    member: str = ""
    workspace: str = ""
    url: str = ""
    listen_address: str = ""
    listen_port: int | None = None
    image: str = ""
    #: The instance holds the user's files (remove = False and it has run, or it is a kept one
    #: being resumed): a failure never destroys it.
    keeps_files: bool = False
    #: The workspace of the home volume the server mounts ("" without one): deleting the server
    #: finds its volume by it, whatever the settings say by then.
    volume: str = ""
    error: str = ""
    since: str = ""
    #: The settings this server was started with that differ from the configuration (its
    #: profile's overrides, JSON values only): a restarted hub applies them again when it loads
    #: the server, so a stop after the restart does what the start promised.
    settings: dict = dataclasses.field(default_factory=dict)
    profile: str = ""

    # -- questions ------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        """Something of this server may exist in LXD (anything but none)."""
        return self.phase is not Phase.NONE

    @property
    def resumable(self) -> bool:
        """A start resumes this instance instead of making a new one."""
        return self.keeps_files and bool(self.instance) and self.phase in (Phase.KEPT, Phase.FAILED,
                                                                            Phase.CREATING)

    # -- transitions ----------------------------------------------------------------------------
    def _to(self, phase: Phase, **changes) -> "ServerState":
        return dataclasses.replace(self, phase=phase, since=_now(), **changes)

    def creating(self, instance: str, workspace: str, image: str, resuming: bool, volume: str = "") -> "ServerState":
        """A start is about to make (or resume) the instance."""
        return self._to(Phase.CREATING, instance=instance, workspace=workspace, image=image,
                        keeps_files=resuming, url="", error="", volume=volume or self.volume)

    def running(self, member: str, url: str, listen_address: str, listen_port: int | None,
                keep_on_stop: bool, settings: dict | None = None, profile: str = "",
                volume: str | None = None) -> "ServerState":
        """The start succeeded; with keep_on_stop (remove = False) the instance now holds files,
        and only deleting the server destroys it, whatever the configuration says later."""
        return self._to(Phase.RUNNING, member=member, url=url, listen_address=listen_address,
                        listen_port=listen_port, keeps_files=self.keeps_files or keep_on_stop, error="",
                        settings=dict(settings or {}), profile=profile,
                        volume=self.volume if volume is None else volume)

    def moved(self, member: str) -> "ServerState":
        """LXD reports the running instance on another member (evacuated, moved by hand)."""
        return self._to(self.phase, member=member)

    def renamed(self, workspace: str) -> "ServerState":
        """The server was renamed: its workspace moved with it."""
        return self._to(self.phase, workspace=workspace)

    def kept(self) -> "ServerState":
        """Stopped and kept: its port is free again (the proxy device listens only while it runs)."""
        return self._to(Phase.KEPT, url="", listen_port=None, keeps_files=True, error="")

    def gone(self) -> "ServerState":
        """Destroyed, never made, or deleted outside the hub: only the workspace and volume are
        remembered."""
        return ServerState(phase=Phase.NONE, workspace=self.workspace, volume=self.volume, since=_now())

    def failed(self, error: str, instance: str = "") -> "ServerState":
        """A clean-up failed: keep the name (`instance` when the record had none yet) and the
        port, the instance may still be bound to it."""
        return self._to(Phase.FAILED, url="", error=error, instance=self.instance or instance)

    def placed(self, listen_address: str, listen_port: int | None, member: str) -> "ServerState":
        """While creating: the address and port chosen and where it went, so a failure knows
        what to release."""
        return self._to(self.phase, listen_address=listen_address, listen_port=listen_port,
                        member=member or self.member)

    def ended(self) -> "ServerState":
        """A stop or clean-up succeeded: kept when the instance holds the user's files (the one
        rule: `keeps_files`, decided when it started), else gone."""
        return self.kept() if self.keeps_files else self.gone()

    # -- decisions: what an operation does with what exists -------------------------------------
    def on_stop(self) -> "Action":
        """What a stop does: a running server is stopped (destroyed, or stopped and kept); an
        interrupted spawn or a failed clean-up is recovered; a kept or absent one is left."""
        if self.phase is Phase.RUNNING:
            return Action.STOP
        if self.phase in (Phase.CREATING, Phase.FAILED):
            return Action.RECOVER
        return Action.NOTHING

    def on_start(self) -> "Action":
        """What a start (or a poll while the hub thinks no server runs) does first: anything a
        record says was in progress or running is recovered; kept and absent ones are used as
        they are."""
        return Action.RECOVER if self.phase in (Phase.CREATING, Phase.FAILED, Phase.RUNNING) else Action.NOTHING

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["phase"] = self.phase.value
        d["format"] = FORMAT
        return d

    @classmethod
    def from_dict(cls, data: dict | None, keeps_files_before_records: bool = False) -> "ServerState":
        """Read a saved record. A state saved before records had a phase (an `instance` with no
        `phase`) was a running server; whether it holds the user's files is then only known from
        the configuration it ran under (`keeps_files_before_records`: remove was False)."""
        data = dict(data or {})
        if cls.format_of(data) == 0:
            if not data.get("instance"):
                return cls(workspace=str(data.get("workspace") or ""))
            data["phase"] = Phase.RUNNING.value
            data["keeps_files"] = keeps_files_before_records
        try:
            phase = Phase(data.get("phase"))
        except ValueError:
            phase = Phase.NONE
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields and k != "phase"}
        port = values.get("listen_port")
        values["listen_port"] = int(port) if isinstance(port, (int, str)) and str(port).isdigit() else None
        for key in ("instance", "member", "workspace", "url", "listen_address", "image", "volume", "error", "since"):
            values[key] = str(values.get(key) or "")
        values["keeps_files"] = bool(values.get("keeps_files"))
        values["settings"] = dict(values.get("settings") or {}) if isinstance(values.get("settings"), dict) else {}
        values["profile"] = str(values.get("profile") or "")
        return cls(phase=phase, **values)

    @staticmethod
    def format_of(data: dict | None) -> int:
        """The format a saved record was written in: 0 before records, 1 for 0.1.0's records."""
        data = data or {}
        if "phase" not in data:
            return 0
        return int(data.get("format") or 1)


def read_record(workspace: str | Path) -> ServerState | None:
    """The record in a workspace; None when it has none (a workspace from before records, or none
    at all). Blocking: call it in a thread."""
    path = Path(workspace) / RECORD_FILE
    try:
        return ServerState.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a torn write cannot happen (atomic rename); anything else: derive it anew


def write_record(workspace: str | Path, record: ServerState) -> None:
    """Write the record atomically (0600). Blocking: call it in a thread."""
    path = Path(workspace)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path / RECORD_FILE, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")


def legacy_record(resources: list, instance: str, workspace: str, keep: bool) -> ServerState:
    # `instance`: the name in the workspace's Terraform state when it has one (a release with
    # other naming rules made it), else the name this server gets now.
    """The record of a workspace made before records existed, from its Terraform state: with
    resources and remove = False a kept instance (it holds the user's files); with resources and
    remove = True what an interrupted start left; without, nothing."""
    if not resources:
        return ServerState(workspace=workspace)
    if keep:
        return ServerState(phase=Phase.KEPT, instance=instance, workspace=workspace, keeps_files=True,
                           since=_now())
    return ServerState(phase=Phase.CREATING, instance=instance, workspace=workspace, since=_now())
