"""`tf-lxd-spawner doctor`: is this host ready to spawn? One line per check, with the fix.

Each check answers one question an operator would otherwise learn from a failed spawn, in the
order a spawn needs them: the daemon, the image, the binary, the module's init, the id mapping,
the state_dir, the proxy ports, and whether a container on a member reaches the hub API. A
check that needs an earlier one that failed is skipped (saying which), so one cause gives one
FAIL. Checks are independent otherwise and run side by side; lines come out in order.

The settings are an LxdSpawner's own (built from jupyterhub_config.py by the CLI), so defaults
and validation are the spawner's, not a copy of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import ssl
import stat
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from ..errors import SpawnError
from ..homes import shared, snapshots
from ..lifecycle import preflight
from ..lifecycle.module_inputs import host_and_port, hub_address
from ..lifecycle.settings_values import ConfigError, check_subid_allowed, image_choices
from ..systems import backends, hub_relay, lxd, provider
from ..systems.ports import bindable, is_this_host, resolve
from ..systems.terraform import TerraformError, TerraformRunner
from ..systems.workspace import SECRET_INPUTS, Workspace, render_root

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
#: Oldest releases the spawner works with: the module's optional object attributes need
#: Terraform 1.3; OpenTofu's first release is 1.6 (before 1.9, `init` runs without -json). The
#: module's own required_version is checked as well.
MIN_VERSION = {"Terraform": (1, 3, 0), "OpenTofu": (1, 6, 0)}
#: Throwaway instances of the hub check are named so; nothing else uses the prefix.
PROBE_PREFIX = "tf-lxd-doctor-"
INIT_TIMEOUT = 300.0
PROBE_TIMEOUT = 5.0


@dataclass
class Check:
    check: str
    status: str  # "ok", "fail" or "skip" (skip: not checkable, or needs a check that failed)
    detail: str
    fix: str = ""

    def line(self) -> str:
        label = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[self.status]
        return f"{label} {self.check}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


def ok(name, detail):
    return Check(name, "ok", detail)


def fail(name, detail, fix):
    return Check(name, "fail", detail, fix)


class Context:
    """What the checks share: the spawner's settings, and what earlier checks found."""

    def __init__(self, spawner):
        self.spawner = spawner
        self.backend = backends.BACKENDS[spawner.backend]
        self.endpoint_url = backends.endpoint_url(self.backend, spawner.lxd_endpoint)
        self.remote = backends.is_remote(spawner.lxd_endpoint)
        self.endpoint = lxd.Endpoint(url=self.endpoint_url, cert=spawner.lxd_cert or None,
                                     key=spawner.lxd_key or None, verify=spawner.lxd_verify,
                                     timeout=spawner.lxd_timeout, daemon=self.backend.display)
        self.cli = "incus" if self.backend.name == "incus" else "lxc"
        self.members: list[lxd.Member] = []
        self.binary = ""

    @property
    def usable_members(self) -> list[lxd.Member]:
        """Members that can get new servers: online and not excluded by the operator."""
        return [m for m in self.members if m.status == "Online" and m.name not in self.spawner.excluded_members]

    @property
    def images(self) -> list[str]:
        found = [self.spawner.image, *image_choices(self.spawner.allowed_images).values()]
        return list(dict.fromkeys(found))


# ---- the daemon ---------------------------------------------------------------------------------
def _trust(ctx: Context) -> str:
    if not ctx.remote:
        return ""
    verify = ctx.spawner.lxd_verify
    if isinstance(verify, str):
        return f", certificate pinned ({verify})"
    return ", certificate verified with the system's CAs" if verify else ", certificate NOT verified (lxd_verify = False)"


