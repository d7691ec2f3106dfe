"""Every supported combination of {terraform, tofu} x {LXD, Incus} through a real JupyterHub:
a user with a hostile name spawns, runs code in the kernel of a container on that daemon,
stops; the audit names the binary, its version, the provider and the daemon that ran. Each
server gets a pushed file and a mounted home with the daemon's default mount_idmap (raw.idmap
on LXD, an idmapped `shift` mount on Incus, which needs no /etc/subuid line for the user's id),
and its root filesystem is checked on disk: LXD 5.0.2 chowns it at the first start, Incus maps it.

The four hubs run side by side (one spawn each), so the matrix costs about one spawn's time."""

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CACHE
from hubtools import Hub, shut_down

pytestmark = pytest.mark.e2e

COMBINATIONS = [(binary, daemon) for binary in ("terraform", "tofu") for daemon in ("lxd", "incus")]
DAEMON_VERSION = {"lxd": r"5\.0\.\d+", "incus": r"6\.0\.\d+"}
# The user's ids: LXD's raw.idmap needs them in /etc/subuid (make's set-up allows 2345); Incus's
# shift mount must work for an id that is not there.
IDS = {"lxd": 2345, "incus": 3456}
ROOTFS = {"lxd": "/var/lib/lxd/containers/{}/rootfs", "incus": "/var/lib/incus/containers/{}/rootfs"}
# Who owns the root filesystem on disk while the container runs: LXD shifted it to the
# container's first host id (a subordinate id, never 0); Incus left it as the image had it.
ROOTFS_SHIFTED = {"lxd": True, "incus": False}
# A quote, HCL interpolation, a backslash escape and non-ASCII: all must stay data on the way.
USER = 'zoë"${{path.module}}\\n-{binary}-{daemon}'


def binary_version(binary: str) -> str:
    out = subprocess.run([binary, "version", "-json"], capture_output=True, text=True, check=True,
                         env=dict(os.environ, CHECKPOINT_DISABLE="1")).stdout
    return json.loads(out)["terraform_version"]


@pytest.fixture(scope="module")
def hubs(tmp_path_factory, lxd_client, incus_client):
    # tofu is built into the project's cache (setup/go-tools.sh): on the hub's PATH by name.
    path = f"{os.environ['PATH']}:{CACHE / 'bin'}"
    made = {}
    try:
        for binary, daemon in COMBINATIONS:
            work = tmp_path_factory.mktemp(f"{binary}-{daemon}")
            (work / "pushed").write_text(f"pushed for {daemon}\n")
            hub = Hub(work, env={"PATH": path}, extra_config=f"""
                c.LxdSpawner.backend = "{daemon}"
                c.LxdSpawner.terraform_path = "{binary}"
                c.LxdSpawner.get_uid_gid = lambda spawner: ({IDS[daemon]}, {IDS[daemon]})
                c.LxdSpawner.files_to_push = [["{work}/pushed", "/etc/tf-lxd/deep/pushed"]]
                c.LxdSpawner.filesystems_to_mount = [["home", "{work}/homes/{{username}}", "/mnt/home"]]
                c.LxdSpawner.create_mount_dirs = True
            """)
            hub.work = work
            made[(binary, daemon)] = hub.start()
        yield made
    finally:
        failures = []
        for (binary, daemon), hub in made.items():  # every hub ends, even when one teardown fails
            try:
                shut_down(hub, incus_client if daemon == "incus" else lxd_client)
            except Exception as e:
                failures.append(e)
        if failures:
            raise failures[0]


def spawn_run_stop(hub: Hub, client, binary: str, daemon: str) -> dict:
    user = USER.format(binary=binary, daemon=daemon)
    token = hub.user_token(user)
    began = time.monotonic()
    assert hub.start_server(user).status_code in (201, 202)
    hub.wait_ready(user)
    ready = time.monotonic() - began
    [audit] = hub.state_dir.glob("*/_default/audit.jsonl")  # one user per hub
    ws = audit.parent
    start = json.loads((ws / "audit.jsonl").read_text().splitlines()[-1])
    code = "import os, socket; open('/mnt/home/from-kernel', 'w').write('x'); print(socket.gethostname(), os.getuid())"
    hostname, uid = hub.run_code(user, token, code).split()
    instance = client.instances.get(start["instance"])
    running = instance.status
    pushed = instance.files.get("/etc/tf-lxd/deep/pushed").decode().strip()
    rootfs_owner = os.stat(ROOTFS[daemon].format(start["instance"]) + "/etc/passwd").st_uid
    [home] = (hub.work / "homes").iterdir()
    written = os.stat(home / "from-kernel")
    assert hub.api("DELETE", f"/users/{user}/server").status_code in (202, 204)
    hub.wait_stopped(user)
    records = [json.loads(line) for line in (ws / "audit.jsonl").read_text().splitlines()]
    return {"user": user, "ready": ready, "hostname": hostname, "running": running, "records": records,
            "left": client.instances.exists(start["instance"]), "uid": int(uid), "pushed": pushed,
            "written_by": (written.st_uid, written.st_gid), "rootfs_owner": rootfs_owner}


@pytest.fixture(scope="module")
def results(hubs, lxd_client, incus_client):
    clients = {"lxd": lxd_client, "incus": incus_client}
    with ThreadPoolExecutor(len(hubs)) as pool:
        futures = {combo: pool.submit(spawn_run_stop, hub, clients[combo[1]], *combo) for combo, hub in hubs.items()}
        out = {}
        for combo, future in futures.items():
            try:
                out[combo] = future.result()
            except Exception as e:  # reported by the combination's own test
                out[combo] = e
    print("\nspawn-to-ready through the hub: " + ", ".join(
        f"{b}+{d} {r['ready']:.1f} s" for (b, d), r in out.items() if isinstance(r, dict)))
    return out


@pytest.mark.parametrize("binary,daemon", COMBINATIONS)
def test_combination_spawns_runs_code_stops_and_is_audited(results, binary, daemon):
    result = results[(binary, daemon)]
    if isinstance(result, Exception):
        raise result
    records = result["records"]
    assert [(r["operation"], r["outcome"]) for r in records] == [("start", "ok"), ("stop", "ok")]
    start = records[0]
    assert start["user"] == result["user"]
    assert result["running"] == "Running"
    assert result["hostname"] == start["instance"]  # the kernel ran in that very container
    assert not result["left"], "stop must remove the container"
    assert result["uid"] == IDS[daemon]
    assert result["pushed"] == f"pushed for {daemon}"  # a file pushed into a directory it had to make
    assert result["written_by"] == (IDS[daemon], IDS[daemon])  # the same ids on the host's side of the mount
    assert (result["rootfs_owner"] != 0) == ROOTFS_SHIFTED[daemon], result["rootfs_owner"]
    version = binary_version(binary)
    for record in records:
        assert os.path.basename(record["terraform_binary"]) == binary, record
        assert record["terraform_binary"] == shutil.which(binary, path=f"{os.environ['PATH']}:{CACHE / 'bin'}")
        assert record["terraform_version"] == version, record
        assert record["providers"] and all(v == "1.5.0" for v in record["providers"].values()), record
        assert [p.rsplit("/", 2)[-2:] for p in record["providers"]] == [["terraform-lxd", "lxd"]], record
        assert record["daemon"]["backend"] == daemon, record
        assert re.fullmatch(DAEMON_VERSION[daemon], record["daemon"]["version"]), record
