"""The notebook module's inputs for one server, from the spawner's settings and what preflight
checked: written to the workspace's terraform.tfvars.json (secrets go by environment)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from jupyterhub.utils import maybe_future

from ..errors import SpawnError
from ..homes import shared_folders, snapshots
from ..systems import hub_relay
from ..systems.ports import resolve
from . import settings_values

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner
    from .preflight import Checked

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
    "hub_socket_dir": "hub_api_via",
}


#: The home volume's disk device: a name no operator's mount ("home" in the seed's) takes.
HOME_DEVICE = "tf-lxd-home"


def host_and_port(url: str) -> tuple[str, int]:
    """The host and port of a URL, the scheme's default port when it names none."""
    parts = urlparse(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def hub_address(spawner: LxdSpawner, by_socket: bool = False) -> tuple[str, int, str]:
    """(host, port) of the hub API as the member sees it, and the API URL as the container
    sees it: 127.0.0.1:<port>, brought in by the bind=container proxy device, or (by_socket)
    served by the image's relay of the hub's unix socket."""
    connect = spawner.hub_connect_url or spawner.hub.api_url
    host, port = host_and_port(connect)
    port_inside = hub_relay.CONTAINER_PORT if by_socket else port
    inside = urlunparse(urlparse(connect)._replace(netloc=f"127.0.0.1:{port_inside}",
                                                   path=urlparse(spawner.hub.api_url).path))
    return host, port, inside


def hub_socket_dir(spawner: LxdSpawner) -> str:
    """The directory of this hub's API socket, which containers on this host mount."""
    return os.path.join(os.path.abspath(spawner.state_dir), "_hub-api")  # LXD mounts absolute paths


async def start_hub_relay(spawner: LxdSpawner) -> str:
    """The relay of this hub's API to its unix socket, running (a restarted hub starts it again
    for the servers it finds running); returns the socket's directory."""
    host, port = host_and_port(spawner.hub.api_url)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    directory = hub_socket_dir(spawner)
    await hub_relay.ensure(directory, host, port)
    return directory


def container_env(spawner: LxdSpawner, api_url_inside: str, home_full: bool = False) -> dict[str, str]:
    env = spawner.get_env()
    if spawner.storage_enabled:
        # Jupyter's runtime files (connection files, the server's own) off the home: a home at
        # its quota must not keep the server from starting, or its user from cleaning it up.
        env.setdefault("JUPYTER_RUNTIME_DIR", "/tmp/jupyter-runtime")
    if home_full:
        # Jupyter's start migrates ~/.ipython once (it writes ~/.jupyter/migrated) and kernels
        # write their history there: on a full home both fail. For this start only, IPython's
        # directory is in /tmp (no migration then); the user can start, delete files, and run code.
        env.setdefault("IPYTHONDIR", "/tmp/ipython-home-full")
    env["JUPYTERHUB_API_URL"] = api_url_inside
    env["JUPYTERHUB_ACTIVITY_URL"] = "/".join(
        [api_url_inside.rstrip("/"), "users", getattr(spawner.user, "escaped_name", spawner.user.name), "activity"]
    )
    return {str(k): str(v) for k, v in env.items()}


def path_names(spawner: LxdSpawner) -> settings_values.Names:
    """The names {username}/{servername} stand for in this server's paths (escaped on the
    host: see inputs.host_path)."""
    return settings_values.Names(spawner.user.name, spawner.name or "")


def _disks(spawner: LxdSpawner, uid: int, gid: int) -> list[dict]:
    shift = spawner.mount_idmap == "shift" and not spawner.privileged_container
    disks = settings_values.mounts(spawner.filesystems_to_mount, path_names(spawner), shift)
    for d in disks:  # existence was checked by preflight; no name can lead out of the directory
        if spawner.create_mount_dirs and not os.path.exists(d["source"]):
            os.makedirs(d["source"], mode=0o750)
            os.chown(d["source"], uid, gid)
    return disks


def _instance_config(spawner: LxdSpawner, uid: int, gid: int) -> dict[str, str]:
    config = {}
    if spawner.filesystems_to_mount and spawner.mount_idmap == "raw.idmap" and not spawner.privileged_container:
        if not spawner.remote_endpoint:  # the daemon is on this host: check it is allowed, with a way out
            settings_values.check_subid_allowed(uid, gid)
        config["raw.idmap"] = f"uid {uid} {uid}\ngid {gid} {gid}"
    return config


async def extra_inputs(spawner: LxdSpawner) -> dict:
    """module_variables, refused when they would override an input the spawner owns."""
    extra = spawner.module_variables
    if callable(extra):
        extra = await maybe_future(extra(spawner))
    extra = dict(extra or {})
    owned = sorted(set(extra) & set(OWNED_INPUTS))
    if owned:
        how = "; ".join(f"{k}: {OWNED_INPUTS[k]}" for k in owned)
        raise SpawnError(f"module_variables may not set {', '.join(owned)}: the spawner sets "
                         f"{'it' if len(owned) == 1 else 'them'} itself (use instead: {how})")
    return extra


async def module_inputs(spawner: LxdSpawner, checked: Checked, listen_address: str, listen_port: int | None) -> dict:
    """Every input of the module for this start (`checked`: what preflight checked, where it goes)."""
    uid, gid = checked.ids
    hub_host, hub_port, _ = hub_address(spawner)
    if checked.hub_socket:
        hub_host, socket_dir = None, await start_hub_relay(spawner)
    else:
        hub_host, socket_dir = await asyncio.to_thread(resolve, hub_host), None  # a proxy device connects to an address
    found = {
        "name": spawner.instance,
        "image": spawner.chosen_image,
        "target": checked.target,
        "profiles": list(spawner.lxd_profiles),
        "user": {**spawner.account, "uid": uid, "gid": gid},
        "server_cmd": list(spawner.cmd) + list(spawner.get_args()),
        "server_port": spawner.server_port,
        "connect_via": spawner.connect_via,
        "listen_address": listen_address,
        "listen_port": listen_port,
        "hub_address": hub_host,
        "hub_port": hub_port,
        "files": checked.files,
        "disks": await asyncio.to_thread(_disks, spawner, uid, gid),
        "limits": settings_values.limits(spawner.mem_limit, spawner.cpu_limit, spawner.process_limit,
                                         spawner.container_cpu_share),
        "privileged": bool(spawner.privileged_container),
        "config": await asyncio.to_thread(_instance_config, spawner, uid, gid),
        "labels": {"user": spawner.user.name, "server": spawner.name or "",
                   "workspace": str(spawner.workspace_dir().path), "hub_id": checked.hub_id},
    }
    if socket_dir is not None:  # only then: a module of the operator's need not declare it
        found["hub_socket_dir"] = socket_dir
    if not spawner.backend_info.provider_files:  # the LXD provider cannot write files into Incus instances
        found["files_via_provider"] = False
    found.update(await extra_inputs(spawner))
    if checked.volume is not None:  # the home volume first; an operator's own volumes after it
        vol = checked.volume
        home = {"name": HOME_DEVICE, "pool": vol.pool, "source": vol.name, "path": vol.mount_path}
        found["volumes"] = [home, *found.get("volumes", [])]
        shown = await snapshots_disk(spawner, checked.volume, checked.pool_driver)
        if shown:
            found["disks"] = [*found["disks"], shown]
    if checked.shared:  # the groups' folders after the home: read-only where the user only reads
        found["volumes"] = [*found.get("volumes", []), *shared_folders.devices(checked.shared)]
        found["user"] = {**found["user"], **shared_folders.account(checked.shared)}
    return found


async def snapshots_disk(spawner: LxdSpawner, vol, pool_driver: str) -> dict | None:
    """The home's snapshots, read-only, at storage_snapshots_mount: when the pool keeps them as
    directories this host can reach (see snapshots.make_browsable)."""
    where = spawner.storage_snapshots_mount
    if not where or (spawner.remote_endpoint and not spawner.storage_pool_dir):
        return None
    if pool_driver not in snapshots.BROWSABLE_DRIVERS:
        return None
    pool_path = snapshots.pool_dir(spawner.storage_pool_dir, spawner.backend_info.local_dir(), vol.pool)
    source = snapshots.host_dir(pool_path, vol.name)
    if not await asyncio.to_thread(snapshots.make_browsable, source):
        spawner.log.info("No snapshots mount for %s: %s is not reachable from this host", vol.name, source)
        return None
    path = where if where.startswith("/") else f"{vol.mount_path.rstrip('/')}/{where}"
    return {"name": snapshots.DEVICE, "source": str(source), "path": path, "readonly": True}
