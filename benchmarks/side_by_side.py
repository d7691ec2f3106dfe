"""tf-lxd-spawner beside a direct-API baseline, through real hubs; writes docs/performance.md.

    make performance                                   # everything, then the page and its figures
    PATH=$PATH:.cache/bin .venv/bin/python benchmarks/side_by_side.py [options]

Parts (each can be run alone with the --skip-* flags of the others):
  sequential   spawn-to-ready and stop, interleaved rounds, per contestant, plus the spawner's
               per-stage audit records;
  concurrency  N spawns at once (terraform-lxd and baseline-lxd), with the hub API's latency;
  poll         one poll round over --poll-servers running (tiny) containers: wall time, requests.
Raw numbers go to --results (merged with what that file already holds, part by part, unless
--no-merge); --write-docs renders the page, --from-results renders it without measuring.
Nothing else should be spawning on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_RESULTS = REPO / "docs" / "performance" / "results.json"
DEFAULT_DOCS = REPO / "docs" / "performance.md"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved spawn+stop rounds per contestant")
    ap.add_argument("--contestants", default="", help="comma-separated subset, e.g. terraform-lxd,baseline-lxd")
    ap.add_argument("--concurrency", default="1,2,4,8,16,20", help="burst sizes N")
    ap.add_argument("--burst-contestants", default="terraform-lxd,baseline-lxd,terraform-incus,baseline-incus",
                    help="contestants the bursts run on")
    ap.add_argument("--poll-servers", type=int, default=200, help="running containers in the poll round")
    ap.add_argument("--poll-rounds", type=int, default=3, help="poll rounds over them")
    ap.add_argument("--poll-gap", type=float, default=5.0, help="seconds between poll rounds")
    ap.add_argument("--poll-backends", default="lxd,incus", help="daemons to run the poll part on")
    ap.add_argument("--same-user", action="store_true", help="one user for all rounds (default: a fresh one each)")
    ap.add_argument("--spawn-timeout", type=float, default=300, help="seconds one spawn (or burst) may take")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--skip-concurrency", action="store_true")
    ap.add_argument("--skip-poll", action="store_true")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="raw numbers (JSON)")
    ap.add_argument("--no-merge", action="store_true", help="do not keep parts of an existing results file")
    ap.add_argument("--write-docs", action="store_true", help="render --docs and its figures")
    ap.add_argument("--from-results", action="store_true", help="measure nothing: render from --results")
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="the Markdown page (figures go beside it)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the hubs' directories (logs, workspaces)")
    args = ap.parse_args(argv)
    args.burst_sizes = [int(n) for n in args.concurrency.split(",") if n.strip()]
    args.burst_contestants = {n.strip() for n in args.burst_contestants.split(",") if n.strip()}
    return args


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _with_cache_bin() -> None:
    """tofu lives in .cache/bin after `make setup`: the hubs must find it on PATH."""
    cache_bin = str(REPO / ".cache" / "bin")
    if cache_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + cache_bin


def selected_contestants(args):
    from hubrun import CONTESTANTS

    wanted = [n.strip() for n in args.contestants.split(",") if n.strip()]
    known = {c.name for c in CONTESTANTS}
    unknown = sorted(set(wanted) - known)
    if unknown:
        sys.exit(f"unknown contestants {unknown}; choose from {sorted(known)}")
    # By default the contestants the page compares; "-novolume" ones (the home volume's cost) and
    # "-levers-off" ones (what issue 21's levers bought) on request.
    return [c for c in CONTESTANTS if c.name in wanted or not wanted and not c.name.endswith(("-novolume", "-levers-off", "-proxy"))]


# -- the parts --------------------------------------------------------------------------------------
def warm_up(sessions: dict, timeout: float) -> dict[str, str]:
    """One spawn and stop per hub (first workspace init, first clone of the image); a contestant
    that cannot even do that is left out of the rest, with the reason."""
    from hubrun import SpawnFailed

    broken = {}
    for name, s in sessions.items():
        try:
            t = s.spawn_ready("warmup", timeout)
            s.stop_gone("warmup", timeout)
            _log(f"warm-up {name}: ready in {t:.2f} s")
        except (SpawnFailed, OSError, RuntimeError) as e:
            broken[name] = str(e)
            _log(f"warm-up {name} FAILED: {str(e).splitlines()[0]}")
    return broken


def run_sequential(sessions: dict, args, out: dict) -> None:
    """Interleaved rounds: round r spawns and stops once on each contestant in turn."""
    from hubrun import SpawnFailed

    for name, s in sessions.items():
        c = s.contestant
        out[name] = {"kind": c.kind, "daemon": c.daemon, "binary": c.binary, "spawn_s": [], "stop_s": [],
                     "cpu_s": [], "failures": [], "audit": {"start": [], "stop": []}, "measured_at": _now()}
    for r in range(args.rounds):
        for name, s in sessions.items():
            user = "bench" if args.same_user else f"round{r}"
            row = out[name]
            spawned = stopped = None
            cpu_before = s.cpu_seconds()
            try:
                spawned = round(s.spawn_ready(user, args.spawn_timeout), 3)
                row["spawn_s"].append(spawned)
            except (SpawnFailed, OSError) as e:
                row["failures"].append(f"round {r} spawn: {e}")
            try:  # after a failed spawn only to be sure it is gone: that time says nothing of stopping
                t = round(s.stop_gone(user, args.spawn_timeout), 3)
                if spawned is not None:
                    stopped = t
                    row["stop_s"].append(t)
                    row["cpu_s"].append(round(s.cpu_seconds() - cpu_before, 3))
            except (SpawnFailed, OSError) as e:
                row["failures"].append(f"round {r} stop: {e}")
            _log(f"round {r} {name}: spawn {_secs(spawned)}, stop {_secs(stopped)}"
                 + (f" ({row['failures'][-1].splitlines()[0][:200]})" if spawned is None or stopped is None else ""))
            if s.contestant.kind == "tf":
                _collect_audit(s, user, row["audit"])


def _secs(x: float | None) -> str:
    return "failed" if x is None else f"{x:.2f} s"


def _collect_audit(session, user: str, into: dict) -> None:
    """The last successful start and stop of the user's server: duration, stages, providers."""
    records = session.audit_records(user)
    for op in ("start", "stop"):
        done = [r for r in records if r.get("operation") == op and r.get("outcome") == "ok"]
        if done:
            last = done[-1]
            into[op].append({"duration": last.get("duration"), "stages": last.get("stages"),
                             "providers": last.get("providers") or {}})


