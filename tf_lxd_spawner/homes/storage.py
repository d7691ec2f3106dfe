"""A user's persistent volume: an LXD custom storage volume made by the storage module, in a
workspace of its own (`<state_dir>/<user>/_volumes/<volume>/`, with its own audit.jsonl), so
no server's `destroy` can touch it. It outlives every server and goes only with the user
(or, for a per-server volume, with its named server): `delete`.

No plan that destroys or replaces the volume is ever applied, except by `delete`: a plan is
made first and read; a change of pool or member (which the provider can only do by replacing
the volume) is refused with a message saying what to do, and a smaller size is refused before
Terraform runs. A grown size is an in-place update.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .. import metrics
from ..errors import SpawnError
from ..lifecycle import audit
from ..lifecycle.record import FORMAT, read_record
from ..systems import initialising, lxd, modules, naming, provider
from ..systems.terraform import planned_creations, planned_replacements
from ..systems.workspace import Workspace, render_template, write_private
from . import snapshots

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner

VOLUMES_DIR = "_volumes"  # '_' is escaped in server directory names: no server can be called this
APPLIED_STAMP = ".applied.sha256"
PLAN_FILE = "volume.tfplan"
#: Whose a volume workspace is: {"user", "server", "shared"}; rewritten when its server is
#: renamed (the volume keeps its name and files, the old name is free for a new server).
OWNER_FILE = "owner.json"
#: Written into a shared volume's workspace when its user is deleted while other servers of
#: the user still have it attached: the last of them to go deletes it.
PENDING_DELETE = "delete-pending.json"
#: LXD config key of a volume kept with its deleted user (delete_storage = False).
RELEASED_KEY = "user.tf-lxd-spawner.released"
#: The quota an operator gave one home (`tf-lxd-spawner home grow`): storage_capacity applies
#: when it is larger, never a smaller one.
GROWN_FILE = "quota.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]i?b?|b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}


@dataclasses.dataclass(frozen=True)
class Volume:
    """One user's (or one server's) home volume, where it is and where it is mounted."""
    name: str
    pool: str
    size: str
    mount_path: str
    workspace: Path
    shared: bool  # all of the user's servers mount it (the name template has no {servername})


@dataclasses.dataclass(frozen=True)
class Role:
    """What a volume is for, as `ensure` needs it: whose it is (labels, owner file, audit),
    its LXD config, and how messages name it and the setting behind its size."""
    kind: str  # "home" or "shared"
    user: str
    server: str
    title: str  # "your home volume", "the shared folder course-data"
    config: dict
    size_setting: str = "storage_capacity"
    name_setting: str = "storage_name_template"
    shared: str = ""  # a shared folder's name


def home_role(spawner: LxdSpawner, vol: Volume) -> Role:
    return Role("home", spawner.user.name, "" if vol.shared else (spawner.name or ""), "your home volume",
                volume_config(spawner))


def size_bytes(size: str) -> int | None:
    """'10GiB' -> 10737418240 (LXD's units: kB/MB/GB decimal, KiB/MiB/GiB binary); None when empty."""
    if not size:
        return None
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"{size!r} is not a size (e.g. 10GiB, 500MiB)")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    binary = "i" in unit
    factor = 1024 ** ("kmgtpe".index(unit[0]) + 1) if binary else _UNITS[unit[:1]]
    return int(number * factor)


def _volume_name(spawner: LxdSpawner, legacy: bool = False) -> str:
    template = spawner.storage_name_template
    shared = "{servername}" not in template
    name_of = naming.legacy_instance_name if legacy else naming.instance_name
    return name_of(template if not shared else template.replace("{servername}", ""),
                   spawner.user.name, "" if shared else (spawner.name or ""))


def volumes_dir(spawner: LxdSpawner) -> Path:
    return Path(os.path.abspath(spawner.state_dir)) / naming.path_component(spawner.user.name) / VOLUMES_DIR


