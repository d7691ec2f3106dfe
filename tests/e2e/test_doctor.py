"""`tf-lxd-spawner doctor` against the real stack: a working set-up passes every check (LXD with
Terraform, Incus with OpenTofu), and each broken set-up fails the one check that names its
cause, with the fix, while the checks that need it are skipped and the others still pass.

A stand-in hub (a loopback HTTP server answering /hub/api as JupyterHub does) is what the hub
check reaches from a throwaway container. All cases run side by side, each as the operator runs
it (the installed command, a jupyterhub_config.py); no `tf-lxd-doctor-*` instance and no
scratch directory may be left behind."""

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CACHE, IMAGE, REPO, free_port

from tf_lxd_spawner.operator import doctor

pytestmark = pytest.mark.e2e

CLI = str(REPO / ".venv" / "bin" / "tf-lxd-spawner")
HUB_VERSION = "5.2.1-doctor-test"
UNMAPPED_ID = 4321  # no /etc/subuid line allows it (make's set-up allows 2345)
NEEDS = {name: needs for name, _, needs in doctor.CHECKS}
ORDER = [name for name, _, _ in doctor.CHECKS]


class StandInHub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path.rstrip("/") == "/hub/api"
        body = json.dumps({"version": HUB_VERSION} if found else {"status": 404}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class SlowStandInHub(StandInHub):
    """Answers the host's question at once and the container's after 3 s: the throwaway
    instance is then surely there, and doctor busy with it, when the test sends Ctrl-C."""
    asked = 0

    def do_GET(self):
        type(self).asked += 1
        if type(self).asked > 1:
            time.sleep(3)
        super().do_GET()


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def hub_port():
    server = _serve(StandInHub)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def slow_hub_port():
    server = _serve(SlowStandInHub)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def consecutive_ports(n: int) -> list[socket.socket]:
    """n listening sockets on consecutive loopback ports: a proxy_port_range with none free."""
    for base in range(41000, 49000, 17):
        held = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
                s.listen()
            return held
        except OSError:
            for s in held:
                s.close()
    raise RuntimeError("no free consecutive ports")


def unmapped(uid: int) -> bool:
    for line in open("/etc/subuid"):
        owner, start, count = line.strip().split(":")
        if owner == "root" and int(start) <= uid < int(start) + int(count):
            return False
    return True


def write_config(work, hub_port, lines: str = "", state_dir=None):
    state = work / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    os.chmod(state, 0o700)
    config = work / "jupyterhub_config.py"
    config.write_text(f"""
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.state_dir = "{state_dir or state}"
c.LxdSpawner.terraform_cli_config = "{CACHE / 'terraform' / 'cli.tfrc'}"
""" + "\n".join(line.strip() for line in lines.strip().splitlines()) + "\n")
    return config


def run_doctor(config, scratch, *options, text=False):
    """`tf-lxd-spawner -f config <options>`; options name the command ("doctor" when empty)."""
    argv = [CLI, *(["-f", str(config)] if config else []), *(options or ["doctor"])] + ([] if text else ["--json"])
    env = dict(os.environ, TMPDIR=str(scratch))
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "seconds": time.monotonic() - t0,
            "checks": None if text else {c["check"]: c for c in json.loads(r.stdout)}}


def doctor_instances(*clients) -> list[str]:
    return [i.name for c in clients for i in c.instances.all() if i.name.startswith(doctor.PROBE_PREFIX)]


