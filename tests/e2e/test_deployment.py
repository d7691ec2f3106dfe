"""Defects found where operators run the spawner, not on our test bed, each through a real hub.

- poll() must never end a healthy server because it cannot tell (process limit), must end one
  whose server ended, and costs one LXD request per round, however many servers;
- a hung LXD endpoint must not stall the hub API or other users' spawns;
- the hub's environment (its secrets) reaches neither Terraform, its provider, nor
  post_hub_commands; no workspace file holds a server token after stop or delete;
- a failing post_hub_commands shows the user a neutral message (its output is the operator's);
- user and server names at JupyterHub's limits (255 characters, several scripts) spawn;
- the stop record names what ran, also after a hub restart.
"""

import json
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import IMAGE
from hubtools import Hub, container_token, shut_down

pytestmark = pytest.mark.e2e

CANARY = "canary-7d1f0c2b9a"
# What operators put in a hub's environment: a proxy token shared with an external proxy, the
# key for encrypted auth state, credentials of the hub's database or cloud account.
HUB_SECRETS = {"HUB_DATABASE_PASSWORD": CANARY, "AWS_SECRET_ACCESS_KEY": CANARY + "-aws",
               "JUPYTERHUB_CRYPT_KEY": "a" * 64, "CONFIGPROXY_AUTH_TOKEN": CANARY + "-proxy"}
ALT_IMAGE = "jupyter-notebook-audit-alt"


class HungEndpoint:
    """A TCP server on loopback that accepts connections and never answers (a hung daemon)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def hung():
    h = HungEndpoint()
    yield h
    h.close()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lxd_client, hung):
    work = tmp_path_factory.mktemp("deploy")
    fingerprint = lxd_client.images.get_by_alias(IMAGE).fingerprint
    subprocess.run(["lxc", "image", "alias", "delete", ALT_IMAGE], capture_output=True)
    subprocess.run(["lxc", "image", "alias", "create", ALT_IMAGE, fingerprint], check=True)
    wrapper = work / "terraform-env-dump"
    wrapper.write_text(f'#!/bin/sh\nenv -0 > "{work}/tf-env.$$"\nexec terraform "$@"\n')
    wrapper.chmod(0o755)
    extra = f"""
c.Spawner.poll_interval = 1
c.JupyterHub.allow_named_servers = True

def hook(spawner):
    name = spawner.user.name
    if name.startswith("hung"):
        spawner.lxd_endpoint = "https://127.0.0.1:{hung.port}"
        spawner.lxd_verify = False
        spawner.lxd_timeout = 30
    if name == "envcheck":
        spawner.terraform_path = "{wrapper}"
        spawner.post_hub_commands = [["sh", "-c", "env -0 > {work}/post-env"]]
    if name == "posthubfail":
        spawner.post_hub_commands = [["sh", "-c", "echo operator-only-detail-{CANARY}; exit 3"]]
    if name == "keeper":
        spawner.remove = False
    if name == "imagerec":
        spawner.allowed_images = {{"Standard": "{IMAGE}", "Alt": "{ALT_IMAGE}"}}
