"""Host ports for the proxy devices that expose servers, allocated without collisions.

A port is held from allocation until its server stops; ports of servers found again after a
hub restart are claimed from their saved state. A candidate is also test-bound on this host
when the listen address is local, so a port some other program uses is skipped.
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
    def __init__(self):
        self._taken: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def claim(self, address: str, port: int) -> None:
        with self._lock:
            self._taken.add((address, int(port)))

    def release(self, address: str, port: int | None) -> None:
        if port is None:
            return
        with self._lock:
            self._taken.discard((address, int(port)))

    def reuse_or_allocate(self, address: str, preferred: int | None, low: int, high: int) -> int:
        """The port a kept instance already listens on when it is still free, else a new one."""
        if preferred:
            with self._lock:
                free = (address, int(preferred)) not in self._taken and (
                    not is_loopback(address) or bindable(address, int(preferred)))
                if free:
                    self._taken.add((address, int(preferred)))
                    return int(preferred)
        return self.allocate(address, low, high)

    def allocate(self, address: str, low: int, high: int) -> int:
        candidates = list(range(low, high + 1))
        random.shuffle(candidates)
        check = is_loopback(address)
        with self._lock:
            for port in candidates:
                if (address, port) in self._taken:
                    continue
                if check and not bindable(address, port):
                    continue
                self._taken.add((address, port))
                return port
        raise NoFreePort(f"no free port in {low}-{high} on {address}; widen proxy_port_range")


ports = PortAllocator()
