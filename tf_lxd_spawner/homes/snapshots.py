"""A home volume's snapshots: taken by the daemon on the volume's schedule
(storage_snapshot_schedule) and by the spawner before it changes a volume, and shown to the
user, read-only, inside their server (storage_snapshots_mount).

The daemon keeps a custom volume's snapshots as directories under its pool's directory on the
member (`<pool dir>/custom-snapshots/<project>_<volume>/<snapshot>/`, btrfs and dir pools);
that directory, bind-mounted read-only into the server, shows every snapshot, those taken
while the server runs included. The files keep their owners: the user reads their own.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from ..systems import lxd

#: Pool drivers whose snapshots are directories on the member (others keep them as block
#: devices or datasets the daemon mounts only on demand).
BROWSABLE_DRIVERS = {"btrfs", "dir"}
DEVICE = "home-snapshots"


def stamp(now: dt.datetime | None = None) -> str:
    """The time part of a snapshot's name, as the default pattern writes it."""
    return (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d_%H-%M-%S")


async def take(endpoint: lxd.Endpoint, pool: str, volume: str, target: str | None, why: str) -> str:
    """Snapshot the volume now, named `<why>-<time>`; returns the name."""
    name = f"{why}-{stamp()}"
    await lxd.snapshot_volume(endpoint, pool, volume, target, name)
    return name


def pool_dir(template: str, daemon_dir: str, pool: str) -> Path:
    """Where the pool's files are on the member: storage_pool_dir ({pool}) or the daemon's own
    directory's `storage-pools/<pool>`."""
    return Path(template.format(pool=pool) if template else os.path.join(daemon_dir, "storage-pools", pool))


def host_dir(pool_path: Path, volume: str, project: str = "default") -> Path:
    return pool_path / "custom-snapshots" / f"{project}_{volume}"


def volume_dir(pool_path: Path, volume: str, project: str = "default") -> Path:
    return pool_path / "custom" / f"{project}_{volume}"


def make_browsable(path: Path) -> bool:
    """Make sure the volume's snapshot directory exists (the daemon makes it at the first
    snapshot and removes it with the last) and that the user can list it (the daemon makes it
    0700, owned by root: outside the container that is nobody). Its parent stays 0700, so no
    other account on the host gets in. False when this host cannot reach the pool's
    directory (a member elsewhere, a hub without the rights): no snapshots mount then."""
    if not path.parent.parent.is_dir():
        return False
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
        os.chmod(path, 0o755)
    except OSError:
        return False
    return True
