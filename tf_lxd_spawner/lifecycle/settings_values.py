"""Operator configuration turned into module inputs: pushed files, mounts, limits, commands.

Pure functions, so every translation (and every error message for bad input) can be checked
without a hub. `expand` substitutes {username} and {servername} in commands; paths expand by
`host_path` and `container_path` (bundled for one server as `Names`), which no name can lead
out of the directory the operator wrote.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..systems.naming import host_component

Expand = Callable[[str], str]


class ConfigError(ValueError):
    """Operator configuration or user input that cannot work; the message names the problem."""


def _expand_path(template: str, values: dict[str, str], where: str, kind: str) -> str:
    """Expand a path template one '/'-separated part at a time, refusing a part that a name
    turned into '.' or '..', or into something holding a '/' or a NUL: the path must stay
    where the operator wrote it, whatever the user or server is called."""
    parts = []
    bad = False
    for part in template.split("/"):
        try:
            expanded = part.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: cannot expand the {kind} {template!r} ({type(e).__name__}: {e}); "
                              f"it may use {', '.join('{' + k + '}' for k in values)}") from None
        if "/" in expanded or "\0" in expanded or (expanded in (".", "..") and expanded != part):
            bad = True
        parts.append(expanded)
    path = "/".join(parts)
    if bad or "\0" in path:
        raise ConfigError(f"{where}: the {kind} {template!r} would be {path!r}: this user or server name would "
                          "put a '/', a '.' or '..' part or a NUL into it, leading out of its directory; refused")
    return path


def host_path(template: str, username: str, servername: str = "", where: str = "path") -> str:
    """A path on the hub host or member (a mounted directory, a pushed file's source). As in
    DockerSpawner's volumes, {username} and {servername} are the escaped names (naming.
    host_component: letters, digits, '-' and '.' kept, the rest `_xx`; the default server's
    {servername} is ""), so a name is always one directory name; {raw_username} and
    {raw_servername} are the names as they are, only where the operator writes them, and then
    refused when they would step out of the directory ('/', '..', NUL)."""
    values = {"username": host_component(username) if username else "",
              "servername": host_component(servername) if servername else "",
              "raw_username": username, "raw_servername": servername}
    return _expand_path(template, values, where, "host path")


def container_path(template: str, username: str, servername: str = "", where: str = "path") -> str:
    """A path inside the container: {username} and {servername} are the names as they are (as
    before; the account is naming.posix_username), refused when they would step out of the
    directory ('/', '..', NUL). {raw_username} and {raw_servername} are the same."""
    values = {"username": username, "servername": servername,
              "raw_username": username, "raw_servername": servername}
    return _expand_path(template, values, where, "container path")


@dataclass(frozen=True)
class Names:
    """One server's user and server names, expanded into the operator's templates."""
    username: str
    servername: str = ""

    def text(self, template: str) -> str:
        """Plain text (a device name): the names as they are."""
        return template.format(username=self.username, servername=self.servername)

    def host(self, template: str, where: str = "path") -> str:
        return host_path(template, self.username, self.servername, where)

    def container(self, template: str, where: str = "path") -> str:
        return container_path(template, self.username, self.servername, where)


def pushed_files(entries: Iterable, names: Names) -> list[dict]:
    """files_to_push: [host_src, container_dst] pairs (the seed's form) or dicts with
    `target` and one of `source`/`content`, plus optional mode, uid, gid. Sources are host
    paths, targets container paths (see host_path, container_path)."""
    files = []
    for i, entry in enumerate(entries):
        where = f"files_to_push[{i}]"
        if isinstance(entry, Mapping):
            unknown = set(entry) - {"source", "content", "target", "mode", "uid", "gid"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
            if "target" not in entry or ("source" in entry) == ("content" in entry):
                raise ConfigError(f"{where}: needs 'target' and exactly one of 'source' or 'content'")
            item = {"target_path": names.container(str(entry["target"]), where)}
            if "source" in entry:
                item["source"] = names.host(str(entry["source"]), where)
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
            item = {"target_path": names.container(str(dst), where), "source": names.host(str(src), where),
                    "mode": "0644"}
        if not item["target_path"].startswith("/"):
            raise ConfigError(f"{where}: container path {item['target_path']!r} must be absolute")
        if "source" in item:
            if not os.path.isfile(item["source"]):
                raise ConfigError(f"{where}: source {item['source']!r} does not exist on the hub host")
            item["source"] = os.path.abspath(item["source"])
        files.append(item)
    return files


def mounts(entries: Iterable, names: Names, shift: bool) -> list[dict]:
    """filesystems_to_mount: [name, host_dir, container_path] triples -> module disks."""
    disks = []
    for i, entry in enumerate(entries):
        where = f"filesystems_to_mount[{i}]"
        try:
            name, host_dir, path = entry
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected [name, host_dir, container_path]") from None
        name = names.text(str(name))
        host_dir, path = names.host(str(host_dir), where), names.container(str(path), where)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ConfigError(f"{where}: {name!r} is not a valid device name")
        if not (host_dir.startswith("/") and path.startswith("/")):
            raise ConfigError(f"{where}: paths must be absolute ({host_dir!r}, {path!r})")
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


#: The user_options keys the spawner itself reads (options_from_form's): each must be a string
#: when given. Other keys pass untouched: an operator's own form or module_variables callable
#: may read them, with whatever types it expects.
USER_OPTIONS = ("image",)


def checked_user_options(options) -> dict:
    """user_options as a dict, refused when it is not a mapping or an option the spawner reads
    is not a string: through the REST API a user can send any JSON ({"image": 5},
    {"image": ["a"]}), and that must be a clear refusal, not a TypeError deep in a check.
    None (or an absent key) means "not chosen"."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"user_options must be an object of option names and values, "
                          f"not {type(options).__name__}")
    for key in USER_OPTIONS:
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"user_options[{key!r}] must be a string, not {type(value).__name__} "
                              f"({_short_repr(value)})")
    return dict(options)


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
