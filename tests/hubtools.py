"""A real JupyterHub process (with configurable-http-proxy) configured with this spawner."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import requests
import websocket
from conftest import CACHE, IMAGE, free_port

CHP = CACHE / "npm" / "node_modules" / ".bin" / "configurable-http-proxy"


class Hub:
    def __init__(self, workdir: Path, extra_config: str = "", env: dict | None = None, python: str = sys.executable,
                 debug: bool = True):
        self.workdir = workdir
        self.debug = debug  # --debug logs every request: tests want it, benchmarks run as operators do
        self.extra_env = dict(env or {})
        self.python = python
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.token = uuid.uuid4().hex
        self.state_dir = workdir / "state"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "hub.log"
        (workdir / "jupyterhub_config.py").write_text(self._config(extra_config))

    def _config(self, extra: str) -> str:
        return textwrap.dedent(f"""
            c = get_config()  # noqa
            c.JupyterHub.spawner_class = "tf-lxd"
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.db_url = "sqlite:///{self.workdir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
            c.JupyterHub.cleanup_servers = False
            c.ConfigurableHTTPProxy.command = ["{CHP}"]
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.ConfigurableHTTPProxy.pid_file = "{self.workdir}/proxy.pid"
            c.JupyterHub.services = [{{"name": "tester", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{"name": "tester", "services": ["tester"],
                "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "read:users",
                           "read:metrics"]}}]
            c.LxdSpawner.state_dir = "{self.state_dir}"
            c.LxdSpawner.terraform_cli_config = "{CACHE}/terraform/cli.tfrc"
            c.Spawner.start_timeout = 180
            c.Spawner.http_timeout = 90
            c.Spawner.default_url = "/lab"
            # Answer a start request at once (202), so the test watches the whole spawn.
            c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
        """) + textwrap.dedent(extra)

    # -- process --------------------------------------------------------------------------------
    def start(self):
        path = self.extra_env.get("PATH", os.environ["PATH"])  # a test's own PATH, with the hub's tools first
        env = {**os.environ, **self.extra_env, "CHECKPOINT_DISABLE": "1",
               "PATH": f"{CHP.parent}:{Path(self.python).parent}:{path}"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "jupyterhub", "-f", str(self.workdir / "jupyterhub_config.py"),
             *(["--debug"] if self.debug else [])],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hub exited:\n{self.log_tail()}"
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"hub did not come up:\n{self.log_tail()}")

    def stop(self):
        """SIGTERM the hub (it stops its proxy); servers keep running (cleanup_servers=False)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self._end_orphaned_proxy()

    def _end_orphaned_proxy(self):
        """A hub that died without cleaning up leaves its proxy running: end it, by its pid file."""
        pid_file = self.workdir / "proxy.pid"
        try:
            pid = int(pid_file.read_text())
            if "configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def kill(self):
        """SIGKILL the hub process alone (a crash): its children get no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, n=60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- REST API ---------------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=30, **kw)

    def metrics(self) -> dict[tuple, float]:
        """/hub/metrics parsed: {(sample name, ((label, value), ...)): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        r = requests.get(f"{self.url}/hub/metrics", headers={"Authorization": f"token {self.token}"}, timeout=30)
        r.raise_for_status()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(r.text) for s in family.samples}

    def user_token(self, user: str) -> str:
        self.api("POST", f"/users/{user}")  # exists afterwards (409 when it already did)
        r = self.api("POST", f"/users/{user}/tokens", json={"note": "test"})
        r.raise_for_status()
        return r.json()["token"]

    def start_server(self, user: str, server: str = "", options: dict | None = None) -> requests.Response:
        self.api("POST", f"/users/{user}")
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        return self.api("POST", path, json=options or {})

    def server_model(self, user: str, server: str = "") -> dict | None:
        r = self.api("GET", f"/users/{user}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json().get("servers", {}).get(server)

    def wait_ready(self, user: str, server: str = "", timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(user, server)
            if model and model.get("ready"):
                return model
            if model is None or not model.get("pending") and not model.get("ready"):
                # not pending and not ready: the spawn ended without a server
                if model is None:
                    raise AssertionError(f"{user}/{server} has no server:\n{self.log_tail()}")
            time.sleep(0.25)
        raise AssertionError(f"{user}/{server} not ready after {timeout}s:\n{self.log_tail()}")

    def wait_stopped(self, user: str, server: str = "", timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_model(user, server) is None:
                return
            time.sleep(0.25)
        raise AssertionError(f"{user}/{server} did not stop:\n{self.log_tail()}")

    def progress_events(self, user: str, server: str = "") -> list[dict]:
        """Read the spawn's progress event stream to its end (the hub closes it when ready)."""
        path = f"/users/{user}/servers/{server}/progress" if server else f"/users/{user}/server/progress"
        events = []
        with requests.get(f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.token}"},
                          stream=True, timeout=180) as r:
            r.raise_for_status()
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        return events

    # -- the user's server, through the proxy -----------------------------------------------------------
    def server_url(self, user: str, server: str = "") -> str:
        # The proxy routes on the name as JupyterHub escapes it (user.escaped_name).
        return f"{self.url}/user/{quote(user, safe='@~')}/{server + '/' if server else ''}"

    def run_code(self, user: str, token: str, code: str, server: str = "", timeout: float = 60) -> str:
        """Start a kernel, execute `code` over the kernel's websocket, return its stdout."""
        base = self.server_url(user, server)
        headers = {"Authorization": f"token {token}"}
        r = requests.post(base + "api/kernels", headers=headers, json={"name": "python3"}, timeout=60)
        r.raise_for_status()
        kernel = r.json()["id"]
        ws = websocket.create_connection(
            base.replace("http://", "ws://") + f"api/kernels/{kernel}/channels",
            header=[f"Authorization: token {token}"], timeout=timeout,
        )
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": user,
                           "session": uuid.uuid4().hex, "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell",
                "content": {"code": code, "silent": False, "store_history": False,
                            "user_expressions": {}, "allow_stdin": False},
            }))
            out = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg.get("msg_type") or msg["header"]["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    raise AssertionError(f"kernel error: {msg['content']}")
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out)
            raise AssertionError("kernel did not finish")
        finally:
            ws.close()
            requests.delete(base + f"api/kernels/{kernel}", headers=headers, timeout=30)


