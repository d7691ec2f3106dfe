"""A throw-away image of a few hundred kilobytes whose containers just stay Running.

A poll round over 200 servers needs 200 running instances; 200 Jupyter containers would not fit
on a small machine. A static busybox as the whole root file system, with an /sbin/init that
sleeps forever, costs each instance almost nothing and still reports "Running" like a real one.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from unixhttp import Client

CLI = {"lxd": "lxc", "incus": "incus"}
INIT = "#!/bin/busybox sh\nexec /bin/busybox sleep 2147483647\n"
#: The shell and tools a poll's exec may call; they resolve to busybox applets.
APPLETS = ("sh", "test", "cat", "sleep")
PT_INTERP = 3


def static_busybox() -> str:
    """The path of a statically linked busybox, installing busybox-static when there is none."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path) and _is_static(path):
            return path
    print("tinyimage: no static busybox found: installing the Debian package busybox-static "
          "(apt-get install -y busybox-static)", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "busybox-static"], check=True)
    return "/bin/busybox"


def _is_static(path: str) -> bool:
    """An ELF64 file without a PT_INTERP program header needs no dynamic loader in the image."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:  # 64-bit little-endian only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = mode, int(time.time()), 0, 0
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = target
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def build_tarball(busybox: str, dest: Path) -> Path:
    """A unified image tarball: metadata.yaml beside rootfs/ (busybox, its applet links, init)."""
    metadata = (f"architecture: {os.uname().machine}\ncreation_date: {int(time.time())}\n"
                "properties:\n  description: tf-lxd-spawner benchmark tiny image (busybox sleep)\n"
                "  os: busybox\n  release: bench\n").encode()
    with tarfile.open(dest, "w:gz") as tar:
        _add(tar, "metadata.yaml", tarfile.REGTYPE, 0o644, metadata)
        for d in ("rootfs", "rootfs/bin", "rootfs/sbin", "rootfs/dev", "rootfs/proc", "rootfs/sys",
                  "rootfs/etc", "rootfs/tmp", "rootfs/run", "rootfs/root"):
            _add(tar, d, tarfile.DIRTYPE, 0o1777 if d.endswith("tmp") else 0o755)
        _add(tar, "rootfs/bin/busybox", tarfile.REGTYPE, 0o755, Path(busybox).read_bytes())
        for applet in APPLETS:
            _add(tar, f"rootfs/bin/{applet}", tarfile.SYMTYPE, 0o777, target="busybox")
        _add(tar, "rootfs/sbin/init", tarfile.REGTYPE, 0o755, INIT.encode())
    return dest


class TinyFleet:
    """The tiny image on one daemon plus `count` running instances of it; everything made here
    is deleted again by close(), also after a failure half way."""

    def __init__(self, backend: str, count: int, workers: int = 16):
        self.backend, self.count, self.workers = backend, count, workers
        self.tag = uuid.uuid4().hex[:6]
        self.alias = f"bench-tiny-{self.tag}"
        self.names = [f"bench-poll-{self.tag}-{i}" for i in range(count)]
        self.api = Client(backend)
        self.imported = False
        self.create_seconds = 0.0

    def __enter__(self):
        try:
            self._import_image()
            self._launch_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _import_image(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            tarball = build_tarball(static_busybox(), Path(tmp) / "tiny.tar.gz")
            subprocess.run([CLI[self.backend], "image", "import", str(tarball), "--alias", self.alias],
                           check=True, capture_output=True, text=True)
        self.imported = True

    def _launch(self, name: str) -> None:
        self.api.create(name, self.alias, ["default"], {"security.privileged": "false"}, {})
        self.api.set_state(name, "start")

    def _launch_all(self) -> None:
        """Create and start every instance, `workers` at a time; all must end Running."""
        t0 = time.monotonic()
        pool = ThreadPoolExecutor(self.workers)
        try:
            list(pool.map(self._launch, self.names))
        finally:  # interrupted: launch no more, close() deletes what was made
            pool.shutdown(wait=True, cancel_futures=True)
        self.create_seconds = time.monotonic() - t0
        states = {i["name"]: i["status"] for i in self.api.instances() if i["name"] in set(self.names)}
        not_running = [n for n in self.names if states.get(n) != "Running"]
        if not_running:
            raise RuntimeError(f"{len(not_running)} tiny instances are not Running, e.g. {not_running[:3]}")

    def close(self) -> None:
        """Delete our instances (force) and the image; report, never raise, what could not go."""
        leftover = [i["name"] for i in self.api.instances() if i["name"].startswith(f"bench-poll-{self.tag}-")]
        with ThreadPoolExecutor(self.workers) as pool:
            errors = [e for e in pool.map(self._delete_quietly, leftover) if e]
        if self.imported:
            done = subprocess.run([CLI[self.backend], "image", "delete", self.alias], capture_output=True, text=True)
            if done.returncode:
                errors.append(f"image {self.alias}: {done.stderr.strip()}")
            self.imported = False
        self.api.close()
        for e in errors:
            print(f"tinyimage: clean-up problem: {e}", flush=True)

    def _delete_quietly(self, name: str) -> str:
        try:
            self.api.delete(name)
            return ""
        except Exception as e:  # noqa: BLE001 - collected and printed by close()
            return f"{name}: {e}"


def cli_available(backend: str) -> bool:
    return shutil.which(CLI[backend]) is not None
