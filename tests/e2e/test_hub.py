"""LxdSpawner through a real JupyterHub and configurable-http-proxy, with real containers
running real Jupyter servers."""

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import requests
from hubtools import ExecWatcher, Hub, container_token, shut_down

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lxd_client):
    hub = Hub(tmp_path_factory.mktemp("hub")).start()
    yield hub
    shut_down(hub, lxd_client)


def instance_of(hub, user, server=""):
    ws = hub.state_dir / user / (server or "_default")
    records = [json.loads(line) for line in (ws / "audit.jsonl").read_text().splitlines()]
    return ws, records


def test_alice_spawns_and_runs_code_in_her_container(hub, lxd_client):
    alice = hub.user_token("alice")
    with ExecWatcher(hub) as argv_seen:
        r = hub.start_server("alice")
        assert r.status_code in (201, 202), r.text
        events = hub.progress_events("alice")
        hub.wait_ready("alice")
    messages = [e.get("message", "") for e in events]
    assert any(m.startswith("Initialising Terraform") for m in messages), messages
    assert any(m.startswith("Creating instance jupyter-alice") for m in messages), messages
    assert any(m.startswith("Waiting for the server at http://127.0.0.1:") for m in messages), messages
    assert events[-1].get("ready") is True

    ws, records = instance_of(hub, "alice")
    assert records[-1]["operation"] == "start" and records[-1]["outcome"] == "ok"
    name = records[-1]["instance"]
    assert name == "jupyter-alice"
    inst = lxd_client.instances.get(name)
    assert inst.status == "Running"
    assert inst.config["limits.cpu.allowance"] == "10%"  # container_cpu_share: the hub comes first
    # Where the time went: each stage of the spawn, the server's first answer included.
    stages = records[-1]["stages"]
    assert {"preflight", "placement", "init", "apply", "server"} <= set(stages), stages
    assert all(v >= 0 for v in stages.values()) and stages["apply"] > 0 and stages["server"] > 0
    assert sum(stages.values()) <= records[-1]["duration"] + 0.01

    # The API token never appeared in any process's argv, and only root can read it on disk.
    token = container_token(lxd_client, name)
    assert '"terraform", "apply"' in argv_seen.text  # the watcher saw the runs it guards
    assert not argv_seen.seen(token)
    for root, dirs, files in os.walk(ws):
        for d in dirs:  # links (the module, the provider) point outside the workspace
            if not os.path.islink(os.path.join(root, d)):
                assert stat.S_IMODE(os.lstat(os.path.join(root, d)).st_mode) & 0o077 == 0, d
        for f in files:
            path = os.path.join(root, f)
            if not os.path.islink(path):
                assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0, path
    assert stat.S_IMODE(os.stat(ws).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ws / "terraform.tfstate").st_mode) == 0o600
    assert token not in (ws / "terraform.tfvars.json").read_text()

    # Files through the contents API, served from inside the container.
    base = hub.server_url("alice")
    h = {"Authorization": f"token {alice}"}
    r = requests.put(base + "api/contents/hello.txt", headers=h, timeout=30,
                     json={"type": "file", "format": "text", "content": "hello from alice"})
    assert r.status_code in (200, 201), r.text
    r = requests.get(base + "api/contents/hello.txt", headers=h, timeout=30)
    assert r.json()["content"] == "hello from alice"
    inside = lxd_client.instances.get(name).files.get("/home/alice/hello.txt")
    assert inside == b"hello from alice"

    # Code really runs in her container.
    out = hub.run_code("alice", alice, "import socket; print(socket.gethostname())")
    assert out.strip() == name