# case -> (config lines, command line after -f, the check that fails, text in its detail, text in its fix)
BROKEN = {
    "daemon-socket-missing": ('c.LxdSpawner.lxd_endpoint = "{work}/no-daemon/unix.socket"', (),
                              "daemon", "does not exist", "start LXD"),
    "daemon-https-closed": ("c.LxdSpawner.lxd_timeout = 5.0", ("doctor", "--lxd-endpoint", "https://127.0.0.1:{closed}"),
                            "daemon", "not reachable at https://127.0.0.1:", "core.https_address"),
    "image-missing": ('c.LxdSpawner.allowed_images = {{"Jupyter": "{image}", "Other": "no-such-image"}}', (),
                      "image", "'no-such-image' missing on the LXD server", "image import"),
    "terraform-missing": ('c.LxdSpawner.terraform_path = "{work}/bin/terraform"', (), "terraform",
                          "was not found", "install Terraform (>= 1.3) or OpenTofu (>= 1.6)"),
    "terraform-too-old": ('c.LxdSpawner.terraform_path = "{work}/old/terraform"', (), "terraform",
                          "1.2.9 (", "install Terraform (>= 1.3)"),
    "mirror-empty": ('c.LxdSpawner.terraform_cli_config = "{work}/empty.tfrc"', (), "module",
                     "the provider is not installable", "provider_installation ({work}/empty.tfrc)"),
    "subid-missing": (f"""c.LxdSpawner.filesystems_to_mount = [["home", "{{work}}/homes/{{{{username}}}}", "/mnt/home"]]
                      c.LxdSpawner.mount_idmap = "raw.idmap"
                      c.LxdSpawner.get_uid_gid = lambda spawner: ({UNMAPPED_ID}, {UNMAPPED_ID})""", (), "subids",
                      f"uid {UNMAPPED_ID} and gid {UNMAPPED_ID}", f"add 'root:{UNMAPPED_ID}:1' in /etc/subuid and "
                      f"'root:{UNMAPPED_ID}:1' in /etc/subgid, then restart LXD"),
    "state-dir-world-writable": ("", (), "state_dir", "has mode 0777", "chmod 0700 {work}/state"),
    "state-dir-impossible": ("", ("--state-dir", "{work}/afile/state", "doctor"), "state_dir",
                             "{work}/afile/state cannot be created: {work}/afile is not a directory",
                             "install -d -m 0700 -o root {work}/afile/state"),
    "ports-taken": ("c.LxdSpawner.proxy_port_range = ({low}, {high})", (), "ports", "0 of 3 free on 127.0.0.1",
                    "widen c.LxdSpawner.proxy_port_range"),
    "storage-pool-missing": ('c.LxdSpawner.storage_pool = "no-such-pool"', (), "storage",
                             "storage_pool 'no-such-pool' does not exist", "create it"),
    "shared-pool-missing": ("""c.LxdSpawner.shared_volumes = [{{"name": "data", "path": "data", "read_groups": ["s"],
                                                             "pool": "no-such-pool"}}]""", (), "shared",
                            "shared folder data: pool 'no-such-pool' does not exist", "create it"),
    "hub-wrong-path": ('c.JupyterHub.base_url = "/elsewhere/"', (), "hub", "answered HTTP 404, not JupyterHub's API",
                       "check c.JupyterHub.base_url"),
    "culler-deletes-homes": ("""c.JupyterHub.services = [{{"name": "idle-culler", "command": ["python3", "-m",
                                 "jupyterhub_idle_culler", "--timeout=3600", "--cull-users"]}}]
                             c.LxdSpawner.storage_retention_days = 0""", (), "snapshots",
                             "the idle culler deletes users (--cull-users) and storage_retention_days is 0",
                             "set c.LxdSpawner.storage_retention_days"),
}
HEALTHY = {
    # LXD with Terraform, a mount mapped 1:1 with raw.idmap for an id the set-up allows.
    "lxd-terraform": """c.LxdSpawner.filesystems_to_mount = [["home", "{work}/homes/{{username}}", "/mnt/home"]]
                        c.LxdSpawner.mount_idmap = "raw.idmap"
                        c.LxdSpawner.get_uid_gid = lambda spawner: (2345, 2345)""",
    # Incus with OpenTofu: a shift mount needs no subordinate ids; the hub API through the proxy
    # device (LXD's case gets it through the hub's unix socket, hub_api_via = "auto").
    "incus-tofu": f"""c.LxdSpawner.backend = "incus"
                      c.LxdSpawner.hub_api_via = "proxy"
                      c.LxdSpawner.terraform_path = "{CACHE / 'bin' / 'tofu'}"
                      c.LxdSpawner.filesystems_to_mount = [["home", "{{work}}/homes/{{{{username}}}}", "/mnt/home"]]""",
}


