"""The error a failed start shows the user (on the spawn page): one type every step raises.

On JupyterHub 6 it is a `SpawnException`: the hub then treats it as an expected failure (no
traceback, its `reason` labels the spawn metrics, its status code answers the API) instead of
a 500. On JupyterHub 5.2 it is a tornado `HTTPError`, which that hub also relays to the user
without a traceback."""

from __future__ import annotations

try:  # JupyterHub 6
    from jupyterhub.spawner import SpawnException as _Base
except ImportError:  # JupyterHub 5.2
    from tornado.web import HTTPError as _Base


class SpawnError(_Base):
    """A start failed for a reason the user should read (shown on the spawn page).

    `message` is what the user sees; `log_message` (default: the message) what the hub's log
    and the audit keep, e.g. the full Terraform or LXD error behind a neutral message; `reason`
    a short label for metrics (refused, image, placement, resume, error...)."""

    def __init__(self, message: str, *, reason: str = "error", log_message: str = "", status_code: int = 400):
        if _Base.__name__ == "SpawnException":
            super().__init__(message, reason=reason, log_message=log_message or message, status_code=status_code)
        else:  # tornado's log_message is what JupyterHub 5.2 answers the API with: the user's text
            super().__init__(status_code, "%s", message, reason=reason)
            self.message = message
            self.reason = reason
        self._detail = log_message or message
        self.jupyterhub_message = message  # what JupyterHub's progress API shows the user

    def __str__(self) -> str:
        return self.message

    @property
    def detail(self) -> str:
        """Everything known about the failure, for the hub's log and the audit record."""
        return self._detail
