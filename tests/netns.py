"""LXD daemons as "remote hosts", each in a network namespace of its own.

lxdcluster.py puts its daemons on 127.0.0.x in the host's own network namespace, so anything
that wrongly uses loopback (a proxy device on 127.0.0.1, a hub URL on localhost) still works
there. Here every member lives in a namespace `<prefix>-m<i>` joined to a bridge in the root
namespace by a veth pair: the hub (root namespace, 10.213.0.1) reaches member i only at
10.213.0.(10+i), and a member reaches the hub only at 10.213.0.1. Nothing is routed further
(no ip_forward, no default route), so test traffic stays between namespaces the test created.

Only the network namespace changes (nsenter --net, not `ip netns exec`, which would also give
the daemon a private mount namespace): the daemons share the host's filesystem, so `lxc` with
LXD_DIR works from the root namespace over each daemon's unix socket.
Modes: `cluster=False` runs `size` standalone daemons; `cluster=True` makes member 1 bootstrap
a cluster that the others join by token.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pylxd
from lxdcluster import (
    bootstrap_preseed,
    export_host_image,
    form_cluster,
    make_client_cert,
)
from pylxd.client import get_session_for_url

SUBNET = "10.213.0"  # the bridge is .1, member i is .(10+i)
NO_PROXY = f"127.0.0.0/8,{SUBNET}.0/24"
# A closed loopback port as proxy: the daemons must make no outside connection; NO_PROXY lets
# cluster members talk to each other directly.
PROXY_ENV = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": NO_PROXY,
             "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": NO_PROXY}


def ip(*args, check=False) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def umount_under(path: Path):
    """Lazily unmount everything at or below `path`, deepest first (shmounts, devlxd, rootfs...)."""
    prefix = str(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for p in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


class Member:
    """One daemon: its namespace, veth, address and LXD_DIR."""

    def __init__(self, base: Path, index: int, prefix: str, cluster: bool):
        self.index = index
        self.name = f"m{index}"
        self.netns = f"{prefix}-m{index}"
        self.veth = f"{prefix}v{index}"  # host end; the namespace end is called eth0
        self.address = f"{SUBNET}.{10 + index}"
        self.url = f"https://{self.address}:8443"
        self.dir = base / self.name
        # What a client pins: every cluster member serves the shared cluster certificate.
        self.server_cert = self.dir / ("cluster.crt" if cluster else "server.crt")
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        return {**os.environ, **PROXY_ENV, "LXD_DIR": str(self.dir)}

    def in_netns(self, *cmd) -> list[str]:
        """A command line that runs `cmd` in this member's network namespace only."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def lxc(self, *args, input=None, check=True) -> str:
        r = subprocess.run(["lxc", *args], env=self.env(), input=input, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"lxc {' '.join(args)} on {self.name}: {r.stderr.strip()}")
        return r.stdout

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "daemon.log", "ab") as log:
            cmd = self.in_netns("lxd", "--group", "root", "--logfile", str(self.dir / "lxd.log"))
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        r = subprocess.run(["lxd", "waitready", "--timeout=60"], env=self.env(), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"lxd {self.name} not ready: {r.stderr.strip()} (see {self.dir}/lxd.log)")

    def preseed(self, text: str):
        r = subprocess.run(["lxd", "init", "--preseed"], env=self.env(), input=text, text=True, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"preseed of {self.name} failed: {r.stderr.strip()}")

    def kill(self):
        """SIGKILL the daemon (an abrupt host failure); its containers keep running."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: int = 60):
        if self.alive():
            subprocess.run(["lxd", "shutdown", f"--timeout={timeout}"], env=self.env(), capture_output=True)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class NetnsLxd:
    """LXD daemons reachable from the root namespace only over 10.213.0.x (see module docstring)."""

    def __init__(self, size: int = 1, cluster: bool = False, base: Path | None = None, prefix: str = "tflxd"):
        self.cluster = cluster
        self.prefix = prefix
        self.bridge = f"{prefix}br0"
        self.host_address = f"{SUBNET}.1"  # the root namespace, as the members see it
        # /var/tmp, not /tmp: container roots live below; 0711 lets unprivileged roots traverse.
        self.base = base or Path(tempfile.mkdtemp(prefix="tf-lxd-netns-", dir="/var/tmp"))
        self.base.chmod(0o711)
        self.members = [Member(self.base, i, prefix, cluster) for i in range(1, size + 1)]
        self.cert = self.base / "client.crt"
        self.key = self.base / "client.key"

    @property
    def first(self) -> Member:
        return self.members[0]

    @property
    def server_cert(self) -> Path:
        return self.first.server_cert

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def _netns_names(self) -> set[str]:
        """Ours, and any other `<prefix>-m<i>` (a crashed earlier run may have had more members)."""
        listed = {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()}
        return {m.netns for m in self.members} | {n for n in listed if n.startswith(f"{self.prefix}-m")}

    def _remove_network(self):
        """Namespaces (after killing what still runs in them), veths and bridge; idempotent.
        The veth goes explicitly: a deleted namespace lives on (and keeps its veth pair) while
        orphaned TCP sockets of a killed daemon retry, seen here for about two minutes."""
        for ns in self._netns_names():
            for pid in ip("netns", "pids", ns).stdout.split():  # only this fixture runs anything there
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("-n", ns, "link", "delete", "eth0")
            ip("netns", "delete", ns)
        for m in self.members:
            ip("link", "delete", m.veth)
        ip("link", "delete", self.bridge)

    def _remove_stale(self):
        """A crashed earlier run left daemons in our namespaces: delete their instances, stop
        them, then remove their mounts and directory (found from each daemon's LXD_DIR)."""
        stale = set()
        for ns in self._netns_names():
            for pid in ip("netns", "pids", ns).stdout.split():
                try:
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                stale |= {Path(e[8:].decode()) for e in environ if e.startswith(b"LXD_DIR=")}
        for d in stale:
            env = {**os.environ, **PROXY_ENV, "LXD_DIR": str(d)}
            out = subprocess.run(["lxc", "list", "--format", "json"], env=env, capture_output=True, text=True).stdout
            for inst in json.loads(out or "[]"):
                subprocess.run(["lxc", "delete", "--force", inst["name"]], env=env, capture_output=True)
            subprocess.run(["lxd", "shutdown", "--timeout=30"], env=env, capture_output=True)
        self._remove_network()
        for d in stale:
            umount_under(d)
        for base in {d.parent for d in stale if d.parent.name.startswith("tf-lxd-netns-")}:
            shutil.rmtree(base, ignore_errors=True)

    def _make_network(self):
        self._remove_stale()
        ip("link", "add", self.bridge, "type", "bridge", check=True)
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge, check=True)
        ip("link", "set", self.bridge, "up", check=True)
        for m in self.members:
            ip("netns", "add", m.netns, check=True)
            ip("link", "add", m.veth, "type", "veth", "peer", "name", "eth0", "netns", m.netns, check=True)
            ip("link", "set", m.veth, "master", self.bridge, "up", check=True)
            ip("-n", m.netns, "addr", "add", f"{m.address}/24", "dev", "eth0", check=True)
            ip("-n", m.netns, "link", "set", "eth0", "up", check=True)
            ip("-n", m.netns, "link", "set", "lo", "up", check=True)

    def up(self):
        """Network, daemons, client certificate. On failure, call down()."""
        self._make_network()
        make_client_cert(self.cert, self.key)
        if not self.cluster:
            for m in self.members:
                m.start()
                m.preseed(bootstrap_preseed(m.address))
                m.lxc("config", "trust", "add", str(self.cert))
            return self
        form_cluster(self.members)
        self.first.lxc("config", "trust", "add", str(self.cert))
        return self

    def import_image_from_host(self, alias: str, workdir: Path):
        """Copy an image of the machine's main LXD daemon to every standalone member, or once
        into the cluster (export + import: the members have no image server to pull from)."""
        tmp = Path(tempfile.mkdtemp(dir=workdir))
        try:
            export_host_image("lxc", alias, tmp / alias)
            files = [str(p) for p in sorted(tmp.iterdir(), key=lambda p: p.stat().st_size)]  # split: metadata first
            for m in self.members[:1] if self.cluster else self.members:
                m.lxc("image", "import", *files, "--alias", alias)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def session(self, member: Member | None = None):
        m = member or self.first
        s = get_session_for_url(m.url, verify=str(m.server_cert), cert=(str(self.cert), str(self.key)))
        # trust_env would let REQUESTS_CA_BUNDLE replace the pinned cert, and *_PROXY route 10.213.0.x away.
        s.trust_env = False
        return s

    def client(self, member: Member | None = None) -> pylxd.Client:
        """pylxd over https to `member` (default member 1), pinned to its server certificate."""
        m = member or self.first
        return pylxd.Client(endpoint=m.url, cert=(str(self.cert), str(self.key)), verify=str(m.server_cert),
                            session=self.session(m))

    def api(self, method: str, path: str, member: Member | None = None, **kw) -> dict:
        """Raw REST call to `member` (default member 1)."""
        m = member or self.first
        r = self.session(m).request(method, f"{m.url}{path}", timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def down(self):
        """Delete instances, stop daemons, unmount, remove network and files. Safe after a
        partial up(): every step tolerates what does not exist."""
        alive = [m for m in self.members if m.alive()]
        for m in alive[:1] if self.cluster else alive:
            try:
                for inst in json.loads(m.lxc("list", "--format", "json", check=False) or "[]"):
                    m.lxc("delete", "--force", inst["name"], check=False)
            except ValueError:
                pass
        for m in reversed(self.members):
            m.stop()
        self._remove_network()  # also kills anything left in the namespaces (forkproxy, monitors)
        umount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running(size: int, cluster: bool, image: str, workdir: Path):
    """NetnsLxd up, with `image` copied in from the host's LXD; always torn down."""
    lxd = NetnsLxd(size=size, cluster=cluster)
    try:
        lxd.up()
        lxd.import_image_from_host(image, workdir)
        yield lxd
    finally:
        lxd.down()
