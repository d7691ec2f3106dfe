"""A class starting at once: a locust load test of one real hub, driven as students' browsers drive it.

    PATH=$PATH:.cache/bin .venv/bin/python benchmarks/class_load.py --users 100 --spawn-rate 2 \\
        --daemon incus [--spawner ours|baseline] [--json class-load.json]

(`.venv/bin/pip install 'locust>=2.30,<3'`, or the `bench` extra.) The script starts its own hub
(tests/hubtools.Hub: JupyterHub with configurable-http-proxy, the DummyAuthenticator with a
password, this spawner or benchmarks/baseline_spawner.py) and one warm-up spawn, then locust (as a
library, headless) starts `--users` simulated students at `--spawn-rate` per second. Each does
what a browser does:

  1. login    GET /hub/login (the form and its _xsrf cookie), POST /hub/login (username,
              password, _xsrf), GET /hub/home (the page after login, which sets the signed-in
              _xsrf cookie);
  2. spawn    POST /hub/spawn/<user> (the spawn form's submit, _xsrf in the query as the form
              has it), GET /hub/spawn-pending/<user>, then the progress event stream the page
              opens (/hub/api/users/<user>/server/progress, SSE, cookie + _xsrf) until ready or
              failed;
  3. lab      the pending page reloads: GET /hub/spawn-pending/<user> -> /user/<user>/ ->
              OAuth with the hub -> /user/<user>/lab (200);
  4. cell     POST /user/<user>/api/kernels (cookie + X-XSRFToken), the kernel's websocket
              (/api/kernels/<id>/channels), one cell `print(6*7)`; the answer timed;
  5. idle     the tab stays open: the websocket stays connected, and every --idle-poll seconds
              GET /user/<user>/api/kernels and /api/sessions (what an open JupyterLab polls).

Once every student has reached idle (or failed), the hub is watched idle for --idle seconds, each
container's memory is read from the daemon, and then every server is stopped through the REST
API with the hub's service token (timed, waited for until gone), the hub stopped, and every
container and volume of the run deleted: also on Ctrl-C, SIGTERM or a failure. The run also
stops early (and cleans up) when the host's available memory drops under --min-available-mib.

Measured meanwhile, in a separate process (no gevent, so the load generator cannot delay it):
GET /hub/api/ with the service token every 0.5 s (latency p50/p99); every second the hub
process's and the proxy's CPU, RSS and open files, the daemon's (incusd / lxd, by pid) CPU and
RSS with its forkproxy children, Terraform processes running, the host's load, CPU and available
memory; every --metrics-interval seconds the spawner's Terraform gauges from /hub/metrics.

Reported: per-user time from login to a running cell (p50/p95/max), each phase's, failures by
phase and kind (HTTP status or exception class), the hub API's latency under load and idle, the
processes' CPU and memory, each container's memory at the end, the spawner's stage times (ours:
audit records) and the hub log's errors and warnings, grouped. --json writes everything raw.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
BINARY = {"lxd": "terraform", "incus": "tofu"}  # as shared_bench.py picks
DAEMON_COMM = {"lxd": "lxd", "incus": "incusd"}
WORKSPACE_KEY = "user.tf-lxd-spawner.workspace"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TOKEN_ENV = "CLASS_LOAD_TOKEN"
#: JupyterHub 6's measure of its event loop: every 50 ms, how late the loop woke up.
LOOP_METRIC = "jupyterhub_event_loop_interval_seconds"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100, help="students (default 100)")
    ap.add_argument("--spawn-rate", type=float, default=2.0, help="students starting per second (default 2)")
    ap.add_argument("--daemon", choices=["incus", "lxd"], default="incus")
    ap.add_argument("--binary", choices=["terraform", "tofu"], help="default: tofu for incus, terraform for lxd")
    ap.add_argument("--spawner", choices=["ours", "baseline"], default="ours",
                    help="ours: tf-lxd-spawner; baseline: benchmarks/baseline_spawner.py (direct API)")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--hub-log", type=Path, help="copy the hub's log here (default: beside --json)")
    ap.add_argument("--concurrent-spawn-limit", type=int,
                    help="c.JupyterHub.concurrent_spawn_limit (default: JupyterHub's own, 100)")
    ap.add_argument("--start-timeout", type=int, default=600, help="c.Spawner.start_timeout (default 600 s)")
    ap.add_argument("--http-timeout", type=int, default=120, help="c.Spawner.http_timeout (default 120 s)")
    ap.add_argument("--hub-config", action="append", default=[], metavar="LINE",
                    help="one more line of hub configuration (repeatable), e.g. 'c.LxdSpawner.terraform_concurrency = 8'")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds all watch idle after the last student is done")
    ap.add_argument("--idle-poll", type=float, default=10.0, help="an idle tab's API poll interval (0: none)")
    ap.add_argument("--max-time", type=float, help="seconds the load part may take (default: ramp + start timeout + 300)")
    ap.add_argument("--stop-timeout", type=float, default=600, help="seconds the final stop of all may take")
    ap.add_argument("--metrics-interval", type=float, default=5.0, help="seconds between /hub/metrics reads (0: none)")
    ap.add_argument("--min-available-mib", type=int, default=3072,
                    help="stop the run when the host's MemAvailable drops below this")
    ap.add_argument("--no-warmup", action="store_true", help="no warm-up spawn before the class")
    ap.add_argument("--debug", action="store_true", help="run the hub with --debug (every request logged)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the hub's directory (logs, workspaces)")
    # The sampler: this file run again, in a process of its own (see run_sampler).
    ap.add_argument("--sampler", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hub-url", help=argparse.SUPPRESS)
    ap.add_argument("--hub-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--proxy-pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.binary = args.binary or BINARY[args.daemon]
    return args


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- /proc -------------------------------------------------------------------------------------------
def proc_stat(pid: int) -> dict | None:
    """comm, ppid, CPU ticks (own; reaped children) and RSS bytes of one process; None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    f = raw.rsplit(")", 1)[1].split()
    return {"comm": comm, "ppid": int(f[1]), "cpu": int(f[11]) + int(f[12]), "ccpu": int(f[13]) + int(f[14]),
            "rss": int(f[21]) * PAGE}


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def open_files(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def daemon_pid(daemon: str) -> int | None:
    """The daemon's main process: comm incusd / lxd, not one of its fork* helpers nor a zombie;
    of several (a test's loopback cluster runs more lxd), the one systemd started (ppid 1), then
    the largest."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is None or st["comm"] != DAEMON_COMM[daemon] or not st["rss"]:
            continue
        argv = cmdline(int(entry))
        if len(argv) > 1 and argv[1].startswith(("fork", "call")):
            continue
        found.append((st["ppid"] != 1, -st["rss"], int(entry)))
    return min(found)[2] if found else None


def meminfo() -> dict:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def host_cpu() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# -- the sampler (a process of its own) --------------------------------------------------------------
def run_sampler(args) -> int:
    """Write JSON lines to args.out until SIGTERM (or the parent is gone): the hub API's latency
    every 0.5 s, the processes and host every 1 s, the spawner's gauges every --metrics-interval."""
    import threading

    import requests

    token = os.environ.get(TOKEN_ENV, "")
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the load process, which ends us
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - written by three threads, closed at the end
    lock = threading.Lock()
    dpid = daemon_pid(args.daemon)

    def emit(rec: dict) -> None:
        with lock:
            out.write(json.dumps(rec) + "\n")

    def session() -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"token {token}"
        return s

    def api_loop() -> None:
        s = session()
        while not stop.is_set():
            t, t0 = time.time(), time.perf_counter()
            try:
                status = s.get(f"{args.hub_url}/hub/api/", timeout=30).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            emit({"k": "api", "t": round(t, 3), "s": round(time.perf_counter() - t0, 5), "status": status})
            stop.wait(0.5)

    def metrics_loop() -> None:
        s = session()
        wanted = ("tf_lxd_spawner_terraform_processes_waiting", "tf_lxd_spawner_terraform_processes_running",
                  "jupyterhub_running_servers")
        while not stop.wait(args.metrics_interval):
            t = time.time()
            try:
                text = s.get(f"{args.hub_url}/hub/metrics", timeout=30).text
            except requests.RequestException:
                continue
            rec = {"k": "metrics", "t": round(t, 3), "loop": {}}
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name in wanted:
                    rec[name] = float(value)
                elif name.startswith(LOOP_METRIC):
                    # the hub's event-loop lag histogram: {le: cumulative count}, "sum", "count"
                    le = re.search(r'le="([^"]+)"', name)
                    key = le.group(1) if le else name[len(LOOP_METRIC) + 1:]
                    if key in ("sum", "count") or le:
                        rec["loop"][key] = float(value)
            emit(rec)

    def resources_loop() -> None:
        while not stop.is_set():
            t = time.time()
            rec = {"k": "res", "t": round(t, 3)}
            procs = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    st = proc_stat(int(entry))
                    if st is not None:
                        procs[int(entry)] = st
            hub = procs.get(args.hub_pid)
            if hub:
                rec.update(hub_cpu=hub["cpu"], hub_ccpu=hub["ccpu"], hub_rss=hub["rss"], hub_fds=open_files(args.hub_pid))
            proxy = procs.get(args.proxy_pid)
            if proxy:
                rec.update(proxy_cpu=proxy["cpu"], proxy_rss=proxy["rss"], proxy_fds=open_files(args.proxy_pid))
            daemon = procs.get(dpid) if dpid else None
            if daemon:
                kids = [p for p in procs.values() if p["ppid"] == dpid]
                rec.update(daemon_cpu=daemon["cpu"], daemon_ccpu=daemon["ccpu"], daemon_rss=daemon["rss"],
                           daemon_fds=open_files(dpid), daemon_children=len(kids),
                           daemon_children_rss=sum(p["rss"] for p in kids),
                           daemon_children_cpu=sum(p["cpu"] for p in kids))
            rec["terraform"] = sum(1 for p in procs.values() if p["comm"] in ("terraform", "tofu"))
            rec["providers"] = sum(1 for p in procs.values() if p["comm"].startswith("terraform-pro"))
            busy, total = host_cpu()
            mem = meminfo()
            rec.update(host_busy=busy, host_total=total, load1=os.getloadavg()[0],
                       mem_available=mem["MemAvailable"], mem_total=mem["MemTotal"])
            emit(rec)
            if os.getppid() != parent:
                stop.set()
            stop.wait(max(0.0, 1.0 - (time.time() - t)))

    threads = [threading.Thread(target=api_loop, daemon=True), threading.Thread(target=resources_loop, daemon=True)]
    if args.metrics_interval > 0:
        threads.append(threading.Thread(target=metrics_loop, daemon=True))
    for th in threads:
        th.start()
    while not stop.wait(0.5):
        pass
    for th in threads:
        th.join(35)
    out.close()
    return 0


# -- hub configuration -------------------------------------------------------------------------------
def hub_config(args, tag: str, password: str) -> str:
    """What an operator would set for a class, after hubtools' own lines (which it overrides)."""
    lines = [
        'c.JupyterHub.authenticator_class = "dummy"',
        f'c.DummyAuthenticator.password = "{password}"',
        # hubtools answers start requests at once for its tests; an operator keeps the default.
        "c.JupyterHub.tornado_settings = {}",
        f"c.Spawner.start_timeout = {args.start_timeout}",
        f"c.Spawner.http_timeout = {args.http_timeout}",
    ]
    if args.concurrent_spawn_limit is not None:
        lines.append(f"c.JupyterHub.concurrent_spawn_limit = {args.concurrent_spawn_limit}")
    if args.spawner == "ours":
        lines += [f'c.LxdSpawner.backend = "{args.daemon}"', f'c.LxdSpawner.terraform_path = "{args.binary}"']
    else:
        lines += ['c.JupyterHub.spawner_class = "baseline_spawner.BaselineSpawner"',
                  f'c.BaselineSpawner.backend = "{args.daemon}"',
                  f'c.BaselineSpawner.name_prefix = "{baseline_prefix(tag)}"']
    return "\n".join(lines + list(args.hub_config)) + "\n"


def baseline_prefix(tag: str) -> str:
    return f"bl-{tag}-"


# -- summaries ---------------------------------------------------------------------------------------
def q(values, p):
    from benchstats import quantile

    return quantile([v for v in values if v is not None], p)


def dist(values, nd: int = 3) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(q(values, 0.5), nd), "p95": round(q(values, 0.95), nd),
            "p99": round(q(values, 0.99), nd), "max": round(max(values), nd), "min": round(min(values), nd)}


