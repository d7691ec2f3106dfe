"""pylxd access: cluster members, instance counts, instance status and the server unit.

pylxd is blocking, so every call here runs in a thread of a small pool of its own per endpoint
(never the event loop's default pool, which Terraform log following and workspace file work
share): a hung LXD then blocks at most that pool, and every request has a timeout, so a daemon
that accepts connections and never answers costs a spawn an error, not the hub its threads.
Clients are shared per endpoint so a poll costs one or two HTTP requests, not a new connection.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pylxd
import requests
from pylxd.client import get_session_for_url
from pylxd.exceptions import ClientConnectionFailed, LXDAPIException, NotFound

SERVER_UNIT = "jupyterhub-singleuser.service"
MANAGED_KEY = "user.tf-lxd-spawner.managed"
WORKSPACE_KEY = "user.tf-lxd-spawner.workspace"
HUB_ID_KEY = "user.tf-lxd-spawner.hub_id"
#: Threads per endpoint: enough for a busy hub's polls and spawns, few enough that a hung
#: endpoint cannot take more than this many threads.
POOL_SIZE = 8


class LxdUnavailable(RuntimeError):
    """The LXD API could not be reached (daemon down, socket missing, TLS refused)."""


@dataclass(frozen=True)
class Endpoint:
    """Where LXD is and how to trust it; hashable so clients can be shared per endpoint."""

    url: str | None = None  # an https:// URL, a unix socket's path, or None: LXD's local socket
    cert: str | None = None
    key: str | None = None
    verify: str | bool = True
    timeout: float = 60.0  # seconds any one request may take (operation waits included)
    daemon: str = "LXD"  # what the operator calls it, in messages ("LXD" or "Incus")

    @property
    def where(self) -> str:
        if not self.url:
            return "the local unix socket"
        return f"the local unix socket {self.url}" if self.url.startswith("/") else self.url


@dataclass(frozen=True)
class Member:
    name: str
    status: str
    address: str  # host part of the member's URL ("" when standalone)


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    status: str  # LXD's status ("Running", "Stopped", ...)
    location: str
    config: dict
    created_at: str = ""


def made_for(info: "InstanceInfo | None", workspace: str, hub_id: str) -> bool:
    """Whether an instance carries the labels of this workspace and of this hub (so it is ours
    to remove): the path alone is not enough, another hub may use the same state_dir path."""
    return (info is not None and info.config.get(WORKSPACE_KEY) == str(workspace)
            and info.config.get(HUB_ID_KEY) == hub_id)


_clients: dict[Endpoint, pylxd.Client] = {}
_pools: dict[Endpoint, ThreadPoolExecutor] = {}
_clients_lock = threading.Lock()  # guards the dicts only, never held while connecting


def _connect(endpoint: Endpoint) -> pylxd.Client:
    with _clients_lock:
        client = _clients.get(endpoint)
    if client is not None:
        return client
    kwargs = {"timeout": endpoint.timeout}  # connecting (TLS handshake included) and each read
    if endpoint.url and endpoint.url.startswith("/"):
        if not os.path.exists(endpoint.url):  # pylxd would take the path for a host name
            raise LxdUnavailable(f"{endpoint.daemon} is not reachable at {endpoint.where}: "
                                 "it does not exist (is the daemon running?)")
        kwargs.update(endpoint=endpoint.url)
    elif endpoint.url:
        cert = (endpoint.cert, endpoint.key) if endpoint.cert and endpoint.key else None
        session = get_session_for_url(endpoint.url, verify=endpoint.verify, cert=cert)
        # REQUESTS_CA_BUNDLE and friends would silently replace a pinned certificate.
        session.trust_env = False
        kwargs.update(endpoint=endpoint.url, cert=cert, session=session)
    try:
        client = pylxd.Client(**kwargs)
    except requests.Timeout as e:
        raise LxdUnavailable(f"{endpoint.daemon} at {endpoint.where} did not answer within {endpoint.timeout:g} s") from e
    except (ClientConnectionFailed, requests.RequestException, OSError) as e:
        raise LxdUnavailable(f"{endpoint.daemon} is not reachable at {endpoint.where}: {e}") from e
    with _clients_lock:
        return _clients.setdefault(endpoint, client)


def forget(endpoint: Endpoint) -> None:
    """Drop a shared client (after a connection error) so the next call reconnects."""
    with _clients_lock:
        _clients.pop(endpoint, None)


def _call(endpoint: Endpoint, fn):
    """Run fn(client). A connection error is tried once more on a new connection (a kept-alive
    socket the daemon closed, or a daemon that restarted, is not an outage); a second one is."""
    for attempt in (1, 2):
        try:
            return fn(_connect(endpoint))
        except requests.Timeout as e:  # no second try: that would only double the wait
            forget(endpoint)
            raise LxdUnavailable(f"{endpoint.daemon} at {endpoint.where} did not answer within {endpoint.timeout:g} s") from e
        except (ClientConnectionFailed, requests.ConnectionError, ConnectionError) as e:
            forget(endpoint)
            if attempt == 2:
                raise LxdUnavailable(f"{endpoint.daemon} is not reachable at {endpoint.where}: {e}") from e


def _pool(endpoint: Endpoint) -> ThreadPoolExecutor:
    with _clients_lock:
        pool = _pools.get(endpoint)
        if pool is None:
            pool = _pools[endpoint] = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="tf-lxd-spawner-lxd")
        return pool


async def _run(endpoint: Endpoint, fn):
    """fn(client) in the endpoint's own thread pool, off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(endpoint), functools.partial(_call, endpoint, fn))