def run_concurrency(sessions: dict, args, out: dict) -> None:
    """For each N: a burst on each contestant in turn (fresh users per N)."""
    from hubrun import burst

    for name in sessions:
        out[name] = []
    for n in args.burst_sizes:
        for name, s in sessions.items():
            b = burst(s, n, args.spawn_timeout)
            b["measured_at"] = _now()
            out[name].append(b)
            _log(f"burst N={n} {name}: all ready {b['all_ready_s']:.1f} s, ok={b['ok']}, hub API p50 "
                 f"{b['latency_p50_ms']} ms p99 {b['latency_p99_ms']} ms, stop all {b['stop_all_s']} s")


def run_poll(args, out: dict) -> dict:
    import pollcost

    for backend in [b.strip() for b in args.poll_backends.split(",") if b.strip()]:
        _log(f"poll: launching {args.poll_servers} tiny containers on {backend}")
        out[backend] = {**pollcost.measure(backend, args.poll_servers, args.poll_rounds, args.poll_gap),
                        "measured_at": _now()}
        for r in out[backend]["rounds"]:
            _log(f"poll {backend}: round {r['round']}: {r['wall_s']} s, {r['requests']} requests, "
                 f"{r['running']} running")
    return {"gap_s": args.poll_gap, "status_max_age": _status_max_age()}


def _status_max_age():
    try:
        from tf_lxd_spawner import LxdSpawner
        trait = LxdSpawner.class_traits().get("status_max_age")
        return trait.default_value if trait is not None else None
    except ImportError:
        return None