def rates(res: list[dict], key: str, t0: float, t1: float) -> list[float]:
    """CPU % (of one core) from cumulative ticks in consecutive samples between t0 and t1."""
    rows = [r for r in res if key in r and t0 <= r["t"] <= t1]
    out = []
    for a, b in pairwise(rows):
        dt = b["t"] - a["t"]
        if dt > 0:
            out.append(round(100 * (b[key] - a[key]) / CLK / dt, 1))
    return out


def window_summary(samples: dict, t0: float, t1: float) -> dict:
    api = [s for s in samples["api"] if t0 <= s["t"] <= t1]
    res = [r for r in samples["res"] if t0 <= r["t"] <= t1]
    met = [m for m in samples["metrics"] if t0 <= m["t"] <= t1]
    ok = [s["s"] * 1000 for s in api if s["status"] == 200]
    host = []
    for a, b in pairwise(res):
        if b["host_total"] > a["host_total"]:
            host.append(round(100 * (b["host_busy"] - a["host_busy"]) / (b["host_total"] - a["host_total"]), 1))

    def col(key, scale=1.0):
        return [r[key] * scale for r in res if r.get(key) is not None]

    def cpu_s(key):
        rows = [r for r in res if key in r]
        return round((rows[-1][key] - rows[0][key]) / CLK, 2) if len(rows) > 1 else None

    mib = 1 / 1024 / 1024
    return {
        "seconds": round(t1 - t0, 1),
        "api_ms": {**dist(ok, 1), "errors": len(api) - len(ok)},
        "hub_cpu_pct": dist(rates(res, "hub_cpu", t0, t1), 1), "hub_cpu_s": cpu_s("hub_cpu"),
        "hub_children_cpu_s": cpu_s("hub_ccpu"), "hub_rss_mib": dist(col("hub_rss", mib), 1),
        "hub_fds": dist(col("hub_fds"), 1),
        "proxy_cpu_pct": dist(rates(res, "proxy_cpu", t0, t1), 1), "proxy_rss_mib": dist(col("proxy_rss", mib), 1),
        "proxy_fds": dist(col("proxy_fds"), 1),
        "daemon_cpu_pct": dist(rates(res, "daemon_cpu", t0, t1), 1), "daemon_cpu_s": cpu_s("daemon_cpu"),
        "daemon_rss_mib": dist(col("daemon_rss", mib), 1), "daemon_fds": dist(col("daemon_fds"), 1),
        "daemon_children": dist(col("daemon_children"), 1), "daemon_children_rss_mib": dist(col("daemon_children_rss", mib), 1),
        "terraform_processes": dist(col("terraform"), 1),
        "host_cpu_pct": dist(host, 1), "load1": dist(col("load1"), 1), "mem_available_mib": dist(col("mem_available"), 1),
        "event_loop_lag": loop_lag(met),
        "terraform_waiting": dist([m.get("tf_lxd_spawner_terraform_processes_waiting") for m in met]),
        "terraform_running": dist([m.get("tf_lxd_spawner_terraform_processes_running") for m in met]),
    }


