"""Operator configuration turned into module inputs: pushed files, mounts, limits, commands.

Pure functions, so every translation (and every error message for bad input) can be checked
without a hub. `expand` substitutes {username} and {servername}.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping

Expand = Callable[[str], str]


class ConfigError(ValueError):
    """Operator configuration or user input that cannot work; the message names the problem."""


def pushed_files(entries: Iterable, expand: Expand) -> list[dict]:
    """files_to_push: [host_src, container_dst] pairs (the seed's form) or dicts with
    `target` and one of `source`/`content`, plus optional mode, uid, gid."""
    files = []
    for i, entry in enumerate(entries):
        where = f"files_to_push[{i}]"
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"source", "content", "target", "mode", "uid", "gid"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
            if "target" not in entry or ("source" in entry) == ("content" in entry):
                raise ConfigError(f"{where}: needs 'target' and exactly one of 'source' or 'content'")
            item = {"target_path": expand(str(entry["target"]))}
            if "source" in entry:
                item["source"] = expand(str(entry["source"]))
            else:
                item["content"] = str(entry["content"])
            mode = str(entry.get("mode", "0644"))
            if not re.fullmatch(r"0?[0-7]{3,4}", mode):
                raise ConfigError(f"{where}: mode {mode!r} is not an octal mode such as '0644'")
            item.update(mode=mode, uid=int(entry.get("uid", 0)), gid=int(entry.get("gid", 0)))
        else:
            try:
                src, dst = entry
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: expected [host_src, container_dst], got {entry!r}") from None
            item = {"target_path": expand(str(dst)), "source": expand(str(src)), "mode": "0644"}
        if not item["target_path"].startswith("/"):
            raise ConfigError(f"{where}: container path {item['target_path']!r} must be absolute")
        if "source" in item:
            if not os.path.isfile(item["source"]):
                raise ConfigError(f"{where}: source {item['source']!r} does not exist on the hub host")
            item["source"] = os.path.abspath(item["source"])
        files.append(item)
    return files


def mounts(entries: Iterable, expand: Expand, shift: bool) -> list[dict]:
    """filesystems_to_mount: [name, host_dir, container_path] triples -> module disks."""
    disks = []
    for i, entry in enumerate(entries):
        try:
            name, host_dir, path = entry
        except (TypeError, ValueError):
            raise ConfigError(f"filesystems_to_mount[{i}]: expected [name, host_dir, container_path]") from None
        name, host_dir, path = expand(str(name)), expand(str(host_dir)), expand(str(path))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"filesystems_to_mount[{i}]: {name!r} is not a valid device name")
        if not (host_dir.startswith("/") and path.startswith("/")):
            raise ConfigError(f"filesystems_to_mount[{i}]: paths must be absolute ({host_dir!r}, {path!r})")
        disks.append({"name": name, "source": host_dir, "path": path, "shift": shift})
    return disks


def limits(mem_limit: int | None, cpu_limit: float | None, process_limit: int = 0,
           cpu_share: int = 100) -> dict[str, str]:
    """LXD limits.* (without the prefix): memory in exact bytes; CPU as a CFS quota, so 0.5
    is half a CPU ("50ms/100ms"), not truncated to 0; processes as a count. Without a quota, a
    cpu_share under 100 is a soft share ("10%": the container's CPU weight is a tenth of a host
    process's, idle CPU stays usable)."""
    out = {}
    if not 1 <= cpu_share <= 100:
        raise ConfigError(f"container_cpu_share {cpu_share} must be a percentage from 1 to 100")
    if mem_limit:
        if int(mem_limit) < 32 * 1024 * 1024:
            raise ConfigError(f"mem_limit {mem_limit} bytes is too small to run a server (at least 32M)")
        out["memory"] = str(int(mem_limit))
    if cpu_limit:
        if not math.isfinite(cpu_limit) or cpu_limit <= 0:
            raise ConfigError(f"cpu_limit {cpu_limit} must be a positive number of CPUs")
        out["cpu.allowance"] = f"{max(1, round(cpu_limit * 100))}ms/100ms"
    elif cpu_share < 100:
        out["cpu.allowance"] = f"{cpu_share}%"
    if process_limit:
        if process_limit < 0:
            raise ConfigError(f"process_limit {process_limit} must be positive (0 for no limit)")
        out["processes"] = str(int(process_limit))
    return out


def command_lists(entries: Iterable, expand: Expand, option: str) -> list[list[str]]:
    """commands_to_prepare / post_hub_commands: each an argument list (a string is split like
    a shell would, before expansion), so a user name is always one argument, never code."""
    commands = []
    for i, entry in enumerate(entries):
        argv = shlex.split(entry) if isinstance(entry, str) else [str(a) for a in entry]
        if not argv:
            raise ConfigError(f"{option}[{i}] is empty")
        expanded = [expand(a) for a in argv]
        for template, arg in zip(argv[1:], expanded[1:]):
            # A name starting with '-' would be read as an option ("-rf", "--config=..."):
            # refuse rather than guess whether the command knows "--".
            if arg.startswith("-") and not template.startswith("-"):
                raise ConfigError(f"{option}[{i}]: the argument {template!r} would become {arg!r}, which "
                                  "the command would read as an option; this user or server name cannot be used "
                                  "there")
        commands.append(expanded)
    return commands


def image_choices(allowed) -> dict[str, str]:
    """allowed_images as {display name: image}; a list maps each image to itself."""
    if isinstance(allowed, Mapping):
        return {str(k): str(v) for k, v in allowed.items()}
    return {str(i): str(i) for i in allowed}


def chosen_image(allowed, requested: str | None, default: str) -> str:
    """The image for this spawn, validated server-side against allowed_images."""
    choices = image_choices(allowed)
    if not choices:
        if requested not in (None, "", default):
            raise ConfigError(f"image {requested!r} was requested, but this hub offers no image choice")
        return default
    if requested in (None, ""):
        return default if default in choices.values() else next(iter(choices.values()))
    if requested in choices:
        return choices[requested]
    if requested in choices.values():
        return requested
    raise ConfigError(f"image {requested!r} is not allowed; choose one of {sorted(choices)}")


def _subid_allows(path: str, owner: str, wanted: int) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] == owner and parts[1].isdigit() and parts[2].isdigit():
                    if int(parts[1]) <= wanted < int(parts[1]) + int(parts[2]):
                        return True
    except FileNotFoundError:
        pass
    return False


def check_subid_allowed(uid: int, gid: int, subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> None:
    """raw.idmap only works for ids LXD (running as root) may map: say how to allow them."""
    missing = []
    if not _subid_allows(subuid, "root", uid):
        missing.append(f"'root:{uid}:1' in {subuid}")
    if not _subid_allows(subgid, "root", gid):
        missing.append(f"'root:{gid}:1' in {subgid}")
    if missing:
        raise ConfigError(
            f"mount_idmap 'raw.idmap' needs uid {uid} and gid {gid} allowed for LXD: add "
            + " and ".join(missing) + ", then restart LXD (or set mount_idmap to 'shift' or 'none')")