async def check_daemon(ctx: Context) -> Check:
    name, display = "daemon", ctx.backend.display
    try:
        info = await lxd.server_info(ctx.endpoint)
    except lxd.LxdUnavailable as e:
        if ctx.remote:
            fix = ("check lxd_endpoint, that the daemon listens there (core.https_address), lxd_verify (its "
                   "certificate) and lxd_cert/lxd_key")
        else:
            fix = (f"start {display} (its socket is {ctx.endpoint_url}), or set c.LxdSpawner.lxd_endpoint to "
                   f"the socket it uses (backend is {ctx.backend.name!r})")
        return fail(name, str(e), fix)
    wrong = backends.mismatch(ctx.backend, info, ctx.endpoint.where)
    if wrong:
        message, _, hint = wrong.partition(": ")
        return fail(name, message, hint)
    if info.get("auth") != "trusted":
        add = "config trust add-certificate" if ctx.backend.name == "incus" else "config trust add"
        how = (f"{ctx.cli} {add} {ctx.spawner.lxd_cert or '<client certificate>'} on the server"
               if ctx.remote else "run as a user of the daemon's group (or root)")
        return fail(name, f"{display} at {ctx.endpoint.where} does not trust this client", how)
    env = info.get("environment") or {}
    ctx.members = await lxd.members(ctx.endpoint)
    where = f"{display} {env.get('server_version', '')} at {ctx.endpoint.where}{_trust(ctx)}"
    if not ctx.members:
        return ok(name, f"{where} (standalone)")
    usable = ctx.usable_members
    others = [f"{m.name} {m.status}" + (" (excluded)" if m.name in ctx.spawner.excluded_members else "")
              for m in ctx.members if m not in usable]
    if not usable:
        return fail(name, f"{where}: no cluster member can take servers ({', '.join(others)})",
                    "bring a member online, or shorten c.LxdSpawner.excluded_members")
    return ok(name, f"{where} (cluster: {', '.join(m.name for m in usable)} online"
              + (f"; not used: {', '.join(others)}" if others else "") + ")")


# ---- the image(s) -------------------------------------------------------------------------------
async def check_image(ctx: Context) -> Check:
    """Images of a cluster are shared by all its members (a member fetches the files from a
    peer when it first needs them; the API says nothing per member), so an image that exists
    serves every online member: the line names the members it was checked for."""
    name = "image"
    local = [i for i in ctx.images if ":" not in i]
    remote = [i for i in ctx.images if ":" in i]
    try:
        missing = [i for i in local if await lxd.image_properties(ctx.endpoint, i) is None]
    except lxd.LxdUnavailable as e:
        return fail(name, str(e), "see the daemon check")
    where = (f"the cluster (members {', '.join(m.name for m in ctx.usable_members)})" if ctx.members
             else f"the {ctx.backend.display} server")
    if missing:
        return fail(name, f"{', '.join(map(repr, missing))} missing on {where}",
                    f"import it ({ctx.cli} image import <tarball> --alias <name>; the repository's image/build.sh "
                    "builds one), or correct c.LxdSpawner.image / allowed_images")
    detail = f"{', '.join(map(repr, local))} on {where}"
    if remote:
        detail += f"; {', '.join(map(repr, remote))} not checked (a remote's image, fetched by the provider)"
    return ok(name, detail)


# ---- terraform / tofu ---------------------------------------------------------------------------
def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(g or 0) for g in m.groups()) if m else None


def satisfies(version: tuple[int, ...], constraints: str) -> bool:
    """Terraform's version constraint syntax (">= 1.3.0, < 2.0.0", "~> 1.5"): all must hold."""
    for part in filter(None, (p.strip() for p in constraints.split(","))):
        m = re.fullmatch(r"(>=|<=|!=|~>|>|<|=)?\s*(\S+)", part)
        want = parse_version(m.group(2)) if m else None
        if want is None:
            continue
        op = m.group(1) or "="
        if op == "~>":  # the last given part may grow: ~> 1.5 is >= 1.5, < 2.0; ~> 1.5.2 is < 1.6
            parts = len(m.group(2).lstrip("v").split("."))
            upper = list(want[:max(parts - 1, 1)])
            upper[-1] += 1
            if not (version >= want and version[:len(upper)] < tuple(upper)):
                return False
            continue
        holds = {">=": version >= want, "<=": version <= want, ">": version > want, "<": version < want,
                 "=": version == want, "!=": version != want}[op]
        if not holds:
            return False
    return True


def module_required_version(module_source: str) -> str:
    """required_version of a local module ("" when none, or the module is not a local path)."""
    found = []
    for tf in sorted(Path(module_source).glob("*.tf")) if os.path.isdir(module_source) else []:
        found += re.findall(r'required_version\s*=\s*"([^"]*)"', tf.read_text(errors="replace"))
    return ", ".join(found)


