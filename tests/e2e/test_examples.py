"""The examples run as they are. Each example's configuration drives real spawns (spawner
stub, real LXD or Incus, Terraform or OpenTofu) and shows what it is about: the seed's pushed
files and mounted home, the custom module's GPU profile and device (made, then removed), Incus
with OpenTofu, a course's shared folders (read-only for students, kept after the stop), and
member weights on the loopback cluster the cluster example brings up."""

import asyncio
import json
import shutil
from types import SimpleNamespace

import exampleconfig
import pylxd
import pytest
import spawnerstub
from conftest import INCUS_SOCKET
from hubtools import delete_volumes

pytestmark = pytest.mark.e2e


def spawn_and_stop(example, tmp_path, username, check, groups=(), **traits):
    """Start a server with the example's configuration (only the workspace moved to tmp_path),
    run `check(instance, spawner)` while it runs, stop it and assert the instance is gone.
    `groups`: the user's JupyterHub group names (the stub's user has none otherwise)."""
    cfg = exampleconfig.load(example)
    sp = spawnerstub.make_spawner(tmp_path / "state", username, config=cfg, **traits)
    if groups:
        sp.user.groups = [SimpleNamespace(name=g) for g in groups]
    client = pylxd.Client(endpoint=INCUS_SOCKET) if sp.backend == "incus" else pylxd.Client()
    name = None
    try:
        asyncio.run(sp.start())
        name = sp.instance
        inst = client.instances.get(name)
        assert inst.status == "Running"
        check(inst, sp)
    finally:
        try:
            asyncio.run(sp.stop())
        finally:
            leftover = name and client.instances.exists(name)
            if leftover:
                client.instances.get(name).delete(wait=True)
    assert not leftover, f"stop() left {name} behind"
    return client, name


async def gather(coroutines):
    return await asyncio.gather(*coroutines)


def test_demo(tmp_path):
    def check(inst, sp):
        assert inst.config["limits.memory"] == str(2 * 1024**3)  # c.Spawner.mem_limit = "2G"
    spawn_and_stop("demo", tmp_path, "example-demo", check)


def test_seed_pushes_passwd_and_group_and_mounts_the_home(tmp_path):
    cfg = exampleconfig.load("seed")
    home = exampleconfig.REPO / ".cache" / "examples" / "seed" / "homes" / "example-seed"
    shutil.rmtree(home, ignore_errors=True)

    def check(inst, sp):
        assert inst.config["security.privileged"] == "true"
        for path in ("/etc/passwd", "/etc/group"):
            assert inst.files.get(path) == open(path, "rb").read()
        # The home is the host directory create_mount_dirs made: a file written inside is there.
        assert inst.devices["home"]["source"] == str(home)
        r = inst.execute(["sh", "-c", "echo from-container > /home/example-seed/probe"])
        assert r.exit_code == 0, r.stderr
        assert (home / "probe").read_text() == "from-container\n"
    try:
        spawn_and_stop("seed", tmp_path, "example-seed", check)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert cfg.LxdSpawner.files_to_push == [["/etc/passwd", "/etc/passwd"], ["/etc/group", "/etc/group"]]


def test_custom_module_gpu_makes_its_profile_and_device_and_removes_them(tmp_path):
    made = {}

    def check(inst, sp):
        profile = f"{inst.name}-gpu"
        made["profile"] = profile
        assert sp.module_source == str(exampleconfig.EXAMPLES / "custom-module-gpu" / "module")
        assert inst.profiles == ["default", profile]
        gpu = inst.client.profiles.get(profile)
        assert gpu.devices == {"gpu": {"type": "unix-char", "source": "/dev/null", "path": "/dev/gpu-standin"}}
        # The device is in the running container: a character device, the host's /dev/null.
        r = inst.execute(["stat", "-c", "%F %t:%T", "/dev/gpu-standin"])
        assert r.stdout.strip() == "character special file 1:3", r.stdout + r.stderr
    client, _ = spawn_and_stop("custom-module-gpu", tmp_path, "example-gpu", check)
    try:
        assert made and not client.profiles.exists(made["profile"]), "destroy must delete the server's profile"
    finally:
        if made and client.profiles.exists(made["profile"]):
            client.profiles.get(made["profile"]).delete()