def volume_for(spawner: LxdSpawner) -> Volume:
    """Which volume this server mounts, from the storage traits (see `resolve` for the one it
    actually mounts: its record's, or an earlier release's name, or one of its own)."""
    template = spawner.storage_name_template
    shared = "{servername}" not in template
    name = _volume_name(spawner)
    ws = volumes_dir(spawner) / name
    mount = (spawner.storage_mount_path or spawner.account["home"]).format(username=spawner.account["name"])
    if not mount.startswith("/") or "/../" in f"{mount}/":
        raise SpawnError(f"storage_mount_path {spawner.storage_mount_path!r} must be an absolute path", reason="config")
    return Volume(name, spawner.storage_pool, spawner.storage_capacity, mount, ws, shared)


async def resolve(spawner: LxdSpawner) -> Volume:
    """The volume this server mounts: the one its record names (it was renamed, or the template
    changed: the server keeps its files); else the template's, under the name an earlier release
    gave it when that one exists; else, when the template's name belongs to another server (one
    renamed away from this name keeps its volume), a name of its own. Never another's files."""
    vol = volume_for(spawner)
    recorded = await recorded_volume(spawner, vol)
    if recorded is vol:
        recorded = await asyncio.to_thread(_unclaimed, spawner, vol)
    return await asyncio.to_thread(with_grown_quota, recorded)


