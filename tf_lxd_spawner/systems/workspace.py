"""A server's Terraform workspace on disk: `<state_dir>/<user>/<server>/`.

It is both what Terraform runs in and the audit record of that server: the rendered root
`main.tf`, the per-server inputs (`terraform.tfvars.json`), the state, Terraform's lock file,
`audit.jsonl` (one record per operation, kept whole) and `logs/` (the raw `-json` events of
the newest RUN_LOGS_KEPT runs: older run logs are pruned, so a stop costs the same whatever the
server's history). Directories are 0700 and files 0600 (executables 0700): state and logs can hold the server's API token.
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
import time
import uuid
import weakref
from pathlib import Path

import jinja2

from .naming import path_component

DEFAULT_SERVER_DIR = "_default"
HUB_ID_FILE = ".hub-id"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
SECRET_INPUTS = ("server_environment",)
#: Run logs kept per workspace (the newest); older ones are deleted at seal and scrub. The
#: audit record of every operation stays in audit.jsonl.
RUN_LOGS_KEPT = 50
_RUN_LOG = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[A-Za-z0-9_.-]+\.jsonl$")
#: The run logs the last scrub read and left without any secret, by name: (size, mtime, ctime,
#: inode). A run log is written once, during its run, so one still matching needs no new read:
#: a later token cannot be in it.
SCRUBBED_LOGS_FILE = ".scrubbed-logs.json"


def secret_env(name: str, value) -> dict[str, str]:
    """The TF_VAR_* entry carrying a secret input, as JSON text (see the root template)."""
    return {f"TF_VAR_{name}_json": json.dumps(value)}


#: What destroy needs: every root variable set, and no secret is needed to delete anything.
DESTROY_ENV = secret_env("server_environment", {})


class WorkspaceBusy(RuntimeError):
    """Another process holds this server's workspace lock."""


class StateUnreadable(RuntimeError):
    """terraform.tfstate exists but is not a readable Terraform state: nothing may be decided
    from it (an unreadable state is not an empty one)."""