def _members(client: pylxd.Client) -> list[Member]:
    info = client.api.cluster.get().json().get("metadata") or {}
    if not info.get("enabled"):
        return []
    raw = client.api.cluster.members.get(params={"recursion": 1}).json().get("metadata") or []
    members = []
    for m in raw:
        url = m.get("url") or ""
        host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        members.append(Member(m["server_name"], m.get("status", ""), host))
    return members


def _instance_counts(client: pylxd.Client, managed_only: bool) -> Counter:
    raw = client.api.instances.get(params={"recursion": 1}).json().get("metadata") or []
    counts: Counter = Counter()
    for inst in raw:
        if managed_only and (inst.get("config") or {}).get(MANAGED_KEY) != "true":
            continue
        counts[inst.get("location") or ""] += 1
    return counts


def _instance(client: pylxd.Client, name: str) -> InstanceInfo | None:
    try:
        data = client.api.instances[name].get().json()["metadata"]
    except NotFound:
        return None
    except LXDAPIException as e:
        if getattr(e.response, "status_code", None) == 404:
            return None
        raise
    return InstanceInfo(name, data.get("status", ""), data.get("location") or "", data.get("config") or {},
                        data.get("created_at") or "")


#: `systemctl is-active` prints the unit's state; the shell turns it into an exit code that
#: tells "running" (0) and "certainly not running" (3) from everything else.
_UNIT_STATE_SCRIPT = ('case "$(systemctl is-active "$1")" in active|reloading) exit 0;; '
                      'inactive|failed) exit 3;; *) exit 4;; esac')


def _unit_active(client: pylxd.Client, name: str, unit: str, timeout: float) -> bool | None:
    """Whether the server unit runs: True, False (systemd says inactive or failed), or None when
    it cannot be told (the exec failed, hung, or was refused: a process limit reached, an
    overloaded member). An LXD exec without websockets: two requests."""
    body = {
        "command": ["sh", "-c", _UNIT_STATE_SCRIPT, "sh", unit],
        "wait-for-websocket": False,
        "interactive": False,
        "record-output": False,
        "environment": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    }
    try:
        op = client.api.instances[name].exec.post(json=body).json()
    except LXDAPIException:
        return None
    op_id = op["metadata"]["id"]
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None  # still running: an exec that hangs says nothing about the server
        try:
            result = client.api.operations[op_id].wait.get(params={"timeout": max(1, int(left))}).json()["metadata"]
        except LXDAPIException:
            return None
        if result.get("status") != "Running":
            break
        time.sleep(0.05)  # a forwarded wait (cluster) can answer before the command ends
    if result.get("status") != "Success":
        return None
    rc = (result.get("metadata") or {}).get("return")
    return {0: True, 3: False}.get(rc)


async def members(endpoint: Endpoint) -> list[Member]:
    """Cluster members with their status; [] for a standalone server."""
    return await _run(endpoint, _members)


async def instance_counts(endpoint: Endpoint, managed_only: bool = False) -> Counter:
    """Instances per member name (one request, recursion=1)."""
    return await _run(endpoint, lambda c: _instance_counts(c, managed_only))


