"""Every setting an operator gives LxdSpawner (c.LxdSpawner.<name>), with its help: the one
source of the README's configuration table (`make config-docs`). What the settings do lives in
the lifecycle, homes and systems packages; this module only declares and checks them."""

from __future__ import annotations

from pathlib import Path

from traitlets import (
    Bool,
    Callable,
    Dict,
    Enum,
    Float,
    Int,
    List,
    TraitError,
    Tuple,
    Unicode,
    Union,
    default,
    observe,
    validate,
)
from traitlets.config import LoggingConfigurable

from .systems import backends
from .systems.environment import DEFAULT_ALLOWED

PACKAGE_DIR = Path(__file__).resolve().parent


def default_module_source(module: str = "notebook") -> str:
    """A module shipped in the wheel (or, in a source checkout, the repository's): the notebook
    module (one server) or the storage module (one user's volume)."""
    packaged = PACKAGE_DIR / "modules" / module
    if packaged.is_dir():
        return str(packaged)
    return str(PACKAGE_DIR.parent / "terraform" / "modules" / module)


class LxdSpawnerSettings(LoggingConfigurable):
    """The settings of LxdSpawner beyond JupyterHub's Spawner's (mem_limit, cpu_limit, environment,
    cmd, start_timeout, http_timeout... are inherited from it)."""

    # ---- seed-compatible configuration ------------------------------------------------------
    image = Unicode(
        "jupyter-notebook",
        help="""LXD or Incus image (alias or fingerprint) each container is made from. It must
        hold the single-user server and the `jupyterhub-singleuser.service` unit, which powers
        the container off when the server ends: poll() reads only the instance's status (the
        recipe is image/ in the repository; `make demo` builds and imports `jupyter-notebook`).
        An image the daemon does not have fails the spawn with a message naming it, and nothing
        is created. Users may be offered others through allowed_images or profile_list.""",
    ).tag(config=True)

    files_to_push = List(
        [],
        help="""Files written into the container before it starts. Each entry is a [host_src,
        container_dst] pair (the seed's form: a file of the hub host, copied with mode 0644,
        owned by root), e.g. [["/etc/passwd", "/etc/passwd"]], or a dict {"target":
        container_path, "source": host_path} or {"target": container_path, "content": text}
        (exactly one of source and content) with optional "mode" (an octal string, default
        "0644"), "uid" and "gid" (default 0). {username} and {servername} expand in the paths,
        not in content: in the host source as the escaped names, as DockerSpawner's volumes
        escape them (letters, digits, '-' and '.' kept, so jean-luc stays jean-luc; anything
        else becomes _xx, so a/b becomes a_2Fb; {raw_username} and {raw_servername} give the
        names as they are), in the container path as they are. A name that would put a '/', a
        '.' or '..' part or a NUL into a path is refused. The container path must be absolute.
        A missing source, a bad mode, an unknown key or a malformed entry fails the spawn
        before anything is created.""",
    ).tag(config=True)

    filesystems_to_mount = List(
        [],
        help="""Host directories mounted into the container as LXD disk devices, as [name,
        host_dir, container_path] triples, e.g. [["home", "/srv/homes/{username}",
        "/home/{username}"]]. name is the device's name (letters, digits, '.', '_' and '-', at
        most 64). {username} and {servername} expand as in files_to_push: escaped in host_dir,
        so /srv/homes/{username} is always one directory in /srv/homes ({raw_username} for the
        name as it is), as they are in container_path. Both paths must be absolute. The host
        directory must exist on the member the server lands on: with the daemon on this host, a
        missing one fails the spawn before anything is made (unless create_mount_dirs).
        mount_idmap says how ids match the host's. An entry mounted at the home
        (storage_mount_path) is the home instead of a volume.""",
    ).tag(config=True)

    privileged_container = Bool(
        False,
        help="""Run containers privileged (LXD security.privileged), with host ids unmapped.
        Only needed when pushed /etc/passwd or mounts must see host ids as they are;
        unprivileged (the default) is much safer. mount_idmap is not used for privileged
        containers.""",
    ).tag(config=True)

    privileged_containers = Bool(
        None,
        allow_none=True,
        help="""The name the seed project's README gives privileged_container (plural): set, it
        sets privileged_container, so a configuration written from that README keeps working.
        None (the default): not set. Prefer privileged_container.""",
    ).tag(config=True)

    @observe("privileged_containers")
    def _seed_privileged_name(self, change):
        if change.new is not None:
            self.privileged_container = change.new

    process_limit = Int(
        0,
        help="""Most processes in one container (LXD limits.processes). 0 (the default): no
        limit. A negative number fails the spawn before anything is made.""",
    ).tag(config=True)

    container_cpu_share = Int(
        10,
        help="""Each container's CPU weight, in percent of a host process's (LXD
        limits.cpu.allowance "N%"), from 1 to 100. It is a soft share: idle CPU stays fully
        usable, and containers share a busy CPU among themselves as before. Below 100, the hub,
        the daemon and Terraform come first when many servers start at once on their host, so a
        burst of spawns ends sooner and fewer of them time out; 100: containers weigh as much
        as the hub. Not used with cpu_limit (a hard quota, which takes its place). A value
        outside 1-100 fails the spawn before anything is made. Numbers: docs/performance.md
        (concurrent spawns).""",
    ).tag(config=True)

    host_weights = Dict(
        {},
        help="""Placement weight per cluster member name, e.g. {"big1": 2, "old3": 0.5}; a
        member not listed weighs 1. Least-loaded placement scores each online member its weight
        divided by (its load + 1), load counting its instances (only this spawner's with
        count_managed_only) and spawns in flight, so weight 2 takes about twice the servers of
        weight 1; weight 0 takes none (with every online member at 0, a spawn is refused: no
        member can take it). Not used when LXD or a callable places servers (placement).""",
    ).tag(config=True)

    get_uid_gid = Callable(
        None,
        allow_none=True,
        help="""Callable(spawner) -> (uid, gid), may be async: the ids the user's account gets
        inside the container, so files in mounted directories belong to the right host ids.
        None (the default): the user's ids on the hub host when a regular account of that name
        exists there (uid and gid 1000 or more, not nobody), else 1000:1000, so a hub user
        called "root" or "daemon" never gets a system account's ids. A uid or gid of 0 fails
        the spawn before anything is made: the server never runs as root.""",
    ).tag(config=True)

    create_mount_dirs = Bool(
        False,
        help="""Create missing host directories of filesystems_to_mount on the hub host before
        the spawn, owned by the user's uid and gid (get_uid_gid), mode 0750. Only useful when
        the daemon runs on the hub host or the path is shared storage its members see. False
        (the default): a missing directory fails the spawn (checked when the daemon is on this
        host).""",
    ).tag(config=True)

    mount_idmap = Enum(
        ["raw.idmap", "shift", "none"],
        help="""How ids in filesystems_to_mount match the host's for unprivileged containers,
        so a file the user writes belongs to the user's uid and gid (get_uid_gid) on the host.
        "raw.idmap": that uid and gid are mapped 1:1 into the container; the daemon must be
        allowed to map them (lines `root:<uid>:1` in /etc/subuid and `root:<gid>:1` in
        /etc/subgid, then restart it), and with the daemon on this host a missing line fails
        the spawn before anything is made, naming the lines to add. "shift": idmapped mounts
        (disk shift=true; works on Incus 6.0.1+, not on LXD 5.0.2 with kernels 6.9+). "none":
        the container's own id map (the host sees shifted ids). Default: the backend's, "shift"
        on Incus, "raw.idmap" on LXD. Not used for privileged containers or without mounts.""",
    ).tag(config=True)

    @default("mount_idmap")
    def _default_mount_idmap(self):
        return backends.BACKENDS[self.backend].mount_idmap

    commands_to_prepare = List(
        [],
        help="""Commands run inside the container as the user, in their home, after it starts
        and before the spawn is done, e.g. [["pip", "install", "--user", "nbgitpuller"]]. Each
        is an argument list; a string is split like a shell would, before
        {username}/{servername} expansion, so a name is always one argument and never code. An
        empty command, or an argument that a name would turn into an option (starting with
        '-'), is refused before anything is made. Their environment is HOME, USER and PATH
        only. A command that exits non-zero fails the spawn, and the user sees the command and
        the end of its output.""",
    ).tag(config=True)

    post_hub_commands = List(
        [],
        help="""Commands run on the hub host after the container is up, each an argument list
        (same splitting, expansion and refusals as commands_to_prepare), with only the
        allow-listed part of the hub's environment (host_environment_allowlist). A command that
        cannot run or exits non-zero fails the spawn: the user sees which command failed, its
        output goes to the hub's log only.""",
    ).tag(config=True)

    allowed_images = Union(
        [List(), Dict()],
        default_value=[],
        help="""Images users may choose: a list of images, or a dict of display name -> image.
        With two or more, the spawn page offers a choice (through the REST API: user_options
        {"image": display name or image}). The choice is checked on the server: an image not
        listed is refused and nothing is created. Empty (the default): always image, and a
        request for another one is refused. When profile_list is set, it replaces this choice.""",
    ).tag(config=True)

    profile_list = Union(
        [List(), Dict(), Callable()],
        default_value=[],
        help="""Choices offered to users, in KubeSpawner's shape (a zero-to-jupyterhub
        profile_list works as it is): a list of profiles, a dict of slug -> profile, or a
        callable(spawner) returning either (may be async). A profile has display_name, slug
        (made from the display name when missing), description, default, spawner_override (or
        kubespawner_override: any setting of this spawner, e.g. image, mem_limit, cpu_limit,
        lxd_profiles, storage_capacity, allowed_members, cluster_group, remove; dict settings
        such as environment, storage_config and module_variables merge into yours, None
        deleting a key; a server's settings are saved with it and applied again after a hub
        restart), groups (only members of one of these JupyterHub groups see and may choose it)
        and profile_options: {name: {display_name, choices: {slug: {display_name, default,
        spawner_override}}, unlisted_choice: {enabled, display_name, validation_regex,
        validation_message, spawner_override with {value}}}}. Chosen in the spawn form or
        through the REST API as user_options {"profile": slug, "<option>": choice slug,
        "<option>--unlisted-choice": text}; anything not on offer is refused (HTTP 400) before
        anything is made. Overrides apply in order: your configuration, group_overrides, the
        profile, each option. When set, it replaces the allowed_images choice. Empty (the
        default): no choice. More: docs/profiles.md.""",
    ).tag(config=True)

    stop_grace_period = Float(
        0.0,
        help="""Seconds a stopping server's container gets to shut down cleanly (systemd stops
        the server, which ends its kernels) before it is forced off; Terraform plans the
        destroy meanwhile, and its apply then only deletes the container. 0 (the default)
        forces it off at once, as a pulled plug, which makes every stop shorter: JupyterLab
        saves notebooks as the user works, so only what runs in kernels is cut short, as it is
        by any stop. A kept server (remove = False) always gets a clean stop of at least 30 s
        first. Numbers: docs/performance.md.""",
    ).tag(config=True)

    remove = Bool(
        True,
        help="""Delete the container when the server stops (terraform destroy). Everything the
        user wrote inside the container goes with it, at every stop, crash or shutdown from the
        File menu, except their home volume (storage_enabled, the default) and mounts, which
        outlive every container. False: stop and keep the container; the next start resumes the
        same container with its files. A kept container is never destroyed by a failure (a
        refused or failed resume leaves it as it was); it is destroyed, and its workspace
        archived as `<server>.deleted-<time>`, only when the server or its user is deleted. One
        deleted outside the hub is said to the user, audited and made anew at the next start.
        Decided when a server starts (a profile may set it): a server started with False is
        kept at its stop even after a hub restart or a change of this setting. More:
        docs/operations.md (where a user's data lives).""",
    ).tag(config=True)

    # ---- a user's persistent storage ------------------------------------------------------------
    storage_enabled = Bool(
        True,
        help="""Give each user a persistent home: an LXD custom storage volume, made by
        Terraform (the storage module) in a workspace of its own
        (`<state_dir>/<user>/_volumes/<volume>/`), mounted at storage_mount_path in each of
        their servers. It survives every stop, crash, hub restart, image change and `remove`;
        it is deleted only with the user (delete_forever, after storage_retention_days), unless
        delete_storage is False. False: the home is inside the container, and with remove =
        True it is deleted at every stop.""",
    ).tag(config=True)

    storage_capacity = Unicode(
        "10GiB",
        help="""Size of each home volume (LXD units: 10GiB, 500MiB, 1GB), enforced by the pool:
        a write past it fails inside the container. The pool must support quotas (btrfs, zfs,
        lvm, ceph; not dir): `tf-lxd-spawner doctor` checks. Raising it grows existing volumes
        in place at their next spawn (after a snapshot); lowering it is refused (volumes never
        shrink), as is a value that is not a size. Empty: no quota.""",
    ).tag(config=True)

    storage_pool = Unicode(
        "default",
        help="""LXD storage pool of the home volumes. Changing it for existing users is refused
        (their volume would be replaced, emptied): move their volumes with the daemon first. On
        a pool local to each cluster member, a user's servers always go to the member their
        volume is on.""",
    ).tag(config=True)

    storage_config = Dict(
        {},
        help="""Extra LXD configuration of each home volume, e.g. {"snapshots.schedule":
        "@hourly"}; its keys win over storage_snapshot_schedule, storage_snapshot_expiry and
        storage_snapshot_pattern, and a key set to None or "" is left out. Applied in place, to
        existing volumes too, at their next spawn.""",
    ).tag(config=True)

    storage_name_template = Unicode(
        "home-{username}",
        help="""Name of the volume a server mounts ({username}; with {servername}, one volume
        per named server, deleted with that server, as KubeSpawner's pvc_name_template).
        Without {servername} all of a user's servers share one volume. Made valid for LXD as
        instance names are (instance_name_template). A renamed server keeps its volume; a new
        server under the old name gets one of its own. A volume of that name this hub did not
        make for the server (another hub's on the same daemon, an operator's own) is never
        taken over: the spawn is refused, naming it. Two hubs on one daemon need different
        templates (e.g. "hub2-home-{username}").""",
    ).tag(config=True)

    storage_mount_path = Unicode(
        "",
        help="""Where the volume is mounted in the container ({username}: the account name
        inside). Empty (the default): the account's home, /home/<account>. A
        filesystems_to_mount entry mounted at the same path (the seed's /srv/homes/{username}
        homes) is the home instead: that server gets no volume.""",
    ).tag(config=True)

    delete_storage = Bool(
        True,
        help="""Delete a user's volume with the user (delete_forever, after
        storage_retention_days; a per-server volume with its named server), after every server
        of the user that has it attached. False: keep volumes of deleted users (`tf-lxd-spawner
        orphans` lists them); a new user of the same name is refused the kept volume (HTTP 409,
        nothing is made) until an operator gives it back (`tf-lxd-spawner adopt-volume --user U
        --volume V`) or deletes it.""",
    ).tag(config=True)

    storage_module_source = Unicode(
        help="""Source of the Terraform module that makes one home volume (a local path or any
        module address Terraform accepts). Default: the storage module shipped with this
        package. An operator's own module must accept the same inputs and give the same outputs
        (terraform/modules/storage/README.md).""",
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
        help="""How long the daemon keeps each snapshot of a home (its snapshots.expiry: 2w,
        3d, 12H...), scheduled ones and the spawner's own. Empty: kept until deleted by hand.""",
    ).tag(config=True)

    storage_snapshot_pattern = Unicode(
        "{{ creation_date|date:'2006-01-02_15-04' }}",
        help="""Name of each scheduled snapshot (the daemon's snapshots.pattern: a pongo2
        template, or a name with %d for a counter). The default names them by their UTC date
        and time, which is what users see in ~/.snapshots.""",
    ).tag(config=True)

    storage_snapshots_mount = Unicode(
        ".snapshots",
        help="""Where users find their home's snapshots, read-only, inside their server: a path
        relative to the home (or absolute). Each snapshot is a folder named after it; a user
        copies a file back with no administrator involved. Needs a pool whose snapshots are
        directories (btrfs, dir) that this host can reach (the daemon on this host, or
        storage_pool_dir set); on other pools the snapshots are not shown. Empty: not shown.""",
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
        --cull-users) is kept before it is purged: renamed out of reach of a new user of the
        same name, listed by `tf-lxd-spawner home list`, restorable by `tf-lxd-spawner home
        undelete`. 0: deleted with the user at once (`tf-lxd-spawner doctor` fails when the
        idle culler deletes users then). Only with delete_storage (False keeps homes for ever).""",
    ).tag(config=True)

    storage_purge_interval = Float(
        3600.0,
        help="""Seconds between the hub's own purges of homes whose retention is over, started
        by the first spawn after the hub starts (also `tf-lxd-spawner home purge`, for cron).
        0: only by the command.""",
    ).tag(config=True)

    storage_nearly_full = Float(
        0.9,
        help="""Share of a home's quota (0-1) above which the spawn page warns the user that
        their home is nearly full. The metric tf_lxd_spawner_home_used_bytes gives each home's
        use.""",
    ).tag(config=True)

    # ---- groups' shared folders -----------------------------------------------------------------
    shared_volumes = List(
        Dict(),
        [],
        help="""Folders shared by JupyterHub groups: a course's data that its staff write and its
        students only read, a team's project folder. Each entry is a dict: `name` (lower-case
        letters, digits, '-'), `size` ("20GiB"; "" for no quota), `path` (absolute, or relative to the home),
        `write_groups` and `read_groups` (JupyterHub group names; a user in both writes, a user
        in neither gets no device for it), and optionally `pool` (default storage_pool), `gid`
        (the group id that owns the folder, default 1000) and `config` (LXD volume keys). Each
        folder is an LXD volume `shared-<name>`, made by the storage module on the first start
        of a user who gets it, in `<state_dir>/_shared/<name>/`; the daemon mounts it read-only
        for readers. No stop and no user deletion touches it: `tf-lxd-spawner shared delete`
        does. A change of a user's groups takes effect at their next start (audited). Usable
        in a profile's overrides and JupyterHub's group_overrides. See docs/shared-folders.md.""",
    ).tag(config=True)

    # ---- Terraform ------------------------------------------------------------------------------
    terraform_path = Unicode(
        "",
        help="""The binary that runs the modules: `terraform`, `tofu`, or an absolute path to
        either. Empty: `terraform` when it is on the hub's PATH, else `tofu` (the hub's log
        says which). Every audit record names the binary, its version, the provider and the
        daemon. A binary that is not found fails the spawn before anything is made.""",
    ).tag(config=True)

    terraform_cli_config = Unicode(
        "",
        help="""Terraform CLI configuration file (TF_CLI_CONFIG_FILE) for every run, e.g. one
        whose provider_installation points at a local filesystem_mirror. Empty: inherit the
        hub's environment.""",
    ).tag(config=True)

    module_source = Unicode(
        help="""Source of the Terraform module that makes one server (a local path or any
        module address Terraform accepts). Default: the notebook module shipped with this
        package. An operator's own module must accept the same inputs and give the same outputs
        (terraform/modules/notebook/README.md). A local path that does not exist fails the
        spawn before anything is made.""",
    ).tag(config=True)

    @default("module_source")
    def _default_module_source(self):
        return default_module_source()

    module_variables = Union(
        [Dict(), Callable()],
        default_value={},
        help="""Extra inputs for the module, as a dict or a callable(spawner) -> dict (may be
        async), e.g. {"profiles": ["default", "gpu"]}. They override the spawner's own values
        (image, profiles, files, limits...), but not the inputs it owns (name, labels, target,
        listen_address, listen_port, connect_via, server_port, server_environment, hub_address,
        hub_port, hub_socket_dir): setting one of those fails the spawn before anything is
        made, naming the setting to use instead.""",
    ).tag(config=True)

    state_dir = Unicode(
        "tf-lxd-spawner-state",
        help="""Directory holding one Terraform workspace per server,
        `<state_dir>/<user>/<server>/`: state, inputs, run logs and audit.jsonl. Relative paths
        are relative to the hub's working directory. Keep it: it is the audit record and what a
        restarted hub finds servers by. It holds Terraform's state, which holds the servers'
        environment: keep it private.""",
    ).tag(config=True)

    share_terraform_init = Bool(
        True,
        help="""Run `terraform init` once per root module, in `<state_dir>/_terraform-init/`,
        and link every workspace's .terraform to it (with a copy of its lock file), instead of
        initialising each new workspace (which costs the hub CPU and unpacks a provider binary
        per server). Plans and applies only read the shared directory, so concurrent spawns are
        safe. False: each workspace initialises its own .terraform. Numbers:
        docs/performance.md.""",
    ).tag(config=True)

    terraform_concurrency = Int(
        4,
        help="""Most terraform processes the hub runs at once (all users together). Further
        spawns and stops wait their turn.""",
    ).tag(config=True)

    terraform_niceness = Int(
        10,
        help="""Added to the scheduling niceness of every terraform process (and its provider,
        which inherits it), 0-19: many spawns at once then cannot starve the hub's event loop
        of CPU, so the hub keeps answering its users. 0 runs Terraform at the hub's priority. A
        value outside 0-19 is refused (TraitError) when the configuration is loaded.""",
    ).tag(config=True)

    @validate("terraform_niceness")
    def _valid_niceness(self, proposal):
        if not 0 <= proposal["value"] <= 19:
            raise TraitError(f"terraform_niceness {proposal['value']} must be from 0 to 19")
        return proposal["value"]

    terraform_gogc = Int(
        400,
        help="""GOGC (the Go garbage collector's target, in percent) for terraform and its
        provider, which inherits it. A terraform run lives a second or so: collecting less
        often than Go's default (100) saves CPU for a little more memory per run. 0 leaves GOGC
        to the hub's environment; a negative value is refused (TraitError) when the
        configuration is loaded. Numbers: docs/performance.md.""",
    ).tag(config=True)

    @validate("terraform_gogc")
    def _valid_gogc(self, proposal):
        if proposal["value"] < 0:
            raise TraitError(f"terraform_gogc {proposal['value']} must be a percentage (0: Go's own setting)")
        return proposal["value"]

    provider_refresh_interval = Unicode(
        "250ms",
        help="""The LXD provider's polling interval while an instance changes state (a Go
        duration: 250ms, 1s). The provider's own default (10s) would add up to 10 s to every
        spawn and stop.""",
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
        every 250 ms, for up to http_timeout seconds; no answer by then fails the spawn, the
        server's last journal lines go to the hub's log, and the container is removed). The
        hub's own check, which waits longer and longer between tries (up to seconds), then
        finds it up at once. False: return when the container runs and leave waiting to the hub
        (for images whose server is not reachable from the hub's host).""",
    ).tag(config=True)

    apply_attempts = Int(
        2,
        help="""How many times `terraform apply` is tried when it fails with an error LXD
        reports as transient (its file-push helper not ready yet, a connection reset, an
        instance busy). Other errors fail the spawn at once. 1: no retry.""",
    ).tag(config=True)

    # ---- LXD ------------------------------------------------------------------------------------
    backend = Enum(
        ["lxd", "incus"],
        "lxd",
        help="""The daemon that runs the containers: "lxd" or "incus" (both speak the same
        API). At each spawn the spawner checks that the daemon at lxd_endpoint is this one; if
        not, the spawn fails naming the fix. It decides the local socket used when lxd_endpoint
        is empty and the default mount_idmap.""",
    ).tag(config=True)

    lxd_endpoint = Unicode(
        "",
        help="""API endpoint of the LXD or Incus daemon: empty (the default) for the backend's
        local unix socket (/var/lib/lxd/unix.socket or /var/lib/incus/unix.socket, or under
        LXD_DIR / INCUS_DIR), the path of another unix socket, or an https:// URL of a remote
        server or cluster (then lxd_cert, lxd_key and lxd_verify; see docs/cluster.md).""",
    ).tag(config=True)

    lxd_cert = Unicode(
        "",
        help="Client certificate (PEM file) for an https lxd_endpoint, one the daemon trusts.",
    ).tag(config=True)

    lxd_key = Unicode(
        "",
        help="Client key (PEM file) of lxd_cert, for an https lxd_endpoint.",
    ).tag(config=True)

    lxd_verify = Union(
        [Bool(), Unicode()],
        default_value=True,
        help="""For an https lxd_endpoint: True (the default) to verify the daemon's
        certificate with the system's CAs; the path of the server's own certificate (PEM) to
        pin exactly that certificate (LXD's usual self-signed one; for a cluster, its
        cluster.crt), which pylxd verifies against and the Terraform provider gets as
        `servercerts/<remote>.crt`; or False to skip verification.""",
    ).tag(config=True)

    lxd_timeout = Float(
        60.0,
        help="""Seconds any one LXD API request may take (waits for LXD operations included).
        LXD calls run in a small thread pool of their own per endpoint, so a daemon that
        accepts connections and never answers fails that spawn with a clear error instead of
        holding the hub's threads.""",
    ).tag(config=True)

    status_max_age = Float(
        2.0,
        help="""Seconds a listing of all instances' status may be reused by poll(): every
        server's poll within that time shares one LXD request (a poll round of 200 servers
        costs one), and a server found stopped is confirmed with a request of its own before it
        is ended. 0 asks anew for every poll. Numbers: docs/performance.md (one poll round).""",
    ).tag(config=True)

    orphan_grace_period = Float(
        600.0,
        help="""Seconds during which `tf-lxd-spawner orphans` leaves a new instance alone (its
        --grace overrides this): a spawn may be creating it right now, since it is in LXD
        before Terraform writes it into the state. Such instances are reported as skipped,
        never as orphans.""",
    ).tag(config=True)

    lxd_profiles = List(
        ["default"],
        help="""LXD profiles of every container, in order (a later one's keys win). The first
        must provide the root disk. Each must exist on the daemon. module_variables' "profiles"
        replaces this list.""",
    ).tag(config=True)

    placement = Union(
        [Enum(["least-loaded", "lxd"]), Callable()],
        default_value="least-loaded",
        help="""Which cluster member gets a new server: "least-loaded" (the default: online
        members scored by host_weights / (load + 1), counting spawns in flight), "lxd" (LXD's
        own scheduler; the server's proxy then listens on all of the member's addresses,
        0.0.0.0, since the member is known only once LXD chose it; with allowed_members or
        cluster_group, least-loaded among those members instead), or a callable(spawner,
        members) -> member name (may be async; given the members allowed_members and
        cluster_group leave). No member able to take the server fails the spawn with a message
        saying so. Ignored on a standalone LXD server.""",
    ).tag(config=True)

    excluded_members = List(
        [],
        help="""Cluster members that never get new servers (e.g. during maintenance), in
        addition to members LXD reports as Evacuated or Offline. A kept server on an excluded
        member cannot resume until it is allowed again (refused, naming the member).""",
    ).tag(config=True)

    allowed_members = List(
        [],
        help="""Cluster members new servers may go to (empty, the default: every member); with
        cluster_group, a member must be in both. Meant for a profile's spawner_override, e.g.
        the members with GPUs. A kept server or a home volume already on another member is
        refused with a message naming it. placement = "lxd" places such servers least-loaded.""",
    ).tag(config=True)

    cluster_group = Unicode(
        "",
        help="""An LXD/Incus cluster group (lxc cluster group create gpu; lxc cluster group
        assign m1 gpu): new servers go only to its members. Empty (the default): any member.""",
    ).tag(config=True)

    count_managed_only = Bool(
        False,
        help="""Least-loaded placement counts only the instances this spawner manages (config
        key user.tf-lxd-spawner.managed) instead of all instances on a member.""",
    ).tag(config=True)

    connect_via = Enum(
        ["proxy", "instance-ip"],
        "proxy",
        help="""How the hub reaches a server. "proxy" (the default): an LXD proxy device on the
        address of the member the server landed on, from a port of proxy_port_range to the
        server on the container's loopback; works with no network in the container.
        "instance-ip": the server binds every address of the container and the hub connects to
        the container's own IPv4 at server_port, with no proxy device for the server; the
        container needs a nic on a network the hub routes to and an address on it (with the
        shipped module, profiles and devices without a nic are refused before anything is made;
        no address within http_timeout fails the spawn). When a member is not the hub's own
        host, set hub_connect_url to an address of the hub that members can reach. More:
        docs/cluster.md (servers at their own address).""",
    ).tag(config=True)

    hub_api_via = Enum(
        ["auto", "socket", "proxy"],
        "auto",
        help="""How a container reaches the hub API. "socket": the hub serves its API on a unix
        socket in `<state_dir>/_hub-api`, mounted read-only into the container, where the
        image's relay (image/build.sh's jupyterhub-api.socket) serves it at 127.0.0.1:8081; no
        proxy device to start, so every start is shorter, but it only works for containers on
        the hub's own host (with members elsewhere the spawn is refused; an image without the
        relay is warned about in the hub's log). "proxy": a bind=container proxy device to
        hub_connect_url, for members on other hosts. "auto" (the default): the socket when the
        daemon and every member that can get servers are on this host, module_source is the
        shipped module and the image says it has the relay (its tf_lxd_spawner_hub_api_socket
        property), else the proxy device. Numbers: docs/performance.md.""",
    ).tag(config=True)

    proxy_port_range = Tuple(
        Int(),
        Int(),
        default_value=(20000, 29999),
        help="""Host ports for the proxy devices that expose servers (connect_via = "proxy"),
        inclusive, as (low, high). A port is allocated without collisions (on this host, one
        another program uses is skipped) and kept across hub restarts; with every port taken
        the spawn fails, saying to widen the range.""",
    ).tag(config=True)

    server_port = Int(
        8888,
        help="""Port the single-user server listens on inside the container (on its loopback
        with connect_via = "proxy", on every address with "instance-ip").""",
    ).tag(config=True)

    instance_name_template = Unicode(
        "jupyter-{username}-{servername}",
        help="""Template of instance names ({username}, {servername}; the -{servername} part is
        dropped for a user's default server). Results are made valid for LXD (letters, digits,
        hyphens, at most 63), with a short hash added whenever that changed the name, a user or
        server name holds a hyphen, or looks like such a hash: two different users or servers
        never get the same name (alice's default server is jupyter-alice, jean-luc's
        jupyter-jean-luc-<hash>). Existing servers keep the names they were made with. Two hubs
        on one daemon need different templates: an instance of that name that is not this hub's
        is never removed or taken over; the spawn is refused, naming it.""",
    ).tag(config=True)
