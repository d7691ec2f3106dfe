"""docs/performance.md from the raw results: tables, figures and the goals, nothing measured here.

Kept apart from the measuring so a report can be re-rendered (--from-results) after a change of
wording or goals without spending half an hour measuring again.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchstats import median, quantile

#: Spawn p50 against the baseline on the same daemon (issue 21: at least as fast on Incus).
GOAL_SPAWN_RATIO = {"incus": 1.00, "lxd": 1.05}
#: CPU-seconds per spawn and stop that Terraform adds on the hub's host (ours minus the baseline's).
GOAL_CPU_ADDED_S = 0.8
GOAL_SPAWN_INCUS_S = 3.0
GOAL_STOP_RATIO = 1.25
#: Contestant name endings of variants measured beside the defaults (no goals of their own).
VARIANTS = ("-novolume", "-levers-off", "-proxy")
GOAL_BURST_N = 20
GOAL_BURST_S = 60.0
GOAL_API_P50_MS = 20.0
GOAL_API_P99_MS = 300.0
GOAL_POLL_SERVERS = 200
GOAL_POLL_REQUESTS = 2
GOAL_POLL_S = 0.5
DEFAULT_BURST_CONTESTANT = "terraform-lxd"


def _s(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f} s"


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f} ms"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_tf(name: str, c: dict) -> bool:
    return c.get("kind", "tf" if not name.startswith("baseline") else "baseline") == "tf"


# -- summaries ------------------------------------------------------------------------------------
def sequential_summary(seq: dict) -> dict[str, dict]:
    """Per contestant: medians, p90s and the ratio of medians to the baseline on its daemon."""
    out = {}
    for name, c in seq.items():
        out[name] = {"daemon": c.get("daemon", name.rsplit("-", 1)[-1]), "kind": c.get("kind"),
                     "n": len(c.get("spawn_s") or []), "failures": len(c.get("failures") or []),
                     "spawn_p50": median(c.get("spawn_s") or []), "spawn_p90": quantile(c.get("spawn_s") or [], 0.9),
                     "stop_p50": median(c.get("stop_s") or []), "stop_p90": quantile(c.get("stop_s") or [], 0.9),
                     "cpu_p50": median(c.get("cpu_s") or []) if c.get("cpu_s") else None}
    for name, s in out.items():
        base = out.get(f"baseline-{s['daemon']}")
        for key in ("spawn", "stop"):
            ok = base and base[f"{key}_p50"] and s[f"{key}_p50"] is not None
            s[f"{key}_ratio"] = s[f"{key}_p50"] / base[f"{key}_p50"] if ok else None
        ok = base and base["cpu_p50"] is not None and s["cpu_p50"] is not None
        s["cpu_added"] = s["cpu_p50"] - base["cpu_p50"] if ok else None
    return out


def spawns_per_core_minute(cpu_per_spawn: float | None) -> float | None:
    """How many spawns (each with its stop) one hub core sustains per minute, from the CPU one
    costs the hub's host: the capacity planning number for a class that starts at once."""
    return 60.0 / cpu_per_spawn if cpu_per_spawn else None


def stage_medians(records: list[dict]) -> dict[str, float]:
    """Median seconds per stage name, in the order stages first appear; {} without stages."""
    names: list[str] = []
    for r in records:
        for k in (r.get("stages") or {}):
            if k not in names:
                names.append(k)
    return {k: median([r["stages"][k] for r in records if k in (r.get("stages") or {})]) for k in names}


def _largest_burst(bursts: list[dict], n: int | None = None) -> dict | None:
    if not bursts:
        return None
    if n is not None:
        return next((b for b in bursts if b["n"] == n), None)
    return max(bursts, key=lambda b: b["n"])


def _daemon_order(names) -> list[str]:
    return sorted(names, key=lambda n: ({"lxd": 0, "incus": 1}.get(n, 2), n))


# -- goals ----------------------------------------------------------------------------------------
def _verdict(ok: bool | None, why_not_measured: str = "") -> str:
    if ok is None:
        return f"not measured{f' ({why_not_measured})' if why_not_measured else ''}"
    return "met" if ok else "**not met**"


