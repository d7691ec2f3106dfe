"""Where the single-user server binds inside its container, and where the hub connects to it.

connect_via = "proxy": the server binds the container's loopback; the module's proxy device
listens on the member's address (`listen_on`), and the hub connects there.
connect_via = "instance-ip": the server binds every address of the container (its own address
is known only once it runs); there is no proxy device for it, and the hub connects to the
instance's own IPv4 at server_port. That address comes from the module's output when the
module started the instance (it waits for the address), else from LXD's instance state,
waited for: when the spawner starts the instance itself (files_via_provider = false, as on
Incus) or resumes a kept one, the module saw it stopped, without an address.
Either way the hub API reaches the server through the module's bind=container proxy device,
on the container's loopback.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import SpawnError
from ..systems import lxd
from ..systems.ports import ports, resolve

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner
    from .preflight import Checked

WILDCARD = "0.0.0.0"
LOOPBACK = "127.0.0.1"
#: The instance config key naming the interface whose address to use (the LXD provider's
#: ipv4_address reads the same key).
ACCESS_INTERFACE_KEY = "user.access_interface"


def server_bind_ip(spawner: LxdSpawner) -> str:
    """The address the server binds inside its container (Spawner.ip, which JupyterHub passes
    on in JUPYTERHUB_SERVICE_URL)."""
    return WILDCARD if spawner.connect_via == "instance-ip" else LOOPBACK


def member_address(spawner: LxdSpawner, checked: Checked, name: str | None) -> str:
    """The address of a cluster member (as an IP address), the remote standalone server's, or
    127.0.0.1 for LXD on this host. Blocking (name resolution): call it in a thread."""
    if checked.members:
        by_name = {m.name: m for m in checked.members}
        if name in by_name and by_name[name].address:
            return resolve(by_name[name].address)
        raise SpawnError(f"LXD reports no address for cluster member {name!r}")
    if spawner.remote_endpoint:
        return resolve(urlparse(spawner.lxd_endpoint).hostname or LOOPBACK)
    return LOOPBACK


async def listen_on(spawner: LxdSpawner, checked: Checked, ws, resuming: bool) -> tuple[str, int | None]:
    """Address and port for the server's proxy device: on the chosen member (all its addresses
    when LXD chooses the member), and for a kept instance the port it already had when that is
    still free. With connect_via = "instance-ip" there is no such device: (127.0.0.1, None)."""
    if spawner.connect_via != "proxy":
        return LOOPBACK, None
    if checked.members and not checked.target:
        address = WILDCARD  # placement = "lxd": the member is known only after apply
    else:
        address = await asyncio.to_thread(member_address, spawner, checked, checked.target)
    previous = (await asyncio.to_thread(ws.saved_inputs)).get("listen_port") if resuming else None
    return address, ports.reuse_or_allocate(address, previous, *spawner.proxy_port_range)


def has_nic(profile_devices: list[dict], devices: dict) -> bool:
    """Whether an instance with these profiles' devices (in order) and its own `devices` gets
    a nic: a later device of the same name replaces an earlier one (type "none" removes it)."""
    merged = {}
    for d in [*profile_devices, devices or {}]:
        merged.update(d)
    return any((d or {}).get("type") == "nic" for d in merged.values())


def http_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def pick_ipv4(network: dict, interface: str | None = None) -> str | None:
    """The instance's IPv4 address for the hub, from LXD's state.network: a global-scope inet
    address of `interface` (user.access_interface) when that is set, else of the first
    interface by name other than the loopback (eth0 before eth1); None when there is none."""
    names = [interface] if interface else sorted(n for n in network if n != "lo")
    for name in names:
        for a in (network.get(name) or {}).get("addresses") or []:
            if a.get("family") == "inet" and a.get("scope", "global") == "global" and a.get("address"):
                return a["address"]
    return None


async def instance_ipv4(endpoint, name: str, timeout: float) -> str:
    """Wait (up to `timeout` seconds) for the running instance to have an IPv4 address, as LXD
    reports it; asked every 0.1 s at first, at most every 0.5 s."""
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        info = await lxd.instance_network(endpoint, name)
        if info is None:
            raise SpawnError(f"{name} no longer exists (connect_via = \"instance-ip\" waited for its address)")
        if info["status"] not in ("Running", ""):
            raise SpawnError(f"{name} is {info['status']}, not running, so it has no address "
                             "(connect_via = \"instance-ip\"); its log is in its journal")
        address = pick_ipv4(info["network"], info["config"].get(ACCESS_INTERFACE_KEY))
        if address:
            return address
        if time.monotonic() > deadline:
            on = info["config"].get(ACCESS_INTERFACE_KEY)
            raise SpawnError(
                f"{name} got no IPv4 address{f' on {on}' if on else ''} within {timeout:g} s "
                "(c.Spawner.http_timeout), and connect_via = \"instance-ip\" needs one: give the "
                "container a nic device on a network the hub reaches (in c.LxdSpawner.lxd_profiles "
                "or module_variables' devices) and an address on it (DHCP, or the image's own "
                "network configuration), or use connect_via = \"proxy\"")
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.5)


async def connect_url(spawner: LxdSpawner, checked: Checked, outputs: dict) -> str:
    """Where the hub reaches the server, after the instance started. "proxy": the module's
    connect address, or, when the proxy listens on all addresses, the address of the member
    the instance landed on. "instance-ip": the module's address when it started the instance
    (status Running), else the one LXD reports once the instance has one."""
    address = outputs.get("connect_address") or ""
    if spawner.connect_via == "instance-ip":
        if outputs.get("status") != "Running" or not address:
            address = await instance_ipv4(spawner.endpoint, spawner.instance, spawner.http_timeout)
        return http_url(address, outputs.get("connect_port") or spawner.server_port)
    if address in (WILDCARD, "::", ""):
        address = await asyncio.to_thread(member_address, spawner, checked, outputs.get("location") or checked.target)
    return http_url(address, outputs["connect_port"])