def test_hub_restart_finds_alice_without_respawn(hub, lxd_client):
    ws, before = instance_of(hub, "alice")
    name = before[-1]["instance"]
    created = lxd_client.instances.get(name).created_at
    hub.stop()
    assert lxd_client.instances.get(name).status == "Running"
    hub.start()
    model = hub.wait_ready("alice", timeout=60)
    assert model["url"] == "/user/alice/"
    alice = hub.user_token("alice")
    r = requests.get(hub.server_url("alice") + "api/contents/hello.txt",
                     headers={"Authorization": f"token {alice}"}, timeout=30)
    assert r.status_code == 200 and r.json()["content"] == "hello from alice"
    _, after = instance_of(hub, "alice")
    assert after == before  # no new start, no stop
    assert lxd_client.instances.get(name).created_at == created


def test_stop_removes_container_and_keeps_audit(hub, lxd_client):
    ws, before = instance_of(hub, "alice")
    name = before[-1]["instance"]
    token = container_token(lxd_client, name)
    assert hub.api("GET", "/user", token=token).status_code == 200  # the server's token, while it runs
    with ExecWatcher(hub) as argv_seen:
        r = hub.api("DELETE", "/users/alice/server")
        assert r.status_code in (202, 204), r.text
        hub.wait_stopped("alice")
    # The destroy is planned while the instance shuts down, then that plan is applied.
    assert '"-destroy", "-refresh=false", "-out=destroy.tfplan"' in argv_seen.text
    assert '"destroy.tfplan"]' in argv_seen.text  # the apply of that plan
    assert not argv_seen.seen(token)
    assert not lxd_client.instances.exists(name)
    # A stopped server's API token no longer opens anything on the hub.
    assert hub.api("GET", "/user", token=token).status_code == 403
    state = json.loads((ws / "terraform.tfstate").read_text())
    assert state["resources"] == []
    _, records = instance_of(hub, "alice")
    assert [(r["operation"], r["outcome"]) for r in records] == [("start", "ok"), ("stop", "ok")]
    assert {"shutdown", "destroy"} <= set(records[-1]["stages"]), records[-1]
    for r in records:
        assert r["user"] == "alice" and r["instance"] == name and r["image"] == "jupyter-notebook"
        assert r["terraform_version"] and "lxd" in " ".join(r["providers"])
        assert r["duration"] > 0
    # No init of its own (share_terraform_init): its .terraform is the hub's one initialised
    # directory for this root module, and that was initialised once.
    logs = sorted(p.name.split("-", 1)[1] for p in (ws / "logs").iterdir())
    assert logs == ["apply.jsonl", "destroy-plan.jsonl", "destroy.jsonl"]
    assert not (ws / "destroy.tfplan").exists()  # applied, then deleted
    shared = shared_init_of(hub, ws)
    assert len(list((shared / "logs").glob("*-init.jsonl"))) == 1


def shared_init_of(hub, ws):
    """The shared initialised directory a workspace's .terraform links to."""
    dot = ws / ".terraform"
    assert dot.is_symlink(), f"{dot} is not a link to the shared init"
    shared = Path(os.readlink(dot)).parent
    assert shared.parent == hub.state_dir / "_terraform-init", shared
    return shared


