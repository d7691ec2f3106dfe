"""Checks, from the host, what the notebook module put into an instance: each file's mode, owner and
sha256 (via `lxc exec`), that each expected mount point is one and root can write there, that each
read-only mount point is one, mounted ro, where even root's write is refused, then
that the server unit is active and answers through the proxy device
with the token and refuses without it. Prints every mismatch and exits 1 on any."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

INSTANCE = os.environ["INSPECT_INSTANCE"]
DEADLINE = 120  # seconds for the server to come up on a loaded machine


def in_instance(*argv: str) -> str:
    return subprocess.run(["lxc", "exec", INSTANCE, "--", *argv], capture_output=True, text=True).stdout.strip()


def file_errors(files: list[dict]) -> list[str]:
    errors = []
    for f in files:
        stat = in_instance("stat", "-c", "%a %u %g", f["path"])
        if stat != f["stat"]:
            errors.append(f"{f['path']}: mode uid gid {stat!r}, expected {f['stat']!r}")
        digest = in_instance("sha256sum", f["path"]).split(" ")[0]
        if digest != f["sha256"]:
            errors.append(f"{f['path']}: sha256 {digest!r}, expected {f['sha256']!r}")
    return errors


def mount_errors(paths: list[str]) -> list[str]:
    errors = []
    for path in paths:
        source = in_instance("findmnt", "-n", "-o", "SOURCE", "--mountpoint", path)
        if not source:
            errors.append(f"{path}: not a mount point")
            continue
        probe = f"{path}/.tftest-write"
        wrote = subprocess.run(["lxc", "exec", INSTANCE, "--", "sh", "-c", 'echo x > "$1" && rm "$1"', "sh", probe],
                               capture_output=True, text=True)
        if wrote.returncode:
            errors.append(f"{path} (mounted from {source}): root cannot write there: {wrote.stderr.strip()}")
    return errors


def readonly_mount_errors(paths: list[str]) -> list[str]:
    errors = []
    for path in paths:
        found = in_instance("findmnt", "-n", "-o", "SOURCE,OPTIONS", "--mountpoint", path)
        if not found:
            errors.append(f"{path}: not a mount point")
            continue
        source, options = found.split()[0], found.split()[-1]
        if "ro" not in options.split(","):
            errors.append(f"{path} (mounted from {source}): mounted {options!r}, not ro")
        probe = f"{path}/.tftest-write"
        wrote = subprocess.run(["lxc", "exec", INSTANCE, "--", "sh", "-c", 'echo x > "$1"', "sh", probe],
                               capture_output=True, text=True)
        if wrote.returncode == 0:
            in_instance("rm", "-f", probe)
            errors.append(f"{path} (mounted from {source}): root could write there")
        elif "Read-only file system" not in wrote.stderr:
            errors.append(f"{path}: the write failed, but not as read-only: {wrote.stderr.strip()}")
    return errors


def status(url: str, token: str | None) -> int | None:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def server_errors(url: str, token: str) -> list[str]:
    deadline = time.monotonic() + DEADLINE
    while status(url, token) != 200:
        if time.monotonic() > deadline:
            unit = in_instance("systemctl", "is-active", "jupyterhub-singleuser")
            return [f"{url} gave no 200 within {DEADLINE} s (unit jupyterhub-singleuser: {unit})"]
        time.sleep(0.2)
    errors = []
    if (code := status(url, None)) not in (401, 403):
        errors.append(f"{url} answered {code} without the token")
    if (unit := in_instance("systemctl", "is-active", "jupyterhub-singleuser")) != "active":
        errors.append(f"unit jupyterhub-singleuser is {unit!r}")
    return errors


def main() -> int:
    errors = file_errors(json.loads(os.environ["INSPECT_FILES"]))
    errors += mount_errors(json.loads(os.environ.get("INSPECT_MOUNTS", "[]")))
    errors += readonly_mount_errors(json.loads(os.environ.get("INSPECT_RO_MOUNTS", "[]")))
    errors += server_errors(os.environ["INSPECT_SERVER_URL"], os.environ["INSPECT_TOKEN"])
    for e in errors:
        print(f"inspect {INSTANCE}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
