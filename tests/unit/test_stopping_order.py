"""The order of a destroy: Terraform plans it while the instance shuts down, applies that plan
only once the instance is off, and a shutdown that fails leaves no planning run or plan file
behind. The daemon calls are stand-ins (the real stop is tested through a hub in
tests/e2e/test_hub.py and test_faults.py); what is tested here is the sequencing logic."""

import asyncio
from types import SimpleNamespace

import pytest

from tf_lxd_spawner.lifecycle import stopping
from tf_lxd_spawner.lifecycle.server import Server
from tf_lxd_spawner.lifecycle.stages import Stages
from tf_lxd_spawner.systems import lxd
from tf_lxd_spawner.systems.workspace import Workspace


class FakeTerraform:
    """Stands in for systems.terraform.Terraform: records the order of its runs."""

    def __init__(self, events: list, running: dict, plan_seconds: float = 0.05):
        self.events = events
        self.running = running
        self.plan_seconds = plan_seconds
        self.state_dir = "/nonexistent/state"
        self.planned_and_cancelled = False

    async def run(self, ws, command, *args, label="", **kwargs):
        if label == "destroy-plan":
            self.events.append("plan started")
            try:
                await asyncio.sleep(self.plan_seconds)
            except asyncio.CancelledError:
                self.planned_and_cancelled = True
                raise
            (ws.path / stopping.DESTROY_PLAN).write_text("plan")
            self.events.append("plan done")
        else:
            assert (ws.path / stopping.DESTROY_PLAN).exists(), "applied a plan that was not made"
            self.events.append(f"{command} {' '.join(args)}")
            self.running["status"] = None  # the apply deleted it


def server(tf: FakeTerraform, ws: Workspace) -> Server:
    return Server(user="alice", name="", instance="jupyter-alice", ws=ws, endpoint=None, backend="lxd",
                  terraform=tf, owner="hub", log=SimpleNamespace(warning=lambda *a: None), stop_grace=0.0,
                  module_source="/nonexistent/module")  # not a local directory: used as it is


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(tmp_path)
    ws.tfvars.write_text("{}")
    (tmp_path / ".terraform").mkdir()
    return ws


def fake_daemon(monkeypatch, events, shutdown_seconds=0.2, fail=False):
    running = {"status": "Running"}

    async def instance(endpoint, name):
        if running["status"] is None:
            return None
        return SimpleNamespace(status=running["status"], config={})

    async def shut_down(endpoint, name, grace):
        events.append("shutdown started")
        await asyncio.sleep(shutdown_seconds)
        if fail:
            raise RuntimeError("LXD refused the stop")
        running["status"] = "Stopped"
        events.append("shutdown done")

    monkeypatch.setattr(lxd, "instance", instance)
    monkeypatch.setattr(lxd, "shut_down", shut_down)
    monkeypatch.setattr(lxd, "made_for", lambda info, ws, hub: info is not None)
    return running


def test_the_plan_runs_during_the_shutdown_and_is_applied_after(monkeypatch, workspace):
    events = []
    running = fake_daemon(monkeypatch, events)

    async def go():
        stages = Stages()
        await stopping.destroy(server(FakeTerraform(events, running), workspace), stages)
        return stages.record()["stages"]

    stages = asyncio.run(go())
    assert events.index("plan started") < events.index("shutdown done")  # overlapped
    assert events[-1] == f"apply {stopping.DESTROY_PLAN}"
    assert events.index("shutdown done") < events.index(events[-1])  # applied only once it was off
    assert not (workspace.path / stopping.DESTROY_PLAN).exists()
    assert set(stages) == {"shutdown", "destroy"}


def test_a_plan_slower_than_the_shutdown_is_waited_for(monkeypatch, workspace):
    events = []
    running = fake_daemon(monkeypatch, events, shutdown_seconds=0.01)

    async def go():
        await stopping.destroy(server(FakeTerraform(events, running, plan_seconds=0.2), workspace))

    asyncio.run(go())
    assert events.index("plan done") < events.index(f"apply {stopping.DESTROY_PLAN}")


def test_a_failed_shutdown_cancels_the_planning_and_leaves_no_plan(monkeypatch, workspace):
    events = []
    running = fake_daemon(monkeypatch, events, shutdown_seconds=0.05, fail=True)
    tf = FakeTerraform(events, running, plan_seconds=5)

    async def go():
        await stopping.destroy(server(tf, workspace))

    with pytest.raises(RuntimeError, match="refused the stop"):
        asyncio.run(go())
    assert tf.planned_and_cancelled
    assert not any(e.startswith("apply") for e in events)
    assert not (workspace.path / stopping.DESTROY_PLAN).exists()