def with_grown_quota(vol: Volume) -> Volume:
    """`vol` with the quota an operator grew it to, when that is larger than the configured one.
    Blocking."""
    try:
        grown = str(json.loads((vol.workspace / GROWN_FILE).read_text(encoding="utf-8"))["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return vol
    try:
        larger = (size_bytes(grown) or 0) > (size_bytes(vol.size) or 0) and bool(vol.size)
    except ValueError:
        return vol
    return dataclasses.replace(vol, size=grown) if larger else vol


def volume_config(spawner: LxdSpawner) -> dict[str, str]:
    """The volume's LXD config: the snapshot schedule settings, then storage_config over them."""
    config = {"snapshots.schedule": spawner.storage_snapshot_schedule,
              "snapshots.expiry": spawner.storage_snapshot_expiry,
              "snapshots.pattern": spawner.storage_snapshot_pattern}
    config.update({str(k): v if v is None else str(v) for k, v in (spawner.storage_config or {}).items()})
    return {k: v for k, v in config.items() if v not in ("", None)}


async def recorded_volume(spawner: LxdSpawner, vol: Volume) -> Volume:
    """A per-server volume is the one the server's record names, when that differs from what the
    template gives now (the server was renamed, or the template changed): the server keeps its
    files. With a shared template, the shared volume."""
    if vol.shared:
        return vol
    record = await asyncio.to_thread(read_record, spawner.workspace_dir().path)
    if record is None or not record.volume or Path(record.volume) == vol.workspace:
        return vol
    recorded = await asyncio.to_thread(from_workspace, record.volume)
    if recorded is None:
        return vol
    # Whatever the volume was made as (a default server's looks shared to earlier releases),
    # the record says this server mounts it.
    return dataclasses.replace(vol, name=recorded.name, workspace=recorded.workspace)


def owner_of(path: str | Path) -> str | None:
    """The server (its name, "" for the default one) a volume workspace is for; None when there
    is no such workspace. Blocking."""
    path = Path(path)
    try:
        return str(json.loads((path / OWNER_FILE).read_text(encoding="utf-8")).get("server") or "")
    except (OSError, ValueError, AttributeError):
        pass
    if not path.is_dir():
        return None
    inputs = Workspace(path).saved_inputs()
    if not inputs:
        return None  # made by its lock, nothing written yet (or a spawn failed before): nobody's
    return str((inputs.get("labels") or {}).get("server") or "")


def set_owner(path: str | Path, user: str, server: str, shared: bool, folder: str = "") -> None:
    """Say whose a volume workspace is (blocking); its volume's LXD labels follow at the next
    apply. `folder`: a group's shared folder (no user's)."""
    owner = {"user": user, "server": server, "shared": shared, "format": FORMAT}
    if folder:
        owner["folder"] = folder
    write_private(Path(path) / OWNER_FILE, json.dumps(owner, sort_keys=True) + "\n")


def _unclaimed(spawner: LxdSpawner, vol: Volume) -> Volume:
    server = "" if vol.shared else (spawner.name or "")
    owner = owner_of(vol.workspace)
    legacy = _volume_name(spawner, legacy=True)
    if legacy != vol.name and owner is None:
        old = vol.workspace.with_name(legacy)
        if owner_of(old) == server and from_workspace(old) is not None:
            return dataclasses.replace(vol, name=legacy, workspace=old)
    if vol.shared or owner in (None, server):
        return vol
    for n in range(1, 1000):
        digest = hashlib.sha256(f"{spawner.user.name}\0{server}\0{n}".encode()).hexdigest()[:8]
        name = f"{vol.name[:LXD_NAME_ROOM].rstrip('-')}-{digest}"
        candidate = dataclasses.replace(vol, name=name, workspace=vol.workspace.with_name(name))
        if owner_of(candidate.workspace) in (None, server):
            return candidate
    raise SpawnError(f"no free name for the home volume of {spawner.user.name}/{server}", reason="storage")


LXD_NAME_ROOM = naming.LXD_NAME_MAX - 9  # a name, '-', 8 hex digits


def from_workspace(path: str | Path) -> Volume | None:
    """The volume a volume workspace made (from its inputs), None when it has none. Blocking."""
    inputs = Workspace(path).saved_inputs()
    if not inputs.get("name"):
        return None
    server = (inputs.get("labels") or {}).get("server", "")
    try:
        shared = bool(json.loads((Path(path) / OWNER_FILE).read_text(encoding="utf-8"))["shared"])
    except (OSError, ValueError, KeyError, TypeError):
        shared = not server
    return Volume(inputs["name"], inputs.get("pool") or "default", inputs.get("size") or "", "", Path(path),
                  shared=shared)


def member_of(outputs: dict) -> str | None:
    """The member a volume workspace's state says the volume is on; None on a standalone server
    or a pool every member shares (the provider writes "" or "none" there)."""
    where = outputs.get("location")
    return where if where not in (None, "", "none") else None


def render(module_source: str, inputs: list[str], provider_settings: dict) -> str:
    """The storage workspace's root main.tf: provider and module call, names only."""
    return render_template("storage.tf.j2", module_source=module_source, inputs=sorted(inputs),
                           provider=provider_settings)


async def _versions(spawner: LxdSpawner, ws: Workspace) -> dict:
    """Which binary, provider and daemon ran, for a volume's audit record."""
    return await audit.versions(spawner.terraform, ws, spawner.endpoint, spawner.backend, spawner.log)


def _digest(main_tf: str, tfvars: dict) -> str:
    return hashlib.sha256((main_tf + json.dumps(tfvars, sort_keys=True)).encode()).hexdigest()


def _applied(ws: Workspace) -> str:
    try:
        return (ws.path / APPLIED_STAMP).read_text().strip()
    except OSError:
        return ""


async def location(spawner: LxdSpawner, vol: Volume) -> str | None:
    """The member the volume is on (None: not made yet; "" on a standalone server or a pool every
    member shares)."""
    state = await asyncio.to_thread(Workspace(vol.workspace).state_outputs)
    if not state.get("name"):
        return None
    recorded = member_of(state)
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=recorded)
    if info is not None:
        return info.location
    if recorded:
        return await follow(spawner, vol, recorded)
    return None


async def follow(spawner: LxdSpawner, vol: Volume, recorded: str) -> str:
    """The volume is not on the member its state says: moved outside the spawner (`cluster
    evacuate`, `storage volume move` by hand). The state follows it when it is on exactly one
    other member and is this workspace's (audited); otherwise the start is refused. Never a
    new, empty volume in its place."""
    found = [m for m in await lxd.volume_locations(spawner.endpoint, vol.pool, vol.name) if m not in ("", "none")]
    mine = []
    for member in found:
        info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=member)
        if info is not None and info.config.get(lxd.WORKSPACE_KEY) == str(vol.workspace):
            mine.append(member)
    if len(mine) != 1:
        where = ", ".join(found) or "no member"
        raise SpawnError(
            f"your home volume {vol.name} is not on cluster member {recorded}, where it was made, and it could "
            "not be found for certain elsewhere. Nothing was changed; ask the administrator.", reason="storage",
            log_message=f"home volume {vol.name} (pool {vol.pool}) is not on {recorded}; volumes of that name are on "
                        f"{where}. Move it back, or point its workspace at the right one (tf-lxd-spawner home move)")
    ws = Workspace(vol.workspace)
    async with ws.lock():
        await set_volume(spawner.runner, ws, target=mine[0])
        await ws.audit({"operation": "volume-follow", "user": spawner.user.name, "server": spawner.name or "",
                        "volume": vol.name, "pool": vol.pool, "from": recorded, "to": mine[0], "outcome": "ok",
                        "note": "the volume was moved outside the spawner; its workspace follows it"})
    spawner.log.warning("Home volume %s of %s moved from %s to %s outside the spawner: its workspace follows it",
                        vol.name, spawner.user.name, recorded, mine[0])
    return mine[0]