def loop_lag(met: list[dict]) -> dict:
    """The hub's event-loop lag in a window, from the difference of JupyterHub's histogram at its
    first and last sample: ticks, mean, and the bucket bounds under which 50/99% of them fell
    (the hub wakes every 50 ms: a lag of 0.05 s means none)."""
    rows = [m["loop"] for m in met if m.get("loop", {}).get("count") is not None]
    if len(rows) < 2:
        return {"n": 0}
    a, b = rows[0], rows[-1]
    n = b["count"] - a["count"]
    if n <= 0:
        return {"n": 0}
    bounds = sorted((float(k), b[k] - a.get(k, 0)) for k in b if k not in ("sum", "count") and k != "+Inf")
    out = {"n": int(n), "mean_ms": round(1000 * (b["sum"] - a["sum"]) / n, 1)}
    for name, frac in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        out[name] = next((round(1000 * le, 1) for le, c in bounds if c >= frac * n), "inf")
    out["over_250ms"] = int(n - next((c for le, c in bounds if le >= 0.25), n))
    return out


def group_log(path: Path, tag: str) -> dict:
    """The hub log's errors and warnings, grouped by message with names and numbers blanked."""
    counts: dict[str, dict] = {}
    levels = {"E": 0, "W": 0}
    stalls = []
    statuses: dict[str, int] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        m = re.match(r"\[([EWCID]) [\d-]+ [\d:.]+ \S+ [^\]]*\] (.*)", line)
        if not m:
            continue
        level, msg = m.groups()
        s = re.match(r"(\d{3}) (GET|POST|DELETE|PUT|PATCH|HEAD) ", msg)
        if s:
            key = f"{s.group(1)} {s.group(2)}"
            statuses[key] = statuses.get(key, 0) + 1
        stall = re.match(r"Event loop was unresponsive for at least ([\d.]+)s", msg)
        if stall:
            stalls.append(float(stall.group(1)))
        if level not in ("E", "W", "C"):
            continue
        levels[level] = levels.get(level, 0) + 1
        norm = re.sub(rf"\S*{tag}\S*", "<user>", msg)
        norm = re.sub(r"\d+(\.\d+)?", "N", norm)[:160]
        entry = counts.setdefault(f"{level} {norm}", {"n": 0, "example": msg[:400]})
        entry["n"] += 1
    top = sorted(counts.items(), key=lambda kv: -kv[1]["n"])[:25]
    return {"levels": levels, "request_statuses": statuses, "event_loop_stalls_s": stalls,
            "top": [{"what": k, **v} for k, v in top]}


