"""Settings of the LXD provider block in the root main.tf.

A unix socket (LXD's or Incus's: the provider speaks to both) is named as the default remote.
For an https endpoint the provider (v1.5.0) reads its client certificate and the server
certificates it trusts from a config directory: a private
`<state_dir>/.lxd-provider/<host>_<port>/` per endpoint is kept in step with the operator's
files, so two endpoints in one state_dir never overwrite each other's certificates.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

REMOTE = "tf-lxd"


def _write_private_copy(src: str, dest: Path) -> None:
    data = Path(src).read_bytes()
    if dest.exists() and dest.read_bytes() == data:
        return
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def settings(refresh_interval: str, endpoint: str, cert: str, key: str, verify, state_dir: str) -> dict:
    """What the root template needs. Blocking (copies files): call it in a thread."""
    result = {"refresh_interval": refresh_interval, "remote": None, "config_dir": None,
              "accept_remote_certificate": False}
    if not endpoint:
        return result
    if endpoint.startswith("/"):
        result["remote"] = {"name": REMOTE, "scheme": "unix", "address": endpoint, "port": ""}
        return result
    url = urlparse(endpoint)
    config_dir = Path(os.path.abspath(state_dir)) / ".lxd-provider" / f"{url.hostname}_{url.port or 8443}"
    if cert and key:
        _write_private_copy(cert, config_dir / "client.crt")
        _write_private_copy(key, config_dir / "client.key")
    if isinstance(verify, str):
        _write_private_copy(verify, config_dir / "servercerts" / f"{REMOTE}.crt")
    result.update(
        remote={"name": REMOTE, "scheme": "https", "address": url.hostname, "port": str(url.port or 8443)},
        accept_remote_certificate=verify is False,
        config_dir=str(config_dir),
    )
    return result
