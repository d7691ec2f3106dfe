"""Wall time per named stage of one start or stop, for its audit record (and later metrics):
an operator reading a slow spawn's record sees where its time went."""

from __future__ import annotations

import time
from contextlib import contextmanager


class Stages:
    """Durations of the stages timed so far, in the order they first ran."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.durations: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str):
        """Time the block as stage `name` (added up when a stage runs more than once), also when
        it fails: a failed spawn's record shows how far it got and how long each part took."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.durations[name] = round(self.durations.get(name, 0.0) + time.monotonic() - t0, 3)

    def record(self) -> dict:
        """{"duration": total seconds, "stages": {name: seconds}} for an audit record."""
        return {"duration": round(time.monotonic() - self.began, 3), "stages": dict(self.durations)}
