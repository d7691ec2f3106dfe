"""BaselineSpawner: the same container tf-lxd-spawner's module makes, straight through the REST API.

The yardstick of the benchmark: as fast as the LXD / Incus API allows (plain HTTP over the
daemon's unix socket, kept-alive connections, no pylxd, no Terraform), so the difference to
tf-lxd-spawner is what Terraform and the spawner's own care cost. It makes what the module makes:
the image, the profiles, security.privileged=false, the two proxy devices (the server out to
the host, the hub API into the container), and spawn.json / env.json (0600, root) written
before the first start. Like tf-lxd-spawner, start() returns only once the server answers HTTP.

    c.JupyterHub.spawner_class = "baseline_spawner.BaselineSpawner"   # benchmarks/ on PYTHONPATH
    c.BaselineSpawner.backend = "incus"
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from jupyterhub.spawner import Spawner
from traitlets import Enum, Float, Int, List, Tuple, Unicode, default
from unixhttp import Client

from tf_lxd_spawner.systems import naming

CONF_DIR = "/etc/jupyterhub-singleuser"
#: Blocking API calls run here, never on the event loop; wide enough for a burst of 20+ spawns.
_pool = ThreadPoolExecutor(32, thread_name_prefix="baseline-lxd")
_clients: dict[str, Client] = {}
_clients_lock = threading.Lock()
_ports_taken: set[int] = set()
_ports_lock = threading.Lock()


def client(backend: str) -> Client:
    """One client (one pool of kept-alive connections) per daemon for the whole hub."""
    with _clients_lock:
        if backend not in _clients:
            _clients[backend] = Client(backend)
        return _clients[backend]


def claim_port(low: int, high: int) -> int:
    """A loopback port no other server of this hub holds and nothing else has bound."""
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    with _ports_lock:
        for port in candidates:
            if port in _ports_taken:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _ports_taken.add(port)
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def release_port(port: int | None) -> None:
    with _ports_lock:
        _ports_taken.discard(port)


async def answers_http(port: int, path: str, timeout: float = 1.0) -> bool:
    """Whether anything answers an HTTP GET on 127.0.0.1:port with a status line. Before the
    server listens, the proxy device accepts and then closes the connection: that is a no."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"HTTP/")
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()