async def _output(argv: list[str], timeout: float = 60.0, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "CHECKPOINT_DISABLE": "1", **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -9, "", f"no answer within {timeout:g} s"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def check_terraform(ctx: Context) -> Check:
    name = "terraform"
    configured = ctx.spawner.terraform_path
    binary = ctx.spawner.terraform_binary  # terraform_path, or what the spawner picks without it
    found = shutil.which(binary)
    install = ("install Terraform (>= 1.3) or OpenTofu (>= 1.6), or set c.LxdSpawner.terraform_path to the "
               "binary's path")
    if found is None:
        said = f"terraform_path {configured!r}" if configured else "neither terraform nor tofu"
        return fail(name, f"{said} was not found (PATH={os.environ.get('PATH', '')})", install)
    code, out, err = await _output([found, "version", "-json"])
    try:
        version_text = json.loads(out)["terraform_version"]
    except (ValueError, KeyError, TypeError):
        said = (err.strip() or out.strip()).splitlines()
        return fail(name, f"{found} version -json did not run (exit {code}"
                    + (f": {said[0]}" if said else "") + ")", install)
    kind = "OpenTofu" if "tofu" in os.path.basename(os.path.realpath(found)) or "tofu" in binary else "Terraform"
    version = parse_version(version_text) or (0,)
    floor = MIN_VERSION[kind]
    required = module_required_version(ctx.spawner.module_source)
    detail = f"{kind} {version_text} ({found})"
    if version < floor:
        return fail(name, f"{detail} is too old: the spawner needs {kind} >= {'.'.join(map(str, floor))} "
                    "(the module's optional object attributes)", install)
    if required and not satisfies(version, required):
        return fail(name, f"{detail} does not satisfy the module's required_version {required!r}", install)
    ctx.binary = found
    return ok(name, detail + (f", module requires {required}" if required else ""))


async def check_module(ctx: Context) -> Check:
    """`init` of a root like the spawner's, in a temporary directory removed afterwards: the
    module loads and its provider installs with the configured CLI config."""
    name = "module"
    sp = ctx.spawner
    cli_config = sp.terraform_cli_config
    if cli_config and not os.path.isfile(cli_config):
        return fail(name, f"terraform_cli_config {cli_config!r} does not exist",
                    "write it, or set c.LxdSpawner.terraform_cli_config to its path")
    scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix=PROBE_PREFIX)
    try:
        try:
            settings = await asyncio.to_thread(provider.settings, sp.provider_refresh_interval, ctx.endpoint_url,
                                               sp.lxd_cert, sp.lxd_key, sp.lxd_verify, scratch)
        except OSError as e:
            return fail(name, f"cannot read the daemon's certificates: {e}", "check lxd_cert, lxd_key, lxd_verify")
        main_tf = render_root(sp.module_source, ["name", "image", *SECRET_INPUTS], settings)
        await asyncio.to_thread(Path(scratch, "main.tf").write_text, main_tf)
        env = {"TF_CLI_CONFIG_FILE": cli_config} if cli_config else {}
        runner = TerraformRunner(ctx.binary, env=env, inherit=sp.host_environment_allowlist)
        try:
            await asyncio.wait_for(runner.run("init", cwd=scratch), INIT_TIMEOUT)
        except asyncio.TimeoutError:
            return fail(name, f"init did not finish within {INIT_TIMEOUT:g} s",
                        "check terraform_cli_config's provider_installation (a mirror that does not answer?)")
        except TerraformError as e:
            first = (e.errors or [str(e)])[0]
            if "provider" in first.lower():
                return fail(name, f"the provider is not installable: {first}",
                            f"check terraform_cli_config's provider_installation ({cli_config or 'not set'})")
            return fail(name, f"the module does not initialise: {first}", "check c.LxdSpawner.module_source")
        providers = await asyncio.to_thread(Workspace(scratch).provider_versions)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
    installed = ", ".join(f"{k.split('/', 1)[-1]} {v}" for k, v in providers.items()) or "no provider"
    return ok(name, f"{sp.module_source} initialises ({installed}) with "
              + (f"CLI config {cli_config}" if cli_config else "the environment's CLI config"))


# ---- ids, state_dir, ports ----------------------------------------------------------------------
def allowed_ranges(path: str, owner: str = "root") -> list[str]:
    """The id ranges `owner` may map, as a subid file lists them ("2345", "100000-10100000")."""
    ranges = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ranges
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == owner and parts[1].isdigit() and parts[2].isdigit():
            start, count = int(parts[1]), int(parts[2])
            ranges.append(str(start) if count == 1 else f"{start}-{start + count - 1}")
    return ranges


