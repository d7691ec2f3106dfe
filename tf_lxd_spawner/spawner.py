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
import contextlib
import dataclasses
import os
import shutil
import uuid
from pathlib import Path

from jupyterhub.spawner import Spawner
from markupsafe import escape
from traitlets import (Any, Bool, Callable, Dict, Enum, Float, Int, List, TraitError, Tuple, Unicode, Union, default,
                       observe, validate)

from . import inputs as config_inputs
from . import (audit, backends, lxd, metrics, naming, preflight, profiles, recovery, renaming, retention, starting,
               stopping, storage)
from . import state as server_state
from .environment import DEFAULT_ALLOWED
from .module_inputs import start_hub_relay
from .errors import SpawnError
from .ports import ports
from .progress import Progress
from .stages import Stages
from .state import Phase, ServerState
from .terraform import TerraformError, TerraformRunner, concurrency_gate, pick_binary
from .tokens import revoke_forgotten_tokens
from .workspace import StateUnreadable, Workspace, WorkspaceBusy, hub_id, workspace_path

#: Tasks started from synchronous hub callbacks (load_state), kept until they end.
_background: set[asyncio.Task] = set()

__all__ = ["LxdSpawner", "SpawnError", "default_module_source"]

PACKAGE_DIR = Path(__file__).resolve().parent