# -- the load run ------------------------------------------------------------------------------------
def run_load(args) -> int:
    # locust first: it monkey-patches the standard library (gevent) before requests is imported.
    import gevent
    from locust import HttpUser, constant, events, task
    from locust.env import Environment
    from locust.log import setup_logging

    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(BENCH_DIR))
    import shutil
    import tempfile
    import uuid

    import machine
    import requests
    import websocket
    from hubtools import Hub
    from requests.cookies import get_cookie_header
    from unixhttp import Client

    setup_logging("WARNING")
    cache_bin = str(REPO / ".cache" / "bin")  # tofu after `make setup`
    if cache_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + cache_bin

    tag = uuid.uuid4().hex[:6]
    password = uuid.uuid4().hex
    workdir = Path(tempfile.mkdtemp(prefix=f"class-load-{tag}-", dir="/var/tmp"))
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    (workdir / "hub").mkdir()
    hub = Hub(workdir / "hub", extra_config=hub_config(args, tag, password), env=env_vars, debug=args.debug)
    state_dir = str(hub.state_dir)
    sampler_out = workdir / "samples.jsonl"
    result: dict = {"schema": 1, "benchmark": "class_load", "tag": tag,
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                 if k not in ("sampler", "hub_url", "hub_pid", "proxy_pid", "out")},
                    "hub_config": hub_config(args, tag, "<password>")}
    records: dict[str, dict] = {}
    sockets: dict[str, websocket.WebSocket] = {}
    marks: dict[str, float] = {}
    abort: dict[str, str] = {}
    runner = sampler = None

    # Ctrl-C and SIGTERM end the run through the clean-up: thrown into this (the main) greenlet.
    # Not Python's own KeyboardInterrupt, which lands in whatever greenlet runs at the moment
    # (locust's own swallow it); also when started with SIGINT ignored (a background job).
    main_greenlet = gevent.getcurrent()
    handlers = [gevent.signal_handler(signal.SIGINT, gevent.kill, main_greenlet, KeyboardInterrupt),
                gevent.signal_handler(signal.SIGTERM, gevent.kill, main_greenlet, SystemExit(143))]

    def api(method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{hub.url}/hub/api{path}",
                                headers={"Authorization": f"token {hub.token}"}, timeout=60, **kw)

    def active_users() -> dict[str, dict]:
        found, offset = {}, 0
        while True:
            r = api("GET", "/users", params={"state": "active", "limit": 200, "offset": offset})
            r.raise_for_status()
            page = r.json()
            page = page.get("items", page) if isinstance(page, dict) else page
            found.update({u["name"]: u["servers"][""] for u in page if "" in (u.get("servers") or {})})
            if len(page) < 200:
                return found
            offset += 200

    # -- the student ---------------------------------------------------------------------------------
    NAV = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "document",
           "Accept": "text/html,application/xhtml+xml"}
    FETCH = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Dest": "empty"}

    class PhaseError(Exception):
        def __init__(self, kind: str, detail: str):
            super().__init__(f"{kind}: {detail}")
            self.kind, self.detail = kind, detail

    def page_message(html: str) -> str:
        for pattern in (r'class="spawn-error-msg[^"]*">(.*?)</p>', r'<div class="error">(.*?)</div>',
                        r"<title>(.*?)</title>"):
            m = re.search(pattern, html or "", re.DOTALL)
            if m:
                return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", m.group(1))).strip()[:300]
        return re.sub(r"\s+", " ", (html or "")[:200])

    def expect(r, statuses: set, what: str) -> None:
        err = getattr(r, "error", None)
        if r.status_code == 0 or (err is not None and r.status_code not in statuses):
            raise PhaseError(type(err).__name__ if err else "no response", f"{what}: {err}")
        if r.status_code not in statuses:
            raise PhaseError(f"HTTP {r.status_code}", f"{what}: {page_message(r.text)}")

    def phase_event(name: str, seconds: float, exc: Exception | None = None) -> None:
        events.request.fire(request_type="phase", name=name, response_time=seconds * 1000, response_length=0,
                            exception=exc, context={})

    counter = iter(range(1, 10 ** 6))
    cell_code = "print(6*7)"
    spawn_deadline = args.start_timeout + 120

    class Student(HttpUser):
        host = hub.url
        wait_time = constant(args.idle_poll or 3600)

        def on_start(self):
            self.index = next(counter)
            self.name = f"s{tag}-{self.index:03d}"
            self.client.headers["User-Agent"] = f"class-load/{self.name}"
            self.done = False
            self.rec = records[self.name] = {"user": self.name, "index": self.index, "t_start": time.time(),
                                             "phase": "login", "phases": {}, "failure": None, "ok": False}

        @task
        def student(self):
            if not self.done:
                self.done = True
                self.flow()
            elif args.idle_poll and self.rec["ok"]:
                xsrf = self.client.cookies.get("_xsrf", path=f"/user/{self.name}/") or ""
                for what in ("kernels", "sessions"):
                    self.client.get(f"/user/{self.name}/api/{what}", headers={**FETCH, "X-XSRFToken": xsrf},
                                    name=f"GET /user/[user]/api/{what} (idle)", timeout=60)

        def flow(self):
            rec, c, name = self.rec, self.client, self.name
            t_begin = time.perf_counter()
            t_phase = t_begin

            def done(phase_name: str, next_phase: str):
                nonlocal t_phase
                now = time.perf_counter()
                rec["phases"][phase_name] = round(now - t_phase, 3)
                phase_event(phase_name, now - t_phase)
                t_phase = now
                rec["phase"] = next_phase

            try:
                # 1. login
                r = c.get("/hub/login", headers=NAV, name="GET /hub/login", timeout=120)
                expect(r, {200}, "login page")
                m = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
                if not m:
                    raise PhaseError("no _xsrf", "the login page has no _xsrf field")
                r = c.post("/hub/login?next=", data={"username": name, "password": password, "_xsrf": m.group(1)},
                           headers=NAV, allow_redirects=False, name="POST /hub/login", timeout=120)
                expect(r, {302}, "login form")
                r = c.get("/hub/home", headers=NAV, name="GET /hub/home", timeout=120)
                expect(r, {200}, "home page")
                m = re.search(r'xsrf_token: "([^"]+)"', r.text)
                xsrf = m.group(1) if m else c.cookies.get("_xsrf", path="/hub/")
                done("login", "spawn")

                # 2. spawn: the form's submit, the pending page, its progress stream
                t_spawn = time.perf_counter()
                r = c.post(f"/hub/spawn/{name}?_xsrf={xsrf}", headers=NAV, allow_redirects=False,
                           name="POST /hub/spawn/[user]", timeout=120)
                expect(r, {302}, "spawn form")
                rec["spawn_post_s"] = round(time.perf_counter() - t_spawn, 3)
                r = c.get(f"/hub/spawn-pending/{name}", headers=NAV, allow_redirects=False,
                          name="GET /hub/spawn-pending/[user]", timeout=120)
                expect(r, {200, 302}, "pending page")
                events_seen, ready = [], r.status_code == 302
                if not ready:
                    m = re.search(r'new EventSource\("([^"]+)"\)', r.text)
                    if not m:
                        raise PhaseError("no progress url", page_message(r.text))
                    import html as _html

                    url = _html.unescape(m.group(1))
                    failed = None
                    with c.get(url, headers={**FETCH, "Accept": "text/event-stream"}, stream=True,
                               catch_response=True, name="GET progress (SSE, to the end)", timeout=(30, 120)) as s:
                        if s.status_code != 200:
                            s.failure(f"HTTP {s.status_code}")
                            failed = PhaseError(f"HTTP {s.status_code}" if s.status_code else
                                                type(getattr(s, "error", None)).__name__, "progress stream")
                        else:
                            try:
                                for line in s.iter_lines(chunk_size=None, decode_unicode=True):
                                    if not line or not line.startswith("data:"):
                                        continue
                                    ev = json.loads(line[5:])
                                    events_seen.append(round(time.perf_counter() - t_spawn, 3))
                                    if ev.get("ready"):
                                        ready = True
                                        break
                                    if ev.get("failed"):
                                        failed = PhaseError("spawn failed", str(ev.get("message"))[:300])
                                        break
                                    if time.perf_counter() - t_spawn > spawn_deadline:
                                        failed = PhaseError("spawn timeout", f"no ready event in {spawn_deadline} s")
                                        break
                                if failed is None and not ready:
                                    failed = PhaseError("stream ended", "progress stream closed without ready")
                            except requests.RequestException as e:
                                failed = PhaseError(type(e).__name__, f"progress stream: {e}")
                            s.success() if failed is None else s.failure(str(failed))
                            s.close()
                    rec["progress_events"] = len(events_seen)
                    if failed:
                        raise failed
                done("spawn", "lab")

                # 3. the pending page reloads: to the server, through OAuth, to JupyterLab
                r = c.get(f"/hub/spawn-pending/{name}", headers=NAV, name="GET pending -> /user/[user]/lab (OAuth)",
                          timeout=120)
                expect(r, {200}, "JupyterLab")
                if not r.url.rstrip("/").endswith(f"/user/{name}/lab"):
                    raise PhaseError("wrong page", f"ended at {r.url}")
                done("lab", "cell")

                # 4. a kernel, its websocket, one cell
                base = f"/user/{name}/"
                xsrf = c.cookies.get("_xsrf", path=base) or ""
                t0 = time.perf_counter()
                r = c.post(base + "api/kernels", json={"name": "python3"}, headers={**FETCH, "X-XSRFToken": xsrf},
                           name="POST /user/[user]/api/kernels", timeout=120)
                expect(r, {201}, "new kernel")
                kernel = r.json()["id"]
                rec["kernel_start_s"] = round(time.perf_counter() - t0, 3)
                http_url = f"{hub.url}{base}api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
                cookie = get_cookie_header(c.cookies, requests.Request("GET", http_url))
                t0 = time.perf_counter()
                try:
                    ws = websocket.create_connection(
                        http_url.replace("http://", "ws://"), timeout=120,
                        header=[f"Cookie: {cookie}", "Sec-Fetch-Mode: websocket",
                                f"User-Agent: class-load/{name}"])
                except Exception as e:  # noqa: BLE001 - every kind of failure is reported by its class
                    phase_event("websocket connect", time.perf_counter() - t0, e)
                    raise PhaseError(type(e).__name__, f"kernel websocket: {e}") from None
                sockets[name] = ws
                rec["ws_connect_s"] = round(time.perf_counter() - t0, 3)
                phase_event("websocket connect", time.perf_counter() - t0)
                msg_id = uuid.uuid4().hex
                t0 = time.perf_counter()
                ws.send(json.dumps({
                    "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": name,
                               "session": uuid.uuid4().hex, "version": "5.3"},
                    "parent_header": {}, "metadata": {}, "channel": "shell",
                    "content": {"code": cell_code, "silent": False, "store_history": True,
                                "user_expressions": {}, "allow_stdin": False}}))
                answer = None
                while True:
                    try:
                        msg = json.loads(ws.recv())
                    except Exception as e:  # noqa: BLE001
                        raise PhaseError(type(e).__name__, f"waiting for the cell's answer: {e}") from None
                    if msg.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind = msg.get("msg_type") or msg["header"]["msg_type"]
                    if kind == "stream" and answer is None:
                        answer = msg["content"]["text"]
                        rec["answer_s"] = round(time.perf_counter() - t0, 3)
                    elif kind == "error":
                        raise PhaseError("kernel error", str(msg["content"].get("ename")))
                    elif kind == "status" and msg["content"]["execution_state"] == "idle":
                        break
                if (answer or "").strip() != "42":
                    raise PhaseError("wrong answer", repr(answer))
                phase_event("cell answer", rec["answer_s"])
                done("cell", "idle")
                rec["total_s"] = round(time.perf_counter() - t_begin, 3)
                phase_event("login to running cell", rec["total_s"])
                rec["ok"] = True
            except PhaseError as e:
                self._failed(e.kind, e.detail, t_begin)
            except Exception as e:  # noqa: BLE001
                self._failed(type(e).__name__, str(e)[:300], t_begin)
            finally:
                rec["t_end"] = time.time()

        def _failed(self, kind, detail, t_begin):
            rec = self.rec
            rec["failure"] = {"phase": rec["phase"], "kind": kind, "detail": detail,
                              "after_s": round(time.perf_counter() - t_begin, 3)}
            phase_event(f"failed in {rec['phase']}", time.perf_counter() - t_begin, Exception(f"{kind}: {detail}"))
            rec["phase"] = "failed"
            _log(f"{self.name}: failed in {rec['failure']['phase']}: {kind}: {detail[:200]}")

    # -- run -----------------------------------------------------------------------------------------
    interrupted = None
    try:
        result["machine"] = machine.facts()
        hub.start()
        proxy_pid = int((hub.workdir / "proxy.pid").read_text()) if (hub.workdir / "proxy.pid").exists() else 0
        _log(f"hub at {hub.url} (pid {hub.proc.pid}, proxy {proxy_pid}), {args.spawner} spawner on {args.daemon}"
             + (f" with {args.binary}" if args.spawner == "ours" else "") + f", tag {tag}, workdir {workdir}")
        sampler = subprocess.Popen(
            [sys.executable, __file__, "--sampler", "--daemon", args.daemon, "--hub-url", hub.url,
             "--hub-pid", str(hub.proc.pid), "--proxy-pid", str(proxy_pid), "--out", str(sampler_out),
             "--metrics-interval", str(args.metrics_interval)],
            env={**os.environ, TOKEN_ENV: hub.token}, stdin=subprocess.DEVNULL)
        result["pids"] = {"hub": hub.proc.pid, "proxy": proxy_pid, "daemon": daemon_pid(args.daemon),
                          "sampler": sampler.pid}

        if not args.no_warmup:  # the hub's first spawn (shared init, first clone): an operator's hub is warm
            user = f"w{tag}-warmup"
            t0 = time.monotonic()
            api("POST", f"/users/{user}")
            r = api("POST", f"/users/{user}/server", json={})
            if r.status_code not in (201, 202):
                raise RuntimeError(f"warm-up spawn refused: {r.status_code} {r.text[:300]}")
            while True:
                model = active_users().get(user)
                if model and model.get("ready"):
                    break
                if not model or not model.get("pending") or time.monotonic() - t0 > args.start_timeout:
                    raise RuntimeError(f"warm-up spawn failed:\n{hub.log_tail(30)}")
                time.sleep(0.5)
            ready_s = time.monotonic() - t0
            api("DELETE", f"/users/{user}/server")
            while user in active_users():
                time.sleep(0.5)
            result["warmup"] = {"ready_s": round(ready_s, 2), "stop_s": round(time.monotonic() - t0 - ready_s, 2)}
            _log(f"warm-up: ready in {ready_s:.1f} s, stopped in {result['warmup']['stop_s']:.1f} s")
            gevent.sleep(3)  # a quiet moment in the samples before the class

        env = Environment(user_classes=[Student], host=hub.url, events=events)
        runner = env.create_local_runner()
        max_time = args.max_time or args.users / args.spawn_rate + args.start_timeout + 300
        marks["load_start"] = time.time()
        runner.start(args.users, spawn_rate=args.spawn_rate)
        _log(f"class of {args.users} starting at {args.spawn_rate}/s")
        last_print = 0.0
        while True:
            gevent.sleep(1)
            now = time.time()
            finished = [r for r in records.values() if r["phase"] in ("idle", "failed")]
            mem = meminfo()["MemAvailable"]
            if mem < args.min_available_mib:
                abort["reason"] = f"MemAvailable {mem} MiB < {args.min_available_mib} MiB"
            if hub.proc.poll() is not None:
                abort["reason"] = f"the hub exited ({hub.proc.returncode})"
            if now - marks["load_start"] > max_time:
                abort["reason"] = f"the class took more than {max_time:.0f} s"
            if now - last_print >= 10 or abort:
                by_phase: dict[str, int] = {}
                for r in records.values():
                    by_phase[r["phase"]] = by_phase.get(r["phase"], 0) + 1
                _log(f"t={now - marks['load_start']:.0f}s started {len(records)}/{args.users} "
                     f"{dict(sorted(by_phase.items()))} MemAvailable {mem} MiB load {os.getloadavg()[0]:.1f}")
                last_print = now
            if abort:
                _log(f"stopping the run: {abort['reason']}")
                break
            if len(records) >= args.users and len(finished) >= args.users:
                break
        marks["load_end"] = time.time()
        if not abort:
            _log(f"all {args.users} done in {marks['load_end'] - marks['load_start']:.1f} s; idle for {args.idle:.0f} s")
            gevent.sleep(args.idle)
        marks["idle_end"] = time.time()
        result["containers"] = container_memory(Client(args.daemon), args, state_dir, tag)
    except (KeyboardInterrupt, SystemExit) as e:
        interrupted = f"{type(e).__name__}"
        _log(f"interrupted ({interrupted}): cleaning up")
    except Exception as e:  # noqa: BLE001 - reported, then cleaned up
        interrupted = f"{type(e).__name__}: {e}"
        _log(f"run failed: {interrupted}; cleaning up")
    finally:
        for h in handlers:
            h.cancel()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        marks.setdefault("load_end", time.time())
        marks.setdefault("idle_end", time.time())
        if runner is not None:
            result["locust"] = locust_table(runner)
            runner.quit()
        for ws in sockets.values():
            try:
                ws.close(timeout=2)
            except Exception:  # noqa: BLE001, S110 - closing what the run leaves: nothing to do about it
                pass
        result["metrics_end"] = final_metrics(hub) if hub.proc is not None and hub.proc.poll() is None else {}
        result["cleanup"] = clean_up(hub, args, state_dir, tag, api, active_users, marks)
        if sampler is not None:
            sampler.terminate()
            try:
                sampler.wait(40)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
        result["audit"] = audit_stages(state_dir, records) if args.spawner == "ours" else {}
        result["hub_log"] = group_log(hub.log_path, tag)
        log_copy = args.hub_log or (args.json.with_suffix(".hub.log") if args.json else None)
        if log_copy:
            log_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub.log_path, log_copy)
            result["hub_log_copy"] = str(log_copy)
        if args.keep_workdir:
            _log(f"workdir kept: {workdir}")
        samples = read_samples(sampler_out)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["interrupted"] = interrupted or abort.get("reason")
    result["marks"] = marks
    result["users"] = sorted(records.values(), key=lambda r: r["index"])
    result["summary"] = summarize(result, samples, marks, args)
    result["samples"] = samples
    print_summary(result, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        _log(f"raw results in {args.json}")
    left = result["cleanup"].get("left_behind")
    if result["interrupted"] or left:
        return 1
    return 2 if result["summary"]["failed"] else 0


def container_memory(client, args, state_dir: str, tag: str) -> dict:
    """Each of the run's running containers' memory usage, from the daemon's state API."""
    out = {}
    for inst in client.instances():
        if not mine(inst, args, state_dir, tag):
            continue
        try:
            state = client.request("GET", f"/1.0/instances/{inst['name']}/state")["metadata"]
        except Exception:  # noqa: BLE001, S112 - gone meanwhile
            continue
        mem = state.get("memory") or {}
        out[inst["name"]] = {"status": state.get("status"), "usage_mib": round(mem.get("usage", 0) / 2 ** 20, 1),
                             "peak_mib": round((mem.get("usage_peak") or 0) / 2 ** 20, 1),
                             "cpu_s": round(((state.get("cpu") or {}).get("usage") or 0) / 1e9, 2),
                             "processes": state.get("processes")}
    client.close()
    return out


def mine(inst: dict, args, state_dir: str, tag: str) -> bool:
    if args.spawner == "baseline":
        return inst["name"].startswith(baseline_prefix(tag))
    return (inst.get("config") or {}).get(WORKSPACE_KEY, "").startswith(state_dir)


def final_metrics(hub) -> dict:
    """The spawner's and the hub's histograms at the end: count and mean per label set."""
    try:
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"{hub.url}/hub/metrics", headers={"Authorization": f"token {hub.token}"}, timeout=60).text
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)}
    sums: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram" or not family.name.startswith(("tf_lxd_spawner", "jupyterhub")):
            continue
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                entry = sums.setdefault(f"{family.name}{{{labels}}}", {})
                entry["sum" if s.name.endswith("_sum") else "count"] = s.value
    return {k: {"count": int(v.get("count", 0)), "mean_s": round(v["sum"] / v["count"], 3)}
            for k, v in sorted(sums.items()) if v.get("count")}


