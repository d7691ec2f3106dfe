"""Facts about the machine a benchmark ran on, for the report's header: numbers mean little
without the cores, the daemons' and the binaries' versions they were taken with."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib import metadata

from unixhttp import Client


def _os_name() -> str:
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _daemon(backend: str) -> dict:
    """The daemon's own account of itself (GET /1.0), or the error that prevented asking."""
    api = Client(backend, timeout=10)
    try:
        env = api.server().get("environment") or {}
        return {"version": env.get("server_version", "?"), "storage": env.get("storage", "?"),
                "storage_version": env.get("storage_version", "")}
    except Exception as e:  # noqa: BLE001 - a missing daemon is a fact worth printing
        return {"error": str(e)}
    finally:
        api.close()


def _binary(name: str) -> str:
    """`<name> version -json`'s version, "" when the binary is not on PATH."""
    try:
        out = subprocess.run([name, "version", "-json"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "CHECKPOINT_DISABLE": "1"}).stdout
        return json.loads(out).get("terraform_version", "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return ""


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def facts() -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "jupyterhub": _package("jupyterhub"),
        "tf_lxd_spawner": _package("tf-lxd-spawner"),
        "daemons": {b: _daemon(b) for b in ("lxd", "incus")},
        "binaries": {b: _binary(b) for b in ("terraform", "tofu")},
    }
