"""Revoking a server's API token that JupyterHub itself can no longer revoke."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner


def revoke_forgotten_tokens(spawner: LxdSpawner) -> int:
    """JupyterHub does not persist a server's API token: after a hub restart its stop() cannot
    revoke it, and the token would outlive the server. Revoke it here, found by the note the
    hub gave it ("Server at <base_url>"). Storing the token in our state instead would put it in
    the hub database in clear text. Returns how many were revoked."""
    if spawner.api_token or spawner.will_resume or spawner.server is None:
        return 0  # the hub knows the token and revokes it itself
    db, orm_user = getattr(spawner.user, "db", None), getattr(spawner.user, "orm_user", None)
    if db is None or orm_user is None:
        return 0
    note = f"Server at {spawner.server.base_url}"
    stale = [t for t in orm_user.api_tokens if t.note == note]
    for token in stale:
        db.delete(token)
    if stale:
        db.commit()
        spawner.log.info("Revoked %d API token(s) of %s left from before a hub restart", len(stale),
                         spawner.instance)
    return len(stale)