async def set_volume(runner, ws: Workspace, **attributes) -> None:
    """Bring a volume workspace along after the daemon changed the volume (renamed: name=,
    moved to another member: target=): its inputs and its state, so the next plan changes
    nothing. The caller holds the workspace's lock."""
    await runner.rewrite_state(ws.path, lambda state: repoint_state(state, attributes))
    await asyncio.to_thread(update_inputs, ws, attributes)


def update_inputs(ws: Workspace, changes: dict) -> None:
    """Change some of a volume workspace's saved inputs; its next start applies them (the
    applied stamp goes). Blocking."""
    found = ws.saved_inputs()
    found.update(changes)
    write_private(ws.tfvars, json.dumps(found, indent=2, sort_keys=True) + "\n")
    (ws.path / APPLIED_STAMP).unlink(missing_ok=True)


def repoint_state(state: dict, attributes: dict) -> None:
    """A volume workspace's state (as `state pull` gives it), changed in place to hold the
    volume under its new name or member: the resource's attributes and id (the provider's
    `<pool>/<name>/<type>`), and the outputs the spawner reads."""
    for res in state.get("resources", []):
        if res.get("type") != "lxd_volume":
            continue
        for inst in res.get("instances", []):
            attrs = inst["attributes"]
            attrs.update(attributes)
            attrs["id"] = f"{attrs['pool']}/{attrs['name']}/{attrs.get('type') or 'custom'}"
    outputs = state.get("outputs") or {}
    if "name" in attributes and "name" in outputs:
        outputs["name"]["value"] = attributes["name"]
    if "target" in attributes and "location" in outputs:
        outputs["location"]["value"] = attributes["target"] or "none"