def existing_hub_id(state_dir: str | Path) -> str:
    """The hub id of a state_dir, "" when it has none yet (it never made an instance)."""
    try:
        return (Path(state_dir) / HUB_ID_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def hub_id(state_dir: str | Path) -> str:
    """This hub's id, made once and kept in <state_dir>/.hub-id: written into every instance's
    labels, it tells this hub's instances from those of another hub that happens to use the
    same state_dir path on another host. Blocking: call it in a thread.

    The id is written to a file of its own first and then linked into place, so the first
    spawns of a new hub, racing to make it, all read the same whole id (an id read while
    another was still writing it came back empty, and the instance made then lacked the label
    its next plan added: a change of config, which replaces a kept instance)."""
    path = Path(state_dir) / HUB_ID_FILE
    existing = existing_hub_id(state_dir)
    if existing:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    tmp = path.with_name(f"{HUB_ID_FILE}.{new}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails when another made it first; never leaves half an id
        except FileExistsError:
            return existing_hub_id(state_dir)
        return new
    finally:
        tmp.unlink(missing_ok=True)


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
    return render_template("main.tf.j2", module_source=module_source, inputs=sorted(inputs),
                           secret_inputs=SECRET_INPUTS, provider=provider)


def render_template(name: str, **values) -> str:
    """Render one of the package's root templates (templates/*.j2): HCL text made only of
    names and operator settings, strings quoted by the hcl_string filter."""
    return _env.get_template(name).render(**values)


#: Environment keys whose values are server credentials.
_TOKEN_KEYS = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_OAUTH_CLIENT_SECRET")


def _tokens_in_state(path: Path) -> set[str]:
    """Token values found in a state file: the server environment is stored there as the JSON
    text of the env file the module writes."""
    found: set[str] = set()
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return found

    def visit(value):
        if isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and any(k in value for k in _TOKEN_KEYS):
            try:
                env = json.loads(value)
            except ValueError:
                return
            if isinstance(env, dict):
                found.update(str(env[k]) for k in _TOKEN_KEYS if env.get(k))

    visit(state)
    return found


def _drop_strings_holding(value, secrets: set[str]):
    """A copy of a JSON value with every string that contains a secret replaced by ""."""
    if isinstance(value, dict):
        return {k: _drop_strings_holding(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_strings_holding(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return ""
    return value


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_private(path: Path, text: str | bytes) -> None:
    """Write atomically (temp file + rename) with mode 0600: no half-written file is ever seen."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode("utf-8") if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Workspace:
    """One server's workspace. Blocking file work is done in threads by the async methods."""

    _locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> {path: Lock}

    def __init__(self, path: str | Path, keep_logs: int = RUN_LOGS_KEPT):
        if keep_logs < 1:
            raise ValueError(f"keep_logs must be at least 1, not {keep_logs}")
        self.path = Path(path)
        self.keep_logs = keep_logs

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

    def run_logs(self) -> list[Path]:
        """The run logs, oldest first (their names start with the UTC time of the run)."""
        try:
            names = [e.name for e in os.scandir(self.logs_dir) if _RUN_LOG.match(e.name) and e.is_file()]
        except FileNotFoundError:
            return []
        return [self.logs_dir / n for n in sorted(names)]

    def _prune_logs(self) -> list[Path]:
        """Delete all but the newest keep_logs run logs; returns those deleted."""
        old = self.run_logs()[:-self.keep_logs]
        for path in old:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return old

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
        write_private(self.main_tf, main_tf)
        write_private(self.tfvars, json.dumps(tfvars, indent=2, sort_keys=True) + "\n")
        if self._drop_dangling_provider_links():
            stamp.unlink(missing_ok=True)  # through a shared .terraform: its next prepare inits too
            return True
        try:
            return stamp.read_text() != digest
        except OSError:
            return True

    def _drop_dangling_provider_links(self) -> bool:
        """An unpacked filesystem_mirror installs providers as links into the mirror; when the
        mirror moves or is repacked (as the registry serves it), the links dangle, apply and
        destroy fail, and init cannot lay a provider over them. Remove them: True when init must
        run again."""
        found = False
        for root, dirs, files in os.walk(self.path / ".terraform" / "providers"):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.islink(path) and not os.path.exists(path):
                    os.unlink(path)
                    found = True
        return found

    async def prepare(self, main_tf: str, tfvars: dict) -> bool:
        return await asyncio.to_thread(self._prepare, main_tf, tfvars)

    def _mark_initialised(self, main_tf: str) -> None:
        stamp = self.path / ".terraform" / "tf-lxd-spawner-root.sha256"
        stamp.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(stamp, hashlib.sha256(main_tf.encode()).hexdigest())

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
        """Keep the owner's permission bits, drop everything else (group, world, setuid/setgid/
        sticky): a 0644 file ends 0600, a 0755 directory or executable 0700. The owner's bits are
        never taken: the provider executable that `terraform init` unpacks (from a registry or a
        packed mirror) into .terraform/providers/ must stay executable. Symlinks are left alone
        (the module and an unpacked mirror's provider links point outside the workspace).
        Run logs beyond keep_logs are pruned first."""
        self._prune_logs()
        for root, dirs, files in os.walk(self.path):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.islink(path):
                    continue
                mode = os.lstat(path).st_mode & 0o7777
                if mode & ~0o700:
                    os.chmod(path, mode & 0o700)

    async def seal(self) -> None:
        """Take group and world access off everything in the workspace, keeping the owner's
        bits (Terraform writes its lock file 0644 whatever the umask; see _seal)."""
        await asyncio.to_thread(self._seal)

    @staticmethod
    def _fingerprint(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def _scrubbed_logs(self) -> dict[str, list[int]]:
        try:
            found = json.loads((self.path / SCRUBBED_LOGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _scrub_secrets(self, known: set[str]) -> list[str]:
        """Take every server token out of the workspace once its server is stopped: the state
        (a kept instance's env file content), the backup Terraform leaves beside it, and any
        other file that holds one. Returns the files changed. Run logs a previous scrub read,
        unchanged since, are not read again (see SCRUBBED_LOGS_FILE); old ones are pruned."""
        self._prune_logs()
        secrets = {s for s in known if s} | _tokens_in_state(self.state_file)
        backup = self.path / "terraform.tfstate.backup"
        secrets |= _tokens_in_state(backup)
        changed = []
        if backup.exists():
            backup.unlink()  # the state before the last run: nothing in it is needed any more
            changed.append(str(backup))
        if not secrets:
            return changed
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if state is not None:
            cleaned = _drop_strings_holding(state, secrets)
            if cleaned != state:
                cleaned["serial"] = int(cleaned.get("serial", 0)) + 1
                write_private(self.state_file, json.dumps(cleaned, indent=2) + "\n")
                changed.append(str(self.state_file))
        logs_dir = str(self.logs_dir)
        clean_before = self._scrubbed_logs()
        clean_now: dict[str, list[int]] = {}
        for root, dirs, files in os.walk(self.path):
            dirs[:] = [d for d in dirs if not (root == str(self.path) and d == ".terraform")]
            for name in files:
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                st = path.stat()
                run_log = root == logs_dir and _RUN_LOG.match(name)
                if run_log and clean_before.get(name) == self._fingerprint(st):
                    clean_now[name] = clean_before[name]  # read clean before, unchanged since
                    continue
                if st.st_size > 64 * 1024 * 1024:
                    continue
                data = path.read_bytes()
                redacted = data
                for secret in secrets:
                    redacted = redacted.replace(secret.encode(), b"[redacted]")
                if redacted != data:
                    write_private(path, redacted)
                    changed.append(str(path))
                if run_log:
                    clean_now[name] = self._fingerprint(path.stat())
        if clean_now != clean_before:
            write_private(self.path / SCRUBBED_LOGS_FILE, json.dumps(clean_now, sort_keys=True) + "\n")
        return changed

    async def scrub_secrets(self, known: set[str] = frozenset()) -> list[str]:
        return await asyncio.to_thread(self._scrub_secrets, set(known))

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

    def _state(self) -> dict:
        """The parsed state ({} when there is none yet, or when a run that died before writing
        any left it empty). A state that exists but cannot be read raises StateUnreadable."""
        try:
            with open(self.state_file, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise StateUnreadable(f"cannot read {self.state_file}: {e}") from None
        if not text.strip():
            return {}
        try:
            state = json.loads(text)
            if not isinstance(state, dict) or not isinstance(state.get("resources", []), list):
                raise ValueError("'resources' is not a list")
        except ValueError as e:
            raise StateUnreadable(
                f"{self.state_file} is not a valid Terraform state ({e}); nothing was changed. Restore it "
                f"from terraform.tfstate.backup or a backup, or move it away if the instance is gone") from None
        return state

    def state_resources(self) -> list[dict]:
        """Resources in the Terraform state ([] when there are none: then LXD, not the state,
        tells what exists). An unreadable state raises StateUnreadable: it may hold a kept
        instance."""
        return self._state().get("resources", [])

    def state_outputs(self) -> dict:
        """The root module's outputs as {name: value}, read from the state the last apply wrote
        (what `terraform output` would print, without starting Terraform and its provider)."""
        return {name: item.get("value") for name, item in (self._state().get("outputs") or {}).items()}

    def provider_versions(self) -> dict[str, str]:
        """Provider versions pinned in .terraform.lock.hcl, by source address."""
        try:
            text = (self.path / ".terraform.lock.hcl").read_text()
        except OSError:
            return {}
        return dict(re.findall(r'provider "([^"]+)" \{\s*version\s*=\s*"([^"]+)"', text))

    # -- locking ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lock(self, create: bool = True, wait: bool = True, wait_for_others: float = 0.0):
        """Exclusive use of this workspace: in this hub (asyncio) and across processes (flock).

        flock dies with its process, so a killed hub never leaves a stale lock behind. With
        create=False a missing workspace is not made (an operator command checking it): then
        no spawn can be using it, and there is nothing to lock. With wait=False a workspace
        this hub is using right now raises WorkspaceBusy instead of waiting its turn. Another
        process holding it raises WorkspaceBusy at once, or after `wait_for_others` seconds
        of trying (for work another hub process finishes soon, such as a shared init).
        """
        key = str(self.path.resolve())
        alock = self._locks.setdefault(asyncio.get_running_loop(), {}).setdefault(key, asyncio.Lock())
        if not wait and alock.locked():
            raise WorkspaceBusy(f"workspace {self.path} is in use by this hub")
        async with alock:
            if not create and not await asyncio.to_thread(self.path.is_dir):
                yield self
                return
            await asyncio.to_thread(self._ensure_dirs)
            fd = os.open(self.path / ".spawner.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + wait_for_others
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        if time.monotonic() >= deadline:
                            raise WorkspaceBusy(f"workspace {self.path} is in use by another process") from None
                    await asyncio.sleep(0.2)
                yield self
            finally:
                os.close(fd)