def test_incus_with_opentofu(tmp_path):
    def check(inst, sp):
        assert inst.client.host_info["environment"]["server"] == "incus"
        [audit] = (tmp_path / "state").glob("*/_default/audit.jsonl")
        record = json.loads(audit.read_text().splitlines()[-1])
        assert record["terraform_binary"] == str(exampleconfig.REPO / ".cache" / "bin" / "tofu"), record
        assert record["daemon"]["backend"] == "incus", record
    spawn_and_stop("incus-opentofu", tmp_path, "example-tofu", check)


def test_profiles_large_with_an_image_of_ones_own(tmp_path):
    """examples/profiles: the Large profile's limits and an unlisted image alias, chosen as the
    REST API sends it; the audit names the profile."""
    def check(inst, sp):
        assert inst.config["limits.memory"] == str(4 * 1024**3)
        assert inst.config["limits.cpu.allowance"] == "200ms/100ms"
        [audit] = (tmp_path / "state").glob("*/_default/audit.jsonl")
        record = json.loads(audit.read_text().splitlines()[-1])
        assert (record["profile"], record["image"]) == ("large", "jupyter-notebook"), record
    spawn_and_stop("profiles", tmp_path, "example-profiles", check,
                   user_options={"profile": "large", "image--unlisted-choice": "jupyter-notebook"})


def volume_exists(pool, name):
    try:
        pool.volumes.get("custom", name)
    except pylxd.exceptions.NotFound:
        return False
    return True


def test_course_a_student_reads_the_course_folder_and_it_outlives_the_stop(tmp_path):
    """examples/course: alice (a student, by the example's load_groups) gets the course's folder
    read-only (the daemon refuses a write, even root's) and no staff room; the folder's volume
    is still there after her server's stop. Her home volume is on, as in the demo."""
    cfg = exampleconfig.load("course")
    groups = sorted(g for g, spec in cfg.JupyterHub.load_groups.items() if "alice" in spec["users"])
    assert groups == ["students"], cfg.JupyterHub.load_groups
    state = tmp_path / "state"
    client = pylxd.Client(endpoint=INCUS_SOCKET) if cfg.LxdSpawner.backend == "incus" else pylxd.Client()
    pool = client.storage_pools.get("default")
    assert not volume_exists(pool, "shared-data-101"), (  # not this test's: e.g. `make demo EXAMPLE=course`
        "the volume shared-data-101 exists already (tf-lxd-spawner -f examples/course/jupyterhub_config.py "
        "shared delete data-101 --force deletes it)")

    def check(inst, sp):
        folder = inst.devices["tf-lxd-shared-data-101"]
        assert (folder["source"], folder["path"], folder.get("readonly")) == (
            "shared-data-101", "/home/alice/data-101", "true"), folder
        assert not [d for d in inst.devices if d.startswith("tf-lxd-shared-") and d != "tf-lxd-shared-data-101"], \
            f"a student has no device for the staff room: {sorted(inst.devices)}"
        r = inst.execute(["touch", "/home/alice/data-101/cheat"])
        assert r.exit_code != 0 and "Read-only file system" in r.stderr, (r.exit_code, r.stdout, r.stderr)
        inputs = json.loads(sp.workspace_dir().tfvars.read_text())
        assert (inputs["user"]["uid"], inputs["user"]["groups"]) == (2101, [3000]), inputs["user"]
        assert not inputs["user"].get("group_dirs"), "a reader's folder is not made setgid by her server"
    try:
        spawn_and_stop("course", tmp_path, "alice", check, groups=groups, storage_enabled=True)
        assert volume_exists(pool, "shared-data-101"), "a stop never deletes a shared folder"
        assert not (state / "_shared" / "staff-room").exists(), "no start of staff: no staff room made"
    finally:
        deleted = delete_volumes(client, under=str(state))  # the folder and alice's home
    assert not volume_exists(pool, "shared-data-101"), deleted
