"""pylxd access: cluster members, instance counts, instance status, files and commands.

pylxd is blocking, so every call here runs in a thread of a small pool of its own per endpoint
(never the event loop's default pool, which Terraform log following and workspace file work
share): a hung LXD then blocks at most that pool, and every request has a timeout, so a daemon
that accepts connections and never answers costs a spawn an error, not the hub its threads.
Clients are shared per endpoint so a request needs no new connection, and polls read one shared
status snapshot of all instances (`instance_status`) instead of asking about each server.
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

from .. import metrics

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
    groups: tuple[str, ...] = ()  # the cluster groups it is in (lxc cluster group assign)


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


def not_ours(config: dict, workspace: str, hub_id: str, template: str) -> str | None:
    """None when an existing instance's or volume's labels say this workspace of this hub made
    it; else whose it is and how the operator avoids the clash (`template`: the trait that makes
    its names), for the hub's log. Whatever is not ours is never taken over or removed."""
    owner = config.get(HUB_ID_KEY, "")
    made_for = config.get(WORKSPACE_KEY, "")
    if owner == hub_id and made_for == str(workspace):
        return None
    if owner and owner != hub_id:
        return (f"it belongs to another hub (hub id {owner}, workspace {made_for or '?'}): give this hub "
                f"names of its own (c.LxdSpawner.{template}, e.g. a prefix for this hub)")
    if not owner and made_for == str(workspace):
        return (f"it has this server's workspace label but no hub id (made by a hub before its id was "
                f"written, or by hand): if it is this hub's, give it the label {HUB_ID_KEY} with the id in "
                "state_dir/.hub-id, or delete it")
    if owner:
        return (f"this hub made it for another server's workspace ({made_for or '?'}): two servers get the "
                f"same name; c.LxdSpawner.{template} must name the user ({{username}}), and {{servername}} "
                "for one per server")
    return f"tf-lxd-spawner did not make it: rename or delete it, or choose other names (c.LxdSpawner.{template})"


_clients: dict[Endpoint, pylxd.Client] = {}
_pools: dict[Endpoint, ThreadPoolExecutor] = {}
_clients_lock = threading.Lock()  # guards the dicts only, never held while connecting

_requests = 0  # HTTP requests sent to any daemon by this process: what a poll round costs
_requests_lock = threading.Lock()


def request_count() -> int:
    """How many HTTP requests this process has sent to LXD or Incus daemons so far."""
    return _requests


def _count_request(response=None, *args, **kwargs):
    global _requests
    with _requests_lock:
        _requests += 1
    return response


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
        _count_request()  # the client's own GET /1.0, sent before a hook could be attached
        client.api.session.hooks["response"].append(_count_request)
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


def managed_instances(endpoint: Endpoint) -> list[dict]:
    """Every instance (as the API's raw dicts, config included) labelled as made by a
    tf-lxd-spawner (MANAGED_KEY), whichever hub made it. Blocking: call it in a thread."""
    def fetch(client):
        raw = client.api.instances.get(params={"recursion": 1}).json().get("metadata") or []
        return [i for i in raw if (i.get("config") or {}).get(MANAGED_KEY) == "true"]

    return _call(endpoint, fetch)

def _pool(endpoint: Endpoint) -> ThreadPoolExecutor:
    with _clients_lock:
        pool = _pools.get(endpoint)
        if pool is None:
            pool = _pools[endpoint] = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="tf-lxd-spawner-lxd")
        return pool


async def _run(endpoint: Endpoint, fn, call: str):
    """fn(client) in the endpoint's own thread pool, off the event loop; timed and counted as
    `call` in the metrics. A caller cancelled meanwhile cannot stop the thread: the call is
    then recorded as abandoned until it returns (see wait_for_abandoned)."""
    loop = asyncio.get_running_loop()
    with metrics.lxd_call(call, LxdUnavailable):
        future = loop.run_in_executor(_pool(endpoint), functools.partial(_call, endpoint, fn))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done():
                _abandoned.add(future)
                future.add_done_callback(_forget_abandoned)
            raise


