"""A server's Terraform workspace on disk: `<state_dir>/<user>/<server>/`.

It is both what Terraform runs in and the audit record of that server: the rendered root
`main.tf`, the per-server inputs (`terraform.tfvars.json`), the state, Terraform's lock file,
`audit.jsonl` (one record per operation) and `logs/` (the raw `-json` events of every run).
Directories are 0700 and files 0600: state and logs can hold the server's API token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import string
import weakref
from pathlib import Path

import jinja2
from escapism import escape

DEFAULT_SERVER_DIR = "_default"
_SAFE_CHARS = set(string.ascii_lowercase + string.digits + ".")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
SECRET_INPUTS = ("server_environment",)


def secret_env(name: str, value) -> dict[str, str]:
    """The TF_VAR_* entry carrying a secret input, as JSON text (see the root template)."""
    return {f"TF_VAR_{name}_json": json.dumps(value)}


#: What destroy needs: every root variable set, and no secret is needed to delete anything.
DESTROY_ENV = secret_env("server_environment", {})


class WorkspaceBusy(RuntimeError):
    """Another process holds this server's workspace lock."""


def path_component(name: str) -> str:
    """A name made safe as one directory name: lower-case letters, digits and '.' kept, the
    rest escaped (`-xx`), so two different names never share a directory."""
    if not name:
        return "_empty"  # '_' is always escaped in names, so this stands for "" alone
    escaped = escape(name, safe=_SAFE_CHARS, escape_char="-")
    if escaped in (".", ".."):
        escaped = escaped.replace(".", "-2e")
    return escaped


def workspace_path(state_dir: str | Path, username: str, servername: str) -> Path:
    server = path_component(servername) if servername else DEFAULT_SERVER_DIR
    return Path(state_dir) / path_component(username) / server


def hcl_string(value: str) -> str:
    """Quote a string for HCL: JSON escapes plus `$${` and `%%{` so no template runs."""
    quoted = json.dumps(str(value))
    return quoted.replace("${", "$${").replace("%{", "%%{")


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("tf_lxd_spawner", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)
_env.filters["hcl_string"] = hcl_string


def render_root(module_source: str, inputs: list[str], provider: dict) -> str:
    """The root main.tf: provider block, one root variable per module input, the module call.

    Only names and operator settings reach HCL text; every per-server value stays in
    terraform.tfvars.json or TF_VAR_*.
    """
    bad = [name for name in inputs if not _IDENTIFIER.match(name)]
    if bad:
        raise ValueError(f"module input names must be identifiers, not {bad}")
    return _env.get_template("main.tf.j2").render(
        module_source=module_source,
        inputs=sorted(inputs),
        secret_inputs=SECRET_INPUTS,
        provider=provider,
    )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_private(path: Path, text: str) -> None:
    """Write atomically (temp file + rename) with mode 0600: no half-written file is ever seen."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Workspace:
    """One server's workspace. Blocking file work is done in threads by the async methods."""

    _locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {path: Lock}

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- layout -----------------------------------------------------------------------------
    @property
    def main_tf(self) -> Path:
        return self.path / "main.tf"

    @property
    def tfvars(self) -> Path:
        return self.path / "terraform.tfvars.json"

    @property
    def state_file(self) -> Path:
        return self.path / "terraform.tfstate"

    @property
    def audit_file(self) -> Path:
        return self.path / "audit.jsonl"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    def run_log(self, operation: str) -> Path:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.logs_dir / f"{stamp}-{operation}.jsonl"

    # -- writing ----------------------------------------------------------------------------
    def _ensure_dirs(self) -> None:
        for d in (self.path.parent, self.path, self.logs_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def _prepare(self, main_tf: str, tfvars: dict) -> bool:
        """Write main.tf and tfvars; True when `terraform init` is needed (new or changed root)."""
        self._ensure_dirs()
        stamp = self.path / ".terraform" / "tf-lxd-spawner-root.sha256"
        digest = hashlib.sha256(main_tf.encode()).hexdigest()
        _write_private(self.main_tf, main_tf)
        _write_private(self.tfvars, json.dumps(tfvars, indent=2, sort_keys=True) + "\n")
        try:
            return stamp.read_text() != digest
        except OSError:
            return True

    async def prepare(self, main_tf: str, tfvars: dict) -> bool:
        return await asyncio.to_thread(self._prepare, main_tf, tfvars)

    def _mark_initialised(self, main_tf: str) -> None:
        stamp = self.path / ".terraform" / "tf-lxd-spawner-root.sha256"
        stamp.parent.mkdir(mode=0o700, exist_ok=True)
        _write_private(stamp, hashlib.sha256(main_tf.encode()).hexdigest())

    async def mark_initialised(self, main_tf: str) -> None:
        await asyncio.to_thread(self._mark_initialised, main_tf)

    def _audit(self, record: dict) -> dict:
        self._ensure_dirs()
        record = {"time": _now(), **record}
        line = json.dumps(record, sort_keys=False, default=str) + "\n"
        fd = os.open(self.audit_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    async def audit(self, record: dict) -> dict:
        """Append one record to audit.jsonl (append-only, fsync'd)."""
        return await asyncio.to_thread(self._audit, record)

    def _seal(self) -> None:
        for root, dirs, files in os.walk(self.path):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.islink(path):
                    continue  # the module and provider links point outside the workspace
                mode = 0o700 if name in dirs else 0o600
                if os.lstat(path).st_mode & 0o777 & ~mode:
                    os.chmod(path, os.lstat(path).st_mode & mode)

    async def seal(self) -> None:
        """Take group and world access off everything in the workspace (Terraform writes its
        lock file 0644 whatever the umask)."""
        await asyncio.to_thread(self._seal)

    # -- reading ----------------------------------------------------------------------------
    def audit_records(self) -> list[dict]:
        try:
            with open(self.audit_file, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def saved_inputs(self) -> dict:
        """The inputs of the last start (terraform.tfvars.json), {} when there are none."""
        try:
            with open(self.tfvars, encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def state_resources(self) -> list[dict]:
        """Resources in the Terraform state ([] when there is none yet, or when a run that died
        left it empty: then LXD, not the state, tells what exists)."""
        try:
            with open(self.state_file, encoding="utf-8") as f:
                return json.load(f).get("resources", [])
        except (FileNotFoundError, ValueError):
            return []

    def provider_versions(self) -> dict[str, str]:
        """Provider versions pinned in .terraform.lock.hcl, by source address."""
        try:
            text = (self.path / ".terraform.lock.hcl").read_text()
        except OSError:
            return {}
        return dict(re.findall(r'provider "([^"]+)" \{\s*version\s*=\s*"([^"]+)"', text))

    # -- locking ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self):
        """Exclusive use of this workspace: in this hub (asyncio) and across processes (flock).

        flock dies with its process, so a killed hub never leaves a stale lock behind.
        """
        key = str(self.path.resolve())
        alock = self._locks.setdefault(asyncio.get_running_loop(), {}).setdefault(key, asyncio.Lock())
        async with alock:
            await asyncio.to_thread(self._ensure_dirs)
            fd = os.open(self.path / ".spawner.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        raise WorkspaceBusy(f"workspace {self.path} is in use by another process") from None
                    raise
                yield self
            finally:
                os.close(fd)
