"""Prometheus metrics, registered in prometheus_client's default registry: the one JupyterHub
serves on /hub/metrics, so ours appear there beside the hub's own (no second endpoint).

Names follow Prometheus conventions: `tf_lxd_spawner_` prefix, base units (`_seconds`),
counters end in `_total`.
"""

from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager, contextmanager

from prometheus_client import Counter, Gauge, Histogram

#: Spawns take seconds to minutes; stages from milliseconds (lock) to minutes (apply on LXD).
SPAWN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 90, 120, 180, 300, float("inf"))
LXD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))

SPAWN_SECONDS = Histogram(
    "tf_lxd_spawner_spawn_duration_seconds",
    "Whole start() of a server, by outcome (ok, failed, cancelled) and profile (profile_list's slug, '' without)",
    ["outcome", "profile"], buckets=SPAWN_BUCKETS)
SPAWN_STAGE_SECONDS = Histogram(
    "tf_lxd_spawner_spawn_stage_duration_seconds",
    "Time in each stage of a start (preflight, lock, placement, render, init, check, apply, files, start, "
    "commands, server = waiting for HTTP, cleanup after a failure), by the start's outcome",
    ["stage", "outcome"], buckets=SPAWN_BUCKETS)
STOP_SECONDS = Histogram(
    "tf_lxd_spawner_stop_duration_seconds", "Whole stop of a server (shutdown and destroy), by outcome",
    ["outcome"], buckets=SPAWN_BUCKETS)
STOP_STAGE_SECONDS = Histogram(
    "tf_lxd_spawner_stop_stage_duration_seconds",
    "Time in each stage of a stop (lock, shutdown, destroy, stop for a kept instance), by outcome",
    ["stage", "outcome"], buckets=SPAWN_BUCKETS)
TERRAFORM_RUNNING = Gauge(
    "tf_lxd_spawner_terraform_processes_running", "Terraform/OpenTofu processes running now")
TERRAFORM_WAITING = Gauge(
    "tf_lxd_spawner_terraform_processes_waiting",
    "Terraform/OpenTofu runs waiting at the concurrency gate (terraform_concurrency)")
TERRAFORM_SECONDS = Histogram(
    "tf_lxd_spawner_terraform_run_duration_seconds", "One Terraform/OpenTofu command, by command and outcome",
    ["command", "outcome"], buckets=SPAWN_BUCKETS)
SERVERS = Gauge(
    "tf_lxd_spawner_servers", "Servers this hub runs, per cluster member ('' on a standalone daemon)",
    ["member"])
PLACEMENTS = Counter(
    "tf_lxd_spawner_placements_total",
    "Members chosen for new servers (placement); 'daemon' when LXD/Incus chooses or is standalone",
    ["member"])
RECOVERIES = Counter(
    "tf_lxd_spawner_recoveries_total",
    "Clean-ups of what went wrong outside a stop: interrupted_spawn (a hub died mid-spawn), "
    "dead_server (a server ended on its own), failed_start (a start's own clean-up)",
    ["kind"])
ORPHANS_CLEANED = Counter(
    "tf_lxd_spawner_orphans_cleaned_total",
    "Instances of this hub that no workspace state held, removed (stray instances of interrupted runs)")
HOME_USED = Gauge(
    "tf_lxd_spawner_home_used_bytes", "Space used in each home volume, as the pool counts it, at its server's last start",
    ["user", "volume"])
HOME_QUOTA = Gauge(
    "tf_lxd_spawner_home_quota_bytes", "Quota of each home volume (0: none), at its server's last start",
    ["user", "volume"])
LXD_SECONDS = Histogram(
    "tf_lxd_spawner_lxd_request_duration_seconds",
    "One call to the LXD/Incus API (may be several HTTP requests, operation waits included), by call",
    ["call"], buckets=LXD_BUCKETS)
LXD_ERRORS = Counter(
    "tf_lxd_spawner_lxd_request_errors_total",
    "LXD/Incus API calls that failed, by call and kind (unavailable: no answer or timeout; api: an error answer)",
    ["call", "kind"])


def observe_spawn(stages, outcome: str, profile: str = "") -> None:
    SPAWN_SECONDS.labels(outcome, profile).observe(stages.record()["duration"])
    _observe_stages(SPAWN_STAGE_SECONDS, stages, outcome)


def observe_stop(stages, outcome: str) -> None:
    _observe(STOP_SECONDS, STOP_STAGE_SECONDS, stages, outcome)


def _observe(total: Histogram, per_stage: Histogram, stages, outcome: str) -> None:
    total.labels(outcome).observe(stages.record()["duration"])
    _observe_stages(per_stage, stages, outcome)


def _observe_stages(per_stage: Histogram, stages, outcome: str) -> None:
    record = stages.record()
    for name, seconds in record["stages"].items():
        per_stage.labels(name, outcome).observe(seconds)


@asynccontextmanager
async def terraform_slot(gate, command: str):
    """Count a run waiting at the gate, then running; time it by command and outcome."""
    TERRAFORM_WAITING.inc()
    waiting = True
    try:
        if gate is not None:
            await gate.acquire()
        TERRAFORM_WAITING.dec()
        waiting = False
        TERRAFORM_RUNNING.inc()
        t0, outcome = time.monotonic(), "failed"
        try:
            yield
            outcome = "ok"
        finally:
            TERRAFORM_RUNNING.dec()
            TERRAFORM_SECONDS.labels(command, outcome).observe(time.monotonic() - t0)
            if gate is not None:
                gate.release()
    finally:
        if waiting:
            TERRAFORM_WAITING.dec()


@contextmanager
def lxd_call(call: str, unavailable: type[Exception]):
    """Time one API call; count its failure as `unavailable` (no answer) or `api` (an error)."""
    t0 = time.monotonic()
    try:
        yield
    except unavailable:
        LXD_ERRORS.labels(call, "unavailable").inc()
        raise
    except Exception:
        LXD_ERRORS.labels(call, "api").inc()
        raise
    finally:
        LXD_SECONDS.labels(call).observe(time.monotonic() - t0)


# Servers per member: what this hub's spawners hold (set on start, load_state and stop).
_servers: dict[tuple[str, str], str] = {}
_members_shown: set[str] = set()
_servers_lock = threading.Lock()


def server_placed(user: str, server: str, member: str) -> None:
    with _servers_lock:
        _servers[(user, server)] = member
        _publish_servers()


def server_gone(user: str, server: str) -> None:
    with _servers_lock:
        if _servers.pop((user, server), None) is not None:
            _publish_servers()


def _publish_servers() -> None:
    counts: dict[str, int] = {}
    for member in _servers.values():
        counts[member] = counts.get(member, 0) + 1
    _members_shown.update(counts)
    for member in _members_shown:  # a member emptied shows 0, not its last count
        SERVERS.labels(member).set(counts.get(member, 0))