def measure_with_hubs(args, results: dict) -> None:
    """Start every hub needed up front, run the hub parts, and always tear everything down."""
    from hubrun import HubSession

    contestants = selected_contestants(args)
    wanted = {c.name for c in contestants if not args.skip_sequential}
    if not args.skip_concurrency:
        wanted |= {c.name for c in contestants if c.name in args.burst_contestants}
    if not wanted:
        return
    tag = uuid.uuid4().hex[:6]
    workdir = Path(tempfile.mkdtemp(prefix="tf-lxd-bench-"))
    sessions = {}
    try:
        for c in [c for c in contestants if c.name in wanted]:
            sessions[c.name] = HubSession(c, workdir / c.name, tag)  # in the dict first: always shut down
            sessions[c.name].start()
            _log(f"hub for {c.name} at {sessions[c.name].hub.url}")
        broken = warm_up(sessions, args.spawn_timeout)
        results.setdefault("errors", {}).update({f"warm-up {n}": e for n, e in broken.items()})
        live = {n: s for n, s in sessions.items() if n not in broken}
        if not args.skip_sequential:
            seq = results.setdefault("sequential", {"contestants": {}})
            seq.update(rounds=args.rounds, same_user=args.same_user)
            run_sequential(live, args, seq["contestants"])
        if not args.skip_concurrency:
            conc = results.setdefault("concurrency", {"contestants": {}})
            run_concurrency({n: s for n, s in live.items() if n in args.burst_contestants}, args, conc["contestants"])
    finally:
        for name, s in sessions.items():
            for problem in s.shut_down():
                _log(f"clean-up: {problem}")
        if args.keep_workdir:
            _log(f"hub directories kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- results ----------------------------------------------------------------------------------------
def merged(old: dict, new: dict) -> dict:
    """The new results over the old, contestant by contestant (and daemon by daemon for the poll
    part): a part or contestant measured now replaces its old numbers, the rest is kept."""
    out = json.loads(json.dumps(old))
    for part, key in (("sequential", "contestants"), ("concurrency", "contestants"), ("poll", "backends")):
        if part not in new:
            continue
        target = out.setdefault(part, {})
        target.update({k: v for k, v in new[part].items() if k != key})
        target.setdefault(key, {}).update(new[part].get(key) or {})
    out["meta"] = new.get("meta", out.get("meta", {}))
    if new.get("errors"):
        out["errors"] = new["errors"]
    return out


def _providers(results: dict) -> list[str]:
    seen = {}
    for c in ((results.get("sequential") or {}).get("contestants") or {}).values():
        for r in (c.get("audit") or {}).get("start") or []:
            seen.update(r.get("providers") or {})
    return [f"{name} {version}" for name, version in sorted(seen.items())]


def write_docs(results: dict, docs: Path, results_path: Path) -> None:
    import plots
    import report

    figures = plots.draw_all(results, docs.parent / docs.stem)
    report.write(results, docs, figures, results_path)
    _log(f"wrote {docs} and {len(figures)} figure(s) in {docs.parent / docs.stem}/")


def measure(args) -> dict:
    """Run the parts asked for. Interrupted or failed, what was measured is still saved, beside the
    results (`<results>.partial.json`), never merged into them."""
    import machine

    _with_cache_bin()
    results = {"schema": 1}
    settings = {"rounds": args.rounds, "same_user": args.same_user, "concurrency": args.concurrency,
                "poll_servers": args.poll_servers, "contestants": args.contestants or "all"}
    results["meta"] = {"machine": machine.facts(), "settings": settings, "started": _now()}
    try:
        measure_with_hubs(args, results)
        if not args.skip_poll:
            poll = results.setdefault("poll", {"backends": {}})
            poll.update(run_poll(args, poll["backends"]))
    except BaseException as e:
        # Half a run must not replace whole numbers: keep it beside the results, unmerged.
        results["meta"]["interrupted"] = f"{type(e).__name__}: {e}"
        _finish(results)
        partial = args.results.with_name(args.results.stem + ".partial.json")
        _write_json(results, partial)
        _log(f"interrupted: what was measured is in {partial}")
        raise
    _finish(results)
    _save(results, args)
    return results


def _finish(results: dict) -> None:
    results["meta"]["finished"] = _now()
    results["meta"]["providers"] = _providers(results)


def _write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def _save(results: dict, args) -> None:
    path = args.results
    if not args.no_merge and path.exists():
        results = merged(json.loads(path.read_text()), results)
        results["meta"]["providers"] = _providers(results)
    _write_json(results, path)
    _log(f"results saved to {path}")


def _terminate(*_) -> None:
    """SIGTERM: leave through every `finally` (hubs, containers, the tiny image), and let no
    second SIGTERM cut that clean-up short (SIGKILL still can)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _log("SIGTERM: cleaning up")
    sys.exit(143)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    signal.signal(signal.SIGTERM, _terminate)
    if args.from_results:
        results = json.loads(args.results.read_text())
    else:
        measure(args)
        results = json.loads(args.results.read_text())  # the merged file: the page shows all of it
    if args.write_docs or args.from_results:
        write_docs(results, args.docs, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