async def ensure(spawner: LxdSpawner, vol: Volume, target: str | None, role: Role | None = None) -> str:
    """Make the volume on `target` (a member, or None), or update it in place; returns the
    member it is on. Runs under the volume workspace's own lock (a user's servers share it; a
    shared folder's every user does). `role`: a home's by default."""
    ws = Workspace(vol.workspace)
    sp = spawner
    role = role or home_role(sp, vol)
    checked = not await asyncio.to_thread(ws.path.exists)
    if checked:
        # A volume of this name that is not this workspace's is refused before anything is
        # written: a refused spawn leaves no workspace behind.
        await refuse_existing_volume(sp, vol, target, role)
    async with ws.lock():
        if await asyncio.to_thread(owner_of, vol.workspace) is None:
            await asyncio.to_thread(vol.workspace.mkdir, mode=0o700, parents=True, exist_ok=True)
            await asyncio.to_thread(set_owner, vol.workspace, role.user, role.server, vol.shared, role.shared)
        labels = {"managed": "true", "user": role.user, "server": role.server, "workspace": str(vol.workspace),
                  "hub_id": await sp.owner_id(), "kind": role.kind}
        if role.shared:
            labels["shared"] = role.shared
        inputs = {"name": vol.name, "pool": vol.pool, "size": vol.size or None, "config": role.config,
                  "target": target or None, "labels": labels}
        existing = await asyncio.to_thread(ws.state_outputs)
        previous_size = (await asyncio.to_thread(ws.saved_inputs)).get("size")
        if existing.get("name"):
            inputs["target"] = member_of(existing)
            await refuse_shrinking(sp, vol, role)
        provider_settings = await asyncio.to_thread(
            provider.settings, sp.provider_refresh_interval, sp.endpoint_url, sp.lxd_cert,
            sp.lxd_key, sp.lxd_verify, sp.state_dir)
        source = await asyncio.to_thread(modules.pin, sp.state_dir, sp.storage_module_source)
        main_tf = render(source, list(inputs), provider_settings)
        digest = _digest(main_tf, inputs)
        if existing.get("name") and await asyncio.to_thread(_applied, ws) == digest:
            info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target=inputs["target"])
            if info is not None:
                return info.location  # as applied last time, and still there: no Terraform run
        needs_init = await ws.prepare(main_tf, inputs)
        record = {"operation": "volume", "user": sp.user.name, "server": sp.name or "", "volume": vol.name,
                  "pool": vol.pool, "size": vol.size, "target": inputs["target"] or ""}
        if role.shared:
            record["shared"] = role.shared
        try:
            if needs_init:
                await initialising.initialise(sp.terraform, ws, main_tf)
            created = not existing.get("name")
            if created and not checked:  # a workspace an earlier, failed spawn left
                await refuse_existing_volume(sp, vol, inputs["target"], role)
            if created and not await asyncio.to_thread(ws.state_resources):
                # Nothing in the state: the apply can only create, so no plan is checked first
                # (one terraform run instead of two for a new user's volume).
                await sp.terraform.run(ws, "apply")
                plan = None
            else:
                plan = await sp.terraform.run(ws, "plan", f"-out={PLAN_FILE}")
            if plan and existing.get("name") and planned_creations(plan.events, "lxd_volume"):
                raise SpawnError(
                    f"{role.title} {vol.name} is missing: it is not where it was made, and a new, empty one "
                    "was not made in its place. Nothing was changed; ask the administrator.", reason="storage",
                    log_message=f"the plan for volume {vol.name} creates it again: the daemon no longer has it "
                                f"on pool {vol.pool} (member {existing.get('location') or '-'!r}); find it "
                                "(tf-lxd-spawner home list) or restore it (tf-lxd-spawner home import)")
            replaced = planned_replacements(plan.events, "lxd_volume") if plan else []
            if replaced:
                raise SpawnError(
                    f"{role.title} {vol.name} would have to be replaced (and emptied) to match the "
                    "storage settings; nothing was changed. Ask the administrator.", reason="storage",
                    log_message=f"the plan for volume {vol.name} replaces it ({', '.join(replaced)}): "
                                f"storage_pool or the member changed (it is on pool {existing.get('pool') or vol.pool!r}"
                                f", member {existing.get('location') or '-'!r}); restore the setting, or move the "
                                "volume with the daemon (lxc storage volume move) and its workspace's state")
            # Provider v1.5.0 writes a volume's whole config back on an update, without the
            # daemon's volatile.idmap.* record of how its files are shifted: the next start would
            # shift them again (uid 1000 would become 101000). Read them first, put them back.
            kept = {} if created else await _idmap_record(sp, vol, inputs["target"])
            if plan and not created and previous_size != inputs["size"]:
                # A new quota (storage_capacity raised, or `home grow`): a snapshot first.
                record["snapshot"] = await snapshots.take(sp.endpoint, vol.pool, vol.name, inputs["target"],
                                                          "before-resize")
            if plan:
                await sp.terraform.run(ws, "apply", PLAN_FILE)
            if kept:
                await lxd.patch_volume_config(sp.endpoint, vol.pool, vol.name, inputs["target"], kept)
        except Exception as e:
            await ws.audit({**record, "outcome": "failed", "error": getattr(e, "detail", str(e)),
                            **await _versions(sp, ws)})
            raise
        finally:
            await asyncio.to_thread(lambda: (ws.path / PLAN_FILE).unlink(missing_ok=True))
        await asyncio.to_thread(write_private, ws.path / APPLIED_STAMP, digest)
        # Provider v1.5.0 reports only the target it was given: ask the daemon where it is (made
        # without a target in a cluster, the member that took the request holds it).
        info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target=inputs["target"])
        where = info.location if info else ""
        await ws.audit({**record, "action": "created" if created else "updated", "outcome": "ok",
                        "location": where, **await _versions(sp, ws)})
        if created and role.kind == "home":
            sp.progress_bar.emit(28, f"Made your home volume {vol.name} ({vol.size or 'no quota'}): it starts "
                                     "empty and keeps your files across every stop")
        return where


