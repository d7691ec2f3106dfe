"""What one operation on one server (a stop, a clean-up, a deletion) needs, as one value the
spawner builds and hands to the steps: they read it, never the spawner, and return results."""

from __future__ import annotations

import dataclasses
import logging

from ..systems.lxd import Endpoint
from ..systems.terraform import Terraform
from ..systems.workspace import Workspace
from . import audit


@dataclasses.dataclass(frozen=True)
class Server:
    user: str
    #: The server's name ("" for the default server).
    name: str
    #: The LXD instance: the record's, or the deterministic name this server gets.
    instance: str
    ws: Workspace
    endpoint: Endpoint
    #: "lxd" or "incus": what the audit names when the daemon does not say.
    backend: str
    terraform: Terraform
    #: This hub's id: the label that says an instance is ours.
    owner: str
    log: logging.Logger
    #: Seconds a stopping instance gets to shut down cleanly (stop_grace_period).
    stop_grace: float
    #: The notebook module a workspace whose module is gone is pointed at.
    module_source: str
    #: The server's API token, taken out of the workspace once the server is stopped.
    token: str = ""

    @property
    def who(self) -> dict:
        """Who and what an audit record is about."""
        return {"user": self.user, "server": self.name, "instance": self.instance}

    async def versions(self) -> dict:
        """Which binary, provider and daemon ran, for an audit record."""
        return await audit.versions(self.terraform, self.ws, self.endpoint, self.backend, self.log)