_abandoned: set[asyncio.Future] = set()


def _forget_abandoned(future: asyncio.Future) -> None:
    _abandoned.discard(future)
    if not future.cancelled():
        future.exception()  # nobody awaits it: its error was the cancelled caller's, not ours


async def wait_for_abandoned() -> None:
    """Until every LXD call whose caller was cancelled has returned. A cancelled start's
    clean-up waits for them: a start of the instance still under way in its thread would
    otherwise land after the clean-up had stopped it, and leave it running."""
    while _abandoned:
        await asyncio.wait(set(_abandoned))


def _members(client: pylxd.Client) -> list[Member]:
    info = client.api.cluster.get().json().get("metadata") or {}
    if not info.get("enabled"):
        return []
    raw = client.api.cluster.members.get(params={"recursion": 1}).json().get("metadata") or []
    members = []
    for m in raw:
        url = m.get("url") or ""
        host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        members.append(Member(m["server_name"], m.get("status", ""), host, tuple(m.get("groups") or ())))
    return members


def _all_instances(client: pylxd.Client) -> dict[str, InstanceInfo]:
    raw = client.api.instances.get(params={"recursion": 1}).json().get("metadata") or []
    return {i["name"]: InstanceInfo(i["name"], i.get("status", ""), i.get("location") or "", i.get("config") or {},
                                    i.get("created_at") or "") for i in raw}


def _instance_counts(client: pylxd.Client, managed_only: bool) -> Counter:
    return Counter(i.location for i in _all_instances(client).values()
                   if not managed_only or i.config.get(MANAGED_KEY) == "true")


#: Per endpoint: when the last status snapshot was asked for, and its (possibly pending) answer.
_snapshots: dict[Endpoint, tuple[float, asyncio.Future]] = {}


async def instance_status(endpoint: Endpoint, name: str, max_age: float) -> InstanceInfo | None:
    """The instance as a recent listing of all instances saw it (None: not in it). Every spawner
    of the hub shares one listing per endpoint, at most `max_age` seconds old (one in flight is
    joined), so a poll round of many servers costs one request instead of one per server. Only
    for status that may be slightly old: confirm with `instance` before acting on it."""
    now = time.monotonic()
    taken, answer = _snapshots.get(endpoint, (0.0, None))
    stale = (answer is None or answer.get_loop() is not asyncio.get_running_loop()
             or answer.done() and (now - taken > max_age or answer.exception() is not None))
    if stale:
        answer = asyncio.ensure_future(_run(endpoint, _all_instances, "list_instances"))
        _snapshots[endpoint] = (now, answer)
    return (await asyncio.shield(answer)).get(name)


def _or_none(fetch):
    """fetch()'s answer, or None when the daemon says 404 (pylxd raises either exception)."""
    try:
        return fetch()
    except NotFound:
        return None
    except LXDAPIException as e:
        if getattr(e.response, "status_code", None) == 404:
            return None
        raise


def _instance(client: pylxd.Client, name: str) -> InstanceInfo | None:
    data = _or_none(lambda: client.api.instances[name].get().json()["metadata"])
    if data is None:
        return None
    return InstanceInfo(name, data.get("status", ""), data.get("location") or "", data.get("config") or {},
                        data.get("created_at") or "")


async def members(endpoint: Endpoint) -> list[Member]:
    """Cluster members with their status; [] for a standalone server."""
    return await _run(endpoint, _members, "members")


async def instance_counts(endpoint: Endpoint, managed_only: bool = False) -> Counter:
    """Instances per member name (one request, recursion=1)."""
    return await _run(endpoint, lambda c: _instance_counts(c, managed_only), "instance_counts")


async def instance(endpoint: Endpoint, name: str) -> InstanceInfo | None:
    """The instance's status and location, or None when it does not exist."""
    return await _run(endpoint, lambda c: _instance(c, name), "instance")


