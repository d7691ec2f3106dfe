"""Checks, from the host, what the storage module made: the volume's config as the daemon holds it
(`lxc query`), its quota and labels. With INSPECT_MARK it also takes a snapshot of the volume as a
marker; with INSPECT_EXPECT_MARK it requires that snapshot, which a replaced (new, empty) volume
would not have, and deletes it again (so the volume's destroy meets no snapshot). Prints every
mismatch and exits 1 on any."""

import json
import os
import subprocess
import sys
import urllib.parse

POOL = os.environ["INSPECT_POOL"]
NAME = os.environ["INSPECT_NAME"]
MARK = "tftest-mark"
VOLUME = f"/1.0/storage-pools/{urllib.parse.quote(POOL)}/volumes/custom/{urllib.parse.quote(NAME)}"


def query(path: str, *args: str) -> object:
    out = subprocess.run(["lxc", "query", *args, path], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"inspect {POOL}/{NAME}: lxc query {path} failed: {out.stderr.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def main() -> int:
    errors = []
    config = query(VOLUME)["config"]
    for key, value in json.loads(os.environ["INSPECT_CONFIG"]).items():
        if config.get(key) != value:
            errors.append(f"config {key} is {config.get(key)!r} at the daemon, expected {value!r}")
    snapshots = [s.rsplit("/", 1)[-1] for s in query(f"{VOLUME}/snapshots")]
    if os.environ.get("INSPECT_EXPECT_MARK") == "true" and MARK not in snapshots:
        errors.append(f"snapshot {MARK} is gone (snapshots: {snapshots}): the volume was replaced")
    if os.environ.get("INSPECT_EXPECT_MARK") == "true" and MARK in snapshots:
        query(f"{VOLUME}/snapshots/{MARK}", "-X", "DELETE")
    if os.environ.get("INSPECT_MARK") == "true":
        query(f"{VOLUME}/snapshots", "-X", "POST", "-d", json.dumps({"name": MARK}))
    for e in errors:
        print(f"inspect {POOL}/{NAME}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
