"""`terraform init` once per root module, shared by every workspace that renders it.

Every server's workspace renders the same main.tf (the module's source, the provider block; the
per-user values are in terraform.tfvars.json), so an init per new workspace is the same work each
time: 0.4 s of the hub's CPU and a provider binary unpacked into every workspace. Instead, the
first spawn initialises <state_dir>/_terraform-init/<digest>/ (a workspace of its own, with its
init log), and each workspace gets `.terraform` as a link to that directory's and a copy of its
dependency lock file, which Terraform checks the providers against.

Concurrent runs only read the shared directory: after init nothing writes it (no backend is
configured, and no plugin cache is involved, whose concurrent use Terraform does not support).
A changed root (a module_source or provider setting) hashes to another directory, initialised
once in its turn. '_' is always escaped in user names, so the directory is never a user's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from pathlib import Path

from . import modules
from .terraform import Terraform
from .workspace import Workspace, write_private

SHARED_DIR = "_terraform-init"
LOCK_FILE = ".terraform.lock.hcl"
#: How long a spawn waits for another hub process's init of the same root.
BUSY_WAIT = 300.0


def shared_path(state_dir: str | Path, binary: str, main_tf: str) -> Path:
    """The shared directory for one root module and one binary (Terraform and OpenTofu lay
    providers out under different registry hosts)."""
    digest = hashlib.sha256(f"{binary}\0{main_tf}".encode()).hexdigest()[:24]
    # Absolute: the workspaces' links point here, and a relative state_dir (the hub's working
    # directory) would make them relative to each workspace instead.
    return Path(os.path.abspath(state_dir)) / SHARED_DIR / digest


async def initialise(tf: Terraform, ws: Workspace, main_tf: str) -> bool:
    """Make `ws` ready for plan/apply/destroy of `main_tf`; True when `terraform init` ran
    for it (the first workspace of its root, or shared init off)."""
    if not tf.share_init:
        await tf.run(ws, "init")
        await ws.mark_initialised(main_tf)
        return True
    shared = Workspace(shared_path(tf.state_dir, tf.binary, main_tf))
    ran = False
    # Another hub process sharing this state_dir may be initialising it: wait for it.
    async with shared.lock(wait_for_others=BUSY_WAIT):
        if await shared.prepare(main_tf, {}):
            await tf.run(shared, "init")
            await shared.mark_initialised(main_tf)
            ran = True
    await asyncio.to_thread(link, ws.path, shared.path)
    return ran


def link(workspace: Path, shared: Path) -> None:
    """Point the workspace's .terraform at the shared one and copy its lock file. A workspace
    initialised on its own before (a real .terraform directory) gives that up: it holds only
    what init made, never state or the audit."""
    dot = workspace / ".terraform"
    target = os.path.join(os.path.abspath(shared), ".terraform")
    if not (dot.is_symlink() and os.readlink(dot) == target):
        if dot.is_dir() and not dot.is_symlink():
            shutil.rmtree(dot)
        tmp = workspace / ".terraform.link-tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, dot)
    lock = (shared / LOCK_FILE).read_text()
    mine = workspace / LOCK_FILE
    if not mine.exists() or mine.read_text() != lock:
        write_private(mine, lock)


async def repoint(tf: Terraform, ws: Workspace, source: str, log: logging.Logger, who: dict) -> None:
    """A workspace whose main.tf names a module that is gone (rendered by a release installed
    elsewhere) is pointed at the current module's copy and initialised again, so its server or
    volume can still be stopped or deleted; audited with `who` (user and server)."""
    pinned = await asyncio.to_thread(modules.pin, tf.state_dir, source)
    changed = await asyncio.to_thread(modules.repoint, ws.path, pinned)
    if changed is None:
        return
    old, main_tf = changed
    log.warning("%s: its module %s is gone; using %s", ws.path, old, pinned)
    await ws.audit({"operation": "module-repointed", **who, "from": old, "to": pinned, "outcome": "ok"})
    await initialise(tf, ws, main_tf)