def clean_up(hub, args, state_dir: str, tag: str, api, active_users, marks: dict) -> dict:
    """Stop every server through the hub (timed), stop the hub, delete what is left of the run on
    the daemon (instances, then volumes); never raises: returns what happened."""
    import gevent
    import pylxd
    from gevent.pool import Pool
    from hubtools import custom_volumes, delete_volumes
    from unixhttp import Client

    out: dict = {"problems": []}
    try:
        if hub.proc is not None and hub.proc.poll() is None:
            users = list(active_users())
            t0 = time.monotonic()
            marks["stop_start"] = time.time()
            statuses = Pool(50).map(lambda u: api("DELETE", f"/users/{u}/server").status_code, users)
            out["stop_refused"] = {u: st for u, st in zip(users, statuses) if st not in (202, 204)}
            last_ask = time.monotonic()
            while users and time.monotonic() - t0 < args.stop_timeout:
                gevent.sleep(0.5)
                active = active_users()
                users = [u for u in users if u in active]
                if users and time.monotonic() - last_ask > 15:
                    # a refused or lost stop request (a 500 from the spawner's stop) is asked again
                    last_ask = time.monotonic()
                    again = [u for u in users if not active[u].get("pending")]
                    for u in again:
                        st = api("DELETE", f"/users/{u}/server").status_code
                        out.setdefault("stop_asked_again", {})[u] = st
            out["stop_all_s"] = round(time.monotonic() - t0, 2)
            out["not_stopped"] = users
            marks["stop_end"] = time.time()
            _log(f"stop of all: {out['stop_all_s']} s" + (f", {len(users)} still active" if users else ""))
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"stopping servers: {e}")
    try:
        hub.stop()
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"stopping the hub: {e}")
    client = Client(args.daemon)
    try:
        swept = [i["name"] for i in client.instances() if mine(i, args, state_dir, tag)]
        for name in swept:
            client.delete(name)
        out["instances_swept"] = swept
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"sweeping instances: {e}")
    try:
        pl = pylxd.Client(endpoint="/var/lib/incus/unix.socket") if args.daemon == "incus" else pylxd.Client()
        deleted = delete_volumes(pl, state_dir)
        named = {v["name"] for v in custom_volumes(pl) if tag in v["name"]}
        if named:
            deleted += delete_volumes(pl, names=named)
        out["volumes_deleted"] = len(deleted)
        left_volumes = [v["name"] for v in custom_volumes(pl)
                        if tag in v["name"] or (v.get("config") or {}).get(WORKSPACE_KEY, "").startswith(state_dir)]
    except Exception as e:  # noqa: BLE001
        out["problems"].append(f"deleting volumes: {e}")
        left_volumes = ["(unknown: the volume sweep failed)"]
    try:
        left_instances = [i["name"] for i in client.instances() if mine(i, args, state_dir, tag)]
    except Exception as e:  # noqa: BLE001
        left_instances = [f"(unknown: {e})"]
    client.close()
    out["left_behind"] = left_instances + left_volumes
    _log(f"clean-up: {len(out.get('instances_swept', []))} instance(s) swept after the stop, "
         f"{out.get('volumes_deleted', 0)} volume(s) deleted; left behind: {out['left_behind'] or 'nothing'}"
         + (f"; problems: {out['problems']}" if out["problems"] else ""))
    return out


