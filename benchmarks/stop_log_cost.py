"""What the file work of one stop costs on a workspace with a long history: Workspace.seal()
then Workspace.scrub_secrets() (what every terraform run and every stop do), on a workspace
holding `--old-logs` run logs of earlier runs (about the size of a real apply log, 4 KiB) and a
state with a server token.

Each round first adds the three run logs of one more start/stop cycle (init, apply, destroy,
one holding the current token), then times seal()+scrub_secrets(). Run it with the code to
measure first on PYTHONPATH, e.g. the code before run logs were pruned:

    git archive <old commit> tf_lxd_spawner | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/stop_log_cost.py
    PYTHONPATH=. .venv/bin/python benchmarks/stop_log_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

LOG_LINE = json.dumps({"@level": "info", "@message": "module.notebook.lxd_container.server: Creating...",
                       "@module": "terraform.ui", "@timestamp": "2026-12-01T15:18:29.693716Z",
                       "hook": {"resource": {"addr": "module.notebook.lxd_container.server"}},
                       "type": "apply_start"}) + "\n"


def write_log(ws, operation: str, extra: str = "") -> None:
    path = ws.run_log(operation)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = LOG_LINE * (4096 // len(LOG_LINE)) + extra
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)


def state_with(token: str) -> str:
    env = json.dumps({"JUPYTERHUB_API_TOKEN": token})
    return json.dumps({"version": 4, "serial": 1, "resources": [{"type": "lxd_container", "instances": [
        {"attributes": {"name": "jupyter-bench", "file": [{"target_file": "/etc/x/env.json", "content": env}]}}]}]})


async def measure(old_logs: int, rounds: int) -> dict:
    import tf_lxd_spawner
    from tf_lxd_spawner.systems.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="stop-log-cost-") as tmp:
        ws = Workspace(Path(tmp) / "ws")
        for i in range(old_logs):
            write_log(ws, ("init", "apply", "destroy")[i % 3])
        times = []
        for r in range(rounds):
            token = os.urandom(16).hex()
            ws.state_file.write_text(state_with(token))
            for op in ("init", "apply", "destroy"):
                write_log(ws, op, f'{{"@message": "JUPYTERHUB_API_TOKEN={token}"}}\n' if op == "apply" else "")
            began = time.perf_counter()
            await ws.seal()
            await ws.scrub_secrets({token})
            times.append(time.perf_counter() - began)
            assert token not in "".join(p.read_text() for p in ws.logs_dir.iterdir()), "a token was left"
        left = len(list(ws.logs_dir.iterdir()))
    return {"code": str(Path(tf_lxd_spawner.__file__).parent), "old_logs": old_logs, "rounds": rounds,
            "first_s": round(times[0], 4), "later_median_s": round(statistics.median(times[1:]), 4),
            "later_max_s": round(max(times[1:]), 4), "logs_left": left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-logs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.old_logs, args.rounds))))


if __name__ == "__main__":
    main()
