"""A real LXD (or Incus) cluster on this machine, for placement tests.

Extra daemons, each with its own LXD_DIR (INCUS_DIR), listen on 127.0.0.11-13:8443 (Incus:
127.0.0.21-23) in the host's network namespace; the first bootstraps the cluster by preseed,
the others join with tokens. The machine's main daemons are left alone. A tiny busybox image
(no Jupyter in it) is built and imported for placement tests; the Jupyter image can be copied
in when a test needs a server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pylxd
from pylxd.client import get_session_for_url

PROXY_ENV = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.0/8",
             "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.0/8"}
TINY = "tiny"


@dataclass(frozen=True)
class Kind:
    """How to run one daemon of a kind: its binary, client, directory variable and commands."""
    cli: str
    daemon: list
    dir_env: str
    admin: list  # the client's prefix for waitready, init and shutdown
    first_address: int  # 127.0.0.<first_address + index>
    trust_certificate: list  # the client's words for trusting a client certificate file


LXD = Kind("lxc", ["lxd"], "LXD_DIR", ["lxd"], 10, ["config", "trust", "add"])
INCUS = Kind("incus", ["/usr/libexec/incus/incusd"], "INCUS_DIR", ["incus", "admin"], 20,
             ["config", "trust", "add-certificate"])


def bootstrap_preseed(address: str, cluster_name: str | None = None) -> str:
    """The preseed of a standalone daemon, or of a cluster's first member (`cluster_name`): https
    on `address`, no image refresh, a `dir` pool called `local` for the root disk, no network."""
    cluster = f"cluster:\n  server_name: {cluster_name}\n  enabled: true\n" if cluster_name else ""
    return f"""
config:
  core.https_address: {address}:8443
  images.auto_update_interval: "0"
{cluster}storage_pools:
- name: local
  driver: dir
profiles:
- name: default
  devices:
    root: {{path: /, pool: local, type: disk}}
"""


def join_preseed(name: str, address: str, token: str) -> str:
    """The preseed that joins a daemon to a cluster whose storage pool is called `local`."""
    return f"""
cluster:
  enabled: true
  server_name: {name}
  server_address: {address}:8443
  cluster_token: {token}
  member_config:
  - entity: storage-pool
    name: local
    key: source
    value: ""
"""


def form_cluster(members) -> None:
    """Start the members' daemons: the first bootstraps a cluster, the others join it by token.
    A member has name, address, start(), preseed(text) and lxc(*args)."""
    first = members[0]
    first.start()
    first.preseed(bootstrap_preseed(first.address, first.name))
    for m in members[1:]:
        token = first.lxc("cluster", "add", m.name).strip().splitlines()[-1]
        m.start()
        m.preseed(join_preseed(m.name, m.address, token))


def export_host_image(cli: str, alias: str, dest: Path, patience: float = 180.0) -> None:
    """`<cli> image export alias dest` from the machine's main daemon, tried again while that
    daemon is away: `make test` runs these tests beside test_faults, which restarts the main
    LXD daemon on purpose."""
    deadline = time.monotonic() + patience
    while True:
        r = subprocess.run([cli, "image", "export", alias, str(dest)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{cli} image export {alias}: {r.stderr.strip()}")
        time.sleep(3)


def make_client_cert(cert: Path, key: Path) -> None:
    """A throw-away client certificate for the tests' https clients."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1",
                    "-sha384", "-nodes", "-days", "2", "-subj", "/CN=tf-lxd-spawner-test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)