def audit_stages(state_dir: str, records: dict) -> dict:
    """Per stage of our spawner's start (audit.jsonl of each student's server): p50 / max."""
    from tf_lxd_spawner.systems.workspace import workspace_path

    stages: dict[str, list] = {}
    durations, failed = [], {}
    for user in records:
        path = workspace_path(state_dir, user, "") / "audit.jsonl"
        try:
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            continue
        starts = [x for x in lines if x.get("operation") == "start"]
        if not starts:
            continue
        last = starts[-1]
        if last.get("outcome") != "ok":
            key = str(last.get("outcome"))
            failed[key] = failed.get(key, 0) + 1
            continue
        durations.append(last.get("duration"))
        for k, v in (last.get("stages") or {}).items():
            stages.setdefault(k, []).append(v)
    return {"start_duration_s": dist(durations), "stages_s": {k: dist(v) for k, v in stages.items()},
            "not_ok": failed}


def read_samples(path: Path) -> dict:
    samples = {"api": [], "res": [], "metrics": []}
    try:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            samples[rec.pop("k")].append(rec)
    except OSError:
        pass
    return samples


def locust_table(runner) -> list[dict]:
    rows = []
    for (name, method), e in sorted(runner.stats.entries.items(), key=lambda kv: kv[1].start_time or 0):
        rows.append({"type": method, "name": name, "n": e.num_requests, "failures": e.num_failures,
                     "p50_ms": e.get_response_time_percentile(0.5), "p95_ms": e.get_response_time_percentile(0.95),
                     "max_ms": round(e.max_response_time or 0)})
    rows.append({"errors": [{"method": err.method, "name": err.name, "error": str(err.error)[:300],
                             "n": err.occurrences} for err in runner.stats.errors.values()]})
    return rows


