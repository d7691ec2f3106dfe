"""Shared folders for groups: a volume per course or project, writable by some JupyterHub
groups and read-only for others.

This module holds the pure part: reading the operator's `shared_volumes` setting and deciding,
from a user's groups, which volumes their server mounts and how. The daemon enforces it: a
read-only member gets a `readonly=true` disk; a user in neither list gets no device at all.
"""

from __future__ import annotations

import dataclasses
import re

#: A shared volume's name: also its LXD volume name's tail and its workspace's directory.
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
KEYS = {"name", "size", "path", "write_groups", "read_groups", "pool", "gid", "config"}


class SharedConfigError(ValueError):
    """shared_volumes is not usable; the message names the entry and the problem."""


@dataclasses.dataclass(frozen=True)
class SharedVolume:
    name: str
    size: str  # "" sets no quota (a pool that cannot enforce one: dir)
    #: Where it is mounted: absolute, or relative to the user's home.
    path: str
    write_groups: tuple[str, ...]
    read_groups: tuple[str, ...]
    pool: str = ""
    #: The group id that owns its top directory (setgid, 2775), so members writing together
    #: keep each other's files writable.
    gid: int = 1000
    config: tuple[tuple[str, str], ...] = ()

    @property
    def volume_name(self) -> str:
        return volume_name(self.name)


def volume_name(folder: str) -> str:
    """The LXD volume of the shared folder called `folder`."""
    return f"shared-{folder}"


def _groups(entry: dict, key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(g, str) and g for g in value):
        raise SharedConfigError(f"{where}: {key} must be a list of JupyterHub group names, not {value!r}")
    return tuple(value)


def parse(raw) -> list[SharedVolume]:
    """The operator's shared_volumes, checked: a list of dicts with name, size, path and at
    least one of write_groups/read_groups; names and paths unique."""
    if not isinstance(raw, (list, tuple)):
        raise SharedConfigError(f"shared_volumes must be a list of dicts, not {type(raw).__name__}")
    found: list[SharedVolume] = []
    for i, entry in enumerate(raw):
        where = f"shared_volumes[{i}]"
        if not isinstance(entry, dict):
            raise SharedConfigError(f"{where} must be a dict, not {type(entry).__name__}")
        unknown = set(entry) - KEYS
        if unknown:
            raise SharedConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(KEYS)})")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise SharedConfigError(f"{where}: name {name!r} must be lower-case letters, digits and '-' "
                                    "(at most 41, starting with a letter or digit)")
        where = f"shared_volumes[{i}] ({name})"
        size, path = entry.get("size", ""), entry.get("path", "")
        if not isinstance(size, str):
            raise SharedConfigError(f"{where}: size must be a size such as \"10GiB\" (or \"\" for no quota)")
        if not isinstance(path, str) or not path.strip("/") or ".." in path.split("/"):
            raise SharedConfigError(f"{where}: path {path!r} must name a directory (absolute, or relative to "
                                    "the home), without '..'")
        writers, readers = _groups(entry, "write_groups", where), _groups(entry, "read_groups", where)
        if not writers and not readers:
            raise SharedConfigError(f"{where}: give write_groups or read_groups (nobody would get it)")
        gid = entry.get("gid", 1000)
        if not isinstance(gid, int) or isinstance(gid, bool) or gid < 1:
            raise SharedConfigError(f"{where}: gid must be a group id above 0, not {gid!r}")
        config = entry.get("config", {})
        if not isinstance(config, dict):
            raise SharedConfigError(f"{where}: config must be a dict of LXD volume keys")
        found.append(SharedVolume(name=name, size=size, path=path, write_groups=writers, read_groups=readers,
                                  pool=str(entry.get("pool") or ""), gid=gid,
                                  config=tuple(sorted((str(k), str(v)) for k, v in config.items()))))
    for attr in ("name", "path"):
        seen = [getattr(v, attr).rstrip("/") for v in found]
        twice = sorted({x for x in seen if seen.count(x) > 1})
        if twice:
            raise SharedConfigError(f"shared_volumes: {attr} {twice[0]!r} is given twice")
    return found


def access(volumes: list[SharedVolume], groups: list[str] | set[str]) -> dict[str, bool]:
    """{volume name: read-only?} for the volumes a member of `groups` mounts: writable when in a
    write group (also when in a read group too), read-only when only in a read group; a volume
    of neither is absent."""
    mine = set(groups)
    found = {}
    for vol in volumes:
        if mine & set(vol.write_groups):
            found[vol.name] = False
        elif mine & set(vol.read_groups):
            found[vol.name] = True
    return found


def access_changes(before: dict[str, bool], after: dict[str, bool]) -> dict[str, str]:
    """What changed between two starts' access, for the audit: {name: "granted rw" | "granted ro" |
    "revoked" | "now rw" | "now ro"}."""
    changes = {}
    for name in sorted(set(before) | set(after)):
        if name not in after:
            changes[name] = "revoked"
        elif name not in before:
            changes[name] = "granted " + ("ro" if after[name] else "rw")
        elif before[name] != after[name]:
            changes[name] = "now " + ("ro" if after[name] else "rw")
    return changes
