"""The report's figures (matplotlib, Agg: no display needed). Each function draws from the raw
results and returns the file it wrote, or None when there is nothing to draw."""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

BASELINE_COLOUR = "#8c8c8c"
COLOURS = {"terraform-lxd": "#1f77b4", "tofu-lxd": "#2ca02c", "terraform-incus": "#ff7f0e",
           "tofu-incus": "#d62728", "baseline-lxd": BASELINE_COLOUR, "baseline-incus": "#4d4d4d"}


def _colour(name: str) -> str:
    return COLOURS.get(name, "#9467bd")


def _order(names) -> list[str]:
    """Daemon by daemon, the baseline first: each spawner stands beside its yardstick."""
    def key(n):
        daemon = n.rsplit("-", 1)[-1]
        return ({"lxd": 0, "incus": 1}.get(daemon, 2), not n.startswith("baseline"), n)
    return sorted(names, key=key)


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def spawn_distributions(sequential: dict, out: Path) -> Path | None:
    """Box plot with every measurement on top, per contestant: spawn-to-ready and stop."""
    data = {n: c for n, c in sequential.items() if c.get("spawn_s")}
    if not data:
        return None
    names = _order(data)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "spawn_s", "spawn to ready"), (axes[1], "stop_s", "stop to gone")):
        values = [data[n].get(key) or [float("nan")] for n in names]
        box = ax.boxplot(values, patch_artist=True, widths=0.55, showfliers=False,
                         medianprops={"color": "black"})
        for patch, n in zip(box["boxes"], names):
            patch.set_facecolor(_colour(n))
            patch.set_alpha(0.35)
        jitter = random.Random(0)
        for i, (n, vs) in enumerate(zip(names, values), start=1):
            ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in vs], vs, s=14, color=_colour(n), zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=25, ha="right")
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("tf-lxd-spawner against the direct-API baseline (grey), through a real hub")
    return _save(fig, out)


def concurrency_curve(concurrency: dict, out: Path) -> Path | None:
    """N concurrent spawns against seconds until all were ready; a burst with failures is an x."""
    data = {n: bursts for n, bursts in concurrency.items() if bursts}
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in _order(data):
        bursts = sorted(data[name], key=lambda b: b["n"])
        ax.plot([b["n"] for b in bursts], [b["all_ready_s"] for b in bursts], marker="o",
                color=_colour(name), label=name)
        bad = [b for b in bursts if not b["ok"]]
        if bad:
            ax.scatter([b["n"] for b in bad], [b["all_ready_s"] for b in bad], marker="x", s=80,
                       color="red", zorder=4, label=f"{name}: not all succeeded")
    ax.set_xticks(sorted({b["n"] for bursts in data.values() for b in bursts}))
    ax.set_xlabel("concurrent spawns (N)")
    ax.set_ylabel("seconds until all ready")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Concurrent spawns through one hub")
    return _save(fig, out)


def latency_timeline(concurrency: dict, out: Path) -> Path | None:
    """The hub API's response time over the largest burst of each contestant."""
    largest = {n: max(bursts, key=lambda b: b["n"]) for n, bursts in concurrency.items() if bursts}
    largest = {n: b for n, b in largest.items() if b.get("latency")}
    if not largest:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for name in _order(largest):
        b = largest[name]
        ax.plot([t for t, _ in b["latency"]], [lat * 1000 for _, lat in b["latency"]], ".-", ms=3, lw=0.6,
                color=_colour(name), label=f"{name}, N={b['n']} (all ready at {b['all_ready_s']:.1f} s)")
        ax.axvline(b["all_ready_s"], color=_colour(name), ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("seconds since the burst started")
    ax.set_ylabel("GET /hub/api/users/<user> (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("Hub API latency during the largest burst")
    return _save(fig, out)


def draw_all(results: dict, png_dir: Path) -> dict[str, Path]:
    """Every figure the results allow, by role: spawn, concurrency, latency."""
    png_dir.mkdir(parents=True, exist_ok=True)
    seq = (results.get("sequential") or {}).get("contestants") or {}
    conc = (results.get("concurrency") or {}).get("contestants") or {}
    figures = {"spawn": (spawn_distributions, seq, "spawn_times.png"),
               "concurrency": (concurrency_curve, conc, "concurrency.png"),
               "latency": (latency_timeline, conc, "hub_latency.png")}
    drawn = {}
    for role, (draw, data, name) in figures.items():
        out = draw(data, png_dir / name)
        if out is None:
            (png_dir / name).unlink(missing_ok=True)  # a figure of earlier results would mislead
        else:
            drawn[role] = out
    return drawn
