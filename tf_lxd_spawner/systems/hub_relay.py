"""The hub API on a unix socket, for containers on this host (hub_api_via = "socket").

A proxy device costs every container start about a second (LXD and Incus start its forkproxy
and check on it in one-second steps before the start returns). A disk device costs nothing at
start, so a container on the hub's own host gets the hub API through a directory mounted
read-only into it: this relay listens on `hub-api.sock` there and passes each connection to the
hub's TCP API; inside, the image's `jupyterhub-api.socket` unit (systemd-socket-proxyd) serves it
at 127.0.0.1:8081. Byte for byte: TLS, when the hub uses it, passes through untouched.

One relay per socket path per process, started on the running event loop. A restarted hub binds
the path again: each connection from a container is a new one, so running servers reach the new
hub as soon as it listens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from pathlib import Path

#: The file in the directory the containers mount, and where the image's relay looks for it.
SOCKET_NAME = "hub-api.sock"
CONTAINER_DIR = "/var/lib/tf-lxd-spawner/hub"
#: Where the image's jupyterhub-api.socket unit listens inside the container.
CONTAINER_PORT = 8081
#: The image property that says it has that unit (image/build.sh sets it).
IMAGE_PROPERTY = "tf_lxd_spawner_hub_api_socket"

log = logging.getLogger(__name__)
#: Per event loop (a hub has one; a test process runs many in turn): a lock for starting relays,
#: and the relays that loop serves, by socket path.
_loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[asyncio.Lock, dict[str, Relay]]]" = (
    weakref.WeakKeyDictionary())
#: The newest relay of this process at each path, whatever loop it was started on.
_newest: "dict[str, Relay]" = {}


def _of_this_loop() -> "tuple[asyncio.Lock, dict[str, Relay]]":
    loop = asyncio.get_running_loop()
    if loop not in _loops:
        _loops[loop] = (asyncio.Lock(), {})
    return _loops[loop]


class Relay:
    """One listening unix socket whose connections are piped to (host, port)."""

    def __init__(self, path: Path, host: str, port: int):
        self.path, self.host, self.port = path, host, port
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._sock: socket.socket | None = None

    async def serve(self, sock: socket.socket) -> None:
        self._sock = sock
        self._server = await asyncio.start_unix_server(self._relay, sock=sock)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            log.warning("hub API relay: cannot reach the hub at %s:%s: %s", self.host, self.port, e)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def abandon(self) -> None:
        """Close the listening socket of a relay whose event loop has ended (its server can no
        longer be closed through that loop): nothing is left listening at its path."""
        if self._sock is not None:
            self._sock.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file, then pass the end on (a half-close: the other way may still
    carry the answer). An error ends both ways."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def _served(path: Path) -> bool:
    """Whether a live process answers at `path` (the hub, when this is a tool of the operator's
    that reads the same state_dir): its socket is never taken over."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
        return True
    except OSError:  # none there, not a socket, or nobody listening (an earlier hub's)
        return False
    finally:
        probe.close()


def _listen(path: Path) -> socket.socket | None:
    """Bind `path` (a stale socket of an earlier hub is replaced), readable and writable by the
    containers' root, which is an unprivileged id on the host; None when another process
    serves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)  # only the socket is in it; containers mount it read-only
    if _served(path):
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def ensure(directory: str | Path, host: str, port: int) -> Relay | None:
    """The relay for `directory`, started if it is not running (or its socket was removed);
    None when another live process serves that socket. Connections queue in the socket's
    backlog until it serves, so a caller need not wait."""
    path = Path(directory) / SOCKET_NAME
    starting, relays = _of_this_loop()
    async with starting:
        relay = relays.get(str(path))
        if relay is not None and (relay.host, relay.port) == (host, port) and await asyncio.to_thread(path.exists):
            return relay
        if relay is not None:
            relay.close()
        elif str(path) in _newest:  # this process's, from a loop that has ended
            _newest.pop(str(path)).abandon()
        sock = await asyncio.to_thread(_listen, path)
        if sock is None:
            log.info("hub API relay: %s is served by another process; left as it is", path)
            return None
        relay = Relay(path, host, port)
        await relay.serve(sock)
        relays[str(path)] = _newest[str(path)] = relay
    log.info("hub API relay: %s -> %s:%s", path, host, port)
    return relay


def stop(directory: str | Path) -> None:
    """Stop the relay for `directory` and remove its socket (doctor's throwaway relay)."""
    path = Path(directory) / SOCKET_NAME
    relay = _of_this_loop()[1].pop(str(path), None)
    if relay is not None:
        relay.close()
        _newest.pop(str(path), None)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
