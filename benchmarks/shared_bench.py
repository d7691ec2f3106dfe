"""Spawn-to-ready with two groups' shared folders against none, through one real JupyterHub.

    .venv/bin/python benchmarks/shared_bench.py [--daemon incus|lxd] [--rounds 5]

One hub (tests/hubtools.Hub through hubrun.HubSession; tofu for Incus, terraform for LXD unless
--binary says otherwise) whose `shared_volumes` has two folders: `<tag>-course`, read-only for the
group `students` (its writers, `staff`, have no member here), and `<tag>-team`, writable for
`students`. Users in `students` get both folders; users in no group get none: the baseline, on
the same hub, daemon, image and home volumes. Measured, from the REST start request to the hub's
model saying ready (hubrun.HubSession.spawn_ready, as spawn_bench and side_by_side time it):

- once, the first-ever spawn of a `students` member: it makes both folders (Terraform runs in
  their workspaces) and is their first attach;
- then --rounds interleaved rounds (the order of the two variants alternates from round to
  round), each with a new user of each variant: (a) the user's first spawn (the folders exist:
  this is mounting, not making them), (b) the same user's second spawn (a returning user).

A user's first spawn of either variant also makes the user's home volume. Every spawn is
stopped (timed too) before the next; each shared spawn's instance is checked to have the two
devices, `course` read-only, each baseline one to have none. Prints a Markdown table (median,
min, max per case, the ratio of the medians two folders / none), the medians of the spawner's
audited start stages, and one JSON line with everything. Every name the run makes carries a
random tag (instances `sb<tag>-<user>`, volumes `home-shared-<tag>-<user>`,
`shared-sb<tag>-course`, `shared-sb<tag>-team`), so other tests on the daemon are left alone;
at the end, also after a failure or SIGTERM, the servers are stopped, the users deleted, the hub
stopped, and every instance and volume of this hub's state directory deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from benchstats import median  # noqa: E402
from conftest import IMAGE, INCUS_SOCKET  # noqa: E402
from hubrun import Contestant, HubSession, SpawnFailed  # noqa: E402
from hubtools import custom_volumes, delete_volumes  # noqa: E402
from side_by_side import _log, _terminate, _with_cache_bin  # noqa: E402
from unixhttp import Client  # noqa: E402

BINARY = {"lxd": "terraform", "incus": "tofu"}
GROUP = "students"
DEVICE_PREFIX = "tf-lxd-shared-"  # tf_lxd_spawner.homes.shared_folders.DEVICE_PREFIX
CASES = {"first": "new user's first spawn (a)", "again": "same user's second spawn (b)"}
VARIANTS = {"two": "two folders", "none": "none"}


def folders(tag: str) -> dict[str, bool]:
    """{folder name: read-only for a member of GROUP}."""
    return {f"sb{tag}-course": True, f"sb{tag}-team": False}


def hub_config(tag: str) -> str:
    """The lines after hubrun.Contestant's: the two folders, tagged instance names, the hub
    service allowed to make groups (as tests/e2e/test_shared_folders.py does), long timeouts
    for a loaded machine."""
    ro, rw = folders(tag)
    return f"""
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.instance_name_template = "sb{tag}-{{username}}-{{servername}}"
c.LxdSpawner.shared_volumes = [
    {{"name": "{ro}", "size": "100MiB", "path": "course", "write_groups": ["staff"],
      "read_groups": ["{GROUP}"], "gid": 3000}},
    {{"name": "{rw}", "size": "100MiB", "path": "/srv/team", "write_groups": ["{GROUP}"], "gid": 3001}},
]
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
c.JupyterHub.load_roles.append({{"name": "bench-groups", "services": ["tester"], "scopes": ["admin:groups"]}})
"""


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return f"load average: {load()}"


class Run:
    """The hub, its users, what was measured and what went wrong."""

    def __init__(self, session: HubSession, api: Client, tag: str, timeout: float):
        self.session, self.api, self.tag, self.timeout = session, api, tag, timeout
        self.spawn: dict[str, dict[str, list[float]]] = {c: {v: [] for v in VARIANTS} for c in CASES}
        self.stop: dict[str, dict[str, list[float]]] = {c: {v: [] for v in VARIANTS} for c in CASES}
        self.stages: dict[str, dict[str, list[dict]]] = {c: {v: [] for v in VARIANTS} for c in CASES}
        self.failures: list[str] = []

    def expected_devices(self, variant: str) -> dict[str, bool]:
        return {DEVICE_PREFIX + name: ro for name, ro in folders(self.tag).items()} if variant == "two" else {}

    def spawn_and_stop(self, user: str, variant: str) -> tuple[float | None, float | None, dict]:
        """Spawn (timed), check the instance's shared devices, stop (timed). A failure is noted,
        and the server is still stopped."""
        spawned = stopped = None
        record = {}
        try:
            spawned = round(self.session.spawn_ready(user, self.timeout), 3)
            record = self.last_start(user)
            self.check_devices(user, record.get("instance", ""), variant)
        except (SpawnFailed, OSError, AssertionError) as e:  # a wrong device: not a spawn to count
            spawned = None
            self.failures.append(f"{user} ({variant}) spawn: {e}")
            _log(f"FAILED {user}: {str(e).splitlines()[0][:300]}")
        try:
            t = round(self.session.stop_gone(user, self.timeout), 3)
            stopped = t if spawned is not None else None
        except (SpawnFailed, OSError) as e:
            self.failures.append(f"{user} ({variant}) stop: {e}")
        return spawned, stopped, record

    def last_start(self, user: str) -> dict:
        done = [r for r in self.session.audit_records(user) if r.get("operation") == "start" and r.get("outcome") == "ok"]
        return done[-1] if done else {}

    def check_devices(self, user: str, instance: str, variant: str) -> None:
        info = self.api.instance(instance) if instance else None
        if info is None:
            raise AssertionError(f"{user}: no instance {instance!r} on the daemon (from its audit record)")
        found = {name: dev.get("readonly") == "true" for name, dev in (info.get("devices") or {}).items()
                 if name.startswith(DEVICE_PREFIX)}
        if found != self.expected_devices(variant):
            raise AssertionError(f"{user}: shared devices {found}, expected {self.expected_devices(variant)}")

    def measure(self, case: str, user: str, variant: str, r: int) -> None:
        spawned, stopped, record = self.spawn_and_stop(user, variant)
        if spawned is not None:
            self.spawn[case][variant].append(spawned)
            self.stages[case][variant].append(record.get("stages") or {})
        if stopped is not None:
            self.stop[case][variant].append(stopped)
        _log(f"round {r} {CASES[case][:-4]:<28} {VARIANTS[variant]:<11} {user}: spawn "
             f"{'failed' if spawned is None else f'{spawned:.2f} s'}, stop "
             f"{'failed' if stopped is None else f'{stopped:.2f} s'}, load {load()[0]}")


def set_up_users(session: HubSession, rounds: int) -> tuple[list[str], list[str]]:
    """All users made up front; the group's members put in it through the hub's API."""
    members = ["creator", *(f"s{r}" for r in range(rounds))]
    others = ["warm", *(f"n{r}" for r in range(rounds))]
    session.ensure_users(members + others)
    r = session.api("POST", f"/groups/{GROUP}", json={"users": members})
    if r.status_code != 201:
        raise RuntimeError(f"making group {GROUP}: {r.status_code} {r.text[:300]}")
    return members, others


def benchmark(run: Run, rounds: int) -> dict:
    session = run.session
    set_up_users(session, rounds)
    # The hub's first spawn (first Terraform init of its workspaces, first clone of the image):
    # by a user in no group, so the folders are not made yet.
    warm, stopped, _ = run.spawn_and_stop("warm", "none")
    _log(f"warm-up (no folder): spawn {warm} s, stop {stopped} s")
    if warm is None:
        raise SpawnFailed(f"the warm-up spawn failed: {run.failures[-1]}")
    first_ever, first_stop, first_record = run.spawn_and_stop("creator", "two")
    _log(f"first-ever spawn with the folders (makes both): {first_ever} s, stop {first_stop} s")
    if first_ever is None:
        raise SpawnFailed(f"the first spawn with the folders failed: {run.failures[-1]}")
    load_per_round = []
    for r in range(rounds):
        order = ["two", "none"] if r % 2 == 0 else ["none", "two"]
        users = {"two": f"s{r}", "none": f"n{r}"}
        load_per_round.append(load())
        for case in CASES:
            for variant in order:
                run.measure(case, users[variant], variant, r)
    return {"warmup_s": warm, "first_ever_s": first_ever, "first_ever_stop_s": first_stop,
            "first_ever_stages": first_record.get("stages") or {}, "load_per_round": load_per_round}


# -- clean-up -----------------------------------------------------------------------------------------
def pylxd_client(daemon: str):
    import pylxd

    return pylxd.Client(endpoint=INCUS_SOCKET) if daemon == "incus" else pylxd.Client()


def clean_up(session: HubSession, api: Client, daemon: str) -> list[str]:
    """Servers stopped, users deleted, hub stopped, instances swept (HubSession.shut_down); then
    every volume whose workspace label is in this hub's state directory (homes, both folders)
    deleted; then checked that none of either is left."""
    problems = session.shut_down()
    state = str(session.hub.state_dir)
    try:
        client = pylxd_client(daemon)
        deleted = delete_volumes(client, state)
        if deleted:
            _log(f"clean-up: deleted volumes {deleted}")
        left = [f"{v['pool']}/{v['name']}" for v in custom_volumes(client)
                if (v.get("config") or {}).get("user.tf-lxd-spawner.workspace", "").startswith(state)]
        if left:
            problems.append(f"volumes left: {left}")
    except Exception as e:  # noqa: BLE001 - reported, the rest of the clean-up goes on
        problems.append(f"deleting volumes: {e}")
    try:
        left = [i["name"] for i in api.instances() if session._mine(i)]
        if left:
            problems.append(f"instances left: {left}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"listing instances: {e}")
    return problems


# -- report -------------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": round(median(values), 3), "min": min(values), "max": max(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_tables(run: Run, extra: dict, meta: dict) -> dict:
    out = {"spawn": {}, "stop": {}}
    print(f"\nspawn-to-ready, {meta['daemon']} + {meta['binary']}, {meta['rounds']} interleaved rounds, one hub "
          f"(load before/after: {meta['load_before']} / {meta['load_after']})\n")
    print("| case | shared folders | n | median s | min s | max s | ratio two/none (medians) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, title in CASES.items():
        s = {v: summary(run.spawn[case][v]) for v in VARIANTS}
        out["spawn"][case] = {**s, "ratio": ratio(s["two"]["median"], s["none"]["median"])}
        for v, label in VARIANTS.items():
            print(f"| {title} | {label} | {s[v]['n']} | {_f(s[v]['median'])} | {_f(s[v]['min'])} | "
                  f"{_f(s[v]['max'])} | {_f(out['spawn'][case]['ratio'], 3) if v == 'two' else ''} |")
    first_ratio = ratio(extra["first_ever_s"], out["spawn"]["first"]["none"]["median"])
    print(f"| first-ever spawn (makes both folders) | two folders | 1 | {_f(extra['first_ever_s'])} | | | "
          f"{_f(first_ratio, 3)} (vs (a) none) |")
    out["first_ever"] = {"spawn_s": extra["first_ever_s"], "ratio_to_first_none": first_ratio}

    print("\nstop-to-gone (the hub's model), same spawns\n")
    print("| after | shared folders | n | median s | min s | max s |")
    print("|---|---|---:|---:|---:|---:|")
    for case, title in CASES.items():
        for v, label in VARIANTS.items():
            s = summary(run.stop[case][v])
            out["stop"].setdefault(case, {})[v] = s
            print(f"| {title} | {label} | {s['n']} | {_f(s['median'])} | {_f(s['min'])} | {_f(s['max'])} |")

    names = []
    for case in CASES:
        for v in VARIANTS:
            for rec in run.stages[case][v]:
                names += [n for n in rec if n not in names]
    out["stages"] = {}
    if names:
        print("\nthe spawner's audited start stages, median s (two folders / none)\n")
        print("| stage | " + " | ".join(CASES[c] for c in CASES) + " | first-ever |")
        print("|---|" + "---:|" * (len(CASES) + 1))
        for name in names:
            cells = []
            for case in CASES:
                m = {v: median([rec[name] for rec in run.stages[case][v] if name in rec]) for v in VARIANTS}
                out["stages"].setdefault(case, {})[name] = m
                cells.append(f"{_f(m['two'])} / {_f(m['none'])}")
            print(f"| {name} | " + " | ".join(cells) + f" | {_f(extra['first_ever_stages'].get(name))} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--daemon", choices=sorted(BINARY), default="incus")
    ap.add_argument("--binary", choices=["terraform", "tofu"], help="default: tofu for incus, terraform for lxd")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spawn-timeout", type=float, default=300, help="seconds one spawn or stop may take")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the hub's directory (log, workspaces)")
    args = ap.parse_args(argv)
    binary = args.binary or BINARY[args.daemon]
    signal.signal(signal.SIGTERM, _terminate)
    _with_cache_bin()  # tofu is in .cache/bin after `make setup`

    tag = uuid.uuid4().hex[:6]
    meta = {"benchmark": "shared_bench", "daemon": args.daemon, "binary": binary, "rounds": args.rounds,
            "tag": tag, "image": IMAGE, "cores": os.cpu_count(), "load_before": load(), "uptime_before": uptime()}
    _log(f"{args.daemon} + {binary}, tag {tag}; {meta['uptime_before']}")
    contestant = Contestant(f"shared-{tag}", "tf", args.daemon, binary, extra=hub_config(tag))
    workdir = Path(tempfile.mkdtemp(prefix="tf-lxd-shared-bench-"))
    session = HubSession(contestant, workdir / "hub", tag)
    api = Client(args.daemon)
    run = Run(session, api, tag, args.spawn_timeout)
    t0 = time.monotonic()
    extra, problems = None, []
    try:
        session.start()
        _log(f"hub at {session.hub.url}, log {session.hub.log_path}")
        extra = benchmark(run, args.rounds)
    finally:
        problems = clean_up(session, api, args.daemon)
        api.close()
        for p in problems:
            _log(f"clean-up: {p}")
        if args.keep_workdir or extra is None:
            _log(f"hub directory kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta.update(load_after=load(), uptime_after=uptime(), wall_s=round(time.monotonic() - t0, 1))
    out = print_tables(run, extra, meta)
    if run.failures:
        print("\nfailures:\n" + "\n".join(f"- {f.splitlines()[0][:300]}" for f in run.failures))
    print(f"\n{meta['uptime_after']}; the whole run took {meta['wall_s'] / 60:.1f} min\n")
    print(json.dumps({**meta, **out, "raw": {"spawn": run.spawn, "stop": run.stop, "stages": run.stages}, "warmup_s": extra["warmup_s"],
                      "first_ever_stop_s": extra["first_ever_stop_s"], "first_ever_stages": extra["first_ever_stages"],
                      "load_per_round": extra["load_per_round"], "failures": run.failures,
                      "cleanup_problems": problems}))
    return 1 if run.failures or problems else 0


if __name__ == "__main__":
    sys.exit(main())