async def report_use(spawner: LxdSpawner, vol: Volume, target: str | None, full_margin: int = 8 * 2**20) -> bool:
    """Publish the home's use (metrics) and warn the user, on the spawn page, when it is nearly
    full. Returns whether it is full (less than `full_margin` bytes free): the server must then
    start without writing there (see module_inputs.container_env)."""
    try:
        info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target or None, usage=True)
        quota = size_bytes(vol.size) or 0
    except (lxd.LxdUnavailable, ValueError):
        return False
    if info is None or info.used_bytes is None:
        return False
    metrics.HOME_USED.labels(spawner.user.name, vol.name).set(info.used_bytes)
    metrics.HOME_QUOTA.labels(spawner.user.name, vol.name).set(quota)
    if quota and info.used_bytes >= spawner.storage_nearly_full * quota:
        share = min(100, round(100 * info.used_bytes / quota))
        spawner.progress_bar.emit(30, f"Warning: your home is {share}% full ({info.used_bytes / 2**20:.0f} MiB of "
                                      f"{quota / 2**20:.0f} MiB). Delete files you no longer need; at 100% nothing "
                                      "new can be saved.")
        spawner.log.warning("Home volume %s of %s is %d%% full", vol.name, spawner.user.name, share)
    return bool(quota) and quota - info.used_bytes < full_margin