def container_token(lxd_client, name: str) -> str:
    """The server's API token, as the spawner wrote it into its container's environment file."""
    env = json.loads(lxd_client.instances.get(name).files.get("/etc/jupyterhub-singleuser/env.json"))
    return env["JUPYTERHUB_API_TOKEN"]


def shut_down(hub: "Hub", lxd_client) -> None:
    """Module teardown: stop every server through the hub, stop the hub, then delete whatever
    instance this hub made that is still there (so a failed test leaves nothing behind)."""
    try:
        _stop_servers(hub)
    finally:
        hub.stop()
    from pylxd.exceptions import NotFound

    for inst in lxd_client.instances.all():
        try:
            if inst.config.get("user.tf-lxd-spawner.workspace", "").startswith(str(hub.state_dir)):
                if inst.status != "Stopped":
                    inst.stop(force=True, wait=True)
                inst.delete(wait=True)
        except (NotFound, AttributeError):  # gone while listed (another test's instance, deleted meanwhile)
            continue
    delete_volumes(lxd_client, str(hub.state_dir))


@contextlib.contextmanager
def second_alias(client, alias: str):
    """A second alias of the test image on `client`'s daemon: another image name for the
    provider and the audit (an operator's image rollout, a choice in a form), of the same
    files. Removed afterwards, whatever happened."""
    if not client.images.exists(alias, alias=True):
        client.images.get_by_alias(IMAGE).add_alias(alias, f"tf-lxd-spawner test alias ({alias})")
    try:
        yield alias
    finally:
        client.images.get_by_alias(IMAGE).delete_alias(alias)


def custom_volumes(client) -> list[dict]:
    """Every custom volume of every pool, as the daemon lists them ({name, pool, config, ...}),
    without their snapshots (which the listing has too, as `<volume>/<snapshot>`)."""
    found = []
    for pool in client.storage_pools.all():
        listed = client.api.storage_pools[pool.name].volumes.get(params={"recursion": 1}).json()["metadata"] or []
        found += [{**v, "pool": pool.name} for v in listed if v.get("type") == "custom" and "/" not in v["name"]]
    return found