async def check_subids(ctx: Context) -> Check:
    name = "subids"
    sp = ctx.spawner
    if not sp.filesystems_to_mount:
        return ok(name, "not needed (no filesystems_to_mount)")
    if sp.privileged_container or sp.mount_idmap != "raw.idmap":
        why = "privileged containers" if sp.privileged_container else f"mount_idmap = {sp.mount_idmap!r}"
        return ok(name, f"not needed ({why})")
    if ctx.remote:
        return Check(name, "skip", f"the daemon is on another host: its {SUBUID} and {SUBGID} must allow the users' "
                     "ids (lines root:<id>:1)")
    may = f"root may map uids {', '.join(allowed_ranges(SUBUID)) or 'none'} and gids " \
          f"{', '.join(allowed_ranges(SUBGID)) or 'none'}"
    if sp.get_uid_gid is None:
        whose = "users without an account on this host (users with one get its ids)"
    else:
        whose = "what get_uid_gid gives a sample user"
    try:
        uid, gid = await preflight.uid_gid(sp)  # the spawner's own choice, for the stand-in user
    except SpawnError as e:  # root: refused at every spawn
        return fail(name, str(e), "make c.LxdSpawner.get_uid_gid return the user's own ids")
    except Exception as e:
        return Check(name, "skip", f"get_uid_gid could not be asked about a sample user "
                     f"({type(e).__name__}: {e}); {may}: every user's ids must be among them")
    try:
        check_subid_allowed(uid, gid, SUBUID, SUBGID)
    except ConfigError as e:
        message = str(e)
        fix = "add " + message.split(": add ", 1)[1] if ": add " in message else message
        return fail(name, f"uid {uid} and gid {gid}, {whose}, cannot be mapped: {may}", fix)
    return ok(name, f"uid {uid} and gid {gid} ({whose}) are allowed; {may}")


def _nearest_existing(path: str) -> str:
    """The path's nearest ancestor that exists (a file there makes the path impossible)."""
    parent = os.path.dirname(path)
    while parent != "/" and not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    return parent


async def check_state_dir(ctx: Context) -> Check:
    name = "state_dir"
    path = os.path.abspath(ctx.spawner.state_dir)
    me = os.geteuid()
    try:
        import pwd
        user = pwd.getpwuid(me).pw_name
    except KeyError:
        user = str(me)
    make = f"install -d -m 0700 -o {user} {path}"
    try:
        st = await asyncio.to_thread(os.stat, path)
    except FileNotFoundError:  # the spawner makes it (and its parents) at the first spawn
        parent = _nearest_existing(path)
        if not os.path.isdir(parent):
            return fail(name, f"{path} does not exist and cannot be created: {parent} is not a directory", make)
        if await asyncio.to_thread(os.access, parent, os.W_OK | os.X_OK):
            return ok(name, f"{path} will be created by the first spawn (mode 0700, owned by {user}, "
                            f"in {parent})")
        return fail(name, f"{path} does not exist, and {user} cannot create it in {parent}", make)
    except NotADirectoryError:
        return fail(name, f"{path} cannot be created: {_nearest_existing(path)} is not a directory", make)
    except OSError as e:
        return fail(name, f"{path}: {e}", make)
    if not stat.S_ISDIR(st.st_mode):
        return fail(name, f"{path} is not a directory", f"move it away, then {make}")
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != me:
        return fail(name, f"{path} belongs to uid {st.st_uid}, not to {user} (uid {me}), who runs the hub",
                    f"chown -R {user} {path}")
    if mode & 0o022:
        return fail(name, f"{path} has mode {mode:04o}: others may write into the audit record",
                    f"chmod 0700 {path}")
    note = "" if mode & 0o007 == 0 else " (others may list its user names: 0700 or 0750 is safer)"
    return ok(name, f"{path}, mode {mode:04o}, owned by {user}{note}")


def _free_ports(address: str, low: int, high: int) -> int:
    return sum(bindable(address, p) for p in range(low, high + 1))


