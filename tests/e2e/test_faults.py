"""Faults on the real stack: killed Terraform, killed hub, LXD restart, containers deleted
behind the spawner's back, double clicks, many cycles, timeouts, and the orphan tool."""

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import IMAGE, REPO
from hubtools import Hub, shut_down
from spawnerstub import make_spawner

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lxd_client):
    work = tmp_path_factory.mktemp("faults")
    extra = """
c.Spawner.poll_interval = 1

def hook(spawner):
    if spawner.user.name == "slow":
        spawner.start_timeout = 2
c.Spawner.pre_spawn_hook = hook
"""
    hub = Hub(work, extra).start()
    yield hub
    shut_down(hub, lxd_client)


def workspace(hub, user):
    return hub.state_dir / user / "_default"


def audit(hub, user):
    path = workspace(hub, user) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def terraform_pid(ws: Path, command: str, timeout=60) -> int:
    """The pid of the terraform `command` running in workspace ws."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[:2] == [b"terraform", command.encode()] and os.readlink(f"/proc/{pid}/cwd") == str(ws):
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no terraform {command} in {ws}")


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_no_stale_locks(root: Path):
    assert not list(root.rglob(".terraform.tfstate.lock.info"))
    for lock in root.rglob(".spawner.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anything still holds it
        finally:
            os.close(fd)


def spawn_ready(hub, user):
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)


def stop(hub, user):
    hub.api("DELETE", f"/users/{user}/server")
    hub.wait_stopped(user)


def test_terraform_killed_mid_apply(hub, lxd_client):
    hub.start_server("killed")
    ws = workspace(hub, "killed")
    pid = terraform_pid(ws, "apply")
    wait_for(lambda: lxd_client.instances.exists("jupyter-killed"), what="the instance to be half-made")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: hub.server_model("killed") is None, what="the spawn to fail")
    assert "terraform apply was killed by SIGKILL" in hub.log_tail(400)
    failed = audit(hub, "killed")[-1]
    assert (failed["operation"], failed["outcome"]) == ("start", "failed")
    assert "killed by SIGKILL" in failed["error"]
    assert not lxd_client.instances.exists("jupyter-killed")
    assert_no_stale_locks(ws)
    spawn_ready(hub, "killed")
    stop(hub, "killed")


def test_hub_killed_mid_spawn_then_restarted(hub, lxd_client):
    hub.start_server("hubkill")
    ws = workspace(hub, "hubkill")
    pid = terraform_pid(ws, "apply")
    wait_for(lambda: lxd_client.instances.exists("jupyter-hubkill"), what="the instance to be half-made")
    hub.kill()
    # terraform does not outlive the hub (it was told to stop when its parent died)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60, what="terraform to stop")
    hub.start()
    # The half-made server is cleaned up: no orphan, and the user can start again.
    wait_for(lambda: hub.server_model("hubkill") is None, what="the hub to drop the half-made server")
    wait_for(lambda: not lxd_client.instances.exists("jupyter-hubkill"), what="the half-made instance to go")
    assert_no_stale_locks(ws)
    spawn_ready(hub, "hubkill")
    stop(hub, "hubkill")
    assert not lxd_client.instances.exists("jupyter-hubkill")


def lxd_daemon_pid() -> int:
    out = subprocess.run(["pgrep", "-xf", "lxd --group root"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_lxd_restart_keeps_servers_and_outage_spawn_fails_clearly(hub, lxd_client):
    spawn_ready(hub, "steady")
    token = hub.user_token("steady")
    os.kill(lxd_daemon_pid(), signal.SIGTERM)  # LXD exits; its containers keep running
    try:
        wait_for(lambda: subprocess.run(["lxc", "info"], capture_output=True).returncode != 0,
                 what="LXD to go away")
        time.sleep(3)  # several poll intervals: poll() must not call the server dead
        assert hub.server_model("steady")["ready"]
        r = hub.start_server("outage")
        assert r.status_code in (201, 202)
        wait_for(lambda: hub.server_model("outage") is None, what="the outage spawn to fail")
        assert "LXD is not reachable at the local unix socket" in hub.log_tail(400)
        assert not workspace(hub, "outage").exists()
    finally:
        subprocess.run(["bash", str(REPO / "setup" / "lxd-up.sh")], check=True, capture_output=True)
    r = requests.get(hub.server_url("steady") + "api/status", headers={"Authorization": f"token {token}"},
                     timeout=30)
    assert r.status_code == 200
    assert hub.server_model("steady")["ready"]
    spawn_ready(hub, "outage")
    stop(hub, "outage")
    stop(hub, "steady")


def test_container_deleted_behind_the_spawners_back(hub, lxd_client):
    spawn_ready(hub, "vanish")
    inst = lxd_client.instances.get("jupyter-vanish")
    inst.stop(force=True, wait=True)
    inst.delete(wait=True)
    wait_for(lambda: hub.server_model("vanish") is None, what="poll to notice")
    last = audit(hub, "vanish")[-1]
    assert (last["operation"], last["outcome"]) == ("stop", "ok")
    assert json.loads((workspace(hub, "vanish") / "terraform.tfstate").read_text())["resources"] == []
    spawn_ready(hub, "vanish")
    stop(hub, "vanish")


def test_double_click_makes_one_container(hub, lxd_client):
    hub.api("POST", "/users/double")
    results = []
    threads = [threading.Thread(target=lambda: results.append(hub.start_server("double").status_code))
               for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results)[0] in (201, 202) and sorted(results)[1] in (202, 400), results
    hub.wait_ready("double")
    starts = [r for r in audit(hub, "double") if r["operation"] == "start"]
    assert len(starts) == 1
    assert len(list((workspace(hub, "double") / "logs").glob("*-apply.jsonl"))) == 1
    assert [i.name for i in lxd_client.instances.all() if i.name.startswith("jupyter-double")] == ["jupyter-double"]
    stop(hub, "double")


def test_spawn_slower_than_start_timeout_is_undone(hub, lxd_client):
    hub.start_server("slow")
    wait_for(lambda: hub.server_model("slow") is None, timeout=90, what="the timeout")
    assert "server failed to start in 2 seconds, giving up" in hub.log_tail(400)
    wait_for(lambda: not lxd_client.instances.exists("jupyter-slow"), what="the instance to be destroyed")
    records = audit(hub, "slow")
    assert records[0]["outcome"] == "failed" and "cancelled" in records[0]["error"]
    assert json.loads((workspace(hub, "slow") / "terraform.tfstate").read_text())["resources"] == []
    assert_no_stale_locks(workspace(hub, "slow"))


def test_fifty_cycles_leave_nothing_behind(hub, lxd_client):
    users = [f"cycle{i}" for i in range(5)]
    rounds = 10
    errors = []

    def cycle(user):
        try:
            for _ in range(rounds):
                spawn_ready(hub, user)
                stop(hub, user)
        except Exception as e:  # reported below, with the user
            errors.append((user, e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=cycle, args=(u,)) for u in users]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    left = [i.name for i in lxd_client.instances.all()
            if i.config.get("user.tf-lxd-spawner.workspace", "").startswith(str(hub.state_dir))]
    assert left == []
    assert_no_stale_locks(hub.state_dir)
    total = 0
    for u in users:
        ops = [(r["operation"], r["outcome"]) for r in audit(hub, u)]
        assert ops == [("start", "ok"), ("stop", "ok")] * rounds, ops
        total += len(ops)
    print(f"\n{len(users) * rounds} spawn/stop cycles in {time.monotonic() - t0:.0f} s: "
          f"{len(left)} containers left, {total} audit records")


def test_orphan_tool_reports_then_cleans(tmp_path, lxd_client):
    state = tmp_path / "state"
    cli_env = dict(os.environ)
    cli = [str(REPO / ".venv" / "bin" / "tf-lxd-spawner"), "--state-dir", str(state), "orphans",
           "--terraform-cli-config", str(REPO / ".cache" / "terraform" / "cli.tfrc")]
    # A stale workspace: its instance is deleted behind the spawner's back.
    sp = make_spawner(state, "stale", image=IMAGE)
    asyncio.run(sp.start())
    inst = lxd_client.instances.get(sp.instance)
    inst.stop(force=True, wait=True)
    inst.delete(wait=True)
    # An orphan instance: made for a workspace under this state_dir that holds no such state.
    ghost = lxd_client.instances.create({
        "name": "jupyter-ghost", "source": {"type": "image", "alias": IMAGE},
        "config": {"user.tf-lxd-spawner.managed": "true",
                   "user.tf-lxd-spawner.workspace": str(state / "ghost" / "_default")}}, wait=True)
    foreign = lxd_client.instances.create({
        "name": "not-ours", "source": {"type": "image", "alias": IMAGE},
        "config": {"user.tf-lxd-spawner.managed": "true", "user.tf-lxd-spawner.workspace": "/elsewhere/x/y"}},
        wait=True)
    try:
        report = subprocess.run(cli + ["--json"], capture_output=True, text=True, env=cli_env)
        assert report.returncode == 1, report.stderr
        found = json.loads(report.stdout)
        assert [o["name"] for o in found["orphan_instances"]] == ["jupyter-ghost"]
        assert found["stale_workspaces"] == [{"workspace": sp.workspace, "instance": sp.instance}]
        assert lxd_client.instances.exists("jupyter-ghost")  # reporting changes nothing

        cleaned = subprocess.run(cli + ["--destroy"], capture_output=True, text=True, env=cli_env)
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert "deleted orphan instance jupyter-ghost" in cleaned.stdout
        assert not lxd_client.instances.exists("jupyter-ghost")
        assert lxd_client.instances.exists("not-ours")  # another hub's: never touched
        assert json.loads((Path(sp.workspace) / "terraform.tfstate").read_text())["resources"] == []
        again = subprocess.run(cli, capture_output=True, text=True, env=cli_env)
        assert (again.returncode, again.stdout.strip()) == (0, "no orphans")
    finally:
        for inst in (ghost, foreign):
            if lxd_client.instances.exists(inst.name):
                inst.delete(wait=True)
