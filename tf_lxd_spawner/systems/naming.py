"""Names derived from JupyterHub user and server names: LXD instance names, POSIX accounts
and directory names (workspaces, and {username}/{servername} in host paths).

JupyterHub names can hold anything (quotes, `${...}`, non-ASCII, 80+ characters). LXD allows
letters, digits and hyphens, at most 63, starting with a letter. An instance or volume name
stays as the template gives it only when that is already valid and user and server names are
plain ([a-z0-9], no hyphen, not 8 hex digits); otherwise `-<8 hex>` (a hash of template, user
and server name) is appended to the cleaned, cut name.

Why distinct (user, server) pairs get distinct names, for templates whose placeholders are
separated by hyphens ("jupyter-{username}-{servername}", "jupyter-{username}" for a default
server, "home-{username}[-{servername}]"): a plain name's hyphens are the template's own, so
splitting it gives back the user and server names (hyphens in names made "a-b" and "a"/"b"
alike); a hashed name is its head and its hash, so two are equal only when the hashes are;
and a plain name never ends in `-<8 hex>` as a hashed one always does, so the two kinds
never meet. What remains is a hash collision (32 bits): the spawner refuses an instance or
volume whose labels name another server's workspace, so a collision is refused, never shared
(except a per-server volume of the same user, whose workspace is named after the volume).
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata

from escapism import escape

LXD_NAME_MAX = 63
POSIX_NAME_MAX = 32
_HASH_LEN = 8
#: Longest directory name a workspace gets: NAME_MAX (255 bytes) less room for the archive
#: suffix `.deleted-<UTC time>` and the `.<name>.tmp` of atomic writes.
PATH_COMPONENT_MAX = 200
_PATH_HASH_LEN = 16
_SAFE_CHARS = set(string.ascii_lowercase + string.digits + ".")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:_HASH_LEN]


def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


_HASH_LIKE = re.compile(rf"[0-9a-f]{{{_HASH_LEN}}}")
_HASHED_TAIL = re.compile(rf"-[0-9a-f]{{{_HASH_LEN}}}$")


def _lxd_clean(raw: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(raw).lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"j-{cleaned}".rstrip("-")
    return cleaned


def _hashed(cleaned: str, template: str, username: str, servername: str) -> str:
    head = cleaned[: LXD_NAME_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{_digest(template, username, servername)}"


def instance_name(template: str, username: str, servername: str = "") -> str:
    """Expand `template` ({username}, {servername}) into a valid LXD instance (or volume) name,
    distinct for distinct names (see the module docstring): kept as it is for plain names,
    else with a hash appended."""
    raw = template.format(username=username, servername=servername)
    cleaned = _lxd_clean(raw)
    ambiguous = any("-" in n or _HASH_LIKE.fullmatch(n) for n in (username, servername))
    if cleaned == raw and len(cleaned) <= LXD_NAME_MAX and not ambiguous and not _HASHED_TAIL.search(cleaned):
        return cleaned
    return _hashed(cleaned, template, username, servername)


def legacy_instance_name(template: str, username: str, servername: str = "") -> str:
    """The name earlier releases gave (a hash only when cleaning changed the name or cut it):
    kept so that volumes and instances named by them are still found. Not injective: "a-b"'s
    default server and "a"'s server "b" both got "jupyter-a-b"."""
    raw = template.format(username=username, servername=servername)
    cleaned = _lxd_clean(raw)
    if cleaned == raw and len(cleaned) <= LXD_NAME_MAX:
        return cleaned
    return _hashed(cleaned, template, username, servername)


def posix_username(username: str) -> str:
    """A valid account name for inside the container ([a-z_][a-z0-9_-]*, at most 32)."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", _ascii_fold(username).lower()).strip("-")
    if cleaned and (cleaned[0].isalpha() or cleaned[0] == "_") and cleaned == username:
        if len(cleaned) <= POSIX_NAME_MAX:
            return cleaned
    if not cleaned or not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"u-{cleaned}".rstrip("-")
    head = cleaned[: POSIX_NAME_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{_digest(username)}"


def _one_component(name: str, safe: set, escape_char: str, marker: str, dot: str) -> str:
    """`name` escaped (`<escape_char>xx`) to one directory name: never '.' or '..' (a '.' is then
    `dot`), and cut to
    PATH_COMPONENT_MAX with `marker` and a hash of the whole name (the marker is a character the
    escaping never leaves, so a cut name cannot collide with another)."""
    escaped = escape(name, safe=safe, escape_char=escape_char)
    if escaped in (".", ".."):
        escaped = escaped.replace(".", dot)
    if len(escaped) > PATH_COMPONENT_MAX:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_PATH_HASH_LEN]
        escaped = f"{escaped[:PATH_COMPONENT_MAX - _PATH_HASH_LEN - 1]}{marker}{digest}"
    return escaped


def path_component(name: str) -> str:
    """A name made safe as one directory name of the state_dir: lower-case letters, digits and
    '.' kept, the rest escaped (`-xx`), so two different names never share a directory. A name
    whose escaped form is too long for the file system (a 255-character JupyterHub name, or a
    few dozen non-ASCII letters at 3 bytes each, escaped to 9 characters) is cut and ends in `_`
    and a hash of the whole name: '_' never appears unescaped otherwise, so it cannot collide."""
    if not name:
        return "_empty"  # '_' is always escaped in names, so this stands for "" alone
    return _one_component(name, _SAFE_CHARS, "-", "_", "-2e")


#: What a name keeps in a host path, as DockerSpawner's volumes keep it (letters, digits, '-'),
#: and '.'; anything else is `_xx` (its UTF-8 bytes in hex).
_HOST_SAFE = set(string.ascii_letters + string.digits + "-.")


def host_component(name: str) -> str:
    """A user or server name as one directory name of a host path ({username} in
    filesystems_to_mount and files_to_push): usual names stay as they are ("jean-luc",
    "john.doe"), anything else is escaped as DockerSpawner escapes volume names, so two names
    never share a directory and none is '/', '.' or '..'. A name too long for the file system is
    cut and ends in '~' and a hash of the whole name ('~' is always escaped otherwise)."""
    return _one_component(name, _HOST_SAFE, "_", "~", "_2E")  # escapism's own spelling of '.'
