"""Spawn-to-ready time and hub responsiveness under concurrent spawns, on the real stack.

    .venv/bin/python benchmarks/spawn_bench.py [--rounds 5] [--concurrent 4]

Reports: the median (and min/max) time from the start request to the server being ready,
over sequential spawns; then the hub API's response time (GET /hub/api/users/<u>, p50/p95/max)
measured while `--concurrent` spawns run at once.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hubtools import Hub  # noqa: E402


def spawn_ready(hub: Hub, user: str) -> float:
    t0 = time.monotonic()
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user)
    return time.monotonic() - t0


def stop(hub: Hub, users):
    for u in users:
        hub.api("DELETE", f"/users/{u}/server")
    for u in users:
        hub.wait_stopped(u)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp)).start()
        try:
            spawn_ready(hub, "warmup")  # first container of the image, first init
            stop(hub, ["warmup"])
            times = []
            for i in range(args.rounds):
                times.append(spawn_ready(hub, f"seq{i}"))
                stop(hub, [f"seq{i}"])
            print(f"spawn-to-ready over {args.rounds} sequential spawns: median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f})")

            users = [f"par{i}" for i in range(args.concurrent)]
            for u in users:
                hub.api("POST", f"/users/{u}")
            latencies, done = [], threading.Event()

            def probe():
                while not done.is_set():
                    t0 = time.monotonic()
                    hub.api("GET", "/users/par0").raise_for_status()
                    latencies.append(time.monotonic() - t0)
                    time.sleep(0.05)

            prober = threading.Thread(target=probe)
            prober.start()
            t0 = time.monotonic()
            results = {}
            threads = [threading.Thread(target=lambda u=u: results.__setitem__(u, spawn_ready(hub, u))) for u in users]
            [t.start() for t in threads]
            [t.join() for t in threads]
            wall = time.monotonic() - t0
            done.set()
            prober.join()
            q = statistics.quantiles(latencies, n=20)
            print(f"{args.concurrent} concurrent spawns: all ready in {wall:.2f} s "
                  f"(each {min(results.values()):.2f}-{max(results.values()):.2f} s)")
            print(f"hub API latency during them: p50 {statistics.median(latencies) * 1000:.1f} ms, "
                  f"p95 {q[18] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms over {len(latencies)} requests")
            stop(hub, users)
        finally:
            hub.stop()


if __name__ == "__main__":
    main()
