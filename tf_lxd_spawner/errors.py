"""The error a failed start shows the user (on the spawn page): one type every step raises."""


class SpawnError(RuntimeError):
    """A start failed for a reason the user should read (shown on the spawn page)."""