async def check_ports(ctx: Context) -> Check:
    name = "ports"
    sp = ctx.spawner
    if sp.connect_via != "proxy":
        return ok(name, f"not needed (connect_via = {sp.connect_via!r})")
    low, high = sp.proxy_port_range
    if not 1 <= low <= high <= 65535:
        return fail(name, f"proxy_port_range {low}-{high} is not a range of ports",
                    "set c.LxdSpawner.proxy_port_range = (low, high), 1 <= low <= high <= 65535")
    if ctx.members:
        places = [(m.name, await asyncio.to_thread(resolve, m.address)) for m in ctx.usable_members]
        if sp.placement == "lxd":
            places = [(m, "0.0.0.0") for m, _ in places]
    elif ctx.remote:
        host = urlparse(sp.lxd_endpoint).hostname or ""
        places = [(f"the {ctx.backend.display} server", await asyncio.to_thread(resolve, host))]
    else:
        places = [("this host", "127.0.0.1")]
    said, full = [], []
    for where, address in places:
        if address != "0.0.0.0" and not await asyncio.to_thread(is_this_host, address):
            said.append(f"{where} ({address}): another host, not tested from here")
            continue
        free = await asyncio.to_thread(_free_ports, address, low, high)
        said.append(f"{free} of {high - low + 1} free on {address}")
        if free == 0:
            full.append(address)
    if full:
        return fail(name, f"proxy_port_range {low}-{high}: " + "; ".join(said),
                    "widen c.LxdSpawner.proxy_port_range, or stop what listens on those ports")
    return ok(name, f"proxy_port_range {low}-{high}: " + "; ".join(said))


# ---- the hub, as a member sees it ---------------------------------------------------------------
def hub_urls(spawner) -> tuple[str, int, str, str]:
    """(host, port) of the hub API as members connect to it, its URL from this host, and its URL
    inside a container (127.0.0.1:<port>, brought in by a bind=container proxy device): the
    spawner's own (module_inputs.hub_address), with the URL this host uses."""
    host, port, inside = hub_address(spawner)
    api = urlparse(spawner.hub_connect_url or spawner.hub.api_url)
    outside = urlunparse(api._replace(path=urlparse(spawner.hub.api_url).path))
    return host, port, outside, inside


#: Run inside the throwaway container by the first python it has: GET the hub API, say what answered.
PROBE = r"""
import json, ssl, sys, time, urllib.error, urllib.request
url, deadline = sys.argv[1], time.monotonic() + 5
while True:
    try:
        with urllib.request.urlopen(url, timeout=5, context=ssl._create_unverified_context()) as r:
            code, body = r.status, r.read(65536)
        break
    except urllib.error.HTTPError as e:
        code, body = e.code, b""
        break
    except Exception as e:
        refused = isinstance(getattr(e, "reason", e), ConnectionRefusedError)
        if refused and time.monotonic() < deadline:  # the proxy device may not listen yet
            time.sleep(0.2)
            continue
        print(json.dumps({"error": f"{type(getattr(e, 'reason', e)).__name__}: {getattr(e, 'reason', e)}"}))
        sys.exit(0)
try:
    version = json.loads(body).get("version", "")
except Exception:
    version = ""
print(json.dumps({"status": code, "version": version}))
"""
PROBE_SH = ('for py in /opt/jupyter/bin/python3 /opt/jupyter/bin/python /usr/bin/python3 /usr/local/bin/python3; do '
            '[ -x "$py" ] && exec "$py" -c "$0" "$1"; done; echo "no python3 in the image" >&2; exit 127')


def _ask_from_here(url: str) -> dict:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=PROBE_TIMEOUT,
                                    context=ssl._create_unverified_context()) as r:
            code, body = r.status, r.read(65536)
    except urllib.error.HTTPError as e:
        return {"status": e.code, "version": ""}
    except (OSError, ValueError) as e:
        return {"error": f"{type(getattr(e, 'reason', e)).__name__}: {getattr(e, 'reason', e)}"}
    try:
        return {"status": code, "version": json.loads(body).get("version", "")}
    except (ValueError, AttributeError):
        return {"status": code, "version": ""}


def _answer_problem(answer: dict) -> str:
    """What is wrong with an answer ("" when it is JupyterHub's API)."""
    if "error" in answer:
        return answer["error"]
    if answer.get("status") != 200 or not answer.get("version"):
        return f"HTTP {answer.get('status')}, not JupyterHub's API (no version)"
    return ""