def goals(results: dict) -> list[list[str]]:
    """[goal, subject, measured, verdict] rows, each decided from the numbers alone."""
    rows = []
    summary = sequential_summary((results.get("sequential") or {}).get("contestants") or {})
    # The goals are the default settings'; variants (without the volume, without the levers)
    # are there to show what a setting costs or buys.
    tf = [n for n, s in summary.items() if s["kind"] == "tf" and not n.endswith(VARIANTS)]
    for name in tf or ["tf-lxd-spawner"]:
        s = summary.get(name, {})
        r = s.get("spawn_ratio")
        goal = GOAL_SPAWN_RATIO.get(s.get("daemon"), GOAL_SPAWN_RATIO["lxd"])
        rows.append([f"spawn p50 ≤ {goal:.2f}× baseline (same daemon)", name, _ratio(r),
                     _verdict(None if r is None else r <= goal)])
    for name in [n for n in tf if summary[n]["daemon"] == "incus"] or ["Incus"]:
        p50 = summary.get(name, {}).get("spawn_p50")
        rows.append([f"spawn p50 ≤ {GOAL_SPAWN_INCUS_S:.1f} s on Incus", name, _s(p50),
                     _verdict(None if p50 is None else p50 <= GOAL_SPAWN_INCUS_S)])
    for name in tf or ["tf-lxd-spawner"]:
        r = summary.get(name, {}).get("stop_ratio")
        rows.append([f"stop p50 ≤ {GOAL_STOP_RATIO:.2f}× baseline (same daemon)", name, _ratio(r),
                     _verdict(None if r is None else r <= GOAL_STOP_RATIO)])
    for name in tf or ["tf-lxd-spawner"]:
        added = summary.get(name, {}).get("cpu_added")
        rows.append([f"hub host CPU per spawn + stop added by Terraform ≤ {GOAL_CPU_ADDED_S:.1f} s", name,
                     _s(added), _verdict(None if added is None else added <= GOAL_CPU_ADDED_S, "no CPU figures")])
    rows += _burst_goals(results)
    rows += _poll_goals(results)
    return rows


def _burst_goals(results: dict) -> list[list[str]]:
    """The default combination's bursts, and every other tf-lxd-spawner contestant's that ran."""
    measured = (results.get("concurrency") or {}).get("contestants") or {}
    names = [DEFAULT_BURST_CONTESTANT] + sorted(n for n in measured
                                                if n != DEFAULT_BURST_CONTESTANT and not n.startswith("baseline"))
    return [row for name in names for row in _burst_goals_of(name, measured.get(name) or [])]


def _burst_goals_of(who: str, bursts: list[dict]) -> list[list[str]]:
    b = _largest_burst(bursts, GOAL_BURST_N)
    why = f"largest N run: {max(x['n'] for x in bursts)}" if bursts else "no burst run"
    if b is None:
        return [[g, who, "–", _verdict(None, why)] for g in (
            f"{GOAL_BURST_N} concurrent: all ready < {GOAL_BURST_S:.0f} s, all succeed",
            f"hub API p50 ≤ {GOAL_API_P50_MS:.0f} ms during the {GOAL_BURST_N} burst",
            f"hub API p99 ≤ {GOAL_API_P99_MS:.0f} ms during the {GOAL_BURST_N} burst")]
    ok_n = sum(1 for t in b["ready_s"] if t is not None)
    return [
        [f"{GOAL_BURST_N} concurrent: all ready < {GOAL_BURST_S:.0f} s, all succeed", who,
         f"{_s(b['all_ready_s'], 1)}, {ok_n}/{b['n']} ready", _verdict(b["ok"] and b["all_ready_s"] < GOAL_BURST_S)],
        [f"hub API p50 ≤ {GOAL_API_P50_MS:.0f} ms during the {GOAL_BURST_N} burst", who, _ms(b["latency_p50_ms"]),
         _verdict(None if b["latency_p50_ms"] is None else b["latency_p50_ms"] <= GOAL_API_P50_MS)],
        [f"hub API p99 ≤ {GOAL_API_P99_MS:.0f} ms during the {GOAL_BURST_N} burst", who, _ms(b["latency_p99_ms"]),
         _verdict(None if b["latency_p99_ms"] is None else b["latency_p99_ms"] <= GOAL_API_P99_MS)],
    ]