_first_attach_locks: dict[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = {}


@contextlib.asynccontextmanager
async def first_attach(spawner: LxdSpawner, vol: Volume, target: str | None):
    """Around the start of a server that mounts `vol`: a volume no instance has used yet is
    attached by one start at a time. Its first attach makes the daemon shift its files to the
    instance's id map and record that (volatile.idmap.last); two starts at once both shift
    (measured on Incus 6.0.4: 2 in 6 times), and the home then belongs to uid 100000, where the
    user can write nothing. Once recorded, starts go on side by side."""
    lock = _first_attach_locks.setdefault(asyncio.get_running_loop(), {}).setdefault(
        str(vol.workspace), asyncio.Lock())
    await lock.acquire()
    fresh = False
    try:
        info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
        fresh = info is not None and "volatile.idmap.last" not in info.config
    finally:
        if not fresh:
            lock.release()
    try:
        yield
    finally:
        if fresh:
            lock.release()


async def _idmap_record(spawner: LxdSpawner, vol: Volume, target: str | None) -> dict:
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
    return {k: v for k, v in (info.config if info else {}).items() if k.startswith("volatile.idmap.")}


async def refuse_existing_volume(spawner: LxdSpawner, vol: Volume, target: str | None,
                                 role: Role | None = None) -> None:
    """A volume of that name made for another workspace (another hub's on the same daemon,
    another server's under the same name, an operator's own) is never taken over, and
    Terraform's create would fail on it with the daemon's words: say whose it is instead."""
    role = role or home_role(spawner, vol)
    info = await lxd.volume(spawner.endpoint, vol.pool, vol.name, target=target)
    if info is not None and info.config.get(RELEASED_KEY):
        raise SpawnError(
            f"your home volume {vol.name} cannot be made: a volume of that name was kept from a deleted user "
            "of the same name, and only the administrator can say whether it is yours. Nothing was changed; "
            "ask the administrator.", reason="storage", status_code=409,
            log_message=f"home volume {vol.name} on pool {vol.pool} was kept when a user {spawner.user.name!r} was "
                        f"deleted ({info.config[RELEASED_KEY]}, delete_storage = False). If it is this user's, give it "
                        f"back: tf-lxd-spawner -f <config> adopt-volume --user {spawner.user.name} --volume {vol.name}; "
                        f"if not, delete it (lxc storage volume delete {vol.pool} {vol.name}) or give this user another "
                        "name")
    problem = info and lxd.not_ours(info.config, vol.workspace, await spawner.owner_id(), role.name_setting)
    if problem:
        raise SpawnError(
            f"{role.title} {vol.name} cannot be made: a volume of that name already exists on storage "
            f"pool {vol.pool}, and it is not yours. Nothing was changed; ask the administrator.",
            reason="storage",
            log_message=f"{role.kind} volume {vol.name} on {spawner.backend_info.display} pool {vol.pool} already "
                        f"exists and {problem}")


async def refuse_shrinking(spawner: LxdSpawner, vol: Volume, role: Role) -> None:
    """Volumes only grow: a smaller size (storage_capacity, a shared folder's size) than the
    volume has is refused."""
    before = (await asyncio.to_thread(Workspace(vol.workspace).saved_inputs)).get("size") or ""
    try:
        old, new = size_bytes(before), size_bytes(vol.size)
    except ValueError as e:
        raise SpawnError(f"{role.size_setting}: {e}", reason="config") from None
    if old and (new is None or new < old):
        raise SpawnError(
            f"{role.title} {vol.name} cannot shrink from {before} to {vol.size or 'no quota'}: it might hold "
            "more than that. Nothing was changed; ask the administrator.", reason="storage",
            log_message=f"{role.size_setting} {vol.size!r} is smaller than volume {vol.name}'s {before!r}: volumes "
                        "only grow; set it back, or resize by hand")


def holders(spawner: LxdSpawner, vol: Volume, own_too: bool = False) -> list[str]:
    """The user's other servers (with `own_too`, this one too) whose record says they still have
    something in LXD that mounts `vol` (a kept or running instance, or one whose clean-up
    failed). Blocking."""
    user_dir = volumes_dir(spawner).parent
    mine = None if own_too else spawner.workspace_dir().path
    found = []
    for ws in sorted(user_dir.iterdir()) if user_dir.is_dir() else []:
        if ws.name == VOLUMES_DIR or ".deleted-" in ws.name or ws == mine or not ws.is_dir():
            continue
        record = read_record(ws)
        if record is not None and record.exists and (record.volume == str(vol.workspace) or
                                                    (vol.shared and not record.volume)):
            found.append(record.instance or ws.name)
    return found


def delete_pending(vol: Volume) -> bool:
    """Whether the volume's user was deleted while other servers still had it attached."""
    return (vol.workspace / PENDING_DELETE).exists()


async def deferred(spawner: LxdSpawner, vol: Volume, ws: Workspace, record: dict) -> bool:
    """While another server of the user still has the volume attached, its deletion (or
    release) waits: marked (PENDING_DELETE) and audited, nothing of it touched; the last of
    those servers to be deleted does it. The caller holds the volume workspace's lock."""
    others = await asyncio.to_thread(holders, spawner, vol)
    if not others:
        return False
    note = f"deferred: still attached to {', '.join(others)}; done with the last of them"
    await asyncio.to_thread(write_private, ws.path / PENDING_DELETE,
                            json.dumps({"user": spawner.user.name, "waiting_for": others}) + "\n")
    await ws.audit({**record, "outcome": "deferred", "note": note})
    spawner.log.info("Home volume %s of %s: %s %s", vol.name, spawner.user.name, record["operation"], note)
    return True


async def delete(spawner: LxdSpawner, vol: Volume) -> None:
    """Destroy the volume (the user is deleted) and archive its workspace beside the others,
    audit record included; a failure is logged as an error and audited, then raised.

    The volume goes last: while another server of the user still has it attached (a kept named
    server JupyterHub deletes after this one), nothing of it is touched, snapshots included;
    it is marked, and the last of those servers to be deleted deletes it."""
    ws = Workspace(vol.workspace)
    if not await asyncio.to_thread(ws.path.exists):
        return
    sp = spawner
    async with ws.lock():
        record = {"operation": "volume-delete", "user": sp.user.name, "server": sp.name or "",
                  "volume": vol.name, "pool": vol.pool}
        if await deferred(sp, vol, ws, record):
            return
        try:
            if await asyncio.to_thread(lambda: (ws.path / ".terraform").exists()):
                target = member_of(await asyncio.to_thread(ws.state_outputs))
                info = await lxd.volume(sp.endpoint, vol.pool, vol.name, target)
                if info is not None and info.used_by:
                    # Attached to an instance the records do not know: its snapshots (the way
                    # back) stay with it, and the error names who holds it.
                    raise RuntimeError(f"volume {vol.name} is still attached to {', '.join(info.used_by)}; "
                                       "nothing of it was deleted")
                await initialising.repoint(sp.terraform, ws, sp.storage_module_source, sp.log,
                                           {"user": sp.user.name, "server": sp.name or ""})
                snapshots = await lxd.delete_volume_snapshots(sp.endpoint, vol.pool, vol.name, target)
                record["snapshots_deleted"] = snapshots
                await sp.terraform.run(ws, "destroy", "-refresh=false")
        except Exception as e:
            sp.log.error("Deleting the home volume %s of %s failed (the user is gone, the volume is not): %s",
                         vol.name, sp.user.name, e)
            await ws.audit({**record, "outcome": "failed", "error": str(e), **await _versions(sp, ws)})
            raise
        await ws.audit({**record, "outcome": "ok", **await _versions(sp, ws)})
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.deleted-{stamp}"))
    sp.log.info("Deleted home volume %s of %s", vol.name, sp.user.name)


async def release(spawner: LxdSpawner, vol: Volume) -> None:
    """The user is deleted but volumes are kept (delete_storage = False): the volume stays in
    LXD with the user's files, its workspace is archived (`<volume>.released-<time>`), and the
    orphans command reports it from then on."""
    ws = Workspace(vol.workspace)
    if not await asyncio.to_thread(ws.path.exists):
        return
    async with ws.lock():
        record = {"operation": "volume-release", "user": spawner.user.name, "server": spawner.name or "",
                  "volume": vol.name, "pool": vol.pool}
        if await deferred(spawner, vol, ws, record):
            return
        target = member_of(await asyncio.to_thread(ws.state_outputs))
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        # Marked in LXD too, so a new user of the same name is refused it, not given it.
        await lxd.patch_volume_config(spawner.endpoint, vol.pool, vol.name, target, {RELEASED_KEY: stamp})
        await ws.audit({**record, "outcome": "ok", "note": "user deleted; volume kept (delete_storage = False)"})
        await asyncio.to_thread(os.rename, ws.path, ws.path.with_name(f"{ws.path.name}.released-{stamp}"))
    spawner.log.warning("Kept the home volume %s of deleted user %s (delete_storage = False)", vol.name,
                        spawner.user.name)


#: Run as root in a resumed kept instance whose home volume was just attached for the first
#: time: the files its home held before (hidden under the volume's mount) are copied into the
#: volume, never over a file already there. `/` bound again without its submounts shows the
#: directory under the mount. The path arrives as $1, never as shell text.
_IMPORT_SCRIPT = r"""
set -eu
home="$1"
root=$(mktemp -d /run/tf-lxd-home-import.XXXXXX)
mount --bind / "$root"
trap 'umount "$root"; rmdir "$root"' EXIT
if [ -d "$root$home" ] && [ -n "$(ls -A "$root$home")" ]; then
  cp -a -n "$root$home"/. "$home"/
  find "$root$home" -mindepth 1 | wc -l
else
  echo 0
fi
"""


async def import_home(spawner: LxdSpawner, vol: Volume, instance: str, ws: Workspace) -> int:
    """A kept instance started before it had a home volume (an earlier release, or
    storage_enabled off then) gets the volume mounted over its home: copy what its home held
    into the volume, so its user finds every file (audited in the server's workspace). Returns
    how many files and directories there were."""
    code, out, err = await lxd.execute(spawner.endpoint, instance, ["sh", "-c", _IMPORT_SCRIPT, "sh", vol.mount_path])
    record = {"operation": "home-import", "user": spawner.user.name, "server": spawner.name or "",
              "instance": instance, "volume": vol.name, "path": vol.mount_path}
    if code != 0:
        await ws.audit({**record, "outcome": "failed", "error": (err or out).strip()})
        raise SpawnError(
            f"your files in {instance} could not be copied into your new home volume {vol.name}; nothing was "
            "deleted. Ask the administrator.", reason="storage",
            log_message=f"copying {vol.mount_path} of kept instance {instance} into volume {vol.name} failed "
                        f"(exit {code}): {(err or out).strip()}")
    count = int((out.strip().splitlines() or ["0"])[-1] or 0)
    await ws.audit({**record, "outcome": "ok", "entries": count,
                    "note": "the home's files from before the volume were copied into it (none overwritten)"})
    if count:
        spawner.progress_bar.emit(85, f"Copied the {count} files and folders of your home into your new home "
                                      f"volume {vol.name}")
    return count