def summarize(result: dict, samples: dict, marks: dict, args) -> dict:
    users = result["users"]
    ok = [u for u in users if u["ok"]]
    failures: dict[str, int] = {}
    for u in users:
        f = u.get("failure")
        if f:
            key = f"{f['phase']}: {f['kind']}"
            failures[key] = failures.get(key, 0) + 1
    load = (marks["load_start"], marks["load_end"]) if "load_start" in marks else (0, 0)
    mem = [c["usage_mib"] for c in (result.get("containers") or {}).values()]
    cpu = [c.get("cpu_s") for c in (result.get("containers") or {}).values()]
    unfinished: dict[str, int] = {}
    for u in users:
        if not u["ok"] and not u.get("failure"):
            unfinished[u["phase"]] = unfinished.get(u["phase"], 0) + 1
    return {
        "users": len(users), "ok": len(ok), "failed": len(users) - len(ok) - sum(unfinished.values()),
        "failures": failures, "unfinished": unfinished,
        "class_s": round(load[1] - load[0], 1),
        "login_to_cell_s": dist([u.get("total_s") for u in ok]),
        "phases_s": {p: dist([u["phases"].get(p) for u in users]) for p in ("login", "spawn", "lab", "cell")},
        "spawn_post_s": dist([u.get("spawn_post_s") for u in users]),
        "kernel_start_s": dist([u.get("kernel_start_s") for u in users]),
        "ws_connect_s": dist([u.get("ws_connect_s") for u in users]),
        "answer_s": dist([u.get("answer_s") for u in users]),
        "under_load": window_summary(samples, *load),
        "idle": window_summary(samples, marks.get("load_end", 0), marks.get("idle_end", 0)),
        "stopping": window_summary(samples, marks.get("stop_start", 0), marks.get("stop_end", 0)),
        "containers": {"n": len(mem), "usage_mib": dist(mem), "sum_mib": round(sum(mem), 1), "cpu_s": dist(cpu, 2)},
        "stop_all_s": (result.get("cleanup") or {}).get("stop_all_s"),
    }