def _instance_network(client: pylxd.Client, name: str) -> dict | None:
    """Status, expanded config and network interfaces of an instance in one request
    (recursion=1 includes its state); None when it does not exist."""
    data = _or_none(lambda: client.api.instances[name].get(params={"recursion": 1}).json()["metadata"])
    if data is None:
        return None
    state = data.get("state") or {}
    return {"status": data.get("status", ""), "config": data.get("expanded_config") or {},
            "network": state.get("network") or {}}


async def instance_network(endpoint: Endpoint, name: str) -> dict | None:
    """{"status", "config" (expanded), "network"} of the instance, "network" as LXD reports it
    ({interface: {"addresses": [{"family", "address", "scope", ...}], ...}}); None when it does
    not exist."""
    return await _run(endpoint, lambda c: _instance_network(c, name), "instance_network")


def _profile_devices(client: pylxd.Client, names: list[str]) -> list[dict]:
    """The devices of each named profile, in order ({} for a profile that does not exist:
    the apply names that one)."""
    found = []
    for name in names:
        try:
            found.append(client.api.profiles[name].get().json()["metadata"].get("devices") or {})
        except NotFound:
            found.append({})
    return found


async def profile_devices(endpoint: Endpoint, names: list[str]) -> list[dict]:
    """Devices of the profiles `names`, in order: what an instance with them would get."""
    return await _run(endpoint, lambda c: _profile_devices(c, names), "profile_devices")


async def server_info(endpoint: Endpoint) -> dict:
    """GET /1.0 metadata: server version, clustering, environment (addresses)."""
    return await _run(endpoint, lambda c: c.api.get().json()["metadata"], "server_info")


def _image_properties(client: pylxd.Client, image: str) -> dict | None:
    if ":" in image:  # "remote:alias" is resolved by the provider, not by this client
        return {}
    try:
        return dict(client.images.get_by_alias(image).properties or {})
    except NotFound:
        pass
    if len(image) < 12:
        return None
    try:
        return dict(client.images.get(image).properties or {})
    except NotFound:
        return None


async def image_properties(endpoint: Endpoint, image: str) -> dict | None:
    """The properties of `image` (an alias or fingerprint) on the LXD server; None when there
    is no such image ({} for another remote's, which the provider resolves)."""
    return await _run(endpoint, lambda c: _image_properties(c, image), "image_properties")


def _launch(client: pylxd.Client, spec: dict, target: str | None) -> None:
    client.instances.create(spec, wait=True, target=target)
    client.instances.get(spec["name"]).start(wait=True)


async def launch(endpoint: Endpoint, spec: dict, target: str | None = None) -> None:
    """Create and start an instance from an API spec (name, source, profiles, devices...) on
    `target` (a cluster member; None: the daemon chooses). For short-lived probes such as
    `tf-lxd-spawner doctor`'s: servers are made by Terraform, never here."""
    await _run(endpoint, lambda c: _launch(c, spec, target), "launch")


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
    return await _run(endpoint, lambda c: _delete_instance(c, name), "delete_instance")


def _start(client: pylxd.Client, name: str) -> None:
    inst = client.instances.get(name)
    if inst.status != "Running":
        inst.start(wait=True)


def _shut_down(client: pylxd.Client, name: str, grace: float) -> None:
    inst = client.instances.get(name)
    if inst.status == "Stopped":
        return
    if grace > 0:
        try:
            inst.stop(wait=True, timeout=max(1, round(grace)), force=False)
            return
        except LXDAPIException:
            pass  # not down within the grace period: force it
    inst.stop(wait=True, force=True)


async def shut_down(endpoint: Endpoint, name: str, grace: float) -> None:
    """Stop an instance: cleanly within `grace` seconds, else (or with grace 0) forced."""
    await _run(endpoint, lambda c: _shut_down(c, name, grace), "shut_down")


async def start(endpoint: Endpoint, name: str) -> None:
    """Start an existing instance (`shut_down` stops it)."""
    await _run(endpoint, lambda c: _start(c, name), "start")


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
    await _run(endpoint, lambda c: _push_files(c, name, files), "push_files")


def _exec(client: pylxd.Client, name: str, argv: list[str], uid: int, gid: int, cwd: str, env: dict):
    inst = client.instances.get(name)
    result = inst.execute(argv, environment=env, user=uid, group=gid, cwd=cwd)
    return result.exit_code, result.stdout, result.stderr


