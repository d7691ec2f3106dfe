"""What one poll round costs the hub: poll() on many LxdSpawner objects at once.

JupyterHub polls every running server (Spawner.poll_interval); with hundreds of servers that
round is a burst of LXD requests. Here 200 spawners (built like tests/spawnerstub.make_spawner,
each pointed at a running tiny container) are polled together in one asyncio.gather, and the
wall time and the number of HTTP requests the spawner made to the daemon are recorded.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tinyimage import TinyFleet  # noqa: E402


def request_count() -> int | None:
    """tf_lxd_spawner.systems.lxd.request_count() when the spawner offers it, else None ("n/a")."""
    from tf_lxd_spawner.systems import lxd

    counter = getattr(lxd, "request_count", None)
    return counter() if callable(counter) else None


async def _rounds(names: list[str], backend: str, rounds: int, gap: float) -> list[dict]:
    from spawnerstub import make_spawner

    with tempfile.TemporaryDirectory(prefix="tf-lxd-bench-poll-") as state_dir:
        spawners = []
        for i, name in enumerate(names):
            s = make_spawner(state_dir, f"poll{i}", backend=backend)
            s.load_state({"instance": name})
            s.instance = name
            spawners.append(s)
        results = []
        for r in range(rounds):
            if r:
                await asyncio.sleep(gap)
            before = request_count()
            t0 = time.monotonic()
            outcome = await asyncio.gather(*(s.poll() for s in spawners), return_exceptions=True)
            wall = time.monotonic() - t0
            after = request_count()
            results.append({
                "round": r + 1, "wall_s": round(wall, 4),
                "requests": None if before is None or after is None else after - before,
                "running": sum(1 for o in outcome if o is None),
                "not_running": sum(1 for o in outcome if o is not None and not isinstance(o, BaseException)),
                "errors": sorted({f"{type(o).__name__}: {o}" for o in outcome if isinstance(o, BaseException)})[:3],
            })
        return results


def measure(backend: str, servers: int, rounds: int = 3, gap: float = 5.0) -> dict:
    """Launch `servers` tiny instances on the daemon, poll them `rounds` times, delete them all."""
    with TinyFleet(backend, servers) as fleet:
        rows = asyncio.run(_rounds(fleet.names, backend, rounds, gap))
        return {"backend": backend, "servers": servers, "launch_s": round(fleet.create_seconds, 2),
                "counter": "tf_lxd_spawner.systems.lxd.request_count()" if rows[0]["requests"] is not None else "n/a",
                "rounds": rows}