async def _probe_from(ctx: Context, target: str | None, device: dict, inside: str) -> dict:
    """Launch a throwaway instance (on `target`) with the hub API's device, GET the hub API
    from inside, remove it."""
    sp = ctx.spawner
    name = PROBE_PREFIX + secrets.token_hex(4)
    image = sp.image
    source = ({"type": "image", "fingerprint": image} if re.fullmatch(r"[0-9a-f]{12,64}", image)
              else {"type": "image", "alias": image})
    spec = {"name": name, "source": source, "profiles": list(sp.lxd_profiles),
            "config": {"user.tf-lxd-spawner.doctor": "true"},
            "devices": {"jupyterhub-api": device}}
    launch = asyncio.ensure_future(lxd.launch(ctx.endpoint, spec, target))
    try:
        await asyncio.shield(launch)
        code, out, err = await lxd.execute(ctx.endpoint, name, ["sh", "-c", PROBE_SH, PROBE, inside])
        if code != 0:
            return {"error": (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]}
        return json.loads(out.strip().splitlines()[-1])
    finally:
        # Made in a thread, it may still be on its way even when this task was cancelled (Ctrl-C):
        # wait for it, then remove it whatever happened.
        if not launch.done():
            await asyncio.wait([launch])
        await lxd.delete_instance(ctx.endpoint, name)


async def check_hub(ctx: Context) -> Check:
    """The hub API from inside a container, through the proxy device the module gives every
    server: first from this host (nothing answering there is its own failure: doctor is
    often run before the hub starts), then from a throwaway instance on each member that can
    get servers (on a standalone daemon, one instance)."""
    name = "hub"
    sp = ctx.spawner
    host, port, outside, inside = hub_urls(sp)
    if ":" in sp.image:
        return Check(name, "skip", f"image {sp.image!r} is a remote's: no throwaway instance is made from it")
    here = await asyncio.to_thread(_ask_from_here, outside)
    problem = _answer_problem(here)
    if problem:
        if "error" in here:  # doctor is often run before the hub's first start: not a failure
            return Check(name, "skip", f"hub not running (nothing answers at {outside}: {problem}): start it and "
                                       "run doctor again to check containers reach it")
        return fail(name, f"{outside} answered {problem}", "check c.JupyterHub.base_url and c.Spawner.hub_connect_url")
    try:
        image = await lxd.image_properties(ctx.endpoint, sp.image) or {}
        by_socket = await preflight.hub_api_by_socket(sp, ctx.members, image)
    except SpawnError as e:
        return fail(name, e.message, 'set c.LxdSpawner.hub_api_via = "auto"')
    targets = [m.name for m in ctx.usable_members] or [None]
    relay_dir = None
    if by_socket:  # a relay of doctor's own, as the hub's: the hub's socket may not exist yet
        relay_dir = await asyncio.to_thread(tempfile.mkdtemp, prefix="tf-lxd-doctor-")
        await hub_relay.ensure(relay_dir, *host_and_port(outside))
        _, _, inside = hub_address(sp, by_socket=True)
        device = {"type": "disk", "source": relay_dir, "path": hub_relay.CONTAINER_DIR, "readonly": "true"}
        via = f"through the hub's unix socket relay ({hub_relay.CONTAINER_DIR} in the container)"
    else:
        address = await asyncio.to_thread(resolve, host)
        device = {"type": "proxy", "bind": "container", "listen": f"tcp:127.0.0.1:{port}",
                  "connect": f"tcp:{address}:{port}"}
        via = f"through a proxy device to {address}:{port}"
    try:
        answers = await asyncio.gather(*(_probe_from(ctx, t, device, inside) for t in targets),
                                       return_exceptions=True)
    finally:
        if relay_dir is not None:
            hub_relay.stop(relay_dir)
            await asyncio.to_thread(shutil.rmtree, relay_dir, True)
    bad = []
    for target, answer in zip(targets, answers):
        where = f"member {target}" if target else f"the {ctx.backend.display} server"
        if isinstance(answer, BaseException):
            bad.append(f"{where}: the throwaway instance failed: {answer}")
        elif _answer_problem(answer):
            bad.append(f"{where}: {_answer_problem(answer)}")
    if bad:
        hint = ("use an image with the relay (the repository's image/build.sh), or set "
                'c.LxdSpawner.hub_api_via = "proxy"' if by_socket else
                "make the hub listen where members can reach it (c.JupyterHub.hub_ip) and set "
                "c.Spawner.hub_connect_url (or c.JupyterHub.hub_connect_ip) to that address")
        return fail(name, f"a container does not reach the hub API {via} ({'; '.join(bad)})", hint)
    where = (f"members {', '.join(targets)}" if targets != [None] else f"the {ctx.backend.display} server")
    return ok(name, f"JupyterHub {here['version']} at {outside} answers containers on {where} "
              f"({via})")