#: An operator's day one: doctor before the hub's first start, -f after the sub-command. The
#: state_dir the first spawn makes and a hub not running yet are said, never failed.
FIRST_START = ("c.JupyterHub.hub_port = {closed}", ("doctor", "-f", "{config}", "--state-dir", "{work}/new/state"))


def prepare(case: str, work, hub_port, held: list):
    """The config, doctor options and names (work dir, ports) of one case, with what the case
    needs on disk."""
    closed = free_port()
    fill = {"work": work, "closed": closed, "image": IMAGE}
    if case in HEALTHY:
        return write_config(work, hub_port, HEALTHY[case].format(**fill)), (), fill
    if case == "first-start":
        config = write_config(work, hub_port, FIRST_START[0].format(**fill))
        return None, tuple(o.format(config=config, **fill) for o in FIRST_START[1]), fill
    lines, options, *_ = BROKEN[case]
    if case == "ports-taken":
        sockets = consecutive_ports(3)
        held += sockets
        fill.update(low=sockets[0].getsockname()[1], high=sockets[-1].getsockname()[1])
    if case == "terraform-too-old":
        (work / "old").mkdir()
        fake = work / "old" / "terraform"
        fake.write_text('#!/bin/sh\necho \'{"terraform_version": "1.2.9", "platform": "linux_amd64"}\'\n')
        fake.chmod(0o755)
    if case == "mirror-empty":
        (work / "mirror").mkdir()
        (work / "empty.tfrc").write_text('provider_installation {\n  filesystem_mirror {\n'
                                         f'    path    = "{work}/mirror"\n    include = ["terraform-lxd/lxd"]\n'
                                         '  }\n}\n')
    config = write_config(work, hub_port, lines.format(**fill))
    if case == "state-dir-impossible":
        (work / "afile").write_text("")
    if case == "state-dir-world-writable":
        os.chmod(work / "state", 0o777)
    return config, tuple(o.format(**fill) for o in options), fill


@pytest.fixture(scope="module")
def reports(tmp_path_factory, hub_port, lxd_client, incus_client):
    """Every case's doctor run, side by side; then nothing of theirs may be left."""
    assert unmapped(UNMAPPED_ID)
    scratch = tmp_path_factory.mktemp("scratch")
    held: list[socket.socket] = []
    runs = {}
    try:
        for case in [*HEALTHY, *BROKEN, "first-start"]:
            work = tmp_path_factory.mktemp(case)
            runs[case] = prepare(case, work, hub_port, held)
        with ThreadPoolExecutor(4) as pool:
            futures = {case: pool.submit(run_doctor, config, scratch, *options, text=case == "daemon-socket-missing")
                       for case, (config, options, _) in runs.items()}
            results = {case: f.result() for case, f in futures.items()}
    finally:
        for s in held:
            s.close()
    assert doctor_instances(lxd_client, incus_client) == []
    assert list(scratch.iterdir()) == []  # the module check's init directories are removed
    for case, result in results.items():
        print(f"{case}: exit {result['rc']} in {result['seconds']:.1f} s")
    return {case: (runs[case][2], result) for case, result in results.items()}


