"""Measurements taken through a real JupyterHub's REST API (tests/hubtools.Hub), and its clean-up.

Everything is timed from outside the hub, as a user would see it: from the start request to the
hub saying the server is ready, from the stop request to the server being gone from the model.
The hub's models are polled every 50 ms (not hubtools' 250 ms) so the polling adds little to
what is measured.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "tests"))

from benchstats import quantile  # noqa: E402
from hubtools import Hub  # noqa: E402
from unixhttp import Client  # noqa: E402

POLL = 0.05  # seconds between looks at the hub's model
WORKSPACE_KEY = "user.tf-lxd-spawner.workspace"


class SpawnFailed(RuntimeError):
    """The hub reported the spawn ended without a ready server (or it timed out)."""


PROXY = 'c.LxdSpawner.hub_api_via = "proxy"\n'
LEVERS_OFF = ("c.LxdSpawner.share_terraform_init = False\n"
              "c.LxdSpawner.terraform_gogc = 0\n" + PROXY)


@dataclass(frozen=True)
class Contestant:
    name: str  # e.g. "terraform-lxd", "baseline-incus"
    kind: str  # "tf" (tf-lxd-spawner) or "baseline"
    daemon: str  # "lxd" or "incus"
    binary: str = ""  # "terraform" or "tofu" for kind "tf"
    storage: bool = True  # kind "tf": the persistent home volume (storage_enabled, the default)
    extra: str = ""  # kind "tf": more configuration lines (a variant's settings)

    def hub_config(self, tag: str) -> str:
        """The hub configuration lines that make this contestant (after hubtools' own)."""
        limits = "c.JupyterHub.concurrent_spawn_limit = 0\nc.JupyterHub.active_server_limit = 0\n"
        if self.kind == "tf":
            return limits + (f'c.LxdSpawner.backend = "{self.daemon}"\nc.LxdSpawner.terraform_path = "{self.binary}"\n'
                             f'c.LxdSpawner.storage_enabled = {self.storage}\n'
                             # Volumes outlive servers: each contestant's users get their own on a shared daemon.
                             f'c.LxdSpawner.storage_name_template = "home-{self.name}-{{username}}"\n' + self.extra)
        return limits + ('c.JupyterHub.spawner_class = "baseline_spawner.BaselineSpawner"\n'
                         f'c.BaselineSpawner.backend = "{self.daemon}"\n'
                         f'c.BaselineSpawner.name_prefix = "{self.name_prefix(tag)}"\n')

    def name_prefix(self, tag: str) -> str:
        """Baseline instance names start with this: the run's tag, so a sweep takes only ours."""
        return f"bl-{tag}-"


CONTESTANTS = [Contestant(f"{b}-{d}", "tf", d, b) for b in ("terraform", "tofu") for d in ("lxd", "incus")] + [
    Contestant(f"baseline-{d}", "baseline", d) for d in ("lxd", "incus")] + [
    # The same without the home volume: what the volume costs a spawn and a stop.
    Contestant(f"{b}-{d}-novolume", "tf", d, b, storage=False) for b in ("terraform", "tofu") for d in ("lxd", "incus")] + [
    # Without the start-path levers of issue 21 that were kept (an init per workspace, Go's default
    # GOGC): what they buy, measured side by side.
    Contestant(f"{b}-{d}-levers-off", "tf", d, b, extra=LEVERS_OFF) for b in ("terraform", "tofu") for d in ("lxd", "incus")] + [
    # The hub API through a proxy device instead of the hub's unix socket (hub_api_via): what the
    # socket buys, with the other levers on.
    Contestant(f"{b}-{d}-proxy", "tf", d, b, extra=PROXY) for b in ("terraform", "tofu") for d in ("lxd", "incus")]


def hub_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime..cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


class HubSession:
    """A hub with the contestant it runs, and a kept-alive REST session per thread."""

    def __init__(self, contestant: Contestant, workdir: Path, tag: str):
        self.contestant, self.tag = contestant, tag
        workdir.mkdir(parents=True)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
        self.hub = Hub(workdir, extra_config=contestant.hub_config(tag), env=env, debug=False)
        self._local = threading.local()

    def start(self) -> "HubSession":
        self.hub.start()
        return self

    def cpu_seconds(self) -> float:
        """CPU the hub process and what it ran and waited for have used so far (utime + stime +
        cutime + cstime of /proc/<hub pid>/stat): Terraform, its provider (Terraform waits for
        it) and every other command the spawner runs. The proxy, a child still running, is not
        in it."""
        return hub_cpu_seconds(self.hub.proc.pid)

    # -- REST -----------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["Authorization"] = f"token {self.hub.token}"
        return s

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return self._session().request(method, f"{self.hub.url}/hub/api{path}", timeout=30, **kw)

    def server_model(self, user: str) -> dict | None:
        r = self.api("GET", f"/users/{user}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json().get("servers", {}).get("")

    def active_servers(self) -> dict[str, dict]:
        """User name -> default server model, for every user with a server pending or running."""
        r = self.api("GET", "/users", params={"state": "active", "limit": 1000})
        r.raise_for_status()
        users = r.json()
        users = users.get("items", users) if isinstance(users, dict) else users
        return {u["name"]: u["servers"][""] for u in users if "" in (u.get("servers") or {})}

    def ensure_users(self, users: list[str]) -> None:
        r = self.api("POST", "/users", json={"usernames": users})
        if r.status_code not in (201, 409):
            r.raise_for_status()

    # -- one server -----------------------------------------------------------------------------
    def spawn_ready(self, user: str, timeout: float = 300) -> float:
        """Seconds from the start request to the hub's model saying ready."""
        self.ensure_users([user])
        t0 = time.monotonic()
        r = self.api("POST", f"/users/{user}/server", json={})
        if r.status_code not in (201, 202):
            raise SpawnFailed(f"start of {user} refused: {r.status_code} {r.text[:300]}")
        while True:
            model = self.server_model(user)
            if model and model.get("ready"):
                return time.monotonic() - t0
            if not model or not model.get("pending"):
                raise SpawnFailed(f"spawn of {user} failed: {self.hub_errors()}")
            if time.monotonic() - t0 > timeout:
                raise SpawnFailed(f"{user} not ready after {timeout:.0f} s")
            time.sleep(POLL)

    def hub_errors(self, n: int = 3) -> str:
        """The hub log's last error lines (first line of each): why a spawn failed, in brief."""
        try:
            lines = self.hub.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no hub log)"
        errors = [line for line in lines if line.startswith("[E ")]
        return " | ".join(errors[-n:]) or "no error in the hub log"

    def stop_gone(self, user: str, timeout: float = 300) -> float:
        """Seconds from the stop request to the server being gone from the hub's model."""
        t0 = time.monotonic()
        r = self.api("DELETE", f"/users/{user}/server")
        if r.status_code not in (202, 204, 400, 404):  # 400/404: there was no server (or user)
            r.raise_for_status()
        while self.server_model(user) is not None:
            if time.monotonic() - t0 > timeout:
                raise SpawnFailed(f"{user} did not stop within {timeout:.0f} s")
            time.sleep(POLL)
        return time.monotonic() - t0

    def audit_records(self, user: str) -> list[dict]:
        """The user's default server's audit.jsonl (tf-lxd-spawner only; [] when absent)."""
        try:
            from tf_lxd_spawner.systems.workspace import workspace_path
            path = workspace_path(self.hub.state_dir, user, "") / "audit.jsonl"
        except ImportError:
            path = self.hub.state_dir / user / "_default" / "audit.jsonl"
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            return []

    # -- clean-up -------------------------------------------------------------------------------
    def shut_down(self) -> list[str]:
        """Stop every server through the hub, stop the hub, then delete any instance it left on the
        daemon. Never raises: returns what went wrong, so one hub's trouble does not stop the
        clean-up of the others."""
        problems = []
        try:
            if self.hub.proc is not None and self.hub.proc.poll() is None:
                self._stop_all_servers()
        except Exception as e:  # noqa: BLE001 - reported by the caller
            problems.append(f"{self.contestant.name}: stopping servers: {e}")
        try:  # deleting the users deletes their home volumes (delete_forever)
            if self.contestant.kind == "tf" and self.hub.proc is not None and self.hub.proc.poll() is None:
                for u in self.api("GET", "/users", params={"limit": 1000}).json():
                    self.api("DELETE", f"/users/{u['name']}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{self.contestant.name}: deleting users: {e}")
        try:
            self.hub.stop()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{self.contestant.name}: stopping the hub: {e}")
        try:
            swept = self.sweep_instances()
            if swept:
                problems.append(f"{self.contestant.name}: deleted {len(swept)} instance(s) left behind: {swept}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{self.contestant.name}: sweeping instances: {e}")
        return problems

    def _stop_all_servers(self, timeout: float = 180) -> None:
        users = list(self.active_servers())
        for u in users:
            self.api("DELETE", f"/users/{u}/server")
        deadline = time.monotonic() + timeout
        while users and time.monotonic() < deadline:
            active = self.active_servers()
            users = [u for u in users if u in active]
            time.sleep(0.2)

    def _mine(self, inst: dict) -> bool:
        if self.contestant.kind == "baseline":
            return inst["name"].startswith(self.contestant.name_prefix(self.tag))
        return (inst.get("config") or {}).get(WORKSPACE_KEY, "").startswith(str(self.hub.state_dir))

    def sweep_instances(self) -> list[str]:
        api = Client(self.contestant.daemon)
        try:
            left = [i["name"] for i in api.instances() if self._mine(i)]
            for name in left:
                api.delete(name)
            return left
        finally:
            api.close()


class LatencyProbe:
    """GET /hub/api/users/<user> every 50 ms in a thread: (seconds since t0, latency seconds)."""

    def __init__(self, session: HubSession, user: str, t0: float):
        self.session, self.user, self.t0 = session, user, t0
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.is_set():
            t = time.monotonic()
            try:
                ok = self.session.api("GET", f"/users/{self.user}").status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                self.samples.append((round(t - self.t0, 4), round(time.monotonic() - t, 5)))
            else:
                self.errors += 1
            self._done.wait(POLL)


def idle_latency(session: HubSession, seconds: float = 3.0) -> list[float]:
    """The probe's latencies with no spawn running but the same watching as during a burst: what
    the hub answers in anyway, on this machine, under this observation."""
    t0 = time.monotonic()
    with LatencyProbe(session, "probe", t0) as probe:
        while time.monotonic() - t0 < seconds:
            session.active_servers()
            time.sleep(POLL)
    return [lat for _, lat in probe.samples]


def burst(session: HubSession, n: int, timeout: float = 300) -> dict:
    """n spawns started at once through the REST API: time until all are ready, who failed, the
    hub API's latency meanwhile; then all stopped at once, and waited for until gone."""
    users = [f"burst{n}-{i}" for i in range(n)]
    session.ensure_users(users + ["probe"])
    idle = idle_latency(session)
    gate = threading.Barrier(n + 1)
    refused: dict[str, str] = {}

    def post(user: str) -> None:
        gate.wait()
        r = session.api("POST", f"/users/{user}/server", json={})
        if r.status_code not in (201, 202):
            refused[user] = f"{r.status_code} {r.text[:200]}"

    with ThreadPoolExecutor(n) as pool:
        posts = [pool.submit(post, u) for u in users]
        t0 = time.monotonic()
        with LatencyProbe(session, "probe", t0) as probe:
            try:
                gate.wait()
            except BaseException:
                gate.abort()  # interrupted: release the waiting threads, or the pool never ends
                raise
            for f in posts:
                f.result()
            ready, failed = _watch_until_settled(session, users, t0, dict(refused), timeout)
            all_done = time.monotonic() - t0
    latencies = [lat for _, lat in probe.samples]
    stop_all = _stop_burst(session, users)
    return {
        "n": n, "all_ready_s": round(all_done, 3), "ok": len(ready) == n,
        "ready_s": [ready.get(u) for u in users], "failed": failed,
        "latency_p50_ms": _ms(quantile(latencies, 0.5)), "latency_p99_ms": _ms(quantile(latencies, 0.99)),
        "latency_max_ms": _ms(max(latencies) if latencies else None), "probe_errors": probe.errors,
        "idle_p50_ms": _ms(quantile(idle, 0.5)), "idle_p99_ms": _ms(quantile(idle, 0.99)),
        "latency": probe.samples, "stop_all_s": stop_all,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _watch_until_settled(session: HubSession, users: list[str], t0: float, failed: dict,
                         timeout: float) -> tuple[dict, dict]:
    """Look at all active servers (one request) every 50 ms until each user is ready or failed."""
    ready: dict[str, float] = {}
    waiting = [u for u in users if u not in failed]
    while waiting:
        now = time.monotonic() - t0
        active = session.active_servers()
        for u in list(waiting):
            model = active.get(u)
            if model and model.get("ready"):
                ready[u] = round(now, 3)
            elif not model or not model.get("pending"):
                failed[u] = "spawn failed (server gone from the hub's model)"
            else:
                continue
            waiting.remove(u)
        if waiting and now > timeout:
            failed.update({u: f"not ready after {timeout:.0f} s" for u in waiting})
            break
        time.sleep(POLL)
    return ready, failed


def _stop_burst(session: HubSession, users: list[str], timeout: float = 300) -> float | None:
    """Stop all at once; seconds until none of them is in the hub's model (None: timed out)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda u: session.api("DELETE", f"/users/{u}/server"), users))
    while time.monotonic() - t0 < timeout:
        active = session.active_servers()
        if not any(u in active for u in users):
            return round(time.monotonic() - t0, 3)
        time.sleep(POLL)
    return None