async def instance(endpoint: Endpoint, name: str) -> InstanceInfo | None:
    """The instance's status and location, or None when it does not exist."""
    return await _run(endpoint, lambda c: _instance(c, name))


async def unit_active(endpoint: Endpoint, name: str, unit: str = SERVER_UNIT, timeout: float = 10) -> bool | None:
    """True: the unit runs; False: systemd says it is inactive or failed; None: cannot tell."""
    return await _run(endpoint, lambda c: _unit_active(c, name, unit, timeout))


async def server_info(endpoint: Endpoint) -> dict:
    """GET /1.0 metadata: server version, clustering, environment (addresses)."""
    return await _run(endpoint, lambda c: c.api.get().json()["metadata"])


def _image_exists(client: pylxd.Client, image: str) -> bool:
    if ":" in image:  # "remote:alias" is resolved by the provider, not by this client
        return True
    if client.images.exists(image, alias=True):
        return True
    return len(image) >= 12 and client.images.exists(image)


async def image_exists(endpoint: Endpoint, image: str) -> bool:
    """Whether `image` is an alias or fingerprint on the LXD server."""
    return await _run(endpoint, lambda c: _image_exists(c, image))


def _delete_instance(client: pylxd.Client, name: str, patience: float = 60) -> bool:
    """Force-stop and delete; an instance still being created (its creator was killed) is
    busy for a while, so keep trying until `patience` runs out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            inst = client.instances.get(name)
        except NotFound:
            return False
        try:
            if inst.status not in ("Stopped", "Error"):
                inst.stop(force=True, wait=True)
            inst.delete(wait=True)
            return True
        except LXDAPIException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def delete_instance(endpoint: Endpoint, name: str) -> bool:
    """Force-stop and delete an instance; False when it did not exist."""
    return await _run(endpoint, lambda c: _delete_instance(c, name))


def _set_running(client: pylxd.Client, name: str, running: bool, force: bool) -> None:
    inst = client.instances.get(name)
    if running and inst.status != "Running":
        inst.start(wait=True)
    elif not running and inst.status != "Stopped":
        inst.stop(wait=True, timeout=30, force=force)


async def set_running(endpoint: Endpoint, name: str, running: bool, force: bool = False) -> None:
    """Start, or stop (cleanly, or forced) an existing instance."""
    await _run(endpoint, lambda c: _set_running(c, name, running, force))


def _push_files(client: pylxd.Client, name: str, files: list[dict]) -> None:
    files_api = client.instances.get(name).files
    made = set()
    for f in files:
        path = f["target_path"]
        parents = path.split("/")[1:-1]
        for i in range(1, len(parents) + 1):  # the API writes no missing parent directory
            d = "/" + "/".join(parents[:i])
            if d not in made:
                try:
                    files_api.mk_dir(d, mode="0755")
                except LXDAPIException:
                    pass  # it exists (the API says so only by failing)
                made.add(d)
        if f.get("source"):
            with open(f["source"], "rb") as src:
                data = src.read()
        else:
            data = (f.get("content") or "").encode()
        files_api.put(path, data, mode=f.get("mode") or "0644", uid=int(f.get("uid") or 0), gid=int(f.get("gid") or 0))


async def push_files(endpoint: Endpoint, name: str, files: list[dict]) -> None:
    """Write files (target_path, content or source, mode, uid, gid) into a stopped instance,
    parent directories included: what the module's `files` output lists when the provider does
    not write them itself (files_via_provider = false, Incus)."""
    await _run(endpoint, lambda c: _push_files(c, name, files))


def _exec(client: pylxd.Client, name: str, argv: list[str], uid: int, gid: int, cwd: str, env: dict):
    inst = client.instances.get(name)
    result = inst.execute(argv, environment=env, user=uid, group=gid, cwd=cwd)
    return result.exit_code, result.stdout, result.stderr


async def execute(endpoint: Endpoint, name: str, argv: list[str], uid: int = 0, gid: int = 0,
                  cwd: str = "/", env: dict | None = None) -> tuple[int, str, str]:
    """Run an argument list in the instance as uid:gid: (exit code, stdout, stderr)."""
    return await _run(endpoint, lambda c: _exec(c, name, argv, uid, gid, cwd, env or {}))