@pytest.mark.parametrize("case", list(HEALTHY))
def test_working_setup_passes_every_check(reports, case):
    fill, r = reports[case]
    assert r["rc"] == 0, r["stdout"] + r["stderr"]
    checks = r["checks"]
    assert list(checks) == ORDER
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert all(c["fix"] == "" for c in checks.values())
    daemon = "LXD 5.0." if case.startswith("lxd") else "Incus 6.0."
    assert checks["daemon"]["detail"].startswith(daemon), checks["daemon"]
    assert checks["terraform"]["detail"].startswith("Terraform 1." if "terraform" in case else "OpenTofu 1.")
    assert "terraform-lxd/lxd 1.5.0" in checks["module"]["detail"]
    expected_ids = ("uid 2345 and gid 2345" if case.startswith("lxd")
                    else "not needed (mount_idmap = 'shift')")
    assert expected_ids in checks["subids"]["detail"]
    assert checks["state_dir"]["detail"].startswith(f"{fill['work'] / 'state'}, mode 0700")
    assert "free on 127.0.0.1" in checks["ports"]["detail"]
    assert "quota 10GiB enforced" in checks["storage"]["detail"], checks["storage"]
    assert f"JupyterHub {HUB_VERSION}" in checks["hub"]["detail"]
    assert "answers containers on the" in checks["hub"]["detail"]
    via = "through the hub's unix socket relay" if case.startswith("lxd") else "through a proxy device to 127.0.0.1:"
    assert via in checks["hub"]["detail"], checks["hub"]


def test_before_the_first_start_doctor_passes_and_says_what_comes_later(reports):
    fill, r = reports["first-start"]
    assert r["rc"] == 0, r["stdout"] + r["stderr"]
    checks = r["checks"]
    state = checks["state_dir"]
    assert state["status"] == "ok" and state["detail"] == (
        f"{fill['work']}/new/state will be created by the first spawn (mode 0700, owned by root, in {fill['work']})")
    hub = checks["hub"]
    assert hub["status"] == "skip", hub
    assert hub["detail"].startswith(f"hub not running (nothing answers at http://127.0.0.1:{fill['closed']}/hub/api")
    assert hub["detail"].endswith("start it and run doctor again to check containers reach it")
    assert not (fill["work"] / "new").exists()  # doctor itself makes nothing
    assert {c["status"] for n, c in checks.items() if n != "hub"} == {"ok"}, checks


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_setup_fails_its_check_with_the_fix(reports, case):
    fill, r = reports[case]
    _, _, failing, detail, fix = BROKEN[case]
    assert r["rc"] == 1, r["stdout"] + r["stderr"]
    if r["checks"] is None:  # the text form: one line per check, in order
        lines = r["stdout"].splitlines()
        assert [line.split()[1].rstrip(":") for line in lines] == ORDER, lines
        checks = {}
        for line in lines:
            label, rest = line.split(" ", 1)
            name, text = rest.lstrip().split(": ", 1)
            text, _, fix_text = text.partition(" — fix: ")
            checks[name] = {"status": label.lower(), "detail": text, "fix": fix_text}
    else:
        checks = r["checks"]
        assert list(checks) == ORDER
    assert checks[failing]["status"] == "fail", checks
    assert detail.format(**fill) in checks[failing]["detail"], checks[failing]
    assert fix.format(**fill) in checks[failing]["fix"], checks[failing]
    if case == "terraform-too-old":
        assert "is too old: the spawner needs Terraform >= 1.3.0" in checks[failing]["detail"]
    for name, check in checks.items():
        if name == failing:
            continue
        if failing in NEEDS[name]:
            assert check["status"] == "skip", check
            assert check["detail"] == f"needs the {failing} check, which failed"
        else:
            assert check["status"] == "ok", (name, check)


def test_interrupted_doctor_removes_its_instance(tmp_path, slow_hub_port, lxd_client):
    """Ctrl-C while the throwaway instance exists: it is removed before doctor exits."""
    config = write_config(tmp_path, slow_hub_port)
    # A suite run in the background (`make test &`) inherits SIGINT ignored, and Python then
    # keeps it ignored: give doctor the default disposition an operator's terminal gives it.
    proc = subprocess.Popen([CLI, "-f", str(config), "doctor"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not doctor_instances(lxd_client) and proc.poll() is None:
            assert time.monotonic() < deadline, "no throwaway instance appeared"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert doctor_instances(lxd_client) == []