c.Spawner.pre_spawn_hook = hook
"""
    hub = Hub(work, extra, env=HUB_SECRETS).start()
    yield hub
    shut_down(hub, lxd_client)
    subprocess.run(["lxc", "image", "alias", "delete", ALT_IMAGE], capture_output=True)


def ws_of(hub, user, server="_default"):
    from tf_lxd_spawner.systems.workspace import path_component

    return hub.state_dir / path_component(user) / (path_component(server) if server != "_default" else server)


def audit(ws):
    return [json.loads(line) for line in (ws / "audit.jsonl").read_text().splitlines()]


def spawn_ready(hub, user, server="", options=None):
    r = hub.start_server(user, server, options)
    assert r.status_code in (201, 202), r.text
    return hub.wait_ready(user, server)


def stop(hub, user, server="", remove=False):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    r = hub.api("DELETE", path, json={"remove": True} if remove else None)
    assert r.status_code in (202, 204), r.text
    if remove:
        deadline = time.monotonic() + 120
        while server in ((hub.api("GET", f"/users/{user}").json().get("servers")) or {}):
            assert time.monotonic() < deadline, hub.log_tail()
            time.sleep(0.25)
    else:
        hub.wait_stopped(user, server)


def files_holding(root: Path, secret: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
            found.append(str(path))
    return found


def wait_log(hub, text, timeout=60):
    deadline = time.monotonic() + timeout
    while text not in hub.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in the hub log:\n{hub.log_tail()}"
        time.sleep(0.2)


def test_provider_installed_as_a_real_executable(hub):
    """The provider comes from a packed mirror, as a registry serves it: init unpacks a real
    executable (not a symlink) that sealing must leave executable for its owner."""
    spawn_ready(hub, "packed")
    ws = ws_of(hub, "packed")
    (binary,) = (ws / ".terraform" / "providers").rglob("terraform-provider-lxd*")
    assert not binary.is_symlink()
    mode = stat.S_IMODE(binary.stat().st_mode)
    assert mode & 0o100 and not mode & 0o077, oct(mode)
    stop(hub, "packed")
    assert [r["operation"] for r in audit(ws)] == ["start", "stop"]


def test_poll_at_the_process_limit_does_not_end_the_server(hub, lxd_client):
    spawn_ready(hub, "nproc")
    inst = lxd_client.instances.get("jupyter-nproc")
    used = inst.state().processes
    assert used > 0
    inst.config["limits.processes"] = str(used)  # not one process more: every exec would fail
    inst.save(wait=True)
    try:
        time.sleep(4)  # several poll intervals (1 s)
        assert hub.server_model("nproc")["ready"]
        assert lxd_client.instances.get("jupyter-nproc").status == "Running"
        assert [r["operation"] for r in audit(ws_of(hub, "nproc"))] == ["start"]
    finally:
        inst = lxd_client.instances.get("jupyter-nproc")
        del inst.config["limits.processes"]
        inst.save(wait=True)
    stop(hub, "nproc")


def test_a_crashed_server_restarts_and_an_ended_one_is_cleaned_up(hub, lxd_client):
    """The image's unit restarts a crashed server in its container, and powers the container
    off when the server ends: poll reads the instance's status alone (no command run inside),
    so that status must be the server's."""
    spawn_ready(hub, "ending")
    inst = lxd_client.instances.get("jupyter-ending")
    pid = inst.execute(["systemctl", "show", "-p", "MainPID", "--value", "jupyterhub-singleuser"]).stdout.strip()
    assert int(pid) > 0
    inst.execute(["kill", "-9", pid])
    time.sleep(4)  # the unit restarts the server after 1 s; several polls meanwhile
    assert lxd_client.instances.get("jupyter-ending").status == "Running"
    assert inst.execute(["systemctl", "show", "-p", "NRestarts", "--value", "jupyterhub-singleuser"]).stdout.strip() == "1"
    assert hub.server_model("ending")["ready"]
    # A server that ends (shut down from JupyterLab, or its unit stopped) takes its container down.
    # (the exec may be cut short as the container powers off: its exit status says nothing)
    subprocess.run(["lxc", "exec", "jupyter-ending", "--", "systemctl", "stop", "jupyterhub-singleuser.service"],
                   capture_output=True, timeout=60)
    deadline = time.monotonic() + 60
    while hub.server_model("ending") is not None:
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.25)
    last = [r for r in audit(ws_of(hub, "ending")) if r.get("reason")][-1]
    assert "the instance is Stopped (its server ended)" in last["reason"], last
    assert last["outcome"] == "ok" and "destroy" in last["stages"], last
    assert not lxd_client.instances.exists("jupyter-ending")


def test_one_poll_round_of_many_servers_costs_one_request(hub):
    """Every spawner's poll reads one shared listing of the instances: 60 polls at once (three
    servers, twenty spawner objects each) send one request to LXD, not one per server."""
    import asyncio

    from spawnerstub import make_spawner

    from tf_lxd_spawner.systems import lxd

    users = ["pollr0", "pollr1", "pollr2"]
    for u in users:
        assert hub.start_server(u).status_code in (201, 202)
    for u in users:
        hub.wait_ready(u)
    spawners = []
    for i in range(60):
        sp = make_spawner(hub.state_dir, users[i % 3])
        # The record the running server has, as a restarted hub loads it from its database.
        sp.load_state(json.loads((ws_of(hub, users[i % 3]) / "server-state.json").read_text()))
        spawners.append(sp)

    async def round_():
        await lxd.server_info(spawners[0].endpoint)  # connect first: not a poll's cost
        before = lxd.request_count()
        results = await asyncio.gather(*(sp.poll() for sp in spawners))
        return results, lxd.request_count() - before

    results, requests = asyncio.run(round_())
    assert results == [None] * 60
    assert requests == 1
    for u in users:
        stop(hub, u)


