"""Spawn-to-ready and stop per combination of {terraform, tofu} x {LXD, Incus}, through real
hubs, in interleaved rounds (the machine is noisy: compare combinations within one run), and
what a container's first start costs on each daemon (LXD 5.0.2 remaps the root filesystem,
Incus maps it with an idmapped mount).

    PATH=$PATH:.cache/bin .venv/bin/python benchmarks/matrix_bench.py [--rounds 5]

Run it after `make setup` (tofu is in .cache/bin); nothing else may be spawning meanwhile.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubtools import Hub  # noqa: E402
from spawn_bench import spawn_ready  # noqa: E402

COMBINATIONS = [(binary, daemon) for binary in ("terraform", "tofu") for daemon in ("lxd", "incus")]
CLI = {"lxd": "lxc", "incus": "incus"}
ROOTFS = {"lxd": "/var/lib/lxd/containers/{}/rootfs", "incus": "/var/lib/incus/containers/{}/rootfs"}


def stop(hub: Hub, user: str) -> float:
    t0 = time.monotonic()
    hub.api("DELETE", f"/users/{user}/server")
    hub.wait_stopped(user)
    return time.monotonic() - t0


def first_start(daemon: str, image: str, runs: int) -> tuple[list, list, int]:
    """Create and start a container straight from the daemon's client: create and start times,
    and the owner of its /etc/passwd on disk while it runs (0: not remapped)."""
    cli, creates, starts, owner = CLI[daemon], [], [], -1
    for i in range(runs):
        name = f"bench-first-start-{i}"
        t0 = time.monotonic()
        subprocess.run([cli, "init", image, name, "-q"], check=True, capture_output=True)
        t1 = time.monotonic()
        subprocess.run([cli, "start", name], check=True, capture_output=True)
        t2 = time.monotonic()
        owner = os.stat(ROOTFS[daemon].format(name) + "/etc/passwd").st_uid
        subprocess.run([cli, "delete", "--force", name], check=True, capture_output=True)
        creates.append(t1 - t0)
        starts.append(t2 - t1)
    return creates, starts, owner


def fmt(values: list) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--image", default="jupyter-notebook")
    args = ap.parse_args()
    print("| daemon | create | first start | rootfs owner on disk |\n|---|---|---|---|")
    for daemon in CLI:
        creates, starts, owner = first_start(daemon, args.image, args.rounds)
        print(f"| {daemon} | {fmt(creates)} | {fmt(starts)} | {owner} |")
    with tempfile.TemporaryDirectory() as tmp:
        hubs = {}
        try:
            for binary, daemon in COMBINATIONS:
                work = Path(tmp) / f"{binary}-{daemon}"
                work.mkdir()
                hubs[(binary, daemon)] = Hub(work, extra_config=f"""
                    c.LxdSpawner.backend = "{daemon}"
                    c.LxdSpawner.terraform_path = "{binary}"
                """).start()
            ready = {c: [] for c in hubs}
            stopped = {c: [] for c in hubs}
            for hub in hubs.values():  # the first init of each workspace root, the first clone
                spawn_ready(hub, "warmup")
                stop(hub, "warmup")
            for r in range(args.rounds):
                for combo, hub in hubs.items():
                    ready[combo].append(spawn_ready(hub, f"round{r}"))
                    stopped[combo].append(stop(hub, f"round{r}"))
            print(f"\n{args.rounds} interleaved rounds, one hub per combination, through the hub's REST API\n")
            print("| binary | daemon | spawn-to-ready median | stop median |\n|---|---|---|---|")
            for (binary, daemon), times in ready.items():
                print(f"| {binary} | {daemon} | {fmt(times)} | {fmt(stopped[(binary, daemon)])} |")
        finally:
            for hub in hubs.values():
                hub.stop()


if __name__ == "__main__":
    main()