def _poll_goals(results: dict) -> list[list[str]]:
    backends = (results.get("poll") or {}).get("backends") or {}
    rows = []
    for backend in _daemon_order(backends) or ["lxd"]:
        p = backends.get(backend)
        subject = f"{backend}, worst of {len(p['rounds'])} rounds" if p else backend
        goal_r = f"poll round of {GOAL_POLL_SERVERS} servers ≤ {GOAL_POLL_REQUESTS} LXD requests"
        goal_s = f"poll round of {GOAL_POLL_SERVERS} servers ≤ {GOAL_POLL_S} s"
        if not p or p["servers"] != GOAL_POLL_SERVERS:
            why = f"ran with {p['servers']} servers" if p else ""
            rows += [[goal_r, subject, "–", _verdict(None, why)], [goal_s, subject, "–", _verdict(None, why)]]
            continue
        counts = [r["requests"] for r in p["rounds"]]
        worst_requests = None if None in counts else max(counts)
        worst_wall = max(r["wall_s"] for r in p["rounds"])
        rows.append([goal_r, subject, "n/a" if worst_requests is None else str(worst_requests),
                     _verdict(None if worst_requests is None else worst_requests <= GOAL_POLL_REQUESTS,
                              "the spawner has no request counter")])
        rows.append([goal_s, subject, _s(worst_wall, 3), _verdict(worst_wall <= GOAL_POLL_S)])
    return rows


# -- sections -------------------------------------------------------------------------------------
def _header(results: dict, results_link: str) -> str:
    meta = results.get("meta") or {}
    m = meta.get("machine") or {}
    daemons = m.get("daemons") or {}

    def daemon(b):
        d = daemons.get(b) or {}
        return d.get("error") or f"{d.get('version', '?')} ({d.get('storage', '?')} pool)"

    bins = m.get("binaries") or {}
    rows = [["date", m.get("date", "?")], ["cores", m.get("cores", "?")],
            ["memory", f"{m.get('memory_gib', '?')} GiB"], ["OS, kernel", f"{m.get('os', '?')}, {m.get('kernel', '?')}"],
            ["LXD", daemon("lxd")], ["Incus", daemon("incus")],
            ["terraform", bins.get("terraform") or "not found"], ["tofu", bins.get("tofu") or "not found"],
            ["LXD provider", ", ".join(meta.get("providers") or []) or "–"],
            ["JupyterHub, Python", f"{m.get('jupyterhub', '?')}, {m.get('python', '?')}"],
            ["tf-lxd-spawner", m.get("tf_lxd_spawner", "?")]]
    text = ["# Performance: tf-lxd-spawner beside a direct-API baseline", "",
            "*Generated by `make performance` (`benchmarks/side_by_side.py --write-docs`); do not edit by hand. "
            f"The raw numbers are in [`{results_link}`]({results_link}).*", "",
            _table(["machine", ""], rows), ""]
    if meta.get("note"):  # e.g. which parts were measured again after a change, when merged
        text += [f"> {meta['note']}", ""]
    facts = _run_facts(results)
    if facts:
        text += ["Settings: " + "; ".join(facts) + ".", ""]
    if _is_smoke(results):
        text += ["> **Smoke-test settings** (fewer than 5 rounds, N below 20 or fewer than 200 polled servers): "
                 "these numbers only show that the harness works. Run `make performance` for real ones.", ""]
    return "\n".join(text)


def _run_facts(results: dict) -> list[str]:
    """What the numbers were taken with, read from the numbers themselves (parts may come from
    different runs when results were merged)."""
    facts = []
    seq = results.get("sequential") or {}
    if seq.get("contestants"):
        who = "the same user every round" if seq.get("same_user") else \
            ("a fresh user each round, so each tf-lxd-spawner spawn also makes the user's home volume "
             "(a Terraform run of its own; a returning user's spawn skips it)")
        facts.append(f"{seq.get('rounds', '?')} interleaved rounds per contestant ({who})")
    ns = _burst_sizes(results)
    if ns:
        facts.append(f"bursts of N = {', '.join(map(str, ns))}")
    servers = _poll_servers(results)
    if servers:
        facts.append(f"poll round over {servers} servers")
    return facts


def _burst_sizes(results: dict) -> list[int]:
    conc = (results.get("concurrency") or {}).get("contestants") or {}
    return sorted({b["n"] for bursts in conc.values() for b in bursts})