class BaselineSpawner(Spawner):
    """One container per server, made with three REST calls and two file uploads."""

    backend = Enum(["lxd", "incus"], "lxd", help="Which daemon: selects its local unix socket.").tag(config=True)
    image = Unicode("jupyter-notebook", help="Image alias, as tf-lxd-spawner's default.").tag(config=True)
    profiles = List(["default"], help="Profiles, as tf-lxd-spawner's lxd_profiles.").tag(config=True)
    name_prefix = Unicode("baseline-", help="Instance names start with this (a benchmark sweeps by it).").tag(config=True)
    server_port = Int(8888, help="Port of the server inside the container.").tag(config=True)
    port_range = Tuple(Int(), Int(), default_value=(30000, 32000),
                       help="Host ports for the server proxy (outside tf-lxd-spawner's and the kernel's ranges).",
                       ).tag(config=True)
    ready_interval = Float(0.05, help="Seconds between HTTP checks while the server comes up.").tag(config=True)

    @default("cmd")
    def _default_cmd(self):
        return ["jupyterhub-singleuser"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance = ""
        self.listen_port: int | None = None
        self._creating: asyncio.Future | None = None

    # -- what the module makes --------------------------------------------------------------
    def _instance_name(self) -> str:
        template = f"{self.name_prefix}{{username}}" + ("-{servername}" if self.name else "")
        return naming.instance_name(template, self.user.name, self.name or "")

    def _hub_port(self) -> int:
        api = urlparse(self.hub.api_url)
        return api.port or (443 if api.scheme == "https" else 80)

    def _devices(self, port: int, hub_port: int) -> dict:
        return {
            "jupyter-server": {"type": "proxy", "bind": "host", "listen": f"tcp:127.0.0.1:{port}",
                               "connect": f"tcp:127.0.0.1:{self.server_port}"},
            "jupyterhub-api": {"type": "proxy", "bind": "container", "listen": f"tcp:127.0.0.1:{hub_port}",
                               "connect": f"tcp:127.0.0.1:{hub_port}"},
        }

    def _spawn_file(self) -> dict:
        """locals.spawn of the module: who runs the server, and the argument list it runs."""
        name = naming.posix_username(self.user.name)
        return {"user": name, "uid": 1000, "gid": 1000, "home": f"/home/{name}", "cwd": None,
                "cmd": list(self.cmd) + list(self.get_args())}

    def _env_file(self, hub_port: int) -> dict:
        """The server's environment, with the hub API where the container sees it (its loopback)."""
        self.ip, self.port = "127.0.0.1", self.server_port  # where the server binds, inside
        env = self.get_env()
        api = f"http://127.0.0.1:{hub_port}{urlparse(self.hub.api_url).path}"
        env["JUPYTERHUB_API_URL"] = api
        env["JUPYTERHUB_ACTIVITY_URL"] = "/".join(
            [api.rstrip("/"), "users", getattr(self.user, "escaped_name", self.user.name), "activity"])
        return {str(k): str(v) for k, v in env.items()}

    # -- blocking work, in the pool ---------------------------------------------------------
    def _create_and_start(self, name: str, devices: dict, spawn: dict, env: dict) -> None:
        api = client(self.backend)
        api.create(name, self.image, list(self.profiles), {"security.privileged": "false"}, devices)
        api.push_file(name, f"{CONF_DIR}/spawn.json", json.dumps(spawn).encode(), mode="0600")
        api.push_file(name, f"{CONF_DIR}/env.json", json.dumps(env).encode(), mode="0600")
        api.set_state(name, "start")

    def _remove(self, name: str) -> None:
        api = client(self.backend)
        try:
            api.set_state(name, "stop", force=True)
        except Exception:
            if api.instance(name) is None:
                return
            raise
        api.call("DELETE", f"/1.0/instances/{name}")

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(_pool, fn, *args)

    # -- JupyterHub's calls -----------------------------------------------------------------
    async def start(self):
        self.instance = self._instance_name()
        self.listen_port = await self._blocking(claim_port, *self.port_range)
        hub_port = self._hub_port()
        self._creating = asyncio.ensure_future(self._blocking(
            self._create_and_start, self.instance, self._devices(self.listen_port, hub_port),
            self._spawn_file(), self._env_file(hub_port)))
        await asyncio.shield(self._creating)  # a cancelled start() must not abandon a half-made instance
        path = f"{self.server.base_url if self.server else '/'}api"
        while not await answers_http(self.listen_port, path):
            await asyncio.sleep(self.ready_interval)
        return f"http://127.0.0.1:{self.listen_port}"

    async def stop(self, now=False):
        if self._creating is not None:
            try:
                await self._creating  # stop after the creation it would race with
            except Exception:
                pass
            self._creating = None
        if self.instance:
            await self._blocking(self._remove, self.instance)
        release_port(self.listen_port)
        self.instance, self.listen_port = "", None

    async def poll(self):
        if self._creating is not None and not self._creating.done():
            return None
        if not self.instance:
            return 0
        info = await self._blocking(client(self.backend).instance, self.instance)
        return None if info and info.get("status") == "Running" else 1

    def get_state(self):
        state = super().get_state()
        if self.instance:
            state.update(instance=self.instance, listen_port=self.listen_port)
        return state

    def load_state(self, state):
        super().load_state(state)
        self.instance = state.get("instance", "")
        self.listen_port = state.get("listen_port")
        if self.listen_port:
            with _ports_lock:
                _ports_taken.add(self.listen_port)

    def clear_state(self):
        super().clear_state()
        self.instance, self.listen_port = "", None
