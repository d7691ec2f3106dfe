"""The part of the hub's environment that reaches Terraform, its providers and post_hub_commands.

The hub's environment holds its own secrets (CONFIGPROXY_AUTH_TOKEN, JUPYTERHUB_CRYPT_KEY, cloud
or database credentials an operator set for the hub): none of that is theirs to see. Only names
on an allow-list (fnmatch patterns) pass; everything else a run needs is given explicitly.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

#: What Terraform and ordinary commands need to run and reach LXD, and nothing else.
DEFAULT_ALLOWED = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_*", "TZ", "TMPDIR",
    "TF_*",  # Terraform's own settings (CLI config, logging, plugin cache...)
    "LXD_DIR", "LXD_SOCKET", "LXD_CONF", "INCUS_DIR", "INCUS_SOCKET", "INCUS_CONF",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
)


def allowed(patterns: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The entries of `environ` (default: this process's) whose names match one of `patterns`."""
    environ = os.environ if environ is None else environ
    patterns = list(patterns)
    return {k: v for k, v in environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
