"""Preflight: check configuration, the user's choices and the systems before a start makes
anything, so a refused spawn leaves no workspace, no instance and no port behind."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from jupyterhub.utils import maybe_future

from ..errors import SpawnError
from ..homes import shared_folders, storage
from ..systems import backends, hub_relay, lxd
from ..systems.ports import is_loopback, is_this_host, resolve
from . import audit, connect, settings_values
from .module_inputs import extra_inputs, hub_address, path_names
from .settings_values import ConfigError

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner


@dataclass
class Checked:
    """What preflight checked and expanded for one start, and (after placement) where it goes."""
    files: list[dict] = field(default_factory=list)
    prepare_cmds: list[list[str]] = field(default_factory=list)
    post_cmds: list[list[str]] = field(default_factory=list)
    ids: tuple[int, int] = (1000, 1000)
    members: list[lxd.Member] = field(default_factory=list)
    hub_id: str = ""
    target: str | None = None
    volume: "storage.Volume | None" = None  # the user's home volume (storage_enabled)
    pool_driver: str = ""  # the driver of the volume's pool (btrfs, dir, zfs...)
    hub_socket: bool = False  # the hub API through the unix socket relay (hub_api_via)
    home_full: bool = False  # the home volume has no room left: the server must not need to write there
    shared: list = field(default_factory=list)  # shared_folders.Mount: the groups' folders it mounts


async def run(spawner: LxdSpawner) -> Checked:
    """Every check, in the order a user would want the first problem named. The user's choices
    are already applied (LxdSpawner.load_user_options)."""
    checked = Checked()
    try:
        names = path_names(spawner)  # {username} in host paths: the escaped name
        checked.files = await asyncio.to_thread(settings_values.pushed_files, spawner.files_to_push, names)
        disks = settings_values.mounts(spawner.filesystems_to_mount, names, False)
        settings_values.limits(spawner.mem_limit, spawner.cpu_limit, spawner.process_limit,
                               spawner.container_cpu_share)
        checked.prepare_cmds = settings_values.command_lists(spawner.commands_to_prepare, spawner.expand,
                                                             "commands_to_prepare")
        checked.post_cmds = settings_values.command_lists(spawner.post_hub_commands, spawner.expand,
                                                          "post_hub_commands")
    except ConfigError as e:
        raise SpawnError(str(e)) from None
    if not spawner.remote_endpoint and not spawner.create_mount_dirs:
        for d in disks:
            if not await asyncio.to_thread(os.path.isdir, d["source"]):
                raise SpawnError(f"filesystems_to_mount: host directory {d['source']!r} does not exist "
                                 "(create it, or set create_mount_dirs = True)")
    source = spawner.module_source
    if source.startswith(("/", "./", "../")) and not await asyncio.to_thread(os.path.isdir, source):
        raise SpawnError(f"module_source {source!r} does not exist (or is not a directory)")
    binary = spawner.terraform_binary
    if shutil.which(binary) is None:
        raise SpawnError(f"terraform_path {binary!r} was not found (is it installed and on PATH?)")
    extra = await extra_inputs(spawner)  # refuses overrides of the spawner's own inputs
    checked.ids = await uid_gid(spawner)  # refuses root
    try:
        answered = await audit.read_daemon(spawner.endpoint, spawner.backend)
        wrong_daemon = backends.mismatch(spawner.backend_info, answered,
                                         spawner.endpoint.where)
        if wrong_daemon:
            raise SpawnError(wrong_daemon)
        image = await lxd.image_properties(spawner.endpoint, spawner.chosen_image)
        if image is None:
            raise SpawnError(f"image {spawner.chosen_image!r} does not exist on the "
                             f"{spawner.backend_info.display} server")
        checked.members = await lxd.members(spawner.endpoint)
        await check_instance_gets_a_nic(spawner, extra)
    except lxd.LxdUnavailable as e:
        raise SpawnError(str(e)) from None
    checked.hub_socket = await hub_api_by_socket(spawner, checked.members, image)
    if not checked.hub_socket:
        await check_members_reach_hub(spawner, checked.members)
    if spawner.storage_enabled:
        checked.volume, checked.pool_driver = await check_storage(spawner)
        mounted = [d for d in disks if d.get("path", "").rstrip("/") == checked.volume.mount_path.rstrip("/")]
        if mounted:  # the operator's own home storage (the seed's /srv/homes mount): it is the home
            spawner.log.info("%s: filesystems_to_mount %r is mounted at %s, the home: no home volume for it",
                             spawner.instance, mounted[0].get("name"), checked.volume.mount_path)
            checked.volume = None
    home = checked.volume.mount_path if checked.volume is not None else spawner.account["home"]
    checked.shared = shared_folders.mounts_for(spawner, home)
    await shared_folders.check(spawner, checked.shared)
    checked.hub_id = await spawner.owner_id()
    return checked


async def check_storage(spawner: LxdSpawner) -> tuple["storage.Volume", str]:
    """The home volume's settings make sense and its pool exists: the volume and its pool's
    driver."""
    vol = await storage.resolve(spawner)
    try:
        storage.size_bytes(vol.size)
    except ValueError as e:
        raise SpawnError(f"storage_capacity: {e}", reason="config") from None
    await storage.refuse_shrinking(spawner, vol, storage.home_role(spawner, vol))
    if not isinstance(spawner.storage_config, dict) or "size" in spawner.storage_config:
        raise SpawnError("storage_config may not set size: use storage_capacity", reason="config")
    try:
        driver = await lxd.pool_driver(spawner.endpoint, vol.pool)
    except lxd.LxdUnavailable as e:
        raise SpawnError(str(e)) from None
    if driver is None:
        raise SpawnError(f"storage_pool {vol.pool!r} does not exist on the {spawner.backend_info.display} server",
                         reason="config")
    return vol, driver


async def uid_gid(spawner: LxdSpawner) -> tuple[int, int]:
    """The user's ids inside the container: get_uid_gid's, the hub host's account's, or 1000;
    never root."""
    if spawner.get_uid_gid is not None:
        uid, gid = await maybe_future(spawner.get_uid_gid(spawner))
        uid, gid = int(uid), int(gid)
        if uid == 0 or gid == 0:
            raise SpawnError(f"get_uid_gid gave uid {uid} and gid {gid} for {spawner.user.name!r}: the server "
                             "would run as root in its container; refused")
        return uid, gid
    import pwd

    try:
        pw = await asyncio.to_thread(pwd.getpwnam, spawner.user.name)
    except KeyError:
        return 1000, 1000
    if pw.pw_uid < 1000 or pw.pw_gid < 1000 or pw.pw_uid == 65534:
        return 1000, 1000  # a system account of the hub host ("root", "daemon"...): not this user's
    return pw.pw_uid, pw.pw_gid


async def not_on_this_host(spawner: LxdSpawner, members: list[lxd.Member]) -> list[str]:
    """Where a server may land that is not the hub's own host: each online member that is not
    excluded and not this host, or a standalone daemon on another host; [] when none."""
    if members:
        candidates = [m for m in members if m.status == "Online" and m.name not in spawner.excluded_members]
        return [f"member {m.name} ({m.address})" for m in candidates
                if not await asyncio.to_thread(is_this_host, m.address)]
    address = urlparse(spawner.lxd_endpoint).hostname if spawner.remote_endpoint else "127.0.0.1"
    if await asyncio.to_thread(is_this_host, address):
        return []
    return [f"the {spawner.backend_info.display} server {address}"]


async def hub_api_by_socket(spawner: LxdSpawner, members: list[lxd.Member], image: dict) -> bool:
    """hub_api_via: whether this server reaches the hub API through the hub's unix socket
    (hub_relay), which only a container on the hub's own host can mount; "auto" also wants an
    image that has the relay (it says so in a property) and the shipped module."""
    via = spawner.hub_api_via
    if via == "proxy":
        return False
    elsewhere = await not_on_this_host(spawner, members)
    if via == "auto":  # another module may not take hub_socket_dir: it keeps its proxy device
        shipped = spawner.module_source == spawner.trait_defaults("module_source")
        return shipped and not elsewhere and bool(image.get(hub_relay.IMAGE_PROPERTY))
    if elsewhere:
        raise SpawnError(f"hub_api_via = \"socket\" needs every server on the hub's own host, but servers may "
                         f"run on {', '.join(elsewhere)}: use hub_api_via = \"auto\" or \"proxy\"", reason="config")
    if not image.get(hub_relay.IMAGE_PROPERTY):
        spawner.log.warning("hub_api_via = \"socket\": image %r does not say it has the hub API relay (property "
                            "%s); its server must serve 127.0.0.1:%s from %s itself", spawner.chosen_image,
                            hub_relay.IMAGE_PROPERTY, hub_relay.CONTAINER_PORT, hub_relay.CONTAINER_DIR)
    return True


async def resumed_by_socket(spawner: LxdSpawner, instance: str) -> bool:
    """A kept instance resumes with the hub's socket only if its own root file system has the
    relay: LXD copies the image's properties into its config (image.*) when it is made, so an
    instance made from an older image keeps its proxy device whatever the image is now."""
    try:
        info = await lxd.instance(spawner.endpoint, instance)
    except lxd.LxdUnavailable as e:
        raise SpawnError(str(e)) from None
    return info is None or bool(info.config.get(f"image.{hub_relay.IMAGE_PROPERTY}"))


async def check_members_reach_hub(spawner: LxdSpawner, members: list[lxd.Member]) -> None:
    """Refuse, before anything is made, a server that could land on a member other than this
    host while the hub API is on a loopback address: the member's own loopback is not ours."""
    host, _, _ = hub_address(spawner)
    if not is_loopback(await asyncio.to_thread(resolve, host)):
        return
    remote = await not_on_this_host(spawner, members)
    if remote:
        api = spawner.hub_connect_url or spawner.hub.api_url
        raise SpawnError(
            f"servers may run on {', '.join(remote)}, which is not this hub's host, but the hub API is "
            f"at {api}, a loopback address a container there cannot reach: set "
            "c.Spawner.hub_connect_url (or c.JupyterHub.hub_connect_ip) to an address of the hub that "
            "members can reach, and make the hub listen there (c.JupyterHub.hub_ip)")


async def check_instance_gets_a_nic(spawner: LxdSpawner, extra: dict) -> None:
    """connect_via = "instance-ip" with the shipped module: refuse, before anything is made, an
    instance that would get no nic from its profiles or devices (it could never have an address,
    and the provider would wait minutes for one). Another module may add nics of its own."""
    if spawner.connect_via != "instance-ip" or spawner.module_source != spawner.trait_defaults("module_source"):
        return
    profiles = list(extra.get("profiles", spawner.lxd_profiles))
    devices = extra.get("devices") or {}
    if not connect.has_nic(await lxd.profile_devices(spawner.endpoint, profiles), devices):
        raise SpawnError(
            f"connect_via = \"instance-ip\" needs a nic in the container, and neither its profiles "
            f"({', '.join(profiles) or 'none'}) nor module_variables' devices give it one: add a profile "
            "with a nic on a bridge the hub can route to (c.LxdSpawner.lxd_profiles), or use "
            "connect_via = \"proxy\"")