async def execute(endpoint: Endpoint, name: str, argv: list[str], uid: int = 0, gid: int = 0,
                  cwd: str = "/", env: dict | None = None) -> tuple[int, str, str]:
    """Run an argument list in the instance as uid:gid: (exit code, stdout, stderr)."""
    return await _run(endpoint, lambda c: _exec(c, name, argv, uid, gid, cwd, env or {}), "execute")


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    pool: str
    location: str  # the member it is on; "" on a standalone server
    config: dict
    used_bytes: int | None = None
    used_by: tuple = ()  # instances (URLs) that have it attached

    @property
    def instances(self) -> list[str]:
        """The names of the instances it is attached to (`used_by` without the API's URL)."""
        return sorted(u.rstrip("/").rsplit("/", 1)[-1].split("?")[0] for u in self.used_by)


#: Drivers whose volumes every cluster member reaches (a volume on them belongs to no member).
SHARED_POOL_DRIVERS = {"ceph", "cephfs", "cephobject"}


def _volume(client: pylxd.Client, pool: str, name: str, target: str | None, usage: bool) -> VolumeInfo | None:
    path = client.api.storage_pools[pool].volumes.custom[name]
    params = {"target": target} if target else None
    data = _or_none(lambda: path.get(params=params).json()["metadata"])
    if data is None:
        return None
    used = None
    if usage:
        try:
            state = _or_none(lambda: path.state.get(params=params).json().get("metadata")) or {}
        except LXDAPIException:  # "Not supported": a pool that cannot count a volume's use (dir)
            state = {}
        used = (state.get("usage") or {}).get("used")
    location = data.get("location") or ""
    return VolumeInfo(name, pool, "" if location == "none" else location, data.get("config") or {}, used,
                      tuple(data.get("used_by") or ()))


async def volume(endpoint: Endpoint, pool: str, name: str, target: str | None = None,
                 usage: bool = False) -> VolumeInfo | None:
    """A custom volume (with its space used, when asked), or None when it does not exist."""
    return await _run(endpoint, lambda c: _volume(c, pool, name, target, usage), "volume")


def _pool_driver(client: pylxd.Client, pool: str) -> str | None:
    found = _or_none(lambda: client.api.storage_pools[pool].get().json()["metadata"])
    return None if found is None else found.get("driver", "")


async def pool_driver(endpoint: Endpoint, pool: str) -> str | None:
    """The storage pool's driver (btrfs, zfs, lvm, dir, ceph...), None when there is no such pool."""
    return await _run(endpoint, lambda c: _pool_driver(c, pool), "pool_driver")


def _is_custom_volume(listed: dict) -> bool:
    """A custom volume in a pool's volume listing, which also lists each one's snapshots (as
    custom volumes named `<volume>/<snapshot>`)."""
    return listed.get("type") == "custom" and "/" not in listed.get("name", "")


def _managed_volumes(client: pylxd.Client) -> list[VolumeInfo]:
    found = []
    for pool in client.api.storage_pools.get().json().get("metadata") or []:
        name = pool.rsplit("/", 1)[-1]
        raw = client.api.storage_pools[name].volumes.get(params={"recursion": 1}).json().get("metadata") or []
        for v in raw:
            if _is_custom_volume(v) and (v.get("config") or {}).get(MANAGED_KEY) == "true":
                location = v.get("location") or ""
                found.append(VolumeInfo(v["name"], name, "" if location == "none" else location, v.get("config") or {}))
    return found


async def managed_volumes(endpoint: Endpoint) -> list[VolumeInfo]:
    """Every custom volume this spawner made (on any hub), in every pool."""
    return await _run(endpoint, _managed_volumes, "managed_volumes")


def _patch_volume_config(client: pylxd.Client, pool: str, name: str, target: str | None, config: dict) -> None:
    path = client.api.storage_pools[pool].volumes.custom[name]
    params = {"target": target} if target else None
    path.patch(json={"config": config}, params=params)


