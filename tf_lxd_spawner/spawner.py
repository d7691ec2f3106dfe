"""LxdSpawner: the traits an operator sets and JupyterHub's lifecycle calls (start, poll, stop,
state, progress), as glue.

Each step lives in a module named for it: `preflight` (checks before anything is made),
`starting` (lock, placement, render, init, apply, files, wait), `stopping` (shutdown, destroy,
failed-start clean-up, delete_forever), `recovery` (interrupted spawns, dead servers), `audit`
(record assembly), `tokens` (revoking forgotten tokens), `progress` (the spawn page's events),
`module_inputs` (what the module is given), `commands`; Terraform runs in `terraform`, the
workspace on disk in `workspace`, LXD queries in `lxd`, member choice in `placement`, names in
`naming`, host ports in `ports`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from jupyterhub.spawner import Spawner
from markupsafe import escape
from traitlets import (Any, Bool, Callable, Dict, Enum, Float, Int, List, TraitError, Tuple, Unicode, Union, default,
                       observe, validate)

from . import inputs as config_inputs
from . import backends, lxd, metrics, naming, preflight, recovery, starting, stopping
from .environment import DEFAULT_ALLOWED
from .errors import SpawnError
from .ports import ports
from .progress import Progress
from .stages import Stages
from .terraform import TerraformRunner, concurrency_gate, pick_binary
from .workspace import Workspace, hub_id, workspace_path

__all__ = ["LxdSpawner", "SpawnError", "default_module_source"]

PACKAGE_DIR = Path(__file__).resolve().parent


def default_module_source() -> str:
    """The notebook module shipped in the wheel (or, in a source checkout, the repository's)."""
    packaged = PACKAGE_DIR / "modules" / "notebook"
    if packaged.is_dir():
        return str(packaged)
    return str(PACKAGE_DIR.parent / "terraform" / "modules" / "notebook")


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

    privileged_containers = Bool(
        None,
        allow_none=True,
        help="""The name the seed project's README gives privileged_container (plural): set,
        it sets privileged_container, so a configuration written from that README keeps
        working. Prefer privileged_container.""",
    ).tag(config=True)

    @observe("privileged_containers")
    def _seed_privileged_name(self, change):
        if change.new is not None:
            self.privileged_container = change.new

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

    # ---- what the step modules read -----------------------------------------------------------
    @property
    def backend_info(self) -> backends.Backend:
        return backends.BACKENDS[self.backend]

    @property
    def endpoint_url(self) -> str:
        return backends.endpoint_url(self.backend_info, self.lxd_endpoint)

    @property
    def remote_endpoint(self) -> bool:
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
            url=self.endpoint_url,
            cert=self.lxd_cert or None,
            key=self.lxd_key or None,
            verify=self.lxd_verify,
            timeout=self.lxd_timeout,
            daemon=self.backend_info.display,
        )

    @property
    def runner(self) -> TerraformRunner:  # only inside the event loop: the gate belongs to it
        env = {"TF_CLI_CONFIG_FILE": self.terraform_cli_config} if self.terraform_cli_config else {}
        return TerraformRunner(self.terraform_binary, env=env, gate=concurrency_gate(self.terraform_concurrency),
                               inherit=self.host_environment_allowlist, niceness=self.terraform_niceness)

    def workspace_dir(self) -> Workspace:
        if self.workspace:
            return Workspace(self.workspace)
        return Workspace(workspace_path(os.path.abspath(self.state_dir), self.user.name, self.name or ""))

    def expand(self, text: str) -> str:
        return text.format(username=self.user.name, servername=self.name or "")

    def instance_name(self) -> str:
        template = self.instance_name_template
        if not self.name:
            template = template.replace("{servername}", "").rstrip("-_")
        return naming.instance_name(template, self.user.name, self.name or "")

    @property
    def account(self) -> dict:
        name = naming.posix_username(self.user.name)
        return {"name": name, "home": f"/home/{name}"}

    async def owner_id(self) -> str:
        """This hub's id (kept in state_dir): the label that says an instance is ours."""
        if not self._hub_id:
            self._hub_id = await asyncio.to_thread(hub_id, os.path.abspath(self.state_dir))
        return self._hub_id

    async def run_terraform(self, ws: Workspace, command: str, *args: str, **kwargs) -> None:
        """Run one terraform command in the workspace, logging its events; then re-seal modes."""
        try:
            await self.runner.run(command, *args, cwd=ws.path, log_path=ws.run_log(command), **kwargs)
        finally:
            await ws.seal()

    # ---- JupyterHub lifecycle ---------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress_bar = Progress()
        self.plan = preflight.Plan()  # what the last start checked and chose
        self.daemon: dict | None = None  # what the last GET /1.0 said (for the audit)
        self._start_task: asyncio.Task | None = None
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
        self.progress_bar.begin()
        self._start_task = asyncio.ensure_future(self._start())
        try:
            return await self._start_task
        finally:
            self.progress_bar.end()

    async def _start(self) -> str:
        stages = Stages()
        kept = self.instance
        self.instance = self.instance or self.instance_name()
        self.progress_bar.emit(2, f"Checking the request for {self.instance}")
        outcome = "failed"
        try:
            try:
                with stages.timed("preflight"):
                    self.plan = await preflight.run(self)
            except BaseException:
                self.instance = kept  # refused before anything was made: nothing to poll or stop
                raise
            url = await starting.start(self, self.plan, stages)
            outcome = "ok"
            metrics.server_placed(self.user.name, self.name or "", self.member)
            return url
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.observe_spawn(stages, outcome)

    async def progress(self):
        async for event in self.progress_bar.stream():
            yield event

    async def poll(self):
        if self._start_task is not None and not self._start_task.done():
            return None
        if not self.instance:
            await recovery.recover_interrupted_spawn(self)
            return 0
        if self._polling:  # the last poll is still waiting on LXD: no pile of hung requests
            return None
        self._polling = True
        try:
            reason = await recovery.dead_reason(self)
            if reason is None:
                return None
            await recovery.clean_up_dead(self, reason)
            return 1
        finally:
            self._polling = False

    async def stop(self, now=False):
        if self._start_task is not None and not self._start_task.done():
            self.progress_bar.emit(90, "Spawn cancelled (start_timeout exceeded or stop requested): "
                                       "removing what it made")
            self._start_task.cancel()
            try:
                await self._start_task
            except BaseException:
                pass
        await stopping.stop(self)

    async def delete_forever(self):
        await stopping.delete_forever(self)

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
        if self.instance:
            metrics.server_placed(self.user.name, self.name or "", self.member)

    def clear_state(self):
        super().clear_state()
        metrics.server_gone(self.user.name, self.name or "")
        self.instance = ""
        self.member = ""
        self.url = ""
        self.listen_address = ""
        self.listen_port = None
