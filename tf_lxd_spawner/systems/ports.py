"""Host ports for the proxy devices that expose servers, allocated without collisions.

A port is held from allocation until its server stops; ports of servers found again after a
hub restart are claimed from their saved state. A candidate is also test-bound on this host
when the listen address is local, so a port some other program uses is skipped.

A port on a wildcard address (0.0.0.0, ::, "") is bound on every address of its member, so it
conflicts with that port on any address, and a port on a specific address with the same port
on a wildcard: a second proxy device on such a pair would fail to bind.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading


class NoFreePort(RuntimeError):
    """Every port in the configured range is taken."""


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_wildcard(address: str) -> bool:
    """Whether a listen address means every address of the host ("" too, as bind() takes it)."""
    try:
        return address == "" or ipaddress.ip_address(address.strip("[]")).is_unspecified
    except ValueError:
        return False


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a == b


def resolve(host: str) -> str:
    """An IP address for a host name (an address stays as it is): LXD proxy devices take
    addresses only. Blocking: call it in a thread."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return host
    families = sorted(infos, key=lambda i: i[0] != socket.AF_INET)  # IPv4 first
    return families[0][4][0] if families else host


def is_this_host(address: str) -> bool:
    """Whether an address (or host name) belongs to this host: a loopback address, or one this
    process can bind to. A member at such an address shares the hub's network. Blocking."""
    address = resolve(address)
    if is_loopback(address):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return bindable(address, 0)


def bindable(address: str, port: int) -> bool:
    """Whether a TCP socket can bind address:port now (blocking)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Ports held per (address, port), as claimed; a wildcard address and any address clash on
    the same port (see the module docstring)."""

    def __init__(self):
        self._held: dict[int, set[str]] = {}  # port -> addresses it is held on
        self._lock = threading.Lock()

    @property
    def _taken(self) -> set[tuple[str, int]]:
        """Every (address, port) held (what the end-to-end tests look at)."""
        with self._lock:
            return {(a, p) for p, addresses in self._held.items() for a in addresses}

    def _clashes(self, address: str, port: int) -> bool:
        """Whether address:port would clash with a held port (call with the lock held)."""
        wild = is_wildcard(address)
        return any(wild or is_wildcard(a) or _same_address(a, address) for a in self._held.get(port, ()))

    def _hold(self, address: str, port: int) -> None:
        self._held.setdefault(port, set()).add(address)

    def claim(self, address: str, port: int) -> bool:
        """Hold a port a server found again already listens on (it is held whatever else is,
        since it is in use); False when it clashes with one held before."""
        with self._lock:
            free = not self._clashes(address, int(port))
            self._hold(address, int(port))
            return free

    def release(self, address: str, port: int | None) -> None:
        """Give back exactly what was claimed or allocated: a wildcard's release leaves the
        specific addresses held on that port held, and the other way round."""
        if port is None:
            return
        with self._lock:
            addresses = self._held.get(int(port), set())
            addresses.discard(address)
            if not addresses:
                self._held.pop(int(port), None)

    def reuse_or_allocate(self, address: str, preferred: int | None, low: int, high: int) -> int:
        """The port a kept instance already listens on when it is still free, else a new one."""
        if preferred:
            with self._lock:
                free = not self._clashes(address, int(preferred)) and (
                    not is_loopback(address) or bindable(address, int(preferred)))
                if free:
                    self._hold(address, int(preferred))
                    return int(preferred)
        return self.allocate(address, low, high)

    def allocate(self, address: str, low: int, high: int) -> int:
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        check = is_loopback(address)
        with self._lock:
            for port in candidates:
                if self._clashes(address, port):
                    continue
                if check and not bindable(address, port):
                    continue
                self._hold(address, port)
                return port
        raise NoFreePort(f"no free port in {low}-{high} on {address}; widen proxy_port_range")


ports = PortAllocator()