def default_module_source(module: str = "notebook") -> str:
    """A module shipped in the wheel (or, in a source checkout, the repository's): the notebook
    module (one server) or the storage module (one user's volume)."""
    packaged = PACKAGE_DIR / "modules" / module
    if packaged.is_dir():
        return str(packaged)
    return str(PACKAGE_DIR.parent / "terraform" / "modules" / module)


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
        {username} and {servername} expand in both paths: in the host source as the escaped
        names (as DockerSpawner's volumes; {raw_username}/{raw_servername} for the names as
        they are), in the container path as they are. A name that would put '/', '..' or NUL
        into a path is refused. A missing source is an error.""",
    ).tag(config=True)

    filesystems_to_mount = List(
        [],
        help="""Host directories mounted into the container, as [name, host_dir, container_path]
        triples, e.g. [["home", "/srv/homes/{username}", "/home/{username}"]]. {username} and
        {servername} expand as in files_to_push (escaped in host_dir, so a name is always one
        directory; {raw_username} for the raw name). The host directory must exist on the member.""",
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

    profile_list = Union(
        [List(), Dict(), Callable()],
        default_value=[],
        help="""Choices offered to users, in KubeSpawner's shape (a zero-to-jupyterhub
        configuration works as it is): a list of profiles, a dict of slug -> profile, or a
        callable(spawner) returning either (may be async). A profile has display_name, slug
        (made from the display name when missing), description, default, spawner_override (or
        kubespawner_override: any setting of this spawner, e.g. image, mem_limit, cpu_limit,
        lxd_profiles, storage_capacity, allowed_members, cluster_group, remove; dict settings
        such as environment, storage_config and module_variables merge into yours, None deleting
        a key; a server's settings are saved with it and applied again after a hub restart),
        groups (only members of one of these JupyterHub groups see and may choose it) and
        profile_options: {name: {display_name, choices: {slug: {display_name, default,
        spawner_override}}, unlisted_choice: {enabled, display_name, validation_regex,
        validation_message, spawner_override with {value}}}}. Chosen in the spawn form or
        through the REST API as user_options {"profile": slug, "<option>": choice slug,
        "<option>--unlisted-choice": text}; anything not on offer is refused before anything
        is made. Overrides apply in order: your configuration, group_overrides, the profile,
        each option. When set, it replaces the allowed_images choice.""",
    ).tag(config=True)

    stop_grace_period = Float(
        0.0,
        help="""Seconds a stopping server's container gets to shut down cleanly (systemd stops
        the server, which ends its kernels) before it is forced off. 0 forces it off at once,
        as a pulled plug: about 0.5 s faster per stop; notebooks are saved by JupyterLab as the
        user works, so only what runs in kernels is cut short, as it is by any stop. A kept
        server (remove = False) always gets a clean stop of at least 30 s first.""",
    ).tag(config=True)

    remove = Bool(
        True,
        help="""Delete the container when the server stops (terraform destroy). Everything the
        user wrote inside the container goes with it, at every stop, crash or shutdown from the
        File menu, except their home volume (storage_enabled, the default) and mounts, which
        outlive every container. False: stop and keep the
        container; the next start resumes the same container with its files. A kept container
        is never destroyed by a failure (a refused or failed resume leaves it as it was); it is
        destroyed, and its workspace archived, only when the server or its user is deleted.
        Decided when a server starts (a profile may set it): a server started with False is
        kept at its stop even after a hub restart or a change of this setting.""",
    ).tag(config=True)

    # ---- a user's persistent storage ------------------------------------------------------------
    storage_enabled = Bool(
        True,
        help="""Give each user a persistent home: an LXD custom storage volume, made by Terraform
        (the storage module) in a workspace of its own, mounted at storage_mount_path in each of
        their servers. It survives every stop, crash, hub restart, image change and `remove`;
        it is deleted only with the user (delete_forever), unless delete_storage is False.
        False: the home is inside the container, and with remove = True it is deleted at every
        stop.""",
    ).tag(config=True)

    storage_capacity = Unicode(
        "10GiB",
        help="""Size of each home volume (LXD units: 10GiB, 500MiB, 1GB), enforced by the pool: a
        write past it fails inside the container. The pool must support quotas (btrfs, zfs,
        lvm, ceph; not dir): `tf-lxd-spawner doctor` checks. Raising it grows existing volumes
        in place at their next spawn; lowering it is refused (volumes never shrink). Empty: no
        quota.""",
    ).tag(config=True)

    storage_pool = Unicode(
        "default",
        help="""LXD storage pool of the home volumes. Changing it for existing users is refused
        (their volume would be replaced, emptied): move their volumes with the daemon first.
        On a pool local to each cluster member, a user's servers always go to the member their
        volume is on.""",
    ).tag(config=True)

    storage_config = Dict(
        {},
        help="""Extra LXD configuration of each home volume, e.g. {"snapshots.schedule": "@daily",
        "snapshots.expiry": "2w"} so the daemon snapshots homes. Applied in place.""",
    ).tag(config=True)

    storage_name_template = Unicode(
        "home-{username}",
        help="""Name of the volume a server mounts ({username}; {servername} for one volume per
        named server, as KubeSpawner's pvc_name_template). Without {servername} all of a user's
        servers share one volume. Made valid for LXD as instance names are. A renamed server keeps
        its volume; a new server under the old name gets one of its own. Two hubs on one
        daemon need different templates (e.g. "hub2-home-{username}"): a volume of that name
        this hub did not make for the server is refused, never taken over.""",
    ).tag(config=True)

    storage_mount_path = Unicode(
        "",
        help="""Where the volume is mounted in the container ({username}: the account name inside).
        Empty: the account's home, /home/<account>. A filesystems_to_mount entry mounted at the
        same path (the seed's /srv/homes/{username} homes) is the home instead: that server gets
        no volume.""",
    ).tag(config=True)

    delete_storage = Bool(
        True,
        help="""Delete a user's volume with the user (delete_forever; a per-server volume with its
        named server), after every server of the user that has it attached. False: keep volumes
        of deleted users (the orphans command lists them); a new user of the same name is
        refused the kept volume until an operator gives it back (tf-lxd-spawner adopt-volume)
        or deletes it.""",
    ).tag(config=True)

    storage_module_source = Unicode(
        help="""Source of the Terraform module that makes one home volume. Default: the storage
        module shipped with this package.""",
    ).tag(config=True)

    @default("storage_module_source")
    def _default_storage_module_source(self):
        return default_module_source("storage")

    storage_snapshot_schedule = Unicode(
        "@daily",
        help="""When the daemon snapshots each home volume (its snapshots.schedule: a cron
        expression or @hourly, @daily, @weekly...). The spawner also snapshots a home before it
        restores, grows, moves or deletes it. Empty: no scheduled snapshots. Every pool driver
        can snapshot; on a `dir` pool each snapshot is a full copy (doctor says so).""",
    ).tag(config=True)

    storage_snapshot_expiry = Unicode(
        "2w",
        help="""How long the daemon keeps each snapshot of a home (its snapshots.expiry: 2w, 3d,
        12H...), scheduled ones and the spawner's own. Empty: kept until deleted by hand.""",
    ).tag(config=True)

    storage_snapshot_pattern = Unicode(
        "{{ creation_date|date:'2006-01-02_15-04' }}",
        help="""Name of each scheduled snapshot (the daemon's snapshots.pattern: a pongo2
        template, or a name with %d for a counter). The default names them by their UTC date and
        time, which is what users see in ~/.snapshots.""",
    ).tag(config=True)

    storage_snapshots_mount = Unicode(
        ".snapshots",
        help="""Where users find their home's snapshots, read-only, inside their server: a path
        relative to the home (or absolute). Each snapshot is a folder named after it; a user
        copies a file back with no administrator involved. Needs a pool whose snapshots are
        directories (btrfs, dir) that this host can reach (the daemon on this host, or
        storage_pool_dir set). Empty: not shown.""",
    ).tag(config=True)

    storage_pool_dir = Unicode(
        "",
        help="""Where the home pool's files are on the members ({pool}: its name), for the
        snapshots mount and `tf-lxd-spawner home restore --path`. Empty: the daemon's own
        directory on this host (/var/lib/lxd or /var/lib/incus, or $LXD_DIR / $INCUS_DIR), and
        only for a daemon on this host (a local socket).""",
    ).tag(config=True)

    storage_retention_days = Float(
        14.0,
        help="""How long the home of a deleted user (by an admin, or by the idle culler's
        --cull-users) is kept before it is purged: renamed out of reach of a new user of the same
        name, listed by `tf-lxd-spawner home list`, restorable by `tf-lxd-spawner home
        undelete`. 0: deleted with the user at once. Only with delete_storage (False keeps
        homes for ever).""",
    ).tag(config=True)

    storage_purge_interval = Float(
        3600.0,
        help="""Seconds between the hub's own purges of homes whose retention is over (also
        `tf-lxd-spawner home purge`, for cron). 0: only by the command.""",
    ).tag(config=True)

    storage_nearly_full = Float(
        0.9,
        help="""Share of a home's quota (0-1) above which the spawn page warns the user that their
        home is nearly full. The metric tf_lxd_spawner_home_used_bytes gives each home's use.""",
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

    share_terraform_init = Bool(
        True,
        help="""Run `terraform init` once per root module, in <state_dir>/_terraform-init/, and
        link every workspace's .terraform to it (with a copy of its lock file), instead of
        initialising each new workspace (0.4 s of the hub's CPU and a provider binary unpacked per
        server). Plans and applies only read the shared directory, so concurrent spawns are safe.
        False: each workspace initialises its own .terraform.""",
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

    terraform_gogc = Int(
        400,
        help="""GOGC (the Go garbage collector's target, in percent) for terraform and its
        provider, which inherits it. A terraform run lives a second or so: collecting less often
        saves about an eighth of its CPU for some 20 MB more memory per run (Go's default is 100).
        0 leaves GOGC to the hub's environment.""",
    ).tag(config=True)

    @validate("terraform_gogc")
    def _valid_gogc(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"terraform_gogc {proposal['value']} must be a percentage (0: Go's own setting)")
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

    allowed_members = List(
        [],
        help="""Cluster members new servers may go to (empty: every member); with
        cluster_group, a member must be in both. Meant for a profile's spawner_override, e.g.
        the members with GPUs. A kept server or a home volume already on another member is
        refused with a message naming it. placement = "lxd" places such servers least-loaded.""",
    ).tag(config=True)

    cluster_group = Unicode(
        "",
        help="""An LXD/Incus cluster group (lxc cluster group create gpu; lxc cluster group
        assign m1 gpu): new servers go only to its members. Empty: any member.""",
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

    hub_api_via = Enum(
        ["auto", "socket", "proxy"],
        "auto",
        help="""How a container reaches the hub API. "socket": the hub serves its API on a unix
        socket in <state_dir>/_hub-api, mounted read-only into the container, where the image's
        relay (image/build.sh's jupyterhub-api.socket) serves it at 127.0.0.1:8081; it saves
        every start the second a proxy device costs, but only works for containers on the hub's
        own host. "proxy": a bind=container proxy device to hub_connect_url, for members on
        other hosts. "auto": the socket when the daemon and every member that can get servers
        are on this host and the image says it has the relay (its tf_lxd_spawner_hub_api_socket
        property), else the proxy device.""",
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
        LXD (letters, digits, hyphens, at most 63), with a short hash added whenever that changed
        the name, a user or server name holds a hyphen, or looks like such a hash: two
        different users or servers never get the same name. Two hubs on one daemon need
        different templates: an instance of that name that is not this hub's is refused, never
        removed.""",
    ).tag(config=True)

    # ---- runtime state (not configuration) ------------------------------------------------------
    #: What exists for this server (state.ServerState); changed only by `_commit`, in this class.
    record = Any(ServerState())

    @property
    def instance(self) -> str:
        """The instance's name: the record's, or the deterministic one this server gets."""
        return self.record.instance or self.instance_name()

    @property
    def member(self) -> str:
        return self.record.member

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def workspace(self) -> str:
        return self.record.workspace

    @property
    def listen_address(self) -> str:
        return self.record.listen_address

    @property
    def listen_port(self) -> int | None:
        return self.record.listen_port

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
        if self.terraform_gogc:
            env["GOGC"] = str(self.terraform_gogc)
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

    async def run_terraform(self, ws: Workspace, command: str, *args: str, label: str = "", **kwargs) -> None:
        """Run one terraform command in the workspace, logging its events (the run log is named
        by `label` when given, else by the command); then re-seal modes."""
        try:
            await self.runner.run(command, *args, cwd=ws.path, log_path=ws.run_log(label or command),
                                  label=label, **kwargs)
        finally:
            await ws.seal()

    # ---- JupyterHub lifecycle ---------------------------------------------------------------
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress_bar = Progress()
        self.plan = preflight.Plan()  # what the last start checked and chose
        self.daemon: dict | None = None  # what the last GET /1.0 said (for the audit)
        self._start_task: asyncio.Task | None = None
        self._cleanup_task: asyncio.Task | None = None  # a cancelled start's clean-up, still running
        self._hub_id = ""
        self._polling = False
        self.chosen_image = self.image
        self.profile = ""  # the slug of the profile this start chose ("" without profile_list)
        self._profile_saved: dict = {}  # settings as they were before the profile's overrides

    async def offered_profiles(self) -> list:
        """The profiles of profile_list (resolved when a callable) this user may choose."""
        return profiles.offered(await profiles.listed(self), self.user_groups())

    def user_groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", None) or []]

    async def apply_profile(self, options: dict) -> None:
        """The chosen profile's and options' overrides, on settings as they were before the
        last start's profile changed them; refused (ConfigError) when not on offer."""
        profiles.restore(self, self._profile_saved)
        offer = await profiles.listed(self)
        if not offer:
            self.profile = ""
            return
        selection = profiles.select(offer, options, self.user_groups())
        changed = profiles.apply_overrides(self, selection.overrides, self._profile_saved,
                                           f"profile {selection.profile.slug!r}")
        self.profile = selection.profile.slug
        self.log.info("%s uses profile %s %s%s", self.instance, self.profile, selection.values or "",
                      f", setting {', '.join(sorted(set(changed)))}" if changed else "")

    @default("options_form")
    def _default_options_form(self):
        async def form(spawner):
            if spawner.profile_list:
                return profiles.render_form(await spawner.offered_profiles(), spawner.user_options)
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
        if self.profile_list:
            return profiles.from_form(formdata)
        image = (formdata.get("image") or [""])[0]
        return {"image": image} if image else {}

    async def start(self):
        self.progress_bar.begin()
        retention.keep_purging(self)
        self._start_task = asyncio.ensure_future(self._start())
        try:
            return await self._start_task
        finally:
            self.progress_bar.end()

    async def _start(self) -> str:
        stages = Stages()
        ws = self.workspace_dir()
        self.progress_bar.emit(2, f"Checking the request for {self.instance}")
        outcome = "failed"
        try:
            with stages.timed("preflight"):
                try:
                    self.plan = await preflight.run(self)
                except SpawnError as e:  # refused before anything was made or touched
                    await self._audit_refusal(ws, e, stages)
                    raise
            async with contextlib.AsyncExitStack() as held:
                with stages.timed("lock"):  # another start or stop of this server may hold it
                    await held.enter_async_context(ws.lock())
                url = await self._start_locked(ws, stages, held)
            outcome = "ok"
            metrics.server_placed(self.user.name, self.name or "", self.member)
            return url
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.observe_spawn(stages, outcome, self.profile)

    async def _start_locked(self, ws: Workspace, stages: Stages, held: contextlib.AsyncExitStack) -> str:
        try:  # an unreadable Terraform state may hold a kept instance: decide nothing, touch nothing
            await asyncio.to_thread(ws.state_resources)
            current = await self._settle(ws, await self._current(ws), "start")
        except (StateUnreadable, WorkspaceBusy) as e:
            error = SpawnError(f"cannot start {self.instance}: {e}", reason="state")
            await self._audit_refusal(ws, error, stages)
            raise error from None
        resuming = current.resumable
        if resuming and await lxd.instance(self.endpoint, current.instance) is None:
            current = await self._forget_vanished(ws, current)
            resuming = False
        instance = current.instance if resuming else self.instance_name()
        if resuming and self.plan.hub_socket and self.hub_api_via == "auto":
            self.plan.hub_socket = await preflight.resumed_by_socket(self, instance)
        volume = str(self.plan.volume.workspace) if self.plan.volume is not None else ""
        # A kept instance that never had a home volume gets its home's files copied into it: the
        # record names the volume only once that is done, so a failed copy is tried again.
        import_home = resuming and bool(volume) and not current.volume
        await self._commit(ws, current.creating(instance, str(ws.path), self.chosen_image, resuming,
                                                "" if import_home else volume))
        attempt = starting.Attempt(resuming=resuming, import_home=import_home)
        try:
            url = await starting.start(self, self.plan, ws, stages, attempt)
        except asyncio.CancelledError as e:
            # Stopped mid-spawn (the pending page's Stop button, start_timeout): JupyterHub waits
            # one second for the spawn to end, then stops it, and refuses (500) while it is
            # still pending. So the start ends now; its clean-up goes on with the workspace's
            # lock, which every later start, stop and poll of this server waits for or sees.
            lock = held.pop_all()

            async def clean_up(cancelled=e):  # (`e` itself is unbound when the except block ends)
                try:
                    async with lock:
                        # First the interrupted Terraform and any LXD call the cancel left
                        # running in its thread end (either may be starting the instance this
                        # clean-up stops or destroys), then the clean-up.
                        await TerraformRunner.wait_for_interrupted()
                        await lxd.wait_for_abandoned()
                        await self._failed_start(ws, stages, attempt, cancelled)
                except Exception as failure:  # recorded by _failed_start; said here too
                    self.log.error("Cleaning up the cancelled start of %s failed: %s", self.instance, failure)

            self._cleanup_task = asyncio.ensure_future(clean_up())
            raise
        except BaseException as e:
            error = await asyncio.shield(self._failed_start(ws, stages, attempt, e))
            if error is None:
                raise  # BaseException (CancelledError, KeyboardInterrupt...) stays what it is
            raise error from e
        await self._commit(ws, self.record.running(
            attempt.member, url, attempt.listen_address, attempt.listen_port, keep_on_stop=not self.remove,
            settings=profiles.applied_values(self, self._profile_saved), profile=self.profile,
            volume=str(self.plan.volume.workspace) if self.plan.volume is not None else self.record.volume))
        return url

    async def _forget_vanished(self, ws: Workspace, current: ServerState) -> ServerState:
        """A kept instance deleted outside the hub (by hand on the daemon, or by another tool):
        its Terraform state still names it, and resuming it would fail at every start. Say so,
        audit it, forget it, and let this start make a new one (the home volume is untouched)."""
        volume = "; the home volume is kept" if self.plan.volume is not None else ""
        note = (f"the kept instance {current.instance} was deleted outside the hub: whatever was only in "
                f"it is gone{volume}; a new instance is made")
        self.log.warning("%s: %s", self.user.name, note)
        forgotten = await self.runner.forget_containers(ws.path, log_path=ws.run_log("state-rm"))
        await ws.audit({"operation": "vanished", **audit.server_fields(self), "instance": current.instance,
                        "outcome": "ok", "note": note, "forgotten": forgotten})
        self.progress_bar.emit(4, f"Your kept server {current.instance} no longer exists (it was deleted outside "
                                  f"JupyterHub){volume}: making a new one")
        await self._commit(ws, current.gone())
        return self.record

    async def _failed_start(self, ws: Workspace, stages: Stages, attempt, e: BaseException) -> SpawnError | None:
        """Undo a failed start (a kept instance is stopped and kept, anything new destroyed),
        record what is left, and return the error the user is shown: our own messages as they
        are; Terraform's and LXD's text only in the hub's log and the audit, with a reference
        the user can quote (None for a BaseException, which is re-raised as it is)."""
        reference = uuid.uuid4().hex[:12]
        if isinstance(e, asyncio.CancelledError):
            detail = "cancelled (start_timeout exceeded or stop requested)"
        elif isinstance(e, SpawnError):
            detail = e.detail
        else:
            detail = str(e) or type(e).__name__
        cleaned = await stopping.clean_failed_start(self, self.plan, ws, attempt.record, stages, detail,
                                                    keep=attempt.resuming, extra={"reference": reference})
        if not cleaned:  # the instance may still be there and bound to its port: keep both
            await self._commit(ws, self.record.placed(attempt.listen_address, attempt.listen_port,
                                                      attempt.target or "").failed(detail))
        else:
            ports.release(attempt.listen_address, attempt.listen_port)
            await self._commit(ws, self.record.kept() if attempt.resuming else self.record.gone())
        if not isinstance(e, Exception):
            return None
        kept = " Your server and its files are kept as they were." if attempt.resuming else ""
        if isinstance(e, SpawnError):
            if kept and "kept" not in e.message:
                return SpawnError(e.message + kept, reason=e.reason, log_message=e.detail,
                                  status_code=e.status_code)
            return e
        source = "Terraform" if isinstance(e, TerraformError) else self.backend_info.display
        self.log.error("Start of %s failed (reference %s): %s", self.instance, reference, detail)
        return SpawnError(
            f"Starting {self.instance} failed: {source} reported an error.{kept} The administrator can find "
            f"the details in the hub's log and in the server's audit record (reference {reference}).",
            reason="error", log_message=f"{detail} (reference {reference})", status_code=500)

    async def _audit_refusal(self, ws: Workspace, e: SpawnError, stages: Stages) -> None:
        """A server with a workspace (a kept one, or one that ran before) records its refusals;
        a new one gets no workspace for a refusal."""
        if await asyncio.to_thread(ws.path.exists):
            try:
                phase = (await self._current(ws)).phase.value
            except StateUnreadable:
                phase = "unknown (unreadable Terraform state)"
            await ws.audit({**audit.start_record(self), "outcome": "refused", "error": e.detail,
                            "phase": phase, **stages.record()})

    # -- the server's record --------------------------------------------------------------------
    async def _current(self, ws: Workspace) -> ServerState:
        """What exists: the workspace's record (written at every change, so it also knows an
        interrupted spawn); for a workspace from before records, the hub's saved state or what
        its Terraform state holds."""
        found = await asyncio.to_thread(server_state.read, ws.path)
        if found is not None:
            return found
        if self.record.exists:
            return self.record
        if not await asyncio.to_thread(ws.path.exists):
            return ServerState(workspace=str(ws.path))
        resources = await asyncio.to_thread(ws.state_resources)
        named = (await asyncio.to_thread(ws.state_outputs)).get("instance_name") if resources else None
        return server_state.legacy(resources, named or self.instance_name(), str(ws.path), keep=not self.remove)

    async def _commit(self, ws: Workspace | None, record: ServerState) -> None:
        """The one place a server's record changes: in memory (get_state saves it with the hub)
        and in its workspace."""
        self.record = record
        if ws is not None:
            await asyncio.to_thread(server_state.write, ws.path, record)

    async def _settle(self, ws: Workspace, current: ServerState, why: str) -> ServerState:
        """Called when the hub does not consider this server running (a start, or a poll after a
        hub restart): a spawn the record says was in progress, a failed clean-up, or a server
        the hub lost track of is cleaned up (a kept instance is stopped and kept). The caller
        holds the lock. Returns the record afterwards; raises when the clean-up fails."""
        self.record = current
        if current.phase not in (Phase.CREATING, Phase.FAILED, Phase.RUNNING):
            return current
        keeps = current.keeps_files  # what the server was started with decides, not today's settings
        try:
            await recovery.settle(self, ws, current.phase.value, keeps)
        except Exception as e:
            self.log.error("Could not clean up %s (%s): %s", self.instance, why, e)
            await self._commit(ws, current.failed(str(e)))
            raise SpawnError(f"cannot start {self.instance}: what an earlier run left could not be cleaned up; "
                             "the administrator can find why in the hub's log", reason="cleanup",
                             log_message=f"cleaning up {self.instance} failed: {e}") from None
        ports.release(current.listen_address, current.listen_port)
        await self._commit(ws, current.kept() if keeps else current.gone())
        return self.record

    async def progress(self):
        async for event in self.progress_bar.stream():
            yield event

    async def poll(self):
        if self._start_task is not None and not self._start_task.done():
            return None
        if self._cleanup_task is not None and not self._cleanup_task.done():
            return 0  # a cancelled start is being cleaned up: no server
        if self.record.phase is not Phase.RUNNING:
            await self._settle_unattended()
            return 0
        if self._polling:  # the last poll is still waiting on LXD: no pile of hung requests
            return None
        self._polling = True
        try:
            reason, location = await recovery.dead_reason(self)
            if reason is None:
                if location and location != self.record.member:  # moved (e.g. evacuated)
                    self.log.info("%s is now on %s (was %s)", self.instance, location, self.record.member or "-")
                    await self._commit(self.workspace_dir(), self.record.moved(location))
                return None
            try:
                await self._stop(reason=f"found dead by poll: {reason}")
                metrics.RECOVERIES.labels("dead_server").inc()
            except Exception as e:  # recorded: the record keeps the instance and its port
                self.log.error("Cleaning up dead server %s failed: %s", self.instance, e)
            return 1
        finally:
            self._polling = False

    async def _settle_unattended(self) -> None:
        """The hub asks about a server it believes may run, and this spawner has no running
        one (typically the hub restarted while a spawn was in progress): when the workspace's
        record says a spawn was in progress, or a server ran, and nobody holds its lock, clean
        that up. Never on a guess: without such a record nothing is touched."""
        ws = self.workspace_dir()
        found = await asyncio.to_thread(server_state.read, ws.path)
        if found is None or found.phase not in (Phase.CREATING, Phase.RUNNING, Phase.FAILED):
            return
        try:
            async with ws.lock(wait=False):
                await self._settle(ws, await self._current(ws), "poll")
        except (WorkspaceBusy, SpawnError, StateUnreadable) as e:
            self.log.warning("poll(%s): left for later: %s", self.instance, e)

    async def stop(self, now=False):
        if self._start_task is not None and not self._start_task.done():
            self.progress_bar.emit(90, "Spawn cancelled (start_timeout exceeded or stop requested): "
                                       "removing what it made")
            self._start_task.cancel()
            try:
                await self._start_task
            except BaseException:
                pass
        if self._cleanup_task is not None and not self._cleanup_task.done():
            await asyncio.shield(self._cleanup_task)
        await self._stop()

    async def _stop(self, reason: str = "") -> None:
        """Stop what the record says runs: destroy it (remove) or stop and keep it; a spawn that
        was interrupted or a failed clean-up is cleaned up; a kept server stays as it is."""
        ws = self.workspace_dir()
        if not await asyncio.to_thread(ws.path.exists):
            await self._commit(None, ServerState())
            return  # never got as far as a workspace: nothing to stop, nothing to record
        async with ws.lock():
            current = await self._current(ws)
            self.record = current
            if current.phase in (Phase.CREATING, Phase.FAILED):
                await self._settle(ws, current, "stop")
            elif current.phase is Phase.RUNNING:
                keep = current.keeps_files  # as the server was started (its profile), not today's remove
                try:
                    await stopping.stop(self, ws, keep, reason)
                except Exception as e:
                    await self._commit(ws, current.failed(str(e)))
                    raise
                ports.release(current.listen_address, current.listen_port)
                await self._commit(ws, current.kept() if keep else current.gone())
        metrics.server_gone(self.user.name, self.name or "")
        revoke_forgotten_tokens(self)

    async def delete_forever(self):
        """The server or its user is deleted: destroy everything it has, a kept instance too, and
        archive its workspace. JupyterHub logs and swallows an error here, so it is also logged
        and audited (the record keeps what is left, for the orphans command). The home volume
        goes too (delete_storage): a shared one with the default server, which JupyterHub deletes
        only with the user (as KubeSpawner deletes a shared PVC); a per-server one with its
        server."""
        ws = self.workspace_dir()
        used = ""  # the volume this server mounted, as its record says
        if await asyncio.to_thread(ws.path.exists):
            async with ws.lock():
                current = await self._current(ws)
                used = current.volume
                self.record = dataclasses.replace(current, instance=current.instance or self.instance_name())
                try:
                    await stopping.delete_forever(self, ws)
                except Exception as e:
                    self.log.error("Deleting %s for good failed: %s", self.instance, e)
                    await self._commit(ws, self.record.failed(str(e)))
                    raise
            ports.release(current.listen_address, current.listen_port)
            await self._commit(None, ServerState())
        vol = await asyncio.to_thread(storage.from_workspace, used) if used else None
        if vol is None and self.storage_enabled:
            vol = await storage.resolve(self)
        if vol is not None:
            # A shared volume goes with the user (the default server's deletion), after every
            # other server that has it attached: the last of them deletes it when it was deferred.
            if not vol.shared or not self.name or await asyncio.to_thread(storage.delete_pending, vol):
                if not self.delete_storage:
                    await storage.release(self, vol)
                elif self.storage_retention_days > 0:
                    await retention.retain(self, vol)
                else:
                    await storage.delete(self, vol)

    async def rename(self, old_name, new_name):
        """JupyterHub 6: a stopped named server is renamed; its workspace moves (renaming)."""
        await renaming.rename(self, old_name, new_name)

    # ---- state ------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.record.exists:
            state.update(self.record.to_dict())
        return state

    def load_state(self, state):
        super().load_state(state)
        # A state from before records: the configuration now is all there is to know whether the
        # instance holds the user's files (remove = False then, and now).
        self.record = ServerState.from_dict(state, keeps_files_before_records=not self.remove)
        if self.record.settings and self.record.phase is not Phase.NONE:
            # The server was started with its profile's settings: a stop after a hub restart must
            # do what that start promised (remove, lxd_endpoint, backend ...).
            profiles.reapply(self, self.record.settings, self._profile_saved)
        self.chosen_image = self.record.image or self.chosen_image
        if self.record.listen_port and self.record.phase in (Phase.RUNNING, Phase.FAILED):
            ports.claim(self.record.listen_address, self.record.listen_port)
        if self.record.phase is Phase.RUNNING:
            metrics.server_placed(self.user.name, self.name or "", self.member)
            self._restart_hub_relay()

    def _restart_hub_relay(self) -> None:
        """A restarted hub finds servers running: those that reach its API through its unix
        socket need the relay at once, not at the next spawn."""
        if self.hub_api_via == "proxy":
            return
        try:
            task = asyncio.get_running_loop().create_task(start_hub_relay(self))
        except RuntimeError:  # no event loop (a command line tool reading state): no relay wanted
            return
        _background.add(task)
        task.add_done_callback(self._relay_started)

    def _relay_started(self, task: asyncio.Task) -> None:
        _background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("The hub API relay for running servers could not start: %s", task.exception())

    def clear_state(self):
        """JupyterHub calls this before every start and after every stop. What exists does not
        change because the hub forgets a server: the record stays (a kept instance, or one whose
        clean-up failed, is found again by the next start), as DockerSpawner keeps a kept
        container's id."""
        super().clear_state()
        profiles.restore(self, self._profile_saved)  # before the hub applies group_overrides again
        metrics.server_gone(self.user.name, self.name or "")
