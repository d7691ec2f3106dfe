"""LxdSpawner: JupyterHub's lifecycle (start, poll, stop, state, progress) as glue.

Terraform runs live in `terraform`, the workspace on disk in `workspace`, LXD queries in `lxd`,
member choice in `placement`, names in `naming`, host ports in `ports`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from jupyterhub.spawner import Spawner
from jupyterhub.utils import maybe_future
from markupsafe import escape
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import (Any, Bool, Callable, Dict, Enum, Float, Int, List, TraitError, Tuple, Unicode, Union, default,
                       validate)

from . import inputs as config_inputs
from . import backends, lxd, naming, provider
from .environment import DEFAULT_ALLOWED, allowed
from .inputs import ConfigError
from .placement import least_loaded, reservations
from .ports import is_loopback as _is_loopback
from .ports import is_this_host as _is_this_host
from .ports import ports
from .ports import resolve as _resolve
from .stages import Stages
from .terraform import TerraformError, TerraformRunner, concurrency_gate, pick_binary, planned_replacements
from .workspace import (DESTROY_ENV, SECRET_INPUTS, StateUnreadable, Workspace, WorkspaceBusy, hub_id,
                        render_root, secret_env, workspace_path)

PACKAGE_DIR = Path(__file__).resolve().parent


def default_module_source() -> str:
    """The notebook module shipped in the wheel (or, in a source checkout, the repository's)."""
    packaged = PACKAGE_DIR / "modules" / "notebook"
    if packaged.is_dir():
        return str(packaged)
    return str(PACKAGE_DIR.parent / "terraform" / "modules" / "notebook")


class SpawnError(RuntimeError):
    """A start failed for a reason the user should read (shown on the spawn page)."""


#: Module inputs the spawner itself sets; module_variables may not override them (each has a
#: trait, or is what the spawner relies on to find, reach and own the server).
OWNED_INPUTS = {
    "name": "instance_name_template",
    "labels": "(the spawner's own ownership labels)",
    "target": "placement",
    "listen_address": "(derived from the member)",
    "listen_port": "proxy_port_range",
    "connect_via": "connect_via",
    "server_port": "server_port",
    "server_environment": "environment",
    "hub_address": "hub_connect_url",
    "hub_port": "hub_connect_url",
}
WILDCARD = "0.0.0.0"


class LxdSpawner(Spawner):
    """One LXD container per JupyterHub server, made and destroyed by Terraform."""

    # ---- seed-compatible configuration ------------------------------------------------------
    image = Unicode(
        "jupyter-notebook",
        help="""LXD image (alias or fingerprint) the container is made from. It must contain the
        single-user server and the `jupyterhub-singleuser.service` unit (see image/ in the
        repository for the recipe).""",
    ).tag(config=True)

    files_to_push = List(
        [],
        help="""Files copied from the hub host into the container before it starts, as
        [host_src, container_dst] pairs, e.g. [["/etc/passwd", "/etc/passwd"]].
        {username} and {servername} expand in both paths. A missing source is an error.""",
    ).tag(config=True)

    filesystems_to_mount = List(
        [],
        help="""Host directories mounted into the container, as [name, host_dir, container_path]
        triples, e.g. [["home", "/srv/homes/{username}", "/home/{username}"]]. {username} and
        {servername} expand in the paths. The host directory must exist on the member.""",
    ).tag(config=True)

    privileged_container = Bool(
        False,
        help="""Run containers privileged (security.privileged). Only needed when pushed
        /etc/passwd or mounts must see host ids unmapped; unprivileged is much safer.""",
    ).tag(config=True)

    process_limit = Int(
        0,
        help="Maximum number of processes in a container (LXD limits.processes); 0 for no limit.",
    ).tag(config=True)

    container_cpu_share = Int(
        10,
        help="""Each container's CPU weight, in percent of a host process's (LXD
        limits.cpu.allowance "N%", a soft share: idle CPU stays fully usable, containers share
        a busy CPU among themselves as before). Below 100, the hub, the daemon and Terraform
        come first when many servers start at once on their host: measured on 2 cores, 20
        spawns at once on Incus were all ready in 79 s with 10, against 151 s and a spawn
        timed out with 100. Not used with cpu_limit (a hard quota).""",
    ).tag(config=True)

    host_weights = Dict(
        {},
        help="""Placement weight per cluster member name (default 1). A member's score is its
        weight divided by (its load + 1), load counting instances and spawns in flight, so
        weight 2 takes about twice the servers of weight 1; weight 0 takes none.""",
    ).tag(config=True)

    get_uid_gid = Callable(
        None,
        allow_none=True,
        help="""Callable(spawner) -> (uid, gid), may be async: the ids the user's account gets
        inside the container, so files in mounted directories belong to the right host ids.
        None: the user's ids on the hub host when a regular account (uid 1000 or more) of that
        name exists there, else 1000:1000; a hub user called "root" or "daemon" never gets a
        system account's ids. uid or gid 0 is refused: the server never runs as root.""",
    ).tag(config=True)

    create_mount_dirs = Bool(
        False,
        help="""Create missing host directories of filesystems_to_mount on the hub host (owned by
        the user's uid and gid from get_uid_gid, mode 0750) before the spawn. Only useful when
        LXD runs on the hub host (or the path is shared storage).""",
    ).tag(config=True)

    mount_idmap = Enum(
        ["raw.idmap", "shift", "none"],
        help="""How ids in filesystems_to_mount match the host's for unprivileged containers, so a
        file the user writes belongs to the user's uid and gid (get_uid_gid) on the host:
        "raw.idmap" maps that uid and gid 1:1 into the container (the daemon must be allowed to:
        lines `root:<uid>:1` in /etc/subuid and `root:<gid>:1` in /etc/subgid, then restart it);
        "shift" uses idmapped mounts (disk shift=true: works on Incus 6.0.1+, not on LXD 5.0.2
        with kernels 6.9+); "none" leaves the container's own id map (host sees shifted ids).
        Default: "shift" on Incus, "raw.idmap" on LXD. Not used for privileged containers or
        without mounts.""",
    ).tag(config=True)

    @default("mount_idmap")
    def _default_mount_idmap(self):
        return backends.BACKENDS[self.backend].mount_idmap

    commands_to_prepare = List(
        [],
        help="""Commands run inside the container as the user after it starts, each an argument
        list (a string is split like a shell would, before {username}/{servername} expansion, so
        a user name is always a single argument). A failing command fails the spawn.""",
    ).tag(config=True)

    post_hub_commands = List(
        [],
        help="""Commands run on the hub host after the container is up, each an argument list
        (same expansion and safety as commands_to_prepare), with only the allow-listed part of
        the hub's environment (host_environment_allowlist). A failing command fails the spawn:
        the user sees which command failed, its output goes to the hub's log only.""",
    ).tag(config=True)

    allowed_images = Union(
        [List(), Dict()],
        default_value=[],
        help="""Images users may choose: a list of images, or a dict of display name -> image.
        With more than one, the spawn page offers a choice. The choice is checked on the
        server: an image not listed is refused and nothing is created. Empty: always `image`.""",
    ).tag(config=True)

    stop_grace_period = Float(
        0.0,
        help="""Seconds a stopping server's container gets to shut down cleanly (systemd stops
        the server, which ends its kernels) before it is forced off. 0 forces it off at once,
        as a pulled plug: about 0.5 s faster per stop; notebooks are saved by JupyterLab as the
        user works, so only what runs in kernels is cut short, as it is by any stop.""",
    ).tag(config=True)

    remove = Bool(
        True,
        help="""Delete the container when the server stops (terraform destroy). False: stop and
        keep it (the next start resumes the same container and its files); it is destroyed and
        its workspace archived when the server or user is deleted.""",
    ).tag(config=True)

    # ---- Terraform ------------------------------------------------------------------------------
    terraform_path = Unicode(
        "",
        help="""The binary that runs the module: `terraform`, `tofu`, or an absolute path to
        either. Empty: `terraform` when it is on the hub's PATH, else `tofu` (the hub's log says
        which, and every audit record names the binary and its version).""",
    ).tag(config=True)

    terraform_cli_config = Unicode(
        "",
        help="""Terraform CLI configuration file (TF_CLI_CONFIG_FILE) for every run, e.g. one whose
        provider_installation points at a local filesystem_mirror. Empty: inherit the hub's
        environment.""",
    ).tag(config=True)

    module_source = Unicode(
        help="""Source of the Terraform module that makes one server (a local path or any module
        address Terraform accepts). Default: the notebook module shipped with this package. An
        operator's own module must accept the same inputs and give the same outputs.""",
    ).tag(config=True)

    @default("module_source")
    def _default_module_source(self):
        return default_module_source()

    module_variables = Union(
        [Dict(), Callable()],
        default_value={},
        help="""Extra inputs for the module, as a dict or a callable(spawner) -> dict (may be
        async), e.g. {"profiles": ["default", "gpu"]}. They override the spawner's defaults
        (image, profiles, files, limits...), but not the inputs it owns (name, labels, target,
        listen_address, listen_port, connect_via, server_port, server_environment, hub_address,
        hub_port): setting one of those is refused, naming the trait to use instead.""",
    ).tag(config=True)

    state_dir = Unicode(
        "tf-lxd-spawner-state",
        help="""Directory holding one Terraform workspace per server, <state_dir>/<user>/<server>/:
        state, inputs, run logs and audit.jsonl. Relative paths are relative to the hub's working
        directory. Keep it: it is the audit record and what a restarted hub finds servers by.""",
    ).tag(config=True)

    terraform_concurrency = Int(
        4,
        help="""Most terraform processes the hub runs at once (all users together). Further
        spawns and stops wait their turn.""",
    ).tag(config=True)

    terraform_niceness = Int(
        10,
        help="""Added to the scheduling niceness of every terraform process (and its provider,
        which inherits it), 0-19: many spawns at once then cannot starve the hub's event loop of
        CPU, so the hub keeps answering its users. 0 runs Terraform at the hub's priority.""",
    ).tag(config=True)

    @validate("terraform_niceness")
    def _valid_niceness(self, proposal):
        if not 0 <= proposal["value"] <= 19:
            raise TraitError(f"terraform_niceness {proposal['value']} must be from 0 to 19")
        return proposal["value"]

    provider_refresh_interval = Unicode(
        "250ms",
        help="""The LXD provider's polling interval while an instance changes state. The
        provider's own default (10s) adds up to 10 s to every spawn and stop.""",
    ).tag(config=True)

    host_environment_allowlist = List(
        list(DEFAULT_ALLOWED),
        help="""Names (fnmatch patterns) of the hub's environment variables passed on to
        Terraform, its providers and post_hub_commands; nothing else of the hub's environment
        (CONFIGPROXY_AUTH_TOKEN, JUPYTERHUB_CRYPT_KEY, credentials set for the hub) reaches
        them. Add a name here when your provider or command needs it.""",
    ).tag(config=True)

    wait_for_server = Bool(
        True,
        help="""start() returns once the server answers HTTP (tried after 50 ms, then at most
        every 250 ms, for up to http_timeout seconds; no answer by then fails the spawn and
        removes the container). The hub's own check, which waits longer and longer between
        tries (up to seconds), then finds it up at once. False: return when the container runs and leave waiting to the
        hub (for images whose server is not reachable from the hub's host).""",
    ).tag(config=True)

    apply_attempts = Int(
        2,
        help="""How many times `terraform apply` is tried when it fails with an error LXD reports
        as transient (e.g. its file-push helper not ready yet). Other errors fail at once.""",
    ).tag(config=True)

    # ---- LXD ------------------------------------------------------------------------------------
    backend = Enum(
        ["lxd", "incus"],
        "lxd",
        help="""The daemon that runs the containers: "lxd" or "incus" (both speak the same API;
        the spawner checks at each spawn that the daemon at lxd_endpoint is this one). It
        decides the local socket used when lxd_endpoint is empty and the default mount_idmap.""",
    ).tag(config=True)

    lxd_endpoint = Unicode(
        "",
        help="""API endpoint of the LXD or Incus daemon: empty for the backend's local unix socket
        (/var/lib/lxd/unix.socket or /var/lib/incus/unix.socket, or under LXD_DIR / INCUS_DIR),
        the path of another unix socket, or an https:// URL of a remote server or cluster.""",
    ).tag(config=True)

    lxd_cert = Unicode("", help="Client certificate (PEM file) for an https lxd_endpoint.").tag(config=True)
    lxd_key = Unicode("", help="Client key (PEM file) for an https lxd_endpoint.").tag(config=True)
    lxd_verify = Union(
        [Bool(), Unicode()],
        default_value=True,
        help="""For an https lxd_endpoint: True to verify with the system's CAs, the path of the
        server's own certificate (PEM) to pin exactly that certificate (LXD's usual
        self-signed one; for a cluster, its cluster.crt), or False to skip verification.""",
    ).tag(config=True)

    lxd_timeout = Float(
        60.0,
        help="""Seconds any one LXD API request may take (waits for LXD operations included).
        A daemon that accepts connections and never answers then fails the spawn with a clear
        error instead of holding the hub's threads.""",
    ).tag(config=True)

    status_max_age = Float(
        2.0,
        help="""Seconds a listing of all instances' status may be reused by poll(): every server's
        poll within that time shares one LXD request (a poll round of 200 servers costs one),
        and a server found stopped is confirmed with a request of its own before it is ended.
        0 asks anew for every poll.""",
    ).tag(config=True)

    orphan_grace_period = Float(
        600.0,
        help="""`tf-lxd-spawner orphans` leaves instances younger than this many seconds alone:
        a spawn may be creating one right now (it is in LXD before it is in the state).""",
    ).tag(config=True)

    lxd_profiles = List(
        ["default"],
        help="LXD profiles for every container, in order. The first must provide the root disk.",
    ).tag(config=True)

    placement = Union(
        [Enum(["least-loaded", "lxd"]), Callable()],
        default_value="least-loaded",
        help="""Which cluster member gets a new server: "least-loaded" (online members scored by
        host_weights / (load + 1), counting spawns in flight), "lxd" (LXD's own scheduler; the
        server's proxy then listens on all of the member's addresses, 0.0.0.0, since the member
        is known only once LXD chose it), or a callable(spawner, members) -> member name.
        Ignored on a standalone LXD server.""",
    ).tag(config=True)

    excluded_members = List(
        [],
        help="""Cluster members that never get new servers (e.g. during maintenance), in addition
        to members LXD reports as Evacuated or Offline.""",
    ).tag(config=True)

    count_managed_only = Bool(
        False,
        help="""Least-loaded placement counts only the instances this spawner manages (config key
        user.tf-lxd-spawner.managed) instead of all instances on a member.""",
    ).tag(config=True)

    connect_via = Enum(
        ["proxy", "instance-ip"],
        "proxy",
        help="""How the hub reaches a server: "proxy" (an LXD proxy device on the address of the
        member the server landed on, works with no network in the container) or "instance-ip"
        (the container's own IPv4 on a bridge the hub can route to). When a member is not the
        hub's own host, set hub_connect_url to an address of the hub that members can reach.""",
    ).tag(config=True)

    proxy_port_range = Tuple(
        Int(),
        Int(),
        default_value=(20000, 29999),
        help="Host ports for the proxy devices that expose servers (connect_via = \"proxy\"), inclusive.",
    ).tag(config=True)

    server_port = Int(8888, help="Port the single-user server listens on inside the container.").tag(config=True)

    instance_name_template = Unicode(
        "jupyter-{username}-{servername}",
        help="""Template of instance names ({username}, {servername}). Results are made valid for
        LXD (letters, digits, hyphens, at most 63) with a short hash added whenever that changed
        the name, so names stay unique.""",
    ).tag(config=True)

    # ---- runtime state (not configuration) ------------------------------------------------------
    instance = Unicode("")
    member = Unicode("")
    workspace = Unicode("")
    url = Unicode("")
    listen_address = Unicode("")
    listen_port = Any(None, allow_none=True)

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    # ---- helpers ----------------------------------------------------------------------------
    @property
    def _backend(self) -> backends.Backend:
        return backends.BACKENDS[self.backend]

    @property
    def _endpoint_url(self) -> str:
        return backends.endpoint_url(self._backend, self.lxd_endpoint)

    @property
    def _remote_endpoint(self) -> bool:
        """The daemon may be on another host (an https endpoint), not behind a local socket."""
        return backends.is_remote(self.lxd_endpoint)

    #: What an unset terraform_path picked: chosen (and logged) once per hub process, not
    #: looked up on PATH again for every Terraform run.
    _picked_binary: str | None = None

    @property
    def terraform_binary(self) -> str:
        if self.terraform_path:
            return self.terraform_path
        if LxdSpawner._picked_binary is None:
            binary = pick_binary("")
            found = shutil.which(binary)
            if found is None:  # neither installed: preflight says so; look again next time
                return binary
            self.log.info("terraform_path is not set: running %s (%s)", binary, found)
            LxdSpawner._picked_binary = binary
        return LxdSpawner._picked_binary

    @property
    def endpoint(self) -> lxd.Endpoint:
        return lxd.Endpoint(
            url=self._endpoint_url,
            cert=self.lxd_cert or None,
            key=self.lxd_key or None,
            verify=self.lxd_verify,
            timeout=self.lxd_timeout,
            daemon=self._backend.display,
        )

    @property
    def runner(self) -> TerraformRunner:  # only inside the event loop: the gate belongs to it
        env = {"TF_CLI_CONFIG_FILE": self.terraform_cli_config} if self.terraform_cli_config else {}
        return TerraformRunner(self.terraform_binary, env=env, gate=concurrency_gate(self.terraform_concurrency),
                               inherit=self.host_environment_allowlist, niceness=self.terraform_niceness)

    def _workspace(self) -> Workspace:
        if self.workspace:
            return Workspace(self.workspace)
        return Workspace(workspace_path(os.path.abspath(self.state_dir), self.user.name, self.name or ""))

    def _expand(self, text: str) -> str:
        return text.format(username=self.user.name, servername=self.name or "")

    def _instance_name(self) -> str:
        template = self.instance_name_template
        if not self.name:
            template = template.replace("{servername}", "").rstrip("-_")
        return naming.instance_name(template, self.user.name, self.name or "")

    def _emit(self, progress: int, message: str) -> None:
        self._events.append({"progress": progress, "message": message})
        self._events_changed.set()

    async def _uid_gid(self) -> tuple[int, int]:
        if self.get_uid_gid is not None:
            uid, gid = await maybe_future(self.get_uid_gid(self))
            uid, gid = int(uid), int(gid)
            if uid == 0 or gid == 0:
                raise SpawnError(f"get_uid_gid gave uid {uid} and gid {gid} for {self.user.name!r}: the server "
                                 "would run as root in its container; refused")
            return uid, gid
        import pwd

        try:
            pw = await asyncio.to_thread(pwd.getpwnam, self.user.name)
        except KeyError:
            return 1000, 1000
        if pw.pw_uid < 1000 or pw.pw_gid < 1000 or pw.pw_uid == 65534:
            return 1000, 1000  # a system account of the hub host ("root", "daemon"...): not this user's
        return pw.pw_uid, pw.pw_gid

    def _hub_address(self) -> tuple[str, int, str]:
        """(host, port) of the hub API as the member sees it, and the API URL as the container
        sees it: 127.0.0.1:<port>, brought in by the bind=container proxy device."""
        api = urlparse(self.hub_connect_url or self.hub.api_url)
        port = api.port or (443 if api.scheme == "https" else 80)
        inside = urlunparse(api._replace(netloc=f"127.0.0.1:{port}", path=urlparse(self.hub.api_url).path))
        return api.hostname or "127.0.0.1", port, inside

    async def _check_members_reach_hub(self, members: list[lxd.Member]) -> None:
        """Refuse, before anything is made, a server that could land on a member other than this
        host while the hub API is on a loopback address: the member's own loopback is not ours."""
        host, _, _ = self._hub_address()
        if not _is_loopback(await asyncio.to_thread(_resolve, host)):
            return
        if members:
            candidates = [m for m in members if m.status == "Online" and m.name not in self.excluded_members]
            remote = [f"{m.name} ({m.address})" for m in candidates
                      if not await asyncio.to_thread(_is_this_host, m.address)]
        else:
            address = urlparse(self.lxd_endpoint).hostname if self._remote_endpoint else "127.0.0.1"
            here = await asyncio.to_thread(_is_this_host, address)
            remote = [] if here else [f"the {self._backend.display} server {address}"]
        if remote:
            api = self.hub_connect_url or self.hub.api_url
            raise SpawnError(
                f"servers may run on {', '.join(remote)}, which is not this hub's host, but the hub API is "
                f"at {api}, a loopback address a container there cannot reach: set "
                "c.Spawner.hub_connect_url (or c.JupyterHub.hub_connect_ip) to an address of the hub that "
                "members can reach, and make the hub listen there (c.JupyterHub.hub_ip)")

    def _container_env(self, api_url_inside: str) -> dict[str, str]:
        env = self.get_env()
        env["JUPYTERHUB_API_URL"] = api_url_inside
        env["JUPYTERHUB_ACTIVITY_URL"] = "/".join(
            [api_url_inside.rstrip("/"), "users", getattr(self.user, "escaped_name", self.user.name), "activity"]
        )
        return {str(k): str(v) for k, v in env.items()}

    def _disks(self, uid: int, gid: int) -> list[dict]:
        shift = self.mount_idmap == "shift" and not self.privileged_container
        disks = config_inputs.mounts(self.filesystems_to_mount, self._expand, shift)
        for d in disks:  # existence was checked in _preflight
            if self.create_mount_dirs and not os.path.exists(d["source"]):
                os.makedirs(d["source"], mode=0o750)
                os.chown(d["source"], uid, gid)
        return disks

    def _instance_config(self, uid: int, gid: int) -> dict[str, str]:
        config = {}
        if self.filesystems_to_mount and self.mount_idmap == "raw.idmap" and not self.privileged_container:
            if not self._remote_endpoint:  # the daemon is on this host: check it is allowed, with a way out
                config_inputs.check_subid_allowed(uid, gid)
            config["raw.idmap"] = f"uid {uid} {uid}\ngid {gid} {gid}"
        return config

    @property
    def account(self) -> dict:
        name = naming.posix_username(self.user.name)
        return {"name": name, "home": f"/home/{name}"}

    async def _module_inputs(self, target: str | None, listen_address: str, listen_port: int | None) -> dict:
        uid, gid = self._ids  # found (and checked) in _preflight
        hub_host, hub_port, _ = self._hub_address()
        hub_host = await asyncio.to_thread(_resolve, hub_host)  # a proxy device connects to an address
        inputs = {
            "name": self.instance,
            "image": self.chosen_image,
            "target": target,
            "profiles": list(self.lxd_profiles),
            "user": {**self.account, "uid": uid, "gid": gid},
            "server_cmd": list(self.cmd) + list(self.get_args()),
            "server_port": self.server_port,
            "connect_via": self.connect_via,
            "listen_address": listen_address,
            "listen_port": listen_port,
            "hub_address": hub_host,
            "hub_port": hub_port,
            "files": self._files,
            "disks": await asyncio.to_thread(self._disks, uid, gid),
            "limits": config_inputs.limits(self.mem_limit, self.cpu_limit, self.process_limit,
                                           self.container_cpu_share),
            "privileged": bool(self.privileged_container),
            "config": await asyncio.to_thread(self._instance_config, uid, gid),
            "labels": {"user": self.user.name, "server": self.name or "", "workspace": str(self._workspace().path),
                       "hub_id": self._hub_id},
        }
        if not self._backend.provider_files:  # the LXD provider cannot write files into Incus instances
            inputs["files_via_provider"] = False
        inputs.update(await self._extra_inputs())
        return inputs

    async def _extra_inputs(self) -> dict:
        """module_variables, refused when they would override an input the spawner owns."""
        extra = self.module_variables
        if callable(extra):
            extra = await maybe_future(extra(self))
        extra = dict(extra or {})
        owned = sorted(set(extra) & set(OWNED_INPUTS))
        if owned:
            how = "; ".join(f"{k}: {OWNED_INPUTS[k]}" for k in owned)
            raise SpawnError(f"module_variables may not set {', '.join(owned)}: the spawner sets "
                             f"{'it' if len(owned) == 1 else 'them'} itself (use instead: {how})")
        return extra

    async def _place(self) -> str | None:
        """The member to create the server on; None lets LXD choose (or standalone LXD)."""
        members = self._members  # listed by _preflight for this spawn
        if not members or self.placement == "lxd":
            return None
        if callable(self.placement):
            return await maybe_future(self.placement(self, members))
        load = await lxd.instance_counts(self.endpoint, self.count_managed_only)
        load.update(reservations.snapshot())
        return least_loaded(members, load, self.host_weights, self.excluded_members)

    def _on_terraform_event(self, event: dict) -> None:
        kind = event.get("type")
        hook = event.get("hook") or {}
        addr = (hook.get("resource") or {}).get("addr", "")
        where = f" on {self._target}" if self._target else ""
        if kind == "apply_start" and "lxd_container" in addr:
            self._apply_started = time.monotonic()
            action = "Removing" if hook.get("action") == "delete" else "Creating"
            self._emit(40, f"{action} instance {self.instance}{where}")
        elif kind == "apply_complete" and "lxd_container" in addr:
            self._apply_started = None
            self._emit(85, f"Instance {self.instance} is running{where} ({hook.get('elapsed_seconds', 0)} s)")
        elif kind == "apply_errored":
            self._emit(85, f"Terraform failed on {addr}: {event.get('@message', '')}")
        elif kind == "diagnostic" and (event.get("diagnostic") or {}).get("severity") == "error":
            self._emit(85, f"Terraform error: {event['diagnostic'].get('summary', '')}")

    async def _tick_while_creating(self) -> None:
        while True:
            await asyncio.sleep(1)
            if self._apply_started is not None:
                elapsed = time.monotonic() - self._apply_started
                pct = 40 + min(int(elapsed * 4), 40)
                self._emit(pct, f"Creating instance {self.instance}: {elapsed:.0f} s elapsed")

    # ---- JupyterHub lifecycle ---------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._events: list[dict] = []
        self._events_changed = asyncio.Event()
        self._spawn_done = True
        self._start_task: asyncio.Task | None = None
        self._apply_started: float | None = None
        self._target: str | None = None
        self._ids: tuple[int, int] = (1000, 1000)
        # Checked and expanded by _preflight, used by _create.
        self._files: list[dict] = []
        self._prepare_cmds: list[list[str]] = []
        self._post_cmds: list[list[str]] = []
        self._members: list[lxd.Member] = []
        self._hub_id = ""
        self._polling = False
        self.chosen_image = self.image

    @default("options_form")
    def _default_options_form(self):
        def form(spawner):
            choices = config_inputs.image_choices(spawner.allowed_images)
            if len(choices) < 2:
                return ""
            options = "".join(
                f'<option value="{escape(name)}"{" selected" if i == 0 else ""}>{escape(name)}</option>'
                for i, name in enumerate(choices)
            )
            return (
                '<label for="tf-lxd-image">Image</label>'
                f'<select class="form-control" name="image" id="tf-lxd-image">{options}</select>'
            )

        return form

    def options_from_form(self, formdata):
        image = (formdata.get("image") or [""])[0]
        return {"image": image} if image else {}

    async def start(self):
        self._events = []
        self._spawn_done = False
        self._start_task = asyncio.ensure_future(self._start())
        try:
            return await self._start_task
        finally:
            self._spawn_done = True
            self._events_changed.set()

    async def _preflight(self) -> None:
        """Check configuration, user input and the systems before anything is made: a spawn
        refused here leaves no workspace, no instance and no port behind."""
        try:
            self.chosen_image = config_inputs.chosen_image(
                self.allowed_images, (self.user_options or {}).get("image"), self.image)
            self._files = await asyncio.to_thread(config_inputs.pushed_files, self.files_to_push, self._expand)
            disks = config_inputs.mounts(self.filesystems_to_mount, self._expand, False)
            config_inputs.limits(self.mem_limit, self.cpu_limit, self.process_limit, self.container_cpu_share)
            self._prepare_cmds = config_inputs.command_lists(self.commands_to_prepare, self._expand,
                                                             "commands_to_prepare")
            self._post_cmds = config_inputs.command_lists(self.post_hub_commands, self._expand, "post_hub_commands")
        except ConfigError as e:
            raise SpawnError(str(e)) from None
        if not self._remote_endpoint and not self.create_mount_dirs:
            for d in disks:
                if not await asyncio.to_thread(os.path.isdir, d["source"]):
                    raise SpawnError(f"filesystems_to_mount: host directory {d['source']!r} does not exist "
                                     "(create it, or set create_mount_dirs = True)")
        source = self.module_source
        if source.startswith(("/", "./", "../")) and not await asyncio.to_thread(os.path.isdir, source):
            raise SpawnError(f"module_source {source!r} does not exist (or is not a directory)")
        binary = self.terraform_binary
        if shutil.which(binary) is None:
            raise SpawnError(f"terraform_path {binary!r} was not found (is it installed and on PATH?)")
        await self._extra_inputs()  # refuses overrides of the spawner's own inputs
        self._ids = await self._uid_gid()  # refuses root
        try:
            wrong_daemon = backends.mismatch(self._backend, await self._server_info(), self.endpoint.where)
            if wrong_daemon:
                raise SpawnError(wrong_daemon)
            if not await lxd.image_exists(self.endpoint, self.chosen_image):
                raise SpawnError(f"image {self.chosen_image!r} does not exist on the {self._backend.display} server")
            self._members = await lxd.members(self.endpoint)
        except lxd.LxdUnavailable as e:
            raise SpawnError(str(e)) from None
        await self._check_members_reach_hub(self._members)
        await self._ensure_hub_id()

    async def _ensure_hub_id(self) -> str:
        if not self._hub_id:
            self._hub_id = await asyncio.to_thread(hub_id, os.path.abspath(self.state_dir))
        return self._hub_id

    async def _start(self) -> str:
        stages = Stages()
        kept = self.instance
        self.instance = self.instance or self._instance_name()
        self._emit(2, f"Checking the request for {self.instance}")
        try:
            with stages.timed("preflight"):
                await self._preflight()
        except BaseException:
            self.instance = kept  # refused before anything was made: nothing to poll or stop
            raise
        ws = self._workspace()
        self.workspace = str(ws.path)
        self._emit(5, f"Preparing workspace for {self.instance}")
        async with contextlib.AsyncExitStack() as held:
            with stages.timed("lock"):  # another start or stop of this server may hold it
                await held.enter_async_context(ws.lock())
            try:  # an unreadable state may hold a kept instance: decide nothing, touch nothing
                resuming = bool(await asyncio.to_thread(ws.state_resources))
            except StateUnreadable as e:
                raise SpawnError(f"cannot start {self.instance}: {e}") from None
            with stages.timed("placement"):
                async with reservations.decide:  # choose and reserve as one step
                    self._target = await self._place()
                    reservations.reserve(self._target)
            try:
                return await self._create(ws, stages, resuming)
            finally:
                reservations.release(self._target)

    def _member_address(self, name: str | None) -> str:
        """The address of a cluster member (as an IP address), the remote standalone server's,
        or 127.0.0.1 for LXD on this host."""
        if self._members:
            by_name = {m.name: m for m in self._members}
            if name in by_name and by_name[name].address:
                return _resolve(by_name[name].address)
            raise SpawnError(f"LXD reports no address for cluster member {name!r}")
        if self._remote_endpoint:
            return _resolve(urlparse(self.lxd_endpoint).hostname or "127.0.0.1")
        return "127.0.0.1"

    async def _listen_on(self, ws: Workspace, resuming: bool) -> tuple[str, int | None]:
        """Address and port for the server's proxy device: on the chosen member (all its
        addresses when LXD chooses the member), and for a kept instance the port it already had
        when that is still free."""
        if self.connect_via != "proxy":
            return "127.0.0.1", None
        if self._members and not self._target:
            address = WILDCARD  # placement = "lxd": the member is known only after apply
        else:
            address = await asyncio.to_thread(self._member_address, self._target)
        previous = (await asyncio.to_thread(ws.saved_inputs)).get("listen_port") if resuming else None
        return address, ports.reuse_or_allocate(address, previous, *self.proxy_port_range)

    async def _connect_url(self, outputs: dict) -> str:
        """Where the hub reaches the server: the module's connect address, or, when the proxy
        listens on all addresses, the address of the member the instance landed on."""
        address = outputs["connect_address"]
        if address in (WILDCARD, "::", ""):
            address = await asyncio.to_thread(self._member_address, outputs.get("location") or self._target)
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{outputs['connect_port']}"

    async def _create(self, ws: Workspace, stages: Stages, resuming: bool) -> str:
        self.listen_address, self.listen_port = "127.0.0.1", None
        self.ip, self.port = "127.0.0.1", self.server_port  # where the server binds, inside
        _, _, api_inside = self._hub_address()
        record = {"operation": "start", "user": self.user.name, "server": self.name or "",
                  "instance": self.instance, "image": self.chosen_image}
        ticker = None
        try:
            with stages.timed("render"):
                self.listen_address, self.listen_port = await self._listen_on(ws, resuming)
                environment = self._container_env(api_inside)
                secrets = secret_env("server_environment", environment)
                inputs = await self._module_inputs(self._target, self.listen_address, self.listen_port)
                provider_settings = await asyncio.to_thread(
                    provider.settings, self.provider_refresh_interval, self._endpoint_url, self.lxd_cert,
                    self.lxd_key, self.lxd_verify, self.state_dir)
                main_tf = render_root(self.module_source, [*inputs, *SECRET_INPUTS], provider_settings)
                needs_init = await ws.prepare(main_tf, inputs)
            if needs_init:
                self._emit(10, "Initialising Terraform")
                with stages.timed("init"):
                    await self._terraform(ws, "init")
                    await ws.mark_initialised(main_tf)
            with stages.timed("check"):
                if not resuming:
                    await self._remove_stray_instance(ws)
                elif not self.remove:
                    await self._refuse_replacing_kept_instance(ws, secrets)
            self._emit(30, f"Applying the notebook module for {self.instance}")
            ticker = asyncio.ensure_future(self._tick_while_creating())
            with stages.timed("apply"):
                await self._apply(ws, secrets)
                ticker.cancel()
                outputs = await asyncio.to_thread(ws.state_outputs)
            by_provider = inputs.get("files_via_provider", True)
            if not by_provider:  # the module made the instance stopped: write its files, then start it
                self._emit(75, f"Writing files into {self.instance}")
                env_file = {**outputs["environment_file"], "content": json.dumps(environment)}
                with stages.timed("files"):
                    await lxd.push_files(self.endpoint, self.instance, [*(outputs.get("files") or []), env_file])
            if resuming or not by_provider:  # a kept instance: apply refreshed its files
                self._emit(80, f"Starting {'kept ' if resuming else ''}instance {self.instance}")
                with stages.timed("start"):
                    await lxd.set_running(self.endpoint, self.instance, True)
            url = await self._connect_url(outputs)
            with stages.timed("commands"):
                await self._run_prepare_commands()
                await self._run_post_hub_commands()
            if self.wait_for_server:
                self._emit(88, f"Waiting for the server at {url}")
                with stages.timed("server"):
                    await self._wait_for_server(url)
        except BaseException as e:
            if ticker:
                ticker.cancel()
            reason = "cancelled (timeout or stop)" if isinstance(e, asyncio.CancelledError) else str(e)
            keep = resuming and not self.remove  # a kept instance holds the user's files
            await asyncio.shield(self._clean_failed_start(ws, record, stages, reason or type(e).__name__, keep))
            if not isinstance(e, Exception) or isinstance(e, (TerraformError, SpawnError)):
                raise  # BaseException (KeyboardInterrupt, CancelledError...) stays what it is
            raise SpawnError(f"starting {self.instance} failed: {e}") from e
        self.member = outputs.get("location") or self._target or ""
        self.url = url
        await ws.audit({**record, "member": self.member, "outcome": "ok", "url": self.url,
                        "resumed": resuming, **stages.record(), **await self._versions(ws)})
        self._emit(90, f"Server at {self.url} {'answers' if self.wait_for_server else 'is starting'}")
        return self.url

    async def _apply(self, ws: Workspace, secrets: dict) -> None:
        for attempt in range(1, self.apply_attempts + 1):
            try:
                await self._terraform(ws, "apply", env=secrets, on_event=self._on_terraform_event)
                return
            except TerraformError as e:
                if attempt == self.apply_attempts or not e.transient:
                    raise
                self.log.warning("Retrying apply of %s after a transient error: %s", self.instance, e)
                self._emit(40, f"Retrying after a transient LXD error: {e}")

    async def _wait_for_server(self, url: str) -> None:
        """Return as soon as the server answers HTTP (any answer, as the hub's own check takes
        it). The hub's check backs off to seconds between tries; this one starts at 50 ms and
        stays under 250 ms, which costs the hub's event loop a few tries a second per spawn
        (not twenty: twenty spawns at once would make that hundreds)."""
        target = url + (self.server.base_url if self.server is not None else "/")
        client = AsyncHTTPClient(force_instance=True)
        deadline = time.monotonic() + self.http_timeout
        pause = 0.05
        try:
            while True:
                try:
                    await client.fetch(target, raise_error=False, follow_redirects=False,
                                       connect_timeout=2, request_timeout=5)
                    return  # any HTTP answer
                except HTTPClientError as e:  # 599: no HTTP answer (the proxy device closed it)
                    if e.code != 599:
                        return
                except OSError:  # refused: the proxy device is not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise SpawnError(f"the server of {self.instance} did not answer at {url} within "
                                     f"{self.http_timeout:g} s (c.Spawner.http_timeout); its log is in the "
                                     "container's journal (journalctl -u jupyterhub-singleuser)")
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, 0.25)
        finally:
            client.close()

    async def _refuse_replacing_kept_instance(self, ws: Workspace, secrets: dict) -> None:
        """A kept instance holds the user's files: resuming must update it, never replace it
        (provider v1.5.0 replaces on any change of `config`, image, name...)."""
        self._emit(32, f"Checking that {self.instance} can be resumed in place")
        plan = await self.runner.run("plan", cwd=ws.path, env=secrets, log_path=ws.run_log("plan"))
        await ws.seal()
        replaced = planned_replacements(plan.events, "lxd_container")
        if replaced:
            raise SpawnError(
                f"resuming would replace the kept instance {self.instance} (and lose its files): the "
                "configuration changed in a way LXD cannot apply in place. Restore the previous "
                "settings, or delete the server to start afresh.")

    async def _run_prepare_commands(self) -> None:
        commands = self._prepare_cmds
        if not commands:
            return
        uid, gid = self._ids
        home = self.account["home"]
        self._emit(86, f"Running {len(commands)} commands_to_prepare")
        # The launcher creates the account and its home at boot: wait for the home to exist.
        for _ in range(100):
            rc, _, _ = await lxd.execute(self.endpoint, self.instance, ["test", "-d", home])
            if rc == 0:
                break
            await asyncio.sleep(0.2)
        env = {"HOME": home, "USER": self.account["name"], "PATH": "/opt/jupyter/bin:/usr/local/bin:/usr/bin:/bin"}
        for argv in commands:
            rc, out, err = await lxd.execute(self.endpoint, self.instance, argv, uid, gid, home, env)
            if rc != 0:
                raise SpawnError(f"commands_to_prepare {argv} exited {rc}: {(err or out).strip()[-500:]}")

    async def _run_post_hub_commands(self) -> None:
        """Each command with the allow-listed environment only. What a failing command printed
        may hold anything (paths, hosts, secrets): it goes to the operator's log, and the user
        is told which command failed and where the details are."""
        env = allowed(self.host_environment_allowlist)
        for i, argv in enumerate(self._post_cmds):
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, env=env)
            except OSError as e:
                self.log.error("post_hub_commands[%d] %s for %s could not run: %s", i, argv, self.instance, e)
                raise SpawnError(f"post_hub_commands[{i}] could not run; the hub's log has the details") from None
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                self.log.error("post_hub_commands[%d] %s for %s exited %d: %s", i, argv, self.instance,
                               proc.returncode, out.decode(errors="replace").strip()[-2000:])
                raise SpawnError(f"post_hub_commands[{i}] exited {proc.returncode}; "
                                 "the hub's log has its output")

    async def _terraform(self, ws: Workspace, command: str, *args: str, **kwargs) -> None:
        """Run one terraform command in the workspace, logging its events; then re-seal modes."""
        try:
            await self.runner.run(command, *args, cwd=ws.path, log_path=ws.run_log(command), **kwargs)
        finally:
            await ws.seal()

    async def _remove_stray_instance(self, ws: Workspace) -> None:
        """Called when the state holds nothing: an instance with our name (a hub killed
        mid-apply) is ours to remove if it carries our label and this workspace's path."""
        info = await lxd.instance(self.endpoint, self.instance)
        if lxd.made_for(info, ws.path, await self._ensure_hub_id()):
            self.log.warning("Removing stray instance %s left by an interrupted run", self.instance)
            await lxd.delete_instance(self.endpoint, self.instance)

    async def _clean_failed_start(self, ws: Workspace, record: dict, stages: Stages, reason: str,
                                  keep: bool = False) -> None:
        """Destroy whatever a failed start made, so no container or port is left behind; a kept
        instance (remove = False) that failed to resume is stopped, not destroyed. When the
        clean-up fails too, the audit says so, and the port and instance name stay held: the
        instance may still be there and bound to it, and the hub's stop() tries again."""
        self.log.error("Start of %s failed: %s", self.instance, reason)
        cleanup = {"cleanup": "kept instance stopped" if keep else "destroyed"}
        try:
            with stages.timed("cleanup"):  # its shutdown and destroy are timed within
                if keep:
                    if await lxd.instance(self.endpoint, self.instance):
                        await lxd.set_running(self.endpoint, self.instance, False)
                else:
                    await self._destroy(ws, stages)
        except Exception as e:  # recorded; the original failure is what the user sees
            self.log.error("Cleaning up %s after a failed start also failed: %s", self.instance, e)
            cleanup = {"cleanup": "failed", "cleanup_error": str(e)}
        try:
            await ws.scrub_secrets({self.api_token or ""})
        except OSError as e:
            self.log.error("Could not remove the token of %s from its workspace: %s", self.instance, e)
        await ws.audit({**record, "member": self._target or "", "outcome": "failed", "error": reason, **cleanup,
                        **stages.record(), **await self._versions(ws)})
        if cleanup["cleanup"] != "failed":
            ports.release(self.listen_address, self.listen_port)
            self.listen_port = None
            self.instance = ""  # nothing of it is left to poll or stop

    async def _destroy(self, ws: Workspace, stages: Stages | None = None) -> None:
        stages = stages or Stages()
        initialised = await asyncio.to_thread(lambda: ws.tfvars.exists() and (ws.path / ".terraform").exists())
        if initialised:
            with stages.timed("shutdown"):
                await self._shut_down_first(ws)
            with stages.timed("destroy"):
                await self._terraform_destroy(ws)
        if self.instance:
            info = await lxd.instance(self.endpoint, self.instance)
            if lxd.made_for(info, ws.path, await self._ensure_hub_id()):
                await lxd.delete_instance(self.endpoint, self.instance)

    async def _shut_down_first(self, ws: Workspace) -> None:
        """Stop our instance through the API before `terraform destroy`: the provider's own
        clean stop waits in 3 s steps; stopped, its destroy only deletes."""
        if not self.instance:
            return
        info = await lxd.instance(self.endpoint, self.instance)
        if lxd.made_for(info, ws.path, await self._ensure_hub_id()) and info.status != "Stopped":
            await lxd.shut_down(self.endpoint, self.instance, self.stop_grace_period)

    async def _terraform_destroy(self, ws: Workspace) -> None:
        # No refresh: the instance was just stopped (or is gone, which the delete then says).
        try:
            await self._terraform(ws, "destroy", "-refresh=false", env=DESTROY_ENV)
        except TerraformError as e:
            info = await lxd.instance(self.endpoint, self.instance) if self.instance else None
            if info is not None:
                # Its shutdown failed or timed out: force it off, then destroy again.
                if info.status == "Stopped":
                    raise
                self.log.warning("Destroy of %s failed (%s); forcing it off and retrying", self.instance, e)
                await lxd.shut_down(self.endpoint, self.instance, grace=0)
                await self._terraform(ws, "destroy", env=DESTROY_ENV)
                return
            # The instance was deleted behind Terraform's back: forget it, then destroy
            # whatever else the module made.
            forgotten = await self.runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
            self.log.warning("Instance %s was already gone; removed %s from the state", self.instance, forgotten)
            await self._terraform(ws, "destroy", env=DESTROY_ENV)

    #: Per binary (resolved path): its version, probed once per hub process.
    _tool_versions: dict = {}
    _daemon: dict | None = None  # what the last GET /1.0 said: which daemon, which version

    async def _server_info(self) -> dict:
        info = await lxd.server_info(self.endpoint)
        env = info.get("environment") or {}
        # A daemon says what it is only to a trusted client: otherwise record what is configured.
        self._daemon = {"backend": env.get("server") or self.backend, "version": env.get("server_version", ""),
                        "endpoint": self.endpoint.where}
        return info

    async def _versions(self, ws: Workspace) -> dict:
        """Which binary, provider and daemon ran, for an audit record. Never raises: a failing
        probe must not hide the error of the operation being recorded (a failure is simply
        not cached)."""
        binary = shutil.which(self.terraform_binary) or self.terraform_binary
        versions = {"terraform_binary": binary, "terraform_version": "", "providers": {}, "daemon": self._daemon}
        try:
            if binary not in LxdSpawner._tool_versions:
                info = await self.runner.version()
                if info.get("terraform_version"):
                    LxdSpawner._tool_versions[binary] = info["terraform_version"]
            versions["terraform_version"] = LxdSpawner._tool_versions.get(binary, "")
            versions["providers"] = await asyncio.to_thread(ws.provider_versions)
            if self._daemon is None:
                await self._server_info()
                versions["daemon"] = self._daemon
        except Exception as e:
            self.log.warning("Could not read tool versions for the audit: %s", e)
        return versions

    async def progress(self):
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if self._spawn_done:
                return
            self._events_changed.clear()
            try:
                await asyncio.wait_for(self._events_changed.wait(), 1)
            except asyncio.TimeoutError:
                pass

    async def poll(self):
        if self._start_task is not None and not self._start_task.done():
            return None
        if not self.instance:
            await self._recover_interrupted_spawn()
            return 0
        if self._polling:  # the last poll is still waiting on LXD: no pile of hung requests
            return None
        self._polling = True
        try:
            return await self._poll()
        finally:
            self._polling = False

    async def _poll(self):
        # The image's server unit powers its container off when it ends (exits, or fails for
        # good), so the instance's status is the server's: read from one listing that every
        # spawner shares. Only a clear, fresh answer ends a server: "gone" or "Stopped" in the
        # listing is confirmed by asking for this instance; "cannot tell" (LXD unreachable or
        # slow, an instance starting or frozen) never means dead.
        try:
            info = await lxd.instance_status(self.endpoint, self.instance, self.status_max_age)
            if info is not None and info.status not in ("Stopped", ""):
                if info.status != "Running":
                    self.log.warning("poll(%s): the instance is %s; not calling it dead", self.instance, info.status)
                elif info.location:
                    self.member = info.location
                return None
            info = await lxd.instance(self.endpoint, self.instance)
            if info is None:
                reason = "the instance no longer exists"
            elif info.status == "Stopped":
                reason = "the instance is Stopped (its server ended)"
            else:
                return None  # it was (re)started since the listing
        except lxd.LxdUnavailable as e:
            # Cannot tell: do not declare a server dead because LXD is briefly unreachable.
            self.log.warning("poll(%s): %s", self.instance, e)
            return None
        # The hub will not call stop() for a server poll() reports dead: clean up here, so no
        # container or port is left behind and the audit says what happened.
        try:
            await self._stop(reason=f"found dead by poll: {reason}")
        except Exception as e:  # recorded in the audit by _stop; the server is dead either way
            self.log.error("Cleaning up dead server %s failed: %s", self.instance, e)
        self.instance = ""  # done: a later poll (the hub's stop checks again) finds nothing to do
        return 1

    async def _recover_interrupted_spawn(self) -> None:
        """No saved state, yet the workspace may hold what a spawn made before its hub died
        (the hub saves state only when a start completes): destroy it, and say so in the audit."""
        ws = self._workspace()
        if not await asyncio.to_thread(ws.path.exists):
            return
        name = self._instance_name()
        try:
            leftover = bool(await asyncio.to_thread(ws.state_resources))
            if not leftover:
                info = await lxd.instance(self.endpoint, name)
                leftover = lxd.made_for(info, ws.path, await self._ensure_hub_id())
            if not leftover:
                return
            self.log.warning("Cleaning up %s, left by a spawn the hub did not finish", name)
            async with ws.lock():
                self.instance = name
                try:
                    await self._destroy(ws)
                    await ws.audit({"operation": "recover", "user": self.user.name, "server": self.name or "",
                                    "instance": name, "outcome": "ok",
                                    "note": "removed what an interrupted spawn had made"})
                finally:
                    self.instance = ""
        except (lxd.LxdUnavailable, TerraformError, WorkspaceBusy, StateUnreadable) as e:
            self.log.error("Could not clean up after the interrupted spawn of %s: %s", name, e)

    async def stop(self, now=False):
        if self._start_task is not None and not self._start_task.done():
            self._emit(90, "Spawn cancelled (start_timeout exceeded or stop requested): removing what it made")
            self._start_task.cancel()
            try:
                await self._start_task
            except BaseException:
                pass
        await self._stop()

    async def _stop(self, reason: str = "") -> None:
        ws = self._workspace()
        if not await asyncio.to_thread(ws.path.exists):
            self.instance = ""
            return  # never got as far as a workspace: nothing to stop, nothing to record
        stages = Stages()
        # After a hub restart mid-spawn the state is empty, but the name is deterministic.
        self.instance = self.instance or self._instance_name()
        # The record describes what ran, from what the last start saved (terraform.tfvars.json),
        # not from this spawner object, which after a hub restart knows only the configuration.
        started = await asyncio.to_thread(ws.saved_inputs)
        record = {"operation": "stop", "user": self.user.name, "server": self.name or "",
                  "instance": self.instance, "member": self.member or started.get("target") or "",
                  "image": started.get("image") or self.chosen_image,
                  "kept": not self.remove, **({"reason": reason} if reason else {})}
        async with contextlib.AsyncExitStack() as held:
            with stages.timed("lock"):
                await held.enter_async_context(ws.lock())
            try:
                await asyncio.to_thread(ws.state_resources)  # unreadable: touch nothing, say why
                if self.remove:
                    await self._destroy(ws, stages)
                elif self.instance and await lxd.instance(self.endpoint, self.instance):
                    with stages.timed("stop"):
                        await lxd.set_running(self.endpoint, self.instance, False)
            except Exception as e:
                await ws.audit({**record, "outcome": "failed", "error": str(e), **stages.record(),
                                **await self._versions(ws)})
                raise
            await ws.scrub_secrets({self.api_token or ""})
            await ws.audit({**record, "outcome": "ok", **stages.record(), **await self._versions(ws)})
        ports.release(self.listen_address, self.listen_port)
        self.listen_port = None
        self.url = ""
        self._revoke_token_the_hub_forgot()

    def _revoke_token_the_hub_forgot(self) -> None:
        """JupyterHub does not persist a server's API token: after a hub restart its stop() cannot
        revoke it, and the token would outlive the server. Revoke it here, found by the note the
        hub gave it ("Server at <base_url>"). Storing the token in our state instead would put
        it in the hub database in clear text."""
        if self.api_token or self.will_resume or self.server is None:
            return  # the hub knows the token and revokes it itself
        db, orm_user = getattr(self.user, "db", None), getattr(self.user, "orm_user", None)
        if db is None or orm_user is None:
            return
        note = f"Server at {self.server.base_url}"
        stale = [t for t in orm_user.api_tokens if t.note == note]
        for token in stale:
            db.delete(token)
        if stale:
            db.commit()
            self.log.info("Revoked %d API token(s) of %s left from before a hub restart", len(stale), self.instance)

    async def delete_forever(self):
        """The server (or its user) is deleted: destroy a kept instance and archive the
        workspace beside the others (`<server>.deleted-<time>`), audit record included."""
        ws = self._workspace()
        if not ws.path.exists():
            return
        self.instance = self.instance or self._instance_name()
        async with ws.lock():
            await self._destroy(ws)
            await ws.scrub_secrets({self.api_token or ""})
            await ws.audit({"operation": "delete_forever", "user": self.user.name, "server": self.name or "",
                            "instance": self.instance, "outcome": "ok", **await self._versions(ws)})
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            archived = ws.path.with_name(f"{ws.path.name}.deleted-{stamp}")
            await asyncio.to_thread(os.rename, ws.path, archived)
        self.log.info("Archived workspace of %s to %s", self.instance, archived)
        self.workspace = ""

    # ---- state ------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.instance:
            state.update(
                instance=self.instance,
                member=self.member,
                workspace=self.workspace,
                url=self.url,
                listen_address=self.listen_address,
                listen_port=self.listen_port,
                image=self.chosen_image,
            )
        return state

    def load_state(self, state):
        super().load_state(state)
        self.instance = state.get("instance", "")
        self.member = state.get("member", "")
        self.workspace = state.get("workspace", "")
        self.url = state.get("url", "")
        self.listen_address = state.get("listen_address", "")
        self.listen_port = state.get("listen_port")
        self.chosen_image = state.get("image") or self.chosen_image
        if self.listen_port:
            ports.claim(self.listen_address, self.listen_port)

    def clear_state(self):
        super().clear_state()
        self.instance = ""
        self.member = ""
        self.url = ""
        self.listen_address = ""
        self.listen_port = None
