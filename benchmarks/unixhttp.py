"""A minimal blocking REST client for the LXD / Incus API over the daemon's unix socket.

Plain http.client over AF_UNIX, with kept-alive connections reused from a small pool: the
baseline spawner and the benchmark's own set-up both use it, so neither pays for pylxd's
object layer or for a new connection per request. Blocking: call it from a thread.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from urllib.parse import quote, urlencode

SOCKETS = {"lxd": "/var/lib/lxd/unix.socket", "incus": "/var/lib/incus/unix.socket"}
#: The file API's header prefix: Incus renamed LXD's X-LXD-* headers to X-Incus-*.
FILE_HEADER_PREFIX = {"lxd": "X-LXD-", "incus": "X-Incus-"}


class ApiError(RuntimeError):
    """The daemon answered with an error (HTTP status or a failed operation)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose transport is a unix socket instead of TCP."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    """One daemon's API. Thread-safe: each request borrows a kept-alive connection."""

    def __init__(self, backend: str = "lxd", socket_path: str | None = None, timeout: float = 120.0):
        self.backend = backend
        self.socket_path = socket_path or SOCKETS[backend]
        self.timeout = timeout
        self._idle: list[_UnixConnection] = []
        self._lock = threading.Lock()

    # -- transport ----------------------------------------------------------------------------
    def _borrow(self) -> tuple[_UnixConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return _UnixConnection(self.socket_path, self.timeout), False

    def _give_back(self, conn: _UnixConnection) -> None:
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close every idle connection (a finished benchmark should not hold sockets)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes). A kept-alive connection the daemon closed while idle
        is retried once on a new one: that is not an error of the request."""
        for attempt in (1, 2):
            conn, reused = self._borrow()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")

    # -- JSON API -----------------------------------------------------------------------------
    def request(self, method: str, path: str, payload=None, params: dict | None = None) -> dict:
        """A JSON request; returns the whole response document (raises ApiError on errors)."""
        if params:
            path = f"{path}?{urlencode(params)}"
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, _, data = self.raw(method, path, body, headers)
        doc = json.loads(data) if data else {}
        if status >= 400 or doc.get("type") == "error":
            raise ApiError(f"{method} {path}: {doc.get('error') or status}", doc.get("error_code") or status)
        return doc

    def wait(self, doc: dict, timeout: int = 120) -> dict:
        """Wait for an async response's operation to end; raise if it failed."""
        if doc.get("type") != "async":
            return doc
        op = doc["operation"]
        result = self.request("GET", f"{op}/wait", params={"timeout": timeout})["metadata"]
        if result.get("status") != "Success":
            raise ApiError(f"operation {op} ended {result.get('status')}: {result.get('err')}")
        return result

    def call(self, method: str, path: str, payload=None, params: dict | None = None) -> dict:
        """A request whose operation (if any) is waited for."""
        return self.wait(self.request(method, path, payload, params))

    # -- what the benchmark needs -------------------------------------------------------------
    def server(self) -> dict:
        return self.request("GET", "/1.0")["metadata"]

    def instance(self, name: str) -> dict | None:
        try:
            return self.request("GET", f"/1.0/instances/{quote(name)}")["metadata"]
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def instances(self) -> list[dict]:
        return self.request("GET", "/1.0/instances", params={"recursion": 1})["metadata"] or []

    def create(self, name: str, alias: str, profiles: list[str], config: dict, devices: dict) -> None:
        self.call("POST", "/1.0/instances", {
            "name": name, "type": "container", "profiles": profiles, "config": config,
            "devices": devices, "source": {"type": "image", "alias": alias},
        })

    def set_state(self, name: str, action: str, force: bool = False, timeout: int = 30) -> None:
        self.call("PUT", f"/1.0/instances/{quote(name)}/state",
                  {"action": action, "force": force, "timeout": timeout})

    def push_file(self, name: str, path: str, data: bytes, mode: str = "0644", uid: int = 0, gid: int = 0) -> None:
        p = FILE_HEADER_PREFIX[self.backend]
        headers = {f"{p}uid": str(uid), f"{p}gid": str(gid), f"{p}mode": mode, f"{p}type": "file",
                   "Content-Type": "application/octet-stream"}
        status, _, body = self.raw("POST", f"/1.0/instances/{quote(name)}/files?{urlencode({'path': path})}",
                                   data, headers)
        if status >= 400:
            raise ApiError(f"PUT file {path} into {name}: {status} {body[:200]!r}", status)

    def file_headers(self, name: str, path: str) -> dict:
        """The owner/mode headers the daemon reports for a file in an instance."""
        status, headers, _ = self.raw("GET", f"/1.0/instances/{quote(name)}/files?{urlencode({'path': path})}")
        if status >= 400:
            raise ApiError(f"GET file {path} from {name}: {status}", status)
        return {k.lower(): v for k, v in headers.items()}

    def delete(self, name: str) -> bool:
        """Force-stop (when running) and delete; False when it did not exist."""
        info = self.instance(name)
        if info is None:
            return False
        if info.get("status") not in ("Stopped", "Error"):
            self.set_state(name, "stop", force=True)
        self.call("DELETE", f"/1.0/instances/{quote(name)}")
        return True