def _poll_servers(results: dict) -> int | None:
    backends = (results.get("poll") or {}).get("backends") or {}
    return min((p["servers"] for p in backends.values()), default=None)


def _is_smoke(results: dict) -> bool:
    seq = results.get("sequential") or {}
    ns = _burst_sizes(results)
    servers = _poll_servers(results)
    return ((bool(seq.get("contestants")) and seq.get("rounds", 5) < 5) or (bool(ns) and max(ns) < GOAL_BURST_N)
            or (servers is not None and servers < GOAL_POLL_SERVERS))


def _method() -> str:
    return "\n".join([
        "## What is compared", "",
        "- **tf-lxd-spawner** (`c.JupyterHub.spawner_class = \"tf-lxd\"`) with each of `terraform` and `tofu`, on "
        "each of LXD and Incus: `terraform-lxd`, `tofu-lxd`, `terraform-incus`, `tofu-incus`.",
        "- **baseline** (`benchmarks/baseline_spawner.py`): the same container made straight through the REST "
        "API, as fast as it allows: one `POST /1.0/instances` (same image, profiles, `security.privileged=false`, "
        "the same two proxy devices), two file uploads (`spawn.json`, `env.json`, 0600 root), one start; plain "
        "HTTP over the daemon's unix socket with kept-alive connections, blocking calls in threads. Like the "
        "spawner, its `start()` returns once the server answers HTTP (checked every 50 ms).",
        "- Every contestant runs behind its own real JupyterHub + configurable-http-proxy "
        "(`tests/hubtools.Hub`), all started up front, each warmed up with one spawn and stop; then the rounds "
        "are interleaved (round *r* spawns and stops once on each contestant in turn), so a noisy moment of "
        "the machine hits all of them alike.",
        "- **spawn** = `POST /hub/api/users/<u>/server` until the hub's user model says `ready` (looked at every "
        "50 ms); **stop** = `DELETE` until the server is gone from the model. Ratios are of medians, against "
        "the baseline on the same daemon.",
        "- **hub CPU** = the hub process's utime + stime + cutime + cstime (`/proc/<hub pid>/stat`) just before a "
        "round's spawn and just after its stop: the hub itself and every process it ran and waited for "
        "(Terraform, and the provider Terraform ran and waited for). *Terraform adds* = tf-lxd-spawner's median "
        "minus the baseline's on the same daemon.",
        "- `-levers-off` contestants (when measured) run the same spawner without issue 21's start-path "
        "levers that were kept: `share_terraform_init = False`, `terraform_gogc = 0`, "
        "`hub_api_via = \"proxy\"`; `-proxy` ones only the last: the hub API through a proxy device instead "
        "of the hub's unix socket.",
        ""])


def _sequential_section(results: dict, figures: dict, png_rel: str) -> str:
    seq = (results.get("sequential") or {}).get("contestants") or {}
    if not seq:
        return "## Spawn and stop, one at a time\n\nNot measured in these results.\n"
    summary = sequential_summary(seq)
    def vs_base(name, ratio):
        return "(baseline)" if name.startswith("baseline") else _ratio(ratio)

    def per_minute(s):
        n = spawns_per_core_minute(s["cpu_p50"])
        return "–" if n is None else f"{n:.0f}"

    rows = [[n, s["daemon"], s["n"], _s(s["spawn_p50"]), _s(s["spawn_p90"]), vs_base(n, s["spawn_ratio"]),
             _s(s["stop_p50"]), _s(s["stop_p90"]), vs_base(n, s["stop_ratio"]), _s(s["cpu_p50"]), per_minute(s),
             s["failures"]]
            for n, s in sorted(summary.items(), key=lambda kv: (kv[1]["daemon"] != "lxd", kv[1]["kind"] == "tf", kv[0]))]
    text = ["## Spawn and stop, one at a time", "",
            _table(["contestant", "daemon", "spawns", "spawn p50", "spawn p90", "× baseline", "stop p50", "stop p90",
                    "× baseline", "hub CPU s", "per core-minute", "failed"], rows), "",
            "*hub CPU s*: the median CPU-seconds of one spawn and its stop on the hub's host (the hub "
            "process, and what it ran and waited for: Terraform and its provider included; utime + stime + "
            "cutime + cstime of `/proc/<hub pid>/stat` around each round). *per core-minute*: how many "
            "spawns with their stops one hub core sustains per minute on that figure.", ""]
    failures = [f"- `{n}`: {f.splitlines()[0][:300]}" for n, c in seq.items() for f in (c.get("failures") or [])[:3]]
    if failures:
        text += ["Failures (at most three per contestant):", "", *failures, ""]
    if "spawn" in figures:
        text += [f"![spawn and stop times per contestant]({png_rel}/{figures['spawn'].name})", ""]
    return "\n".join(text)


