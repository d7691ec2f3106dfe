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
from hubtools import Hub, shut_down, terraform_pid, wait_for
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


def held_locks(root: Path) -> list[str]:
    """The workspace locks under `root` that something holds now, and any Terraform state lock."""
    held = [str(p) for p in root.rglob(".terraform.tfstate.lock.info")]
    for lock in root.rglob(".spawner.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(str(lock))
        finally:
            os.close(fd)
    return held


def assert_no_stale_locks(root: Path, timeout: float = 30.0):
    """A lock is stale when it is still held after the operation that took it ended: the
    clean-up and the hub's own stop after a failure release theirs a moment after their
    audit record is written, so wait that moment, then name what is still held."""
    deadline = time.monotonic() + timeout
    while (held := held_locks(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held == [], f"still held {timeout:.0f} s after the operation ended: {held}"


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
    # Deleting takes two steps (stop, then delete). With poll_interval = 1 the hub used to see
    # the Stopped instance in between and destroy it itself, so the test's delete failed now
    # and then (once in three runs after the other fault tests, whose load made the window
    # wider). Freeze the hub meanwhile: it finds the instance simply gone, every time.
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        inst.stop(force=True, wait=True)
        inst.delete(wait=True)
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)
    wait_for(lambda: hub.server_model("vanish") is None, what="poll to notice")
    assert "found dead by poll: the instance no longer exists" in (workspace(hub, "vanish") / "audit.jsonl").read_text()
    last = audit(hub, "vanish")[-1]
    assert (last["operation"], last["outcome"]) == ("stop", "ok")
    ws = workspace(hub, "vanish")
    assert json.loads((ws / "terraform.tfstate").read_text())["resources"] == []
    # The destroy planned during the shutdown could not delete what was gone: the instance was
    # forgotten (state rm), and the plan file did not outlive the stop.
    assert list((ws / "logs").glob("*-state-rm.jsonl")) and not (ws / "destroy.tfplan").exists()
    # Plans a hub killed mid-stop or mid-resume would leave: the next start removes them.
    for stale in ("destroy.tfplan", "resume.tfplan"):
        (ws / stale).write_bytes(b"stale")
    spawn_ready(hub, "vanish")
    assert not (ws / "destroy.tfplan").exists() and not (ws / "resume.tfplan").exists()
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
    # The cancelled start ended at once; its clean-up, under the workspace's lock, records it.
    wait_for(lambda: audit(hub, "slow"), what="the clean-up's audit record")
    records = audit(hub, "slow")
    assert records[0]["outcome"] == "failed" and "cancelled" in records[0]["error"]
    state = workspace(hub, "slow") / "terraform.tfstate"  # none when the timeout came before apply wrote one
    assert not state.exists() or json.loads(state.read_text())["resources"] == []
    assert_no_stale_locks(workspace(hub, "slow"))


def test_thirty_cycles_leave_nothing_behind(hub, lxd_client):
    users = [f"cycle{i}" for i in range(5)]
    rounds = 6
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
    hub_id = (state / ".hub-id").read_text().strip()
    assert lxd_client.instances.get(sp.instance).config["user.tf-lxd-spawner.hub_id"] == hub_id
    inst = lxd_client.instances.get(sp.instance)
    inst.stop(force=True, wait=True)
    inst.delete(wait=True)

    def labelled(name, workspace, owner):
        return lxd_client.instances.create({
            "name": name, "source": {"type": "image", "alias": IMAGE},
            "config": {"user.tf-lxd-spawner.managed": "true", "user.tf-lxd-spawner.hub_id": owner,
                       "user.tf-lxd-spawner.workspace": str(workspace)}}, wait=True)

    # An orphan: made by this hub for a workspace under this state_dir that holds no such state.
    ghost = labelled("jupyter-ghost", state / "ghost" / "_default", hub_id)
    # Another hub on another host with the same state_dir path: the path matches, the id does not.
    foreign = labelled("not-ours", state / "other" / "_default", "another-hub")
    # A spawn applying right now: in LXD, not yet in its state, its workspace locked.
    busy_ws = state / "busy" / "_default"
    busy_ws.mkdir(parents=True)
    busy = labelled("jupyter-busy", busy_ws, hub_id)
    lock_fd = os.open(busy_ws / ".spawner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        # Just made: within the grace period nothing of it is called an orphan.
        young = subprocess.run(cli + ["--json"], capture_output=True, text=True, env=cli_env)
        found = json.loads(young.stdout)
        assert found["orphan_instances"] == [], found
        assert {s["name"] for s in found["skipped"]} == {"jupyter-ghost", "jupyter-busy"}

        report = subprocess.run(cli + ["--json", "--grace", "0"], capture_output=True, text=True, env=cli_env)
        assert report.returncode == 1, report.stderr
        found = json.loads(report.stdout)
        assert sorted(o["name"] for o in found["orphan_instances"]) == ["jupyter-busy", "jupyter-ghost"]
        assert found["stale_workspaces"] == [{"workspace": sp.workspace, "instance": sp.instance}]
        assert lxd_client.instances.exists("jupyter-ghost")  # reporting changes nothing

        cleaned = subprocess.run(cli + ["--destroy", "--grace", "0"], capture_output=True, text=True, env=cli_env)
        assert "deleted orphan instance jupyter-ghost" in cleaned.stdout, cleaned.stdout + cleaned.stderr
        assert f"skipped jupyter-busy: its workspace {busy_ws} is in use" in cleaned.stdout, cleaned.stdout
        assert cleaned.returncode == 1  # the busy one is still there
        assert not lxd_client.instances.exists("jupyter-ghost")
        assert lxd_client.instances.exists("jupyter-busy")  # a live spawn's instance: untouched
        assert lxd_client.instances.exists("not-ours")  # another hub's: never touched
        assert json.loads((Path(sp.workspace) / "terraform.tfstate").read_text())["resources"] == []
    finally:
        os.close(lock_fd)
    try:
        again = subprocess.run(cli + ["--destroy", "--grace", "0"], capture_output=True, text=True, env=cli_env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert not lxd_client.instances.exists("jupyter-busy")
        final = subprocess.run(cli, capture_output=True, text=True, env=cli_env)
        assert (final.returncode, final.stdout.strip()) == (0, "no orphans")
    finally:
        for inst in (ghost, foreign, busy):
            if lxd_client.instances.exists(inst.name):
                inst.delete(wait=True)
