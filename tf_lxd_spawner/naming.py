"""Names derived from JupyterHub user and server names: LXD instance names and POSIX accounts.

JupyterHub names can hold anything (quotes, `${...}`, non-ASCII, 80+ characters). LXD allows
letters, digits and hyphens, at most 63, starting with a letter. Whenever cleaning changed a
name (or cut it), a short hash of the original is appended, so two users never share a name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

LXD_NAME_MAX = 63
POSIX_NAME_MAX = 32
_HASH_LEN = 8


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:_HASH_LEN]


def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def instance_name(template: str, username: str, servername: str = "") -> str:
    """Expand `template` ({username}, {servername}) into a valid, unique LXD instance name."""
    raw = template.format(username=username, servername=servername)
    cleaned = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(raw).lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"j-{cleaned}".rstrip("-")
    exact = cleaned == raw
    if exact and len(cleaned) <= LXD_NAME_MAX:
        return cleaned
    suffix = _digest(template, username, servername)
    head = cleaned[: LXD_NAME_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{suffix}"


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
