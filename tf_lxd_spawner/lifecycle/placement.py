"""Choosing the cluster member for a new server.

Pure scoring (`least_loaded`) is kept apart from LXD access so it can be reasoned about and
tested alone. Placements decided but not yet applied are held as in-flight reservations and
count as load, so simultaneous spawns spread instead of all picking the same idle member.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping

from ..systems.lxd import Member

ONLINE = "Online"


class NoMemberAvailable(RuntimeError):
    """No cluster member can take a new server."""


def least_loaded(
    members: Iterable[Member],
    load: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> str:
    """The online member with the best weight / (load + 1) (seed semantics: weight divided by
    load, default weight 1). Ties go to the lower load, then to the name, so the choice is
    deterministic."""
    weights = weights or {}
    excluded = set(exclude)
    candidates = [m for m in members if m.status == ONLINE and m.name not in excluded]
    if not candidates:
        raise NoMemberAvailable("no cluster member is Online and allowed (check `lxc cluster list`)")

    def rank(m: Member):
        weight = float(weights.get(m.name, 1.0))
        n = load.get(m.name, 0)
        return (-(weight / (n + 1)), n, m.name)

    usable = [m for m in candidates if float(weights.get(m.name, 1.0)) > 0]
    if not usable:
        raise NoMemberAvailable("every online member has host_weights 0")
    return min(usable, key=rank).name


def eligible(members: Iterable[Member], allowed: Iterable[str] = (), group: str = "") -> list[Member]:
    """The members a server may go to by allowed_members and cluster_group (both when both
    are set), whatever their status; refused naming the setting when none is left."""
    members = list(members)
    allowed = set(allowed)
    chosen = [m for m in members if (not allowed or m.name in allowed) and (not group or group in m.groups)]
    if not chosen:
        wanted = " and ".join(filter(None, [f"allowed_members {sorted(allowed)}" if allowed else "",
                                            f"cluster_group {group!r}" if group else ""]))
        raise NoMemberAvailable(f"no cluster member matches {wanted} (members: "
                                f"{', '.join(f'{m.name} {list(m.groups)}' for m in members) or 'none'})")
    return chosen


def restricted(spawner) -> bool:
    return bool(spawner.allowed_members or spawner.cluster_group)


class Reservations:
    """In-flight placements per member, shared by all spawners of a hub.

    `decide` serialises choosing and reserving, so two spawns never decide on the same
    picture of the load.
    """

    def __init__(self):
        self._counts: Counter = Counter()
        self._decide: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def decide(self) -> asyncio.Lock:
        """The decision lock of the running event loop."""
        loop = asyncio.get_running_loop()
        lock = self._decide.get(loop)
        if lock is None:
            lock = self._decide[loop] = asyncio.Lock()
        return lock

    def reserve(self, member: str | None) -> None:
        if member:
            self._counts[member] += 1

    def release(self, member: str | None) -> None:
        if member:
            self._counts[member] -= 1
            if self._counts[member] <= 0:
                del self._counts[member]

    def snapshot(self) -> Counter:
        return Counter(self._counts)

    @contextlib.contextmanager
    def hold(self, member: str | None):
        self.reserve(member)
        try:
            yield
        finally:
            self.release(member)


reservations = Reservations()