#: Pool drivers that enforce a custom volume's size (LXD and Incus; dir does not).
QUOTA_DRIVERS = {"btrfs", "zfs", "lvm", "lvmcluster", "ceph", "cephfs", "powerflex"}


async def check_storage(ctx: Context) -> Check:
    """The home volumes' pool exists and can enforce storage_capacity."""
    name, sp = "storage", ctx.spawner
    if not sp.storage_enabled:
        return Check(name, "skip", "storage_enabled is False: homes are inside the containers (with remove = True "
                                   "they are deleted at every stop)")
    driver = await lxd.pool_driver(ctx.endpoint, sp.storage_pool)
    if driver is None:
        return fail(name, f"storage_pool {sp.storage_pool!r} does not exist on the {ctx.backend.display} server",
                    f"create it ({ctx.cli} storage create {sp.storage_pool} btrfs), or set c.LxdSpawner.storage_pool")
    if sp.storage_capacity and driver not in QUOTA_DRIVERS:
        return fail(name, f"pool {sp.storage_pool!r} ({driver}) cannot enforce storage_capacity "
                          f"{sp.storage_capacity}: a user could fill the host's disk",
                    "use a btrfs, zfs or lvm pool for homes (c.LxdSpawner.storage_pool), or set "
                    "c.LxdSpawner.storage_capacity = '' to run without quotas knowingly")
    if driver == "btrfs" and sp.storage_capacity and not ctx.remote:
        mount = os.path.join(os.path.dirname(ctx.endpoint_url), "storage-pools", sp.storage_pool)
        if shutil.which("btrfs") and await asyncio.to_thread(os.path.isdir, mount):
            rc, out, err = await _output(["btrfs", "qgroup", "show", mount])
            if rc == 0 and "inconsistent" in (out + err).lower():
                return fail(name, f"pool {sp.storage_pool!r} (btrfs at {mount}): its quota groups are inconsistent, "
                                  f"so the kernel does not enforce storage_capacity {sp.storage_capacity}",
                            f"btrfs quota rescan -w {mount}")
    quota = f"quota {sp.storage_capacity} enforced" if sp.storage_capacity else "no quota (storage_capacity is empty)"
    return ok(name, f"home volumes on pool {sp.storage_pool!r} ({driver}): {quota}")


def culler_deletes_users(config) -> bool:
    """Whether a service of the hub's config runs the idle culler so that it deletes users:
    `--cull-users` (1.x: a bare flag), `--cull-users=<true>`, `--cull-users <true>` or
    `--IdleCuller.cull_users=<true>`."""
    services = config.get("JupyterHub", {}).get("services", []) if hasattr(config, "get") else []
    for service in services or []:
        argv = [str(a) for a in (service.get("command") or [])]
        for i, arg in enumerate(argv):
            name, eq, value = arg.partition("=")
            if name not in ("--cull-users", "--IdleCuller.cull_users"):
                continue
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else ""
                value = "true" if not nxt or nxt.startswith("-") else nxt
            if value.strip().lower() in ("true", "1", "yes", "on"):
                return True
    return False


async def check_snapshots(ctx: Context) -> Check:
    """Homes are snapshotted (schedule, pool), users see their snapshots, and a deleted user's
    home is kept for a while (above all when the idle culler deletes users)."""
    name, sp = "snapshots", ctx.spawner
    if not sp.storage_enabled:
        return Check(name, "skip", "storage_enabled is False: there are no home volumes to snapshot")
    if culler_deletes_users(sp.config) and sp.delete_storage and sp.storage_retention_days <= 0:
        return fail(name, "the idle culler deletes users (--cull-users) and storage_retention_days is 0: an idle "
                          "user's home is deleted with them, at once",
                    "set c.LxdSpawner.storage_retention_days (e.g. 30), or run the culler without --cull-users")
    driver = await lxd.pool_driver(ctx.endpoint, sp.storage_pool)
    parts = [f"scheduled {sp.storage_snapshot_schedule}, kept {sp.storage_snapshot_expiry or 'until deleted'}"
             if sp.storage_snapshot_schedule else "no scheduled snapshots (storage_snapshot_schedule is empty)"]
    if driver == "dir":
        parts.append("pool driver dir: each snapshot is a full copy of the home (btrfs or zfs make them cheap)")
    if sp.storage_snapshots_mount and driver in snapshots.BROWSABLE_DRIVERS and not (ctx.remote and not
                                                                                      sp.storage_pool_dir):
        where = snapshots.pool_dir(sp.storage_pool_dir, ctx.backend.local_dir(), sp.storage_pool)
        seen = await asyncio.to_thread(lambda: (where / "custom-snapshots").is_dir())
        parts.append(f"users see them in {sp.storage_snapshots_mount}" if seen else
                     f"users do not see them: {where}/custom-snapshots is not on this host (set storage_pool_dir)")
    else:
        parts.append("users do not see them in their server (storage_snapshots_mount, pool driver, storage_pool_dir)")
    parts.append(f"deleted users' homes kept {sp.storage_retention_days:g} days" if sp.delete_storage and
                 sp.storage_retention_days > 0 else "deleted users' homes are not kept" if sp.delete_storage
                 else "deleted users' homes kept until an operator deletes them (delete_storage = False)")
    return ok(name, "; ".join(parts))