async def patch_volume_config(endpoint: Endpoint, pool: str, name: str, target: str | None, config: dict) -> None:
    """Set some keys of a custom volume's config, keeping the others (PATCH)."""
    await _run(endpoint, lambda c: _patch_volume_config(c, pool, name, target, config), "patch_volume")


def _delete_volume_snapshots(client: pylxd.Client, pool: str, name: str, target: str | None) -> int:
    path = _volume_path(client, pool, name)
    snapshots = _or_none(lambda: path.snapshots.get(params=_params(target)).json().get("metadata")) or []
    for url in snapshots:
        _wait(client, path.snapshots[url.rsplit("/", 1)[-1]].delete(params=_params(target)))
    return len(snapshots)


async def delete_volume_snapshots(endpoint: Endpoint, pool: str, name: str, target: str | None = None) -> int:
    """Delete a custom volume's snapshots (LXD 5.0 refuses to delete a volume that has some);
    returns how many there were."""
    return await _run(endpoint, lambda c: _delete_volume_snapshots(c, pool, name, target), "delete_snapshots")


# ---- a home volume's snapshots, moves and backups (the homes commands and the restore page) ----

def _volume_path(client: pylxd.Client, pool: str, name: str):
    return client.api.storage_pools[pool].volumes.custom[name]


def _params(target: str | None) -> dict | None:
    return {"target": target} if target else None


def _wait(client: pylxd.Client, response) -> None:
    """Wait for the background operation a request started, if it started one."""
    operation = (response.json() or {}).get("operation")
    if operation:
        client.operations.wait_for_operation(operation)


def _snapshot_volume(client, pool, name, target, snapshot) -> None:
    path = _volume_path(client, pool, name)
    _wait(client, path.snapshots.post(json={"name": snapshot}, params=_params(target)))


async def snapshot_volume(endpoint: Endpoint, pool: str, name: str, target: str | None, snapshot: str) -> None:
    """Take a snapshot of a custom volume now (its expiry: the volume's snapshots.expiry)."""
    await _run(endpoint, lambda c: _snapshot_volume(c, pool, name, target, snapshot), "snapshot_volume")


def _volume_snapshots(client, pool, name, target) -> list[dict]:
    path = _volume_path(client, pool, name)
    raw = path.snapshots.get(params={"recursion": 1, **(_params(target) or {})}).json().get("metadata") or []
    found = [{"name": s["name"].rsplit("/", 1)[-1], "created_at": s.get("created_at") or "",
              "expires_at": s.get("expires_at") or ""} for s in raw]
    return found  # the daemon lists them in the order they were taken


async def volume_snapshots(endpoint: Endpoint, pool: str, name: str, target: str | None = None) -> list[dict]:
    """A custom volume's snapshots, oldest first: {name, created_at, expires_at}."""
    return await _run(endpoint, lambda c: _volume_snapshots(c, pool, name, target), "volume_snapshots")


def _restore_volume(client, pool, name, target, snapshot) -> None:
    path = _volume_path(client, pool, name)
    current = path.get(params=_params(target)).json()["metadata"]
    _wait(client, path.put(json={"config": current.get("config") or {}, "description": current.get("description", ""),
                                 "restore": snapshot}, params=_params(target)))


async def restore_volume(endpoint: Endpoint, pool: str, name: str, target: str | None, snapshot: str) -> None:
    """Put a custom volume back to one of its snapshots (the daemon refuses while a running
    instance has it attached)."""
    await _run(endpoint, lambda c: _restore_volume(c, pool, name, target, snapshot), "restore_volume")


def _rename_volume(client, pool, name, target, new_name) -> None:
    _wait(client, _volume_path(client, pool, name).post(json={"name": new_name}, params=_params(target)))


async def rename_volume(endpoint: Endpoint, pool: str, name: str, target: str | None, new_name: str) -> None:
    """Rename a custom volume (snapshots follow; refused while an instance has it attached)."""
    await _run(endpoint, lambda c: _rename_volume(c, pool, name, target, new_name), "rename_volume")


