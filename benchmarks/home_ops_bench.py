"""Daemon time for the operations on a user's home volume, on LXD and on Incus.

    .venv/bin/python benchmarks/home_ops_bench.py [--rounds 3] [--gib 1] [--daemons lxd incus]

For each daemon, a custom volume holding --gib GiB of random data (files of 5 MiB) is
(1) snapshotted and (2) restored from that snapshot, on the machine's main daemon (btrfs pool
`default`; the data is written through a throw-away `jupyter-notebook` container, and half the
files are deleted between snapshot and restore, so the restore has work to do), then
(3) moved between the two members of a throw-away loopback cluster (tests/lxdcluster.py, `dir`
pool `local`; filled through a busybox container), m1 -> m2, then back, alternately.

Reports a markdown table: operation, daemon, median, min and max seconds over --rounds rounds.
Times are those of the client command (`lxc`/`incus`), which waits for the daemon's operation;
its own start-up adds ~0.02 s. The file count is checked after each restore and after the moves.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchstats import median  # noqa: E402
from lxdcluster import INCUS, LXD, TINY, LxdCluster  # noqa: E402

FILE_MIB = 5
MOUNT = "/home/bench"
# The one place where the two clients' words differ for this benchmark.
SNAPSHOT = {"lxc": ["storage", "volume", "snapshot"], "incus": ["storage", "volume", "snapshot", "create"]}
RESTORE = {"lxc": ["storage", "volume", "restore"], "incus": ["storage", "volume", "snapshot", "restore"]}
DELETE_SNAPSHOT = {"lxc": lambda vol, snap: ["storage", "volume", "delete", "default", f"{vol}/{snap}"],
                   "incus": lambda vol, snap: ["storage", "volume", "snapshot", "delete", "default", vol, snap]}


def host_client(cli: str):
    """The machine's main daemon through its client, called like lxdcluster's Member.lxc."""
    def call(*args, check=True) -> str:
        r = subprocess.run([cli, *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cli} {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout
    return call


def timed(run, *args) -> float:
    t0 = time.monotonic()
    run(*args)
    return time.monotonic() - t0


def sh(run, container: str, script: str) -> str:
    return run("exec", container, "--", "sh", "-c", script)


def fill(run, container: str, files: int):
    sh(run, container, f"cd {MOUNT} && i=0; while [ $i -lt {files} ]; do "
                       f"head -c {FILE_MIB * 1024 * 1024} /dev/urandom > f$i; i=$((i+1)); done; sync")


def count(run, container: str) -> int:
    return int(sh(run, container, f"ls {MOUNT} | wc -l"))


def attach(run, container: str, pool: str, volume: str):
    run("config", "device", "add", container, "home", "disk", f"pool={pool}", f"source={volume}", f"path={MOUNT}")


def snapshot_restore(cli: str, rounds: int, files: int) -> dict:
    """Snapshot and restore times of a filled volume on the main daemon's `default` pool."""
    run = host_client(cli)
    name = secrets.token_hex(3)
    volume, container = f"bench-home-{name}", f"bench-fill-{name}"
    times = {"snapshot": [], "restore": []}
    try:
        run("storage", "volume", "create", "default", volume, "size=3GiB")
        run("init", "jupyter-notebook", container)
        attach(run, container, "default", volume)
        run("start", container)
        fill(run, container, files)
        run("stop", "--force", container)  # a restore needs the volume unused
        for i in range(rounds):
            snap = f"s{i}"
            times["snapshot"].append(timed(run, *SNAPSHOT[cli], "default", volume, snap))
            run("start", container)
            sh(run, container, f"rm -f {MOUNT}/f*[02468]")
            left = count(run, container)
            run("stop", "--force", container)
            times["restore"].append(timed(run, *RESTORE[cli], "default", volume, snap))
            run("start", container)
            back = count(run, container)
            run("stop", "--force", container)
            if not left < back == files:
                raise AssertionError(f"{cli}: {left} files after deleting, {back} after restore, expected {files}")
            run(*DELETE_SNAPSHOT[cli](volume, snap))
    finally:
        run("delete", "--force", container, check=False)
        run("storage", "volume", "delete", "default", volume, check=False)  # and its snapshots
    return times