def _stages_section(results: dict) -> str:
    seq = (results.get("sequential") or {}).get("contestants") or {}
    tf = {n: c for n, c in seq.items() if _is_tf(n, c)}
    if not tf:
        return "## Where a tf-lxd-spawner spawn's time goes\n\nNot measured in these results.\n"
    text = ["## Where a tf-lxd-spawner spawn's time goes", "",
            "Medians of the stages each start and stop writes into its audit record "
            "(`<state_dir>/<user>/<server>/audit.jsonl`, key `stages`), over the measured rounds.", ""]
    for op in ("start", "stop"):
        per = {n: [r for r in (c.get("audit") or {}).get(op) or []] for n, c in tf.items()}
        medians = {n: stage_medians(records) for n, records in per.items()}
        stages = []
        for m in medians.values():
            stages += [k for k in m if k not in stages]
        if not stages:
            text += [f"**{op}**: the audit records carry no stages (this spawner version writes none).", ""]
            continue
        names = list(per)
        rows = [[k, *[_s(medians[n].get(k), 3) for n in names]] for k in stages]
        rows.append(["total (audit `duration`)",
                     *[_s(median([r.get("duration") for r in per[n] if r.get("duration") is not None]), 3)
                       for n in names]])
        seen = sequential_summary(tf)
        rows.append([f"{'spawn to ready' if op == 'start' else 'stop to gone'}, seen through the hub",
                     *[_s(seen[n][f"{'spawn' if op == 'start' else 'stop'}_p50"], 3) for n in names]])
        text += [f"**{op}**", "", _table(["stage", *names], rows), ""]
    return "\n".join(text)


def _concurrency_section(results: dict, figures: dict, png_rel: str) -> str:
    conc = (results.get("concurrency") or {}).get("contestants") or {}
    if not conc:
        return "## Concurrent spawns\n\nNot measured in these results.\n"
    rows = []
    for name in sorted(conc):
        for b in sorted(conc[name], key=lambda b: b["n"]):
            ready = [t for t in b["ready_s"] if t is not None]
            rows.append([name, b["n"], _s(b["all_ready_s"], 1), f"{len(ready)}/{b['n']}",
                         _s(median(ready), 1), _ms(b["latency_p50_ms"]), _ms(b["latency_p99_ms"]),
                         _ms(b["latency_max_ms"]), f"{_ms(b.get('idle_p50_ms'))} / {_ms(b.get('idle_p99_ms'))}",
                         _s(b.get("stop_all_s"), 1)])
    text = ["## Concurrent spawns", "",
            "N spawns for N fresh users, all requested at once through the REST API; the hub's limits are lifted "
            "(`concurrent_spawn_limit = 0`, `active_server_limit = 0`), the spawner's own settings "
            "(e.g. `terraform_concurrency`) are left at their defaults. Hub API latency: "
            "`GET /hub/api/users/<user>` every 50 ms from a separate thread, from the first request until the "
            "last server is ready (*idle*: the same probe and watching for 3 s before the burst, no spawn running: "
            "the hub's floor on this machine; the hub runs without --debug, as operators run it). The burst is watched "
            "with one `GET /hub/api/users?state=active` every 50 ms. Afterwards all N are stopped at once and "
            "waited for.", "",
            _table(["contestant", "N", "all ready", "succeeded", "each ready p50", "hub API p50", "hub API p99",
                    "hub API max", "idle p50 / p99", "stop all"], rows), ""]
    for key, alt in (("concurrency", "all-ready time against N"), ("latency", "hub API latency during the largest burst")):
        if key in figures:
            text += [f"![{alt}]({png_rel}/{figures[key].name})", ""]
    return "\n".join(text)