def test_two_users_at_once_each_reach_only_their_own(hub, lxd_client):
    tokens = {u: hub.user_token(u) for u in ("bob", "carol")}
    for u in tokens:
        assert hub.start_server(u).status_code in (201, 202)
    threads = [threading.Thread(target=hub.wait_ready, args=(u,)) for u in tokens]
    [t.start() for t in threads]
    [t.join() for t in threads]
    names = {}
    for u, token in tokens.items():
        hub.wait_ready(u)
        names[u] = hub.run_code(u, token, "import socket; print(socket.gethostname())").strip()
    assert names == {"bob": "jupyter-bob", "carol": "jupyter-carol"}
    # Two new users at once: neither ran init; both use the one directory initialised before.
    shared = {shared_init_of(hub, hub.state_dir / u / "_default") for u in tokens}
    assert len(shared) == 1
    assert len(list(shared.pop().joinpath("logs").glob("*-init.jsonl"))) == 1
    for u in tokens:
        assert not list((hub.state_dir / u / "_default" / "logs").glob("*-init.jsonl"))
    assert lxd_client.instances.get("jupyter-bob").status == "Running"
    assert lxd_client.instances.get("jupyter-carol").status == "Running"
    # bob's token does not open carol's server, and the other way round.
    # An API request with another user's token is refused outright (a 302 would only be a
    # redirect to the login page, which proves nothing).
    r = requests.get(hub.server_url("carol") + "api/contents", headers={"Authorization": f"token {tokens['bob']}"},
                     timeout=30, allow_redirects=False)
    assert r.status_code == 403, r.status_code
    r = requests.get(hub.server_url("bob") + "api/contents", headers={"Authorization": f"token {tokens['carol']}"},
                     timeout=30, allow_redirects=False)
    assert r.status_code == 403, r.status_code
    r = requests.get(hub.server_url("bob") + "api/contents", headers={"Authorization": f"token {tokens['bob']}"},
                     timeout=30)
    assert r.status_code == 200
    for u in tokens:
        hub.api("DELETE", f"/users/{u}/server")
    for u in tokens:
        hub.wait_stopped(u)
    assert not lxd_client.instances.exists("jupyter-bob")
    assert not lxd_client.instances.exists("jupyter-carol")


def _sum(samples: dict, name: str, **labels) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_on_hub_metrics_after_real_spawns(hub, lxd_client):
    """Ours appear on JupyterHub's own /hub/metrics, beside the hub's, from real spawns and stops."""
    assert hub.start_server("dave").status_code in (201, 202)
    hub.wait_ready("dave")
    running = hub.metrics()
    assert _sum(running, "jupyterhub_running_servers") >= 1  # the hub's own metrics, same endpoint
    assert _sum(running, "tf_lxd_spawner_servers") == 1, {k: v for k, v in running.items() if "servers" in k[0]}
    member = json.loads((hub.state_dir / "dave" / "_default" / "audit.jsonl").read_text().splitlines()[-1])["member"]
    assert _sum(running, "tf_lxd_spawner_servers", member=member) == 1
    assert _sum(running, "tf_lxd_spawner_spawn_duration_seconds_count", outcome="ok") >= 1
    for stage in ("preflight", "placement", "init", "apply", "server"):
        assert _sum(running, "tf_lxd_spawner_spawn_stage_duration_seconds_count", stage=stage, outcome="ok") >= 1, stage
    assert _sum(running, "tf_lxd_spawner_spawn_stage_duration_seconds_sum", stage="apply", outcome="ok") > 0
    assert _sum(running, "tf_lxd_spawner_placements_total", member="daemon") >= 1  # standalone LXD chooses
    assert _sum(running, "tf_lxd_spawner_terraform_run_duration_seconds_count", command="apply", outcome="ok") >= 1
    assert _sum(running, "tf_lxd_spawner_lxd_request_duration_seconds_count", call="image_properties") >= 1

    stops_before = _sum(running, "tf_lxd_spawner_stop_duration_seconds_count", outcome="ok")
    hub.api("DELETE", "/users/dave/server")
    hub.wait_stopped("dave")
    stopped = hub.metrics()
    assert _sum(stopped, "tf_lxd_spawner_servers") == 0
    assert _sum(stopped, "tf_lxd_spawner_stop_duration_seconds_count", outcome="ok") == stops_before + 1
    for stage in ("shutdown", "destroy"):
        assert _sum(stopped, "tf_lxd_spawner_stop_stage_duration_seconds_count", stage=stage, outcome="ok") >= 1
    assert _sum(stopped, "tf_lxd_spawner_terraform_processes_running") == 0
    assert _sum(stopped, "tf_lxd_spawner_terraform_processes_waiting") == 0
    assert _sum(stopped, "tf_lxd_spawner_terraform_run_duration_seconds_count", command="destroy", outcome="ok") >= 1
    assert not lxd_client.instances.exists("jupyter-dave")