def _copy_volume_to_member(client, pool, name, source, destination) -> None:
    """What `lxc storage volume move --destination-target` does: the source member offers the
    volume for migration, the destination member pulls it (with its snapshots) from there."""
    offer = _volume_path(client, pool, name).post(json={"name": name, "migration": True, "volume_only": False},
                                                   params={"target": source}).json()
    operation = offer.get("operation") or ""
    secrets = (offer.get("metadata") or {}).get("metadata") or {}
    member = client.api.cluster.members[source].get().json()["metadata"]
    certificate = client.api.get(params={"target": source}).json()["metadata"]["environment"]["certificate"]
    body = {"name": name, "type": "custom", "config": {},
            "source": {"type": "migration", "mode": "pull", "name": name, "pool": pool, "volume_only": False,
                       "operation": f"{member['url'].rstrip('/')}{operation}", "certificate": certificate,
                       "secrets": secrets}}
    _wait(client, client.api.storage_pools[pool].volumes.custom.post(json=body, params={"target": destination}))
    if operation:
        client.operations.wait_for_operation(operation)


def _delete_volume(client, pool, name, target) -> None:
    _delete_volume_snapshots(client, pool, name, target)
    _wait(client, _volume_path(client, pool, name).delete(params=_params(target)))


async def move_volume_to_member(endpoint: Endpoint, pool: str, name: str, source: str, destination: str) -> None:
    """Move a custom volume of a pool local to each member to another member: the daemon copies
    it there with its snapshots, then the original (and its snapshots) is deleted. A failed
    copy leaves the original as it was."""
    def move(client):
        _copy_volume_to_member(client, pool, name, source, destination)
        _delete_volume(client, pool, name, source)

    await _run(endpoint, move, "move_volume")


async def delete_volume(endpoint: Endpoint, pool: str, name: str, target: str | None = None) -> None:
    """Delete a custom volume and its snapshots."""
    await _run(endpoint, lambda c: _delete_volume(c, pool, name, target), "delete_volume")


def _volume_locations(client, pool, name) -> list[str]:
    raw = client.api.storage_pools[pool].volumes.get(params={"recursion": 1}).json().get("metadata") or []
    return sorted({v.get("location") or "" for v in raw if _is_custom_volume(v) and v.get("name") == name})


async def volume_locations(endpoint: Endpoint, pool: str, name: str) -> list[str]:
    """The members a custom volume of this name is on ("" or "none" on a standalone server)."""
    return await _run(endpoint, lambda c: _volume_locations(c, pool, name), "volume_locations")


def _export_volume(client, pool, name, target, out) -> None:
    path = _volume_path(client, pool, name)
    backup = f"tf-lxd-export-{int(time.time())}"
    _wait(client, path.backups.post(json={"name": backup, "volume_only": False, "optimized_storage": False},
                                    params=_params(target)))
    try:
        response = path.backups[backup].export.get(params=_params(target), stream=True)
        for chunk in response.iter_content(chunk_size=1 << 20):
            out.write(chunk)
    finally:
        _wait(client, path.backups[backup].delete(params=_params(target)))


async def export_volume(endpoint: Endpoint, pool: str, name: str, target: str | None, out) -> None:
    """Write a backup of a custom volume (files and snapshots, a tarball the daemon makes) to
    the binary file object `out`."""
    await _run(endpoint, lambda c: _export_volume(c, pool, name, target, out), "export_volume")


def _import_volume(client, pool, name, target, source, header_prefix) -> None:
    headers = {"Content-Type": "application/octet-stream", f"{header_prefix}-name": name}
    _wait(client, client.api.storage_pools[pool].volumes.custom.post(data=source, headers=headers,
                                                                       params=_params(target)))


async def import_volume(endpoint: Endpoint, pool: str, name: str, target: str | None, source,
                        header_prefix: str = "X-LXD") -> None:
    """Make a custom volume `name` from a backup tarball (what export_volume wrote), read from
    the binary file object `source`."""
    await _run(endpoint, lambda c: _import_volume(c, pool, name, target, source, header_prefix), "import_volume")
