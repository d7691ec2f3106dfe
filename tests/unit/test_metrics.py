"""The metric helpers: gauges go up and back down, failures are counted by kind."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from tf_lxd_spawner import metrics
from tf_lxd_spawner.lifecycle.stages import Stages


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_terraform_runs_are_counted_waiting_then_running():
    gate = asyncio.Semaphore(1)
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def run(command):
        async with metrics.terraform_slot(gate, command):
            first_in.set()
            await release.wait()

    waiting0 = value("tf_lxd_spawner_terraform_processes_waiting")
    running0 = value("tf_lxd_spawner_terraform_processes_running")
    first = asyncio.ensure_future(run("apply"))
    await first_in.wait()
    second = asyncio.ensure_future(run("destroy"))
    await asyncio.sleep(0.05)
    assert value("tf_lxd_spawner_terraform_processes_running") == running0 + 1
    assert value("tf_lxd_spawner_terraform_processes_waiting") == waiting0 + 1
    second.cancel()  # cancelled while waiting at the gate: no longer counted as waiting
    await asyncio.gather(second, return_exceptions=True)
    assert value("tf_lxd_spawner_terraform_processes_waiting") == waiting0
    release.set()
    await first
    assert value("tf_lxd_spawner_terraform_processes_running") == running0
    assert not gate.locked()


async def test_a_failed_run_is_timed_as_failed_and_frees_the_gate():
    gate = asyncio.Semaphore(1)
    before = value("tf_lxd_spawner_terraform_run_duration_seconds_count", command="init", outcome="failed")
    with pytest.raises(RuntimeError):
        async with metrics.terraform_slot(gate, "init"):
            raise RuntimeError("boom")
    assert value("tf_lxd_spawner_terraform_run_duration_seconds_count", command="init", outcome="failed") == before + 1
    assert not gate.locked()


def test_servers_per_member_follow_starts_and_stops():
    metrics.server_placed("u1", "", "m-a")
    metrics.server_placed("u2", "x", "m-a")
    metrics.server_placed("u3", "", "m-b")
    assert value("tf_lxd_spawner_servers", member="m-a") == 2
    assert value("tf_lxd_spawner_servers", member="m-b") == 1
    metrics.server_gone("u3", "")
    metrics.server_gone("u3", "")  # twice (stop, then clear_state): counted once
    assert value("tf_lxd_spawner_servers", member="m-b") == 0  # shown as 0, not its last count
    metrics.server_gone("u1", "")
    metrics.server_gone("u2", "x")
    assert value("tf_lxd_spawner_servers", member="m-a") == 0


def test_lxd_call_failures_are_counted_by_kind():
    class Unavailable(Exception):
        pass

    before = {k: value("tf_lxd_spawner_lxd_request_errors_total", call="probe", kind=k) for k in ("unavailable", "api")}
    with pytest.raises(Unavailable):
        with metrics.lxd_call("probe", Unavailable):
            raise Unavailable()
    with pytest.raises(ValueError):
        with metrics.lxd_call("probe", Unavailable):
            raise ValueError()
    with metrics.lxd_call("probe", Unavailable):
        pass
    assert value("tf_lxd_spawner_lxd_request_errors_total", call="probe", kind="unavailable") == before["unavailable"] + 1
    assert value("tf_lxd_spawner_lxd_request_errors_total", call="probe", kind="api") == before["api"] + 1
    assert value("tf_lxd_spawner_lxd_request_duration_seconds_count", call="probe") >= 3


def test_spawn_stages_are_observed_with_the_outcome():
    stages = Stages()
    with stages.timed("apply"):
        pass
    before = value("tf_lxd_spawner_spawn_stage_duration_seconds_count", stage="apply", outcome="failed")
    metrics.observe_spawn(stages, "failed", "gpu")
    assert value("tf_lxd_spawner_spawn_stage_duration_seconds_count", stage="apply", outcome="failed") == before + 1
    assert value("tf_lxd_spawner_spawn_duration_seconds_count", outcome="failed", profile="gpu") >= 1