def _gap_note(gap: float | None, max_age: float | None) -> str:
    """Whether rounds this far apart each asked the daemon anew, as the hub's 30 s apart do."""
    if gap is None or max_age is None:
        return ""
    if gap > max_age:
        return (f" (longer than the spawner's `status_max_age` = {max_age} s, so each round asks the daemon "
                "anew, as the hub's rounds, `poll_interval` = 30 s apart, do)")
    return (f" (not longer than the spawner's `status_max_age` = {max_age} s: later rounds may reuse the "
            "first round's listing, which the hub's rounds, 30 s apart, never do)")


def _poll_section(results: dict) -> str:
    poll = results.get("poll") or {}
    backends = poll.get("backends") or {}
    if not backends:
        return "## One poll round\n\nNot measured in these results.\n"
    rows = []
    for backend in _daemon_order(backends):
        p = backends[backend]
        for r in p["rounds"]:
            rows.append([backend, p["servers"], r["round"], _s(r["wall_s"], 3),
                         "n/a" if r["requests"] is None else r["requests"], f"{r['running']}/{p['servers']}",
                         "; ".join(r.get("errors") or []) or "–"])
    gap = poll.get("gap_s")
    max_age = poll.get("status_max_age")
    counted = any(p.get("counter") not in (None, "n/a") for p in backends.values())
    return "\n".join([
        "## One poll round", "",
        "`poll()` on that many `LxdSpawner` objects at once (one `asyncio.gather`, as built by "
        "`tests/spawnerstub.make_spawner`, each loaded with the state of a running container), counting the "
        "HTTP requests the spawner sent to the daemon ("
        + ("`tf_lxd_spawner.systems.lxd.request_count()`" if counted else
           "n/a: the measured spawner version has no `tf_lxd_spawner.systems.lxd.request_count()`")
        + "). The containers are "
        "a throw-away busybox image whose init only sleeps, made and deleted by the benchmark. "
        f"Rounds are {gap if gap is not None else '?'} s apart" + _gap_note(gap, max_age)
        + "; the first round also opens the spawner's connection to the daemon.", "",
        _table(["daemon", "servers", "round", "wall time", "LXD requests", "running", "errors"], rows), ""])


def _errors_section(results: dict) -> str:
    """Contestants left out of a run (their warm-up spawn failed), and why."""
    errors = results.get("errors") or {}
    if not errors:
        return ""
    lines = [f"- {what}: {why.splitlines()[0][:400] if why else ''}" for what, why in errors.items()]
    return "\n".join(["## Left out of the last run", "", *lines, ""])


def render(results: dict, figures: dict, png_rel: str = "performance",
           results_link: str = "performance/results.json") -> str:
    """The whole Markdown document."""
    goal_rows = goals(results)
    parts = [
        _header(results, results_link),
        "## Goals", "",
        _table(["goal", "subject", "measured", "verdict"], goal_rows), "",
        _method(),
        _sequential_section(results, figures, png_rel),
        _stages_section(results),
        _concurrency_section(results, figures, png_rel),
        _poll_section(results),
        _errors_section(results),
        "## Reproduce", "",
        "```sh\nmake performance                 # set-up, the bench extra, every part, this page\n"
        "PATH=$PATH:.cache/bin .venv/bin/python benchmarks/side_by_side.py --help   # parts, filters, sizes\n"
        ".venv/bin/python benchmarks/side_by_side.py --from-results --write-docs   # re-render only\n```", "",
    ]
    return "\n".join(parts)


def write(results: dict, md_path: Path, figures: dict, results_path: Path) -> Path:
    md_path.parent.mkdir(parents=True, exist_ok=True)
    link = os.path.relpath(results_path.resolve(), md_path.parent.resolve())
    page = render(results, figures, png_rel=md_path.stem, results_link=link)
    # A hand-written summary above GENERATED (in an existing page) is kept: only what follows
    # the marker is generated.
    old = md_path.read_text() if md_path.exists() else ""
    if GENERATED in old:
        title, _, generated = page.partition("\n\n")
        page = old.split(GENERATED, 1)[0] + GENERATED + "\n\n" + generated
    md_path.write_text(page)
    return md_path


GENERATED = "<!-- Generated from here on. -->"