async def check_shared(ctx: Context) -> Check:
    """shared_volumes reads, each folder's pool exists (and can enforce its size), and the
    image's launcher can give writers the folder's group."""
    name, sp = "shared", ctx.spawner
    if not sp.shared_volumes:
        return ok(name, "no groups' shared folders (shared_volumes is empty)")
    try:
        folders = shared.parse(sp.shared_volumes)
    except shared.SharedConfigError as e:
        return fail(name, str(e), "correct c.LxdSpawner.shared_volumes (docs/shared-folders.md)")
    parts = []
    for folder in folders:
        pool = folder.pool or sp.storage_pool
        driver = await lxd.pool_driver(ctx.endpoint, pool)
        if driver is None:
            return fail(name, f"shared folder {folder.name}: pool {pool!r} does not exist on the "
                              f"{ctx.backend.display} server", "create it, or set its \"pool\" in shared_volumes")
        if folder.size and driver not in QUOTA_DRIVERS:
            return fail(name, f"shared folder {folder.name}: pool {pool!r} ({driver}) cannot enforce its size "
                              f"{folder.size}", "use a btrfs, zfs or lvm pool, or give it size \"\" knowingly")
        who = ", ".join([f"{g} rw" for g in folder.write_groups] + [f"{g} ro" for g in folder.read_groups])
        parts.append(f"{folder.name} ({who}; pool {pool}, gid {folder.gid})")
    return ok(name, "; ".join(parts))


# ---- running them -------------------------------------------------------------------------------
#: (name, check, the checks it needs), in the order lines are printed.
CHECKS = (
    ("daemon", check_daemon, ()),
    ("image", check_image, ("daemon",)),
    ("terraform", check_terraform, ()),
    ("module", check_module, ("terraform",)),
    ("subids", check_subids, ()),
    ("state_dir", check_state_dir, ()),
    ("ports", check_ports, ("daemon",)),
    ("storage", check_storage, ("daemon",)),
    ("snapshots", check_snapshots, ("daemon",)),
    ("shared", check_shared, ("daemon",)),
    ("hub", check_hub, ("daemon", "image")),
)


async def _guarded(name, check, needs, tasks, ctx) -> Check:
    for need in needs:
        if (await asyncio.shield(tasks[need])).status == "fail":
            return Check(name, "skip", f"needs the {need} check, which failed")
    try:
        return await check(ctx)
    except Exception as e:  # one broken check must not hide the others' lines
        return fail(name, f"the check itself failed: {type(e).__name__}: {e}", "see the message")


async def run(spawner, on_check=None) -> list[Check]:
    """Every check (independent ones side by side); `on_check(check)` is called in order as
    the lines become known."""
    ctx = Context(spawner)
    tasks: dict[str, asyncio.Future] = {}
    for name, check, needs in CHECKS:
        tasks[name] = asyncio.ensure_future(_guarded(name, check, needs, tasks, ctx))
    results = []
    try:
        for name, _, _ in CHECKS:
            results.append(await tasks[name])
            if on_check:
                on_check(results[-1])
    finally:
        # Interrupted (Ctrl-C): stop the other checks too, once each, so a check already
        # cancelled is not interrupted again while it removes its throwaway instance.
        for task in tasks.values():
            if not task.done() and not task.cancelling():
                task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return results


def as_json(results: list[Check]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
