"""The jupyterhub-idle-culler service, configured as its README tells operators to, culls an idle
server of this spawner: the container is destroyed, the audit records the stop, and no route,
token or port is left behind; a server that is kept busy meanwhile is not culled."""

import json
import socket
import sys
import threading
import time
import uuid

import pytest
import requests
from hubtools import Hub, container_token, shut_down

from tf_lxd_spawner.systems.workspace import Workspace, workspace_path

pytestmark = pytest.mark.e2e

TIMEOUT = 30  # --timeout: seconds of inactivity before the culler stops a server
CULL_EVERY = 10  # --cull-every: how often the culler looks
ACTIVITY_INTERVAL = 10  # JupyterHub.last_activity_interval: how often the hub reads the proxy's activity
IDLE, BUSY = "cull-idle", "cull-busy"

# What the culler's README asks of an operator on JupyterHub 5+: a managed service and a role.
CULLER_CONFIG = f"""
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [{sys.executable!r}, "-m", "jupyterhub_idle_culler",
                "--timeout={TIMEOUT}", "--cull-every={CULL_EVERY}"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
c.JupyterHub.last_activity_interval = {ACTIVITY_INTERVAL}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lxd_client):
    proxy_token = uuid.uuid4().hex  # set for the hub, so the test can read the proxy's routes
    hub = Hub(tmp_path_factory.mktemp("hub"), extra_config=CULLER_CONFIG,
              env={"CONFIGPROXY_AUTH_TOKEN": proxy_token})
    hub.proxy_token = proxy_token
    hub.start()
    yield hub
    shut_down(hub, lxd_client)


def proxy_routes(hub) -> dict:
    r = requests.get(f"http://127.0.0.1:{hub.proxy_api_port}/api/routes",
                     headers={"Authorization": f"token {hub.proxy_token}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def audit(hub, user) -> list[dict]:
    return Workspace(workspace_path(hub.state_dir, user, "")).audit_records()


def token_notes(hub, user) -> list[str]:
    r = hub.api("GET", f"/users/{user}/tokens")
    r.raise_for_status()
    return [t.get("note") for t in r.json()["api_tokens"]]


def answers(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (a bare TCP connect: no request, no activity)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


class KeepBusy(threading.Thread):
    """Uses a server through the proxy every few seconds, as a working user does."""

    def __init__(self, hub, user, token):
        super().__init__(daemon=True)
        self.url, self.headers = hub.server_url(user) + "api/status", {"Authorization": f"token {token}"}
        self.done, self.answered = threading.Event(), 0

    def run(self):
        while not self.done.wait(3):
            try:
                if requests.get(self.url, headers=self.headers, timeout=10).status_code == 200:
                    self.answered += 1
            except requests.RequestException:
                pass


def test_idle_culler_culls_idle_server_and_leaves_busy_one(hub, lxd_client):
    # The busy user's server comes first, so by the time the idle one is culled it has run
    # longer than the culler's timeout: only its activity can have kept it.
    busy_token = hub.user_token(BUSY)
    assert hub.start_server(BUSY).status_code in (201, 202)
    hub.wait_ready(BUSY)
    busy_since = time.monotonic()
    keep_busy = KeepBusy(hub, BUSY, busy_token)
    keep_busy.start()
    try:
        _cull_idle_and_check(hub, lxd_client, busy_since)
    finally:
        keep_busy.done.set()
        keep_busy.join()
    assert keep_busy.answered >= TIMEOUT // 3 - 1, keep_busy.answered  # it really was in use
    busy = hub.server_model(BUSY)
    assert busy and busy["ready"], busy
    assert lxd_client.instances.get(audit(hub, BUSY)[-1]["instance"]).status == "Running"
    assert [r["operation"] for r in audit(hub, BUSY)] == ["start"]


def _cull_idle_and_check(hub, lxd_client, busy_since):
    hub.api("POST", f"/users/{IDLE}")
    assert hub.start_server(IDLE).status_code in (201, 202)
    hub.wait_ready(IDLE)
    ready = time.monotonic()

    # What the running server holds: a container, a proxy route, an API token, a host port.
    start = audit(hub, IDLE)[-1]
    assert start["operation"] == "start" and start["outcome"] == "ok"
    instance = start["instance"]
    assert lxd_client.instances.get(instance).status == "Running"
    inputs = json.loads((workspace_path(hub.state_dir, IDLE, "") / "terraform.tfvars.json").read_text())
    port = inputs["listen_port"]
    assert inputs["listen_address"] == "127.0.0.1"
    assert answers(port)
    route = proxy_routes(hub)[f"/user/{IDLE}"]
    assert route["target"] == f"http://127.0.0.1:{port}", route
    token = container_token(lxd_client, instance)
    assert hub.api("GET", "/user", token=token).status_code == 200
    assert f"Server at /user/{IDLE}/" in token_notes(hub, IDLE)

    # Hands off: no request reaches the server; the culler must find it idle on its own.
    deadline = ready + TIMEOUT + 3 * CULL_EVERY + ACTIVITY_INTERVAL + 60  # + the stop itself
    while hub.server_model(IDLE) is not None:
        assert time.monotonic() < deadline, f"{IDLE} not culled:\n{hub.log_tail()}"
        time.sleep(1)
    culled_after = time.monotonic() - ready
    print(f"\n{IDLE} culled {culled_after:.0f} s after it was ready")

    log = hub.log_path.read_text(errors="replace")
    assert f"Culling server {IDLE} (inactive for" in log
    assert f"DELETE /hub/api/users/{IDLE}/server (idle-culler@" in log  # the culler asked, no one else
    assert not lxd_client.instances.exists(instance)
    stop = audit(hub, IDLE)[-1]
    assert stop["operation"] == "stop" and stop["outcome"] == "ok", stop
    assert stop["instance"] == instance and stop["user"] == IDLE and "destroy" in stop["stages"]
    assert f"/user/{IDLE}" not in proxy_routes(hub)
    assert f"Server at /user/{IDLE}/" not in token_notes(hub, IDLE)
    assert hub.api("GET", "/user", token=token).status_code == 403
    assert not answers(port)
    with socket.socket() as s:
        # Closed connections linger in TIME-WAIT on the port for a minute; a listener would
        # make this bind fail even with SO_REUSEADDR (as a new server's proxy device binds).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free for the next server

    # The busy server lived through the same window, longer than the timeout.
    assert time.monotonic() - busy_since > TIMEOUT