def location(run, volume: str) -> str:
    vols = json.loads(run("storage", "volume", "list", "local", "--format", "json"))
    (where,) = [v["location"] for v in vols if v["type"] == "custom" and v["name"] == volume]
    return where


def move_between_members(kind, rounds: int, files: int) -> tuple[list[float], str]:
    """Times of moving a filled volume between the two members of a loopback cluster, and how it
    was moved (`move`, or copy-then-delete where the client cannot move between members)."""
    base = Path(tempfile.mkdtemp(prefix="bench-home-cluster-", dir="/var/tmp"))
    base.chmod(0o711)  # unprivileged container roots must traverse to their rootfs
    cluster = LxdCluster(base, size=2, kind=kind)
    run = cluster.first.lxc
    volume, container, where = "bench-home", "bench-fill", "m1"
    times, how = [], "move"
    try:
        cluster.up()
        cluster.import_tiny_image()
        run("storage", "volume", "create", "local", volume, "--target", "m1")
        run("init", TINY, container, "--target", "m1")
        attach(run, container, "local", volume)
        run("start", container)
        fill(run, container, files)
        run("delete", "--force", container)
        for _ in range(rounds):
            to = "m2" if where == "m1" else "m1"
            src, dst = f"local/{volume}", f"local/{volume}"
            t0 = time.monotonic()
            if how == "move":
                try:
                    run("storage", "volume", "move", src, dst, "--target", where, "--destination-target", to)
                except RuntimeError as e:
                    print(f"{kind.cli}: move between members failed ({e}); timing copy-then-delete instead")
                    how = "copy+delete"
            if how == "copy+delete":
                t0 = time.monotonic()
                run("storage", "volume", "copy", src, dst, "--target", where, "--destination-target", to)
                run("storage", "volume", "delete", "local", volume, "--target", where)
            times.append(time.monotonic() - t0)
            if location(run, volume) != to:
                raise AssertionError(f"{kind.cli}: the volume is on {location(run, volume)}, not {to}")
            where = to
        run("init", TINY, container, "--target", where)  # the data came along
        attach(run, container, "local", volume)
        run("start", container)
        if count(run, container) != files:
            raise AssertionError(f"{kind.cli}: {count(run, container)} files after the moves, expected {files}")
    finally:
        try:
            run("delete", "--force", container, check=False)
            run("storage", "volume", "delete", "local", volume, "--target", where, check=False)
        finally:
            cluster.down()  # stops the members and removes the base directory
    return times, how


def version(cli: str) -> str:
    return json.loads(host_client(cli)("query", "/1.0"))["environment"]["server_version"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gib", type=float, default=1.0, help="data in the volume, GiB")
    ap.add_argument("--daemons", nargs="+", choices=["lxd", "incus"], default=["lxd", "incus"])
    args = ap.parse_args()
    files = max(1, round(args.gib * 1024 / FILE_MIB))
    rows, notes = [], []
    for kind in [{"lxd": LXD, "incus": INCUS}[d] for d in args.daemons]:
        daemon = f"{'LXD' if kind is LXD else 'Incus'} {version(kind.cli)}"
        times = snapshot_restore(kind.cli, args.rounds, files)
        moves, how = move_between_members(kind, args.rounds, files)
        times[f"move m1<->m2 ({how})"] = moves
        if how != "move":
            notes.append(f"{daemon}: `{kind.cli} storage volume move` between members failed; timed copy + delete.")
        rows += [(op, daemon, t) for op, t in times.items()]
    print(f"\n{files} files of {FILE_MIB} MiB ({files * FILE_MIB / 1024:.2f} GiB) per volume\n")
    print("| operation | daemon | median s | min s | max s | rounds |")
    print("|---|---|---:|---:|---:|---:|")
    order = ["snapshot", "restore", "move"]
    for op, daemon, t in sorted(rows, key=lambda r: (order.index(r[0].split()[0]), r[1])):
        print(f"| {op} | {daemon} | {median(t):.2f} | {min(t):.2f} | {max(t):.2f} | {len(t)} |")
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
