"""A hub-managed JupyterHub service where users bring their own home back to a snapshot:
a page (`/services/home-snapshots/`) and a REST API (`api/snapshots`, `api/restore`), each
scoped to the logged-in user's own home.

A restore stops the user's servers that mount the home (through the hub's API, as the Stop
button would), snapshots the home as it is, restores it, and starts again the servers that
were running; audited in the volume's workspace (by "user <name>"). Run by the hub:

    c.JupyterHub.services = [{"name": "home-snapshots", "command": [sys.executable, "-m",
        "tf_lxd_spawner.snapshot_service", "-f", "/etc/jupyterhub/jupyterhub_config.py"]}]
    c.JupyterHub.load_roles = [
        {"name": "home-snapshots", "services": ["home-snapshots"],
         "scopes": ["read:users", "servers"]},
        {"name": "user", "scopes": ["self", "access:services!service=home-snapshots"]}]
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import time

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.ioloop import IOLoop

from ..errors import SpawnError
from ..homes import operations

PAGE = """<!doctype html><html><head><title>Your home's snapshots</title></head><body>
<h1>Snapshots of your home</h1>
<p>Each is also in your server, read-only, in <code>{mount}</code>: copy a file back from there.
Restoring the whole home stops your server, keeps a snapshot of the home as it is now, puts
the home back as it was, and starts your server again.</p>
{message}<table><tr><th>Snapshot</th><th>Expires</th><th></th></tr>{rows}</table></body></html>"""
ROW = """<tr><td>{name}</td><td>{expires}</td><td><form method="post" action="api/restore">
<input type="hidden" name="_xsrf" value="{xsrf}"><input type="hidden" name="snapshot" value="{name}">
<button type="submit">Restore my home to this</button></form></td></tr>"""


class Hub:
    """The hub's REST API, with this service's token: stop and start the user's servers."""

    def __init__(self):
        self.url = os.environ["JUPYTERHUB_API_URL"]
        self.token = os.environ["JUPYTERHUB_API_TOKEN"]

    async def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = HTTPRequest(url_path_join(self.url, path), method=method,
                              headers={"Authorization": f"token {self.token}"},
                              body=json.dumps(body) if body is not None else (None if method in ("GET", "DELETE") else "{}"),
                              allow_nonstandard_methods=True, request_timeout=300)
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        return response.code, json.loads(response.body or b"{}")

    async def servers(self, user: str) -> dict:
        code, model = await self.call("GET", f"/users/{user}")
        return (model.get("servers") or {}) if code == 200 else {}

    async def stop(self, user: str, server: str, timeout: float = 300) -> None:
        await self.call("DELETE", f"/users/{user}/servers/{server}" if server else f"/users/{user}/server")
        deadline = time.monotonic() + timeout
        while server in await self.servers(user):
            if time.monotonic() > deadline:
                raise SpawnError(f"your server {server or '(default)'} did not stop within {timeout:g} s; "
                                 "nothing was restored", reason="storage", status_code=504)
            await asyncio.sleep(0.5)

    async def start(self, user: str, server: str) -> None:
        await self.call("POST", f"/users/{user}/servers/{server}" if server else f"/users/{user}/server")


class Base(HubOAuthenticated, web.RequestHandler):
    def spawner(self):
        user = self.get_current_user()["name"]
        return self.settings["spawner_for"](user, self.get_argument("server", ""))

    async def snapshots(self):
        """(spawner, home, its snapshots) of the logged-in user; SpawnError when they have no home."""
        sp = self.spawner()
        home = await operations.find(sp)
        return sp, home, await operations.list_snapshots(sp, home)

    def write_error(self, status_code, **kwargs):
        error = kwargs.get("exc_info", (None, None))[1]
        self.finish({"error": str(error) if isinstance(error, SpawnError) else self._reason})


class SnapshotsAPI(Base):
    @web.authenticated
    async def get(self):
        try:
            _, home, found = await self.snapshots()
        except SpawnError as e:
            self.set_status(e.status_code or 400)
            self.finish({"error": str(e)})
            return
        self.finish({"volume": home.vol.name, "snapshots": found})


class RestoreAPI(Base):
    @web.authenticated
    async def post(self):
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            name = (json.loads(self.request.body or b"{}") or {}).get("snapshot", "")
        else:
            name = self.get_argument("snapshot", "")
        sp = self.spawner()
        user, hub = sp.user.name, self.settings["hub"]
        stopped = []
        try:
            home = await operations.find(sp)
            await operations.known(sp, home, name)  # an unknown snapshot stops nothing
            running = [server for server, model in (await hub.servers(user)).items()
                       if model.get("ready") or model.get("pending")]
            for server in running if home.vol.shared else [s for s in running if s == (sp.name or "")]:
                await hub.stop(user, server)
                stopped.append(server)
            before = await operations.restore(sp, home, name, by=f"user {user}")
        except SpawnError as e:
            self.set_status(e.status_code or 400)
            self.finish({"error": str(e), "restarted": stopped})
            return
        finally:
            for server in stopped:  # restored or not, what ran runs again
                await hub.start(user, server)
        self.finish({"restored": name, "volume": home.vol.name, "before": before, "restarted": stopped})


class Page(Base):
    @web.authenticated
    async def get(self):
        mount = self.spawner().storage_snapshots_mount
        try:
            _, _, found = await self.snapshots()
            message = ""
        except SpawnError as e:
            found, message = [], f"<p>{html.escape(str(e))}</p>"
        rows = "".join(ROW.format(name=html.escape(s["name"]), expires=html.escape(s["expires_at"] or "never"),
                                  xsrf=html.escape(self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes)
                                                   else self.xsrf_token)) for s in reversed(found))
        self.finish(PAGE.format(mount=html.escape(mount or "(not shown)"), message=message,
                                rows=rows))


def make_app(spawner_for) -> web.Application:
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/home-snapshots/")
    return web.Application([
        (prefix, Page),
        (url_path_join(prefix, "api/snapshots"), SnapshotsAPI),
        (url_path_join(prefix, "api/restore"), RestoreAPI),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32), spawner_for=spawner_for, hub=Hub())


def main(argv=None) -> None:
    from urllib.parse import urlparse

    from .cli import SETTINGS, spawner_from

    parser = argparse.ArgumentParser(prog="tf_lxd_spawner.snapshot_service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--config", required=True, help="the hub's jupyterhub_config.py")
    args = parser.parse_args(argv)
    settings = argparse.Namespace(config=args.config, **dict.fromkeys(SETTINGS))  # the file's settings only
    app = make_app(lambda user, server="": spawner_from(settings, user, server))
    where = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    app.listen(where.port or 80, where.hostname or "127.0.0.1")
    IOLoop.current().start()


if __name__ == "__main__":
    main()