def test_hung_lxd_stalls_neither_the_hub_nor_other_spawns(hub, lxd_client, hung):
    hung_users = [f"hung{i}" for i in range(8)]  # more than the default thread pool has threads
    for u in hung_users:
        assert hub.start_server(u).status_code in (201, 202)
    time.sleep(1)
    assert len(hung.conns) >= 1, "the spawns did not reach the hung endpoint"
    t0 = time.monotonic()
    bystander = threading.Thread(target=spawn_ready, args=(hub, "bystander"))
    bystander.start()
    latencies = []
    while bystander.is_alive():
        t = time.monotonic()
        assert hub.api("GET", "/").status_code == 200
        latencies.append(time.monotonic() - t)
        time.sleep(0.2)
    bystander.join()
    ready_after = time.monotonic() - t0
    assert hub.server_model("bystander")["ready"]
    # The hung spawns are still waiting on their endpoint while the bystander became ready.
    assert ready_after < 30, ready_after
    assert all(hub.server_model(u) for u in hung_users)
    latencies.sort()
    print(f"\nbystander ready in {ready_after:.1f} s beside 8 hung spawns; hub API p50 "
          f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms ({len(latencies)} calls)")
    for u in hung_users:
        deadline = time.monotonic() + 120
        while hub.server_model(u) is not None:
            assert time.monotonic() < deadline, hub.log_tail()
            time.sleep(0.5)
    assert f"LXD at https://127.0.0.1:{hung.port} did not answer within 30 s" in hub.log_path.read_text()
    assert not any(ws_of(hub, u).exists() for u in hung_users)
    stop(hub, "bystander")


def test_hub_environment_stays_in_the_hub(hub):
    spawn_ready(hub, "envcheck")
    stop(hub, "envcheck")
    dumps = list(hub.workdir.glob("tf-env.*")) + [hub.workdir / "post-env"]
    assert len(dumps) >= 4  # init, apply, output, destroy... and the post_hub_commands
    hub_env = (Path(f"/proc/{hub.proc.pid}/environ")).read_bytes()
    assert all(f"{k}={v}".encode() in hub_env for k, v in HUB_SECRETS.items())  # what is at stake
    for dump in dumps:
        env = dict(e.split("=", 1) for e in dump.read_text().split("\0") if "=" in e)
        for name in HUB_SECRETS:
            assert name not in env, (dump.name, name)
        assert not any(CANARY in v for v in env.values()), dump.name
        assert env.get("PATH")


def test_no_token_left_in_a_workspace(hub, lxd_client):
    """remove = False keeps the container, and the state describes it: yet after stop the token
    is nowhere in the workspace, the server resumes, and the archive of a deleted server holds
    no token either."""
    spawn_ready(hub, "keeper", "kept")
    ws = ws_of(hub, "keeper", "kept")
    name = audit(ws)[-1]["instance"]
    first = container_token(lxd_client, name)
    assert files_holding(ws, first)  # while it runs, the state holds it (root-only)
    stop(hub, "keeper", "kept")
    assert lxd_client.instances.get(name).status == "Stopped"
    assert files_holding(ws, first) == []
    assert not (ws / "terraform.tfstate.backup").exists()
    spawn_ready(hub, "keeper", "kept")  # resumes from the scrubbed state
    second = container_token(lxd_client, name)
    assert second != first
    stop(hub, "keeper", "kept", remove=True)
    deadline = time.monotonic() + 120  # the hub calls delete_forever() after it answered
    while not list(ws.parent.glob(f"{ws.name}.deleted-*")):
        assert time.monotonic() < deadline, hub.log_tail()
        time.sleep(0.25)
    assert not lxd_client.instances.exists(name)
    (archived,) = ws.parent.glob(f"{ws.name}.deleted-*")
    assert files_holding(archived, first) == [] and files_holding(archived, second) == []
    # ... and with remove = True, the destroy's backup of the state is gone too.
    spawn_ready(hub, "scrubbed")
    ws = ws_of(hub, "scrubbed")
    token = container_token(lxd_client, "jupyter-scrubbed")
    stop(hub, "scrubbed")
    assert files_holding(ws, token) == []


def test_failing_post_hub_command_shows_the_user_a_neutral_message(hub, lxd_client):
    r = hub.start_server("posthubfail")
    assert r.status_code in (201, 202)
    events = hub.progress_events("posthubfail")
    shown = json.dumps(events)
    assert "post_hub_commands[0] exited 3; the hub's log has its output" in shown, shown
    assert CANARY not in shown
    wait_log(hub, f"operator-only-detail-{CANARY}")
    assert hub.server_model("posthubfail") is None or not hub.server_model("posthubfail")["ready"]
    deadline = time.monotonic() + 60
    while lxd_client.instances.exists("jupyter-posthubfail"):
        assert time.monotonic() < deadline
        time.sleep(0.25)


# JupyterHub takes user names up to 255 characters; new server names must be safe slugs of at
# most 30 (lower-case ASCII letters, digits, single hyphens).
LONG_NAMES = [
    ("é" * 255, ""),          # Latin with accents: 510 bytes, escaped 1530 characters
    ("名" * 255, ""),          # CJK: 765 bytes
    ("ж" * 128 + "ع" * 127, "s" + "0-" * 14 + "z"),  # Cyrillic and Arabic user, longest server name
]


def test_names_at_jupyterhubs_limits_spawn(hub, lxd_client):
    for user, server in LONG_NAMES:
        assert hub.start_server(user, server).status_code in (201, 202), (user[:3], server[:3])
    for user, server in LONG_NAMES:
        hub.wait_ready(user, server)
    paths = []
    for user, server in LONG_NAMES:
        ws = ws_of(hub, user, server or "_default")
        assert ws.is_dir(), ws
        assert all(len(part.encode()) <= 255 for part in ws.parts)
        record = audit(ws)[-1]
        assert (record["operation"], record["outcome"], record["user"]) == ("start", "ok", user)
        assert lxd_client.instances.get(record["instance"]).config["user.tf-lxd-spawner.user"] == user
        paths.append(ws)
    assert len(set(paths)) == len(paths)
    for user, server in LONG_NAMES:
        stop(hub, user, server)
    for ws in paths:
        assert [r["operation"] for r in audit(ws)] == ["start", "stop"]


def test_stop_record_names_the_image_that_ran_after_a_hub_restart(hub):
    spawn_ready(hub, "imagerec", options={"image": "Alt"})
    hub.stop()
    hub.start()
    hub.wait_ready("imagerec", timeout=60)
    stop(hub, "imagerec")
    records = audit(ws_of(hub, "imagerec"))
    assert [(r["operation"], r["image"]) for r in records] == [("start", ALT_IMAGE), ("stop", ALT_IMAGE)]


def test_users_named_like_system_accounts_get_their_own(hub, lxd_client):
    """"root", "daemon" and "operator" exist on the hub host and in the image: such a hub user
    neither gets a system account's ids (root!) nor takes over the image's account of that name."""
    users = ["root", "daemon", "operator"]
    tokens = {u: hub.user_token(u) for u in users}
    for u in users:
        assert hub.start_server(u).status_code in (201, 202)
    for u in users:
        hub.wait_ready(u)
    for u in users:
        code = ("import os, pwd; print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, "
                f"pwd.getpwnam({u!r}).pw_uid if {u!r} != 'operator' else -1)")
        uid, gid, login, image_account = hub.run_code(u, tokens[u], code).split()
        assert (uid, gid) == ("1000", "1000"), (u, uid, gid)
        assert login.startswith(u), (u, login)
        if u != "operator":  # Debian has a group "operator", no such user
            assert login != u and image_account != "1000", (u, login, image_account)  # the image's stays its own
    for u in users:
        stop(hub, u)