class Member:
    def __init__(self, base: Path, index: int, kind: Kind = LXD):
        self.kind = kind
        self.name = f"m{index}"
        self.address = f"127.0.0.{kind.first_address + index}"
        self.url = f"https://{self.address}:8443"
        self.dir = base / self.name
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        return {**os.environ, **PROXY_ENV, self.kind.dir_env: str(self.dir)}

    def lxc(self, *args, input=None, check=True) -> str:
        """The daemon's own client (`lxc` or `incus`) against this member."""
        r = subprocess.run([self.kind.cli, *args], env=self.env(), input=input, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.kind.cli} {' '.join(args)} on {self.name}: {r.stderr.strip()}")
        return r.stdout

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "daemon.log", "ab")
        self.proc = subprocess.Popen([*self.kind.daemon, "--group", "root", "--logfile", str(self.dir / f"{Path(self.kind.daemon[0]).name}.log")],
                                     env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        subprocess.run([*self.kind.admin, "waitready", "--timeout=60"], env=self.env(), check=True)

    def preseed(self, text: str):
        r = subprocess.run([*self.kind.admin, "init", "--preseed"], env=self.env(), input=text, text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"preseed of {self.name} failed: {r.stderr.strip()}")

    def kill(self):
        """SIGKILL the daemon (an abrupt member failure); its containers keep running."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            subprocess.run([*self.kind.admin, "shutdown", "--timeout=60"], env=self.env(), capture_output=True)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class LxdCluster:
    def __init__(self, base: Path, size: int = 3, kind: Kind = LXD):
        self.base = base
        self.kind = kind
        self.members = [Member(base, i, kind) for i in range(1, size + 1)]
        self.cert = base / "client.crt"
        self.key = base / "client.key"

    @property
    def first(self) -> Member:
        return self.members[0]

    @property
    def server_cert(self) -> Path:
        return self.first.dir / "cluster.crt"

    def up(self):
        form_cluster(self.members)
        make_client_cert(self.cert, self.key)
        self.first.lxc(*self.kind.trust_certificate, str(self.cert))
        return self

    def import_image_from_host(self, alias: str, workdir: Path):
        """Copy an image of the machine's main daemon of this kind into the cluster (export + import)."""
        export_host_image(self.kind.cli, alias, workdir / alias)
        (exported,) = workdir.glob(f"{alias}*")
        self.first.lxc("image", "import", str(exported), "--alias", alias)
        exported.unlink()

    def import_tiny_image(self):
        """A busybox rootfs: containers start in well under a second on a dir pool."""
        root = self.base / "tiny-build"
        rootfs = root / "rootfs"
        for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root"):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
        for tool in applets:
            target = rootfs / ("sbin" if tool == "init" else "bin") / tool
            if not target.exists() and tool != "busybox":
                target.symlink_to("/bin/busybox")
        (rootfs / "etc" / "inittab").write_text("::sysinit:/bin/hostname -F /etc/hostname\n::respawn:/bin/sleep 3600\n")
        (rootfs / "etc" / "hostname").write_text("tiny\n")
        # Test stand-in for systemd: the server "unit" is active once the spawner's launch file
        # exists (what the real image's unit requires), so poll() can be exercised.
        shim = rootfs / "bin" / "systemctl"
        shim.write_text("#!/bin/sh\n[ -f /etc/jupyterhub-singleuser/spawn.json ]\n")
        shim.chmod(0o755)
        (root / "metadata.yaml").write_text(f"architecture: {os.uname().machine}\ncreation_date: {int(time.time())}\n"
                                            "properties:\n  description: busybox test image\n")
        tarball = root / "tiny.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(root / "metadata.yaml", "metadata.yaml")
            tar.add(rootfs, "rootfs")
        self.first.lxc("image", "import", str(tarball), "--alias", TINY)

    def _session(self):
        s = get_session_for_url(self.first.url, verify=str(self.server_cert), cert=(str(self.cert), str(self.key)))
        s.trust_env = False  # this machine's REQUESTS_CA_BUNDLE would replace the pinned cert
        return s

    def client(self) -> pylxd.Client:
        return pylxd.Client(endpoint=self.first.url, cert=(str(self.cert), str(self.key)),
                            verify=str(self.server_cert), session=self._session())

    def api(self, method: str, path: str, **kw) -> dict:
        """Raw REST call to the first member, pinned to the cluster certificate."""
        r = self._session().request(method, f"{self.first.url}{path}", timeout=60, **kw)
        r.raise_for_status()
        return r.json()

    def wait_status(self, member: str, status: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = json.loads(self.first.lxc("cluster", "list", "--format", "json"))
            if {m["server_name"]: m["status"] for m in out}.get(member) == status:
                return
            time.sleep(0.5)
        raise AssertionError(f"{member} did not become {status}")

    def down(self):
        alive = [m for m in self.members if m.proc and m.proc.poll() is None]
        if alive:
            try:
                names = json.loads(alive[0].lxc("list", "--format", "json", check=False) or "[]")
                for inst in names:
                    alive[0].lxc("delete", "--force", inst["name"], check=False)
            except (RuntimeError, ValueError):
                pass
        for m in reversed(self.members):
            m.stop()
        for m in self.members:
            subprocess.run(["umount", "-R", "-l", str(m.dir)], capture_output=True)
            subprocess.run(["bash", "-c", f"grep -o ' {m.dir}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l"],
                           capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