def delete_volumes(client, under: str = "", names: set | None = None) -> list[str]:
    """Delete the custom volumes whose workspace label is under `under` (the users' volumes
    outlive their servers by design: a test deletes what it made), or, with `names`, those of
    these names; snapshots first (LXD refuses a volume that has any). Returns pool/name of each."""
    from pylxd.exceptions import LXDAPIException, NotFound

    def wanted(vol) -> bool:
        # A snapshot (the pool's listing has them too, without a config): goes with its volume.
        config = getattr(vol, "config", None)
        if config is None or "/" in vol.name:
            return False
        if names is not None:
            return vol.name in names
        return config.get("user.tf-lxd-spawner.workspace", "").startswith(under)

    deleted = []
    for pool in client.storage_pools.all():
        for vol in pool.volumes.all():
            try:
                if vol.type != "custom" or not wanted(vol):
                    continue
                api = client.api.storage_pools[pool.name].volumes.custom[vol.name]
                for snap in api.snapshots.get().json().get("metadata") or []:
                    op = api.snapshots[snap.rsplit("/", 1)[-1]].delete().json().get("operation")
                    if op:
                        client.operations.wait_for_operation(op)
                vol.delete()
                deleted.append(f"{pool.name}/{vol.name}")
            except NotFound:  # gone meanwhile
                continue
            except LXDAPIException:  # still in use: a sweep goes on (the test reports it); by name, raise
                if names is not None:
                    raise
                continue
    return deleted


def _stop_servers(hub: "Hub") -> None:
    if hub.proc is None:
        hub.start()
    users = hub.api("GET", "/users").json()
    for u in users:
        for server in u.get("servers", {}):
            hub.api("DELETE", f"/users/{u['name']}/servers/{server}" if server else f"/users/{u['name']}/server")
    for u in users:
        for server in u.get("servers", {}):
            try:
                hub.wait_stopped(u["name"], server)
            except AssertionError:
                pass


class ExecWatcher:
    """Records the argv of every program the hub process and its descendants execute while the
    block runs (strace -f on the hub, execve only), to prove a secret never appears in one.
    Unlike sampling /proc, it cannot miss a short-lived process."""

    def __init__(self, hub: "Hub"):
        self.pid = hub.proc.pid
        self.trace = hub.workdir / f"execve-{uuid.uuid4().hex[:8]}.trace"
        self.text = ""
        self._proc: subprocess.Popen | None = None

    def __enter__(self):
        err = self.trace.with_suffix(".err")
        self._proc = subprocess.Popen(
            ["strace", "-f", "-s", "65536", "-e", "trace=execve,execveat", "-e", "signal=none",
             "-o", str(self.trace), "-p", str(self.pid)],
            stdout=subprocess.DEVNULL, stderr=open(err, "wb"))
        deadline = time.monotonic() + 30
        while "attached" not in err.read_text(errors="replace"):
            assert self._proc.poll() is None and time.monotonic() < deadline, err.read_text(errors="replace")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._proc.send_signal(signal.SIGINT)  # strace detaches and flushes
        self._proc.wait(30)
        self.text = self.trace.read_text(errors="replace")

    @property
    def execs(self) -> int:
        return self.text.count("execve(")

    def seen(self, secret: str) -> bool:
        return secret in self.text


CONTROL_HOOK = """
import json as _json
import pathlib as _pathlib

_CONTROL = _pathlib.Path(@CONTROL@)

def _control_hook(spawner):
    '''Set the traits the test's control file names for this user; put back the configured
    value of every trait an earlier start of this spawner object changed.'''
    try:
        wanted = _json.loads(_CONTROL.read_text()).get(spawner.user.name, {})
    except FileNotFoundError:
        wanted = {}
    saved = getattr(spawner, "_test_configured", None)
    if saved is None:
        saved = spawner._test_configured = {}
    for trait in wanted:
        saved.setdefault(trait, getattr(spawner, trait))
    for trait, configured in saved.items():
        setattr(spawner, trait, wanted.get(trait, configured))
    if wanted:
        spawner.log.info("test control file: %s gets %s", spawner.user.name, wanted)

c.Spawner.pre_spawn_hook = _control_hook
"""


def control_hook(path: Path) -> str:
    """Hub configuration: a pre_spawn_hook that gives each user's next start the traits the
    control file at `path` names ({user: {trait: value}}), so a test varies the configuration
    per start without restarting the hub (Control writes the file)."""
    return CONTROL_HOOK.replace("@CONTROL@", repr(str(path)))


class Control:
    """The control file the hub's pre_spawn_hook (control_hook) reads at every start."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.write_text("{}")

    def set(self, user: str, **traits):
        with self.lock:
            data = json.loads(self.path.read_text())
            if traits:
                data[user] = traits
            else:
                data.pop(user, None)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)  # the hook never reads half a file


def terraform_pid(ws: Path, command: str, timeout: float = 90.0) -> int:
    """The pid of the terraform (or tofu) `command` running in workspace ws."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if (len(argv) > 1 and os.path.basename(argv[0]) in (b"terraform", b"tofu")
                        and argv[1] == command.encode() and os.readlink(f"/proc/{pid}/cwd") == str(ws)):
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no terraform {command} in {ws}")


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `predicate` every 0.2 s until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
