"""What differs between LXD and Incus for this spawner, and nothing else.

Both daemons speak the same REST API (pylxd and the LXD Terraform provider work with either:
checked on LXD 5.0.2 and Incus 6.0.4). They differ in where the local daemon listens, in the
name a daemon gives itself (GET /1.0 `environment.server`), and in what the kernel lets them
do with mounted directories: Incus 6.0.1+ has the kernel 6.9+ idmap fix, so `shift=true` disks
work there, while LXD 5.0.2 needs raw.idmap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str  # the `backend` trait's value, and the daemon's environment.server
    display: str
    dir_env: str  # the daemon's own variable for its directory
    default_dir: str
    mount_idmap: str  # the default of the `mount_idmap` trait on this daemon
    #: Whether the LXD provider (v1.5.0) can write files into its instances: it uploads through
    #: /1.0/containers/<name>/files, which Incus removed (creating uses /1.0/instances and works).
    provider_files: bool
    import_header: str  # the prefix of the headers a volume import's name and type go in

    def local_dir(self) -> str:
        """The daemon's directory on this host (its pools are under storage-pools/)."""
        return os.environ.get(self.dir_env) or self.default_dir

    def local_socket(self) -> str:
        """The unix socket of the daemon on this host, as its own client finds it."""
        if self.name == "incus" and os.environ.get("INCUS_SOCKET"):
            return os.environ["INCUS_SOCKET"]
        return os.path.join(self.local_dir(), "unix.socket")


LXD = Backend("lxd", "LXD", "LXD_DIR", "/var/lib/lxd", "raw.idmap", provider_files=True, import_header="X-LXD")
INCUS = Backend("incus", "Incus", "INCUS_DIR", "/var/lib/incus", "shift", provider_files=False, import_header="X-Incus")
BACKENDS = {b.name: b for b in (LXD, INCUS)}


def is_remote(endpoint: str) -> bool:
    """An https:// endpoint: the daemon may be on another host. Anything else is a local socket."""
    return endpoint.startswith("https://")


def endpoint_url(backend: Backend, endpoint: str) -> str:
    """The endpoint the spawner, pylxd and the provider use: the operator's, or the local socket."""
    return endpoint or backend.local_socket()


def mismatch(backend: Backend, server_info: dict, where: str) -> str | None:
    """The operator's words when the daemon at the endpoint is not the configured backend."""
    env = server_info.get("environment") or {}
    server = env.get("server")
    if not server or server == backend.name:  # not said to an untrusted client: later calls fail clearly
        return None
    other = BACKENDS.get(server)
    found = f"{other.display if other else server} {env.get('server_version', '')}".strip()
    hint = f"set c.LxdSpawner.backend = {server!r}" if other else "point lxd_endpoint at an LXD or Incus daemon"
    return f"backend is {backend.name!r} but the daemon at {where} is {found}: {hint}"