def print_summary(result: dict, args) -> None:
    s = result["summary"]
    m = result.get("machine") or {}

    def row(name, d, unit=""):
        if not d or not d.get("n"):
            return f"| {name} | 0 | | | | |"
        return f"| {name} | {d['n']} | {d['p50']}{unit} | {d['p95']}{unit} | {d['p99']}{unit} | {d['max']}{unit} |"

    spawner = "tf-lxd-spawner + " + args.binary if args.spawner == "ours" else "baseline (direct API)"
    print(f"\n## class_load: {args.users} users at {args.spawn_rate}/s, {spawner} on {args.daemon}"
          f" ({m.get('cores')} cores, {m.get('memory_gib')} GiB, {m.get('date')}), tag {result['tag']}")
    print(f"\n{s['ok']}/{s['users']} reached a running cell; the class took {s['class_s']} s"
          + (f"; INTERRUPTED: {result['interrupted']}" if result.get("interrupted") else ""))
    print("\n| per user (s) | n | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|")
    print(row("login to running cell", s["login_to_cell_s"]))
    for p, d in s["phases_s"].items():
        print(row(f"phase {p}", d))
    print(row("  spawn: POST /hub/spawn answered", s["spawn_post_s"]))
    print(row("  cell: kernel start (POST)", s["kernel_start_s"]))
    print(row("  cell: websocket connect", s["ws_connect_s"]))
    print(row("  cell: execute to answer", s["answer_s"]))
    print("\nfailures by phase and kind: " + (", ".join(f"{k} x{v}" for k, v in sorted(s["failures"].items()))
                                                 or "none"))
    if s.get("unfinished"):
        print(f"unfinished when the run ended, by phase: {s['unfinished']}")
    print("\n| hub and host | under load | idle after | stopping all |\n|---|---|---|---|")

    def cell(w, key, fmt="p50/p99/max"):
        d = s[w].get(key) if isinstance(s[w].get(key), dict) else None
        if key in ("hub_cpu_s", "hub_children_cpu_s", "daemon_cpu_s", "seconds"):
            return str(s[w].get(key))
        if not d or not d.get("n"):
            return ""
        return "/".join(str(d[k]) for k in fmt.split("/"))

    for label, key, fmt in [
        ("window (s)", "seconds", ""), ("hub API GET /hub/api/ ms p50/p99/max", "api_ms", "p50/p99/max"),
        ("hub event-loop lag ms mean/p99/p99.9 (bucket bounds)", "event_loop_lag", "mean_ms/p99_ms/p999_ms"),
        ("hub event-loop ticks late > 250 ms", "event_loop_lag", "over_250ms"),
        ("hub CPU % p50/max", "hub_cpu_pct", "p50/max"), ("hub CPU-s (own)", "hub_cpu_s", ""),
        ("hub children CPU-s (terraform...)", "hub_children_cpu_s", ""), ("hub RSS MiB max", "hub_rss_mib", "max"),
        ("hub open files max", "hub_fds", "max"), ("proxy CPU % p50/max", "proxy_cpu_pct", "p50/max"),
        ("proxy RSS MiB max", "proxy_rss_mib", "max"), ("proxy open files max", "proxy_fds", "max"),
        (f"{DAEMON_COMM[args.daemon]} CPU % p50/max", "daemon_cpu_pct", "p50/max"),
        (f"{DAEMON_COMM[args.daemon]} CPU-s", "daemon_cpu_s", ""), (f"{DAEMON_COMM[args.daemon]} RSS MiB max", "daemon_rss_mib", "max"),
        (f"{DAEMON_COMM[args.daemon]} children (forkproxy...) max", "daemon_children", "max"),
        (f"{DAEMON_COMM[args.daemon]} children RSS MiB max", "daemon_children_rss_mib", "max"),
        ("terraform processes max", "terraform_processes", "max"),
        ("terraform runs waiting at the gate max", "terraform_waiting", "max"),
        ("host CPU busy % p50/max", "host_cpu_pct", "p50/max"), ("host load1 max", "load1", "max"),
        ("host MemAvailable MiB min", "mem_available_mib", "min"),
    ]:
        print(f"| {label} | " + " | ".join(cell(w, key, fmt) for w in ("under_load", "idle", "stopping")) + " |")
    api_errors = s["under_load"]["api_ms"].get("errors")
    if api_errors:
        print(f"hub API probe errors under load: {api_errors}")
    c = s["containers"]
    if c["n"]:
        d = c["usage_mib"]
        print(f"\ncontainers at the end: {c['n']} running, memory p50 {d['p50']} MiB, max {d['max']} MiB, "
              f"sum {c['sum_mib']} MiB"
              + (f"; CPU used since its start p50 {c['cpu_s']['p50']} s, max {c['cpu_s']['max']} s"
                 if c.get("cpu_s", {}).get("n") else ""))
    print(f"stop of all servers through the API: {s['stop_all_s']} s")
    cleanup = result.get("cleanup") or {}
    if cleanup.get("stop_refused") or cleanup.get("stop_asked_again") or cleanup.get("not_stopped"):
        print(f"  stop requests refused: {cleanup.get('stop_refused')}; asked again: "
              f"{cleanup.get('stop_asked_again')}; still active at the end: {cleanup.get('not_stopped')}")
    audit = result.get("audit") or {}
    if audit.get("stages_s"):
        print("\nspawner stages of the starts that succeeded (audit records, s): " + ", ".join(
            f"{k} p50 {v['p50']} max {v['max']}" for k, v in audit["stages_s"].items() if v.get("n"))
            + (f"; starts not ok: {audit['not_ok']}" if audit.get("not_ok") else ""))
    log = result.get("hub_log") or {}
    if log:
        print(f"\nhub log: {log['levels'].get('E', 0)} errors, {log['levels'].get('W', 0)} warnings; "
              f"request statuses logged: {log.get('request_statuses')}")
        stalls = log.get("event_loop_stalls_s") or []
        if stalls:
            print(f"hub event loop unresponsive >= 1 s: {len(stalls)} time(s), longest {max(stalls)} s")
        for t in log["top"][:10]:
            print(f"  {t['n']:>4} x {t['what'][:150]}")
    table = [r for r in result.get("locust") or [] if "name" in r]
    if table:
        print("\n| locust request | n | failures | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|---|")
        for r in table:
            label = r["name"] if r["name"].startswith(r["type"]) else f"{r['type']} {r['name']}"
            print(f"| {label} | {r['n']} | {r['failures']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sampler:
        return run_sampler(args)
    return run_load(args)


if __name__ == "__main__":
    sys.exit(main())
