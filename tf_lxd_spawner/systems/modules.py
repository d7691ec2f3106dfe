"""Pinned copies of the Terraform modules, so a workspace stays usable whatever is reinstalled.

A workspace's main.tf names its module by path. The packaged module lives inside the installed
package: an upgrade into a new venv (or a new Python) moves it, and every server started before
could then no longer be stopped (Terraform cannot read a module that is gone). So a local module
is copied once into `<state_dir>/_modules/<name>-<digest of its files>/` and workspaces name that
copy: nothing outside `state_dir` is needed to stop or delete a server. A changed module is a new
copy (a new digest), older copies stay for the workspaces that name them.

Workspaces rendered before copies existed are pointed at the current module's copy before
Terraform runs in them (`repoint`), when the module they name is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .workspace import hcl_string, write_private

PINNED_DIR = "_modules"  # '_' is always escaped in user names: never a user's directory
_SKIPPED = {".terraform", ".terraform.lock.hcl", "terraform.tfstate", "terraform.tfstate.backup"}
#: The module call's source (not a provider's `source` in required_providers).
_SOURCE = re.compile(r'^module\s+"[^"]*"\s*\{\s*\n\s*source\s*=\s*("(?:[^"\\]|\\.)*")[ \t]*$', re.M)


def _local_dir(source: str) -> bool:
    return os.path.isabs(source) and os.path.isdir(source)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # as copytree copies
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED)
        for name in sorted(filenames):
            if name in _SKIPPED:
                continue
            path = Path(dirpath) / name
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def pin(state_dir: str | Path, source: str) -> str:
    """The path of this module's copy in state_dir (made on first use); a source that is not a
    local directory (a registry or git address) is returned as it is. Blocking."""
    if not _local_dir(source):
        return source
    root = Path(source)
    dest = Path(os.path.abspath(state_dir)) / PINNED_DIR / f"{root.name}-{_digest(root)}"
    if dest.is_dir():
        return str(dest)
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))  # one per caller
    try:
        tmp = scratch / "module"
        shutil.copytree(root, tmp, ignore=lambda _dir, names: [n for n in names if n in _SKIPPED])
        try:
            os.rename(tmp, dest)
        except OSError:  # another spawn made it first: theirs is the same
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(dest)


def named_source(main_tf: str) -> str | None:
    """The module source a rendered main.tf names (None when it names none)."""
    found = _SOURCE.search(main_tf)
    if not found:
        return None
    return json.loads(found.group(1)).replace("$${", "${").replace("%%{", "%{")


def repoint(workspace: str | Path, current_source: str) -> tuple[str, str] | None:
    """When the workspace's main.tf names a local module that no longer exists (the package was
    reinstalled elsewhere), name `current_source` instead; returns (old source, new main.tf), or
    None when nothing changed. Blocking."""
    main = Path(workspace) / "main.tf"
    try:
        text = main.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    old = named_source(text)
    if old is None or not os.path.isabs(old) or os.path.exists(old) or old == current_source:
        return None
    found = _SOURCE.search(text)
    text = text[:found.start(1)] + hcl_string(current_source) + text[found.end(1):]
    write_private(main, text)
    return old, text
