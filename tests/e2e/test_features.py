"""Seed parity and what DockerSpawner/KubeSpawner users expect, each on the real stack.

One hub for the module; a pre_spawn_hook varies options per user (privileged, remove=False, a
custom module), as an operator could."""

import json
import os
import re
import shutil
import threading
import time

import pytest
import requests
from conftest import MODULE_DIR
from hubtools import Hub, second_alias, shut_down

pytestmark = pytest.mark.e2e

ALT_ALIAS = "jupyter-notebook-alt"
PROFILE = "tf-lxd-test-extra"
SEED_UID = 2345


def custom_module(dest):
    """A copy of the notebook module with one more input, recorded on the instance."""
    shutil.copytree(MODULE_DIR, dest)
    variables = dest / "variables.tf"
    variables.write_text(variables.read_text() + '\nvariable "extra_note" {\n  type = string\n'
                         '  description = "A note recorded on the instance."\n}\n')
    main = dest / "main.tf"
    text = main.read_text()
    anchor = "  config = { for k, v in merge(\n    var.config,"
    assert anchor in text
    main.write_text(text.replace(anchor, anchor + '\n    { "user.extra-note" = var.extra_note },'))
    return dest


@pytest.fixture(scope="module")
def hub(tmp_path_factory, lxd_client):
    work = tmp_path_factory.mktemp("features")
    (work / "homes").mkdir()
    for user in ("seed", "priv", "chooser", "named", "custom", "keeper"):
        (work / f"pushed-{user}").write_text(f"pushed for {user}\n")
    module = custom_module(work / "custom-module")
    if not lxd_client.profiles.exists(PROFILE):
        lxd_client.profiles.create(PROFILE, config={"user.profile-marker": "yes"}, devices={})
    extra = f"""
import asyncio

c.JupyterHub.allow_named_servers = True
c.DummyAuthenticator.password = "pw"
c.LxdSpawner.allowed_images = {{"Standard": "jupyter-notebook", "Alternative": "{ALT_ALIAS}"}}
c.LxdSpawner.files_to_push = [
    ["{work}/pushed-{{username}}", "/etc/pushed-{{username}}"],
    {{"target": "/etc/tf-inline", "content": "inline text", "mode": "0640", "uid": 0, "gid": 0}},
]
c.LxdSpawner.filesystems_to_mount = [["home", "{work}/homes/{{username}}", "/home/{{username}}"]]
c.LxdSpawner.create_mount_dirs = True
c.LxdSpawner.commands_to_prepare = [["touch", "/home/{{username}}/prepared-{{username}}"]]
c.LxdSpawner.post_hub_commands = ["touch '{work}/post {{username}}-{{servername}}'"]
c.LxdSpawner.process_limit = 500
c.Spawner.mem_limit = "1G"
c.Spawner.cpu_limit = 0.5
c.Spawner.environment = {{"TF_LXD_GREETING": "hello from the config"}}
c.Spawner.args = ["--ServerApp.iopub_data_rate_limit=12345678"]

async def ids(spawner):
    await asyncio.sleep(0)
    return ({SEED_UID}, {SEED_UID})  # allowed for raw.idmap by make's set-up
c.LxdSpawner.get_uid_gid = ids

def hook(spawner):
    name = spawner.user.name
    if name == "priv":
        spawner.privileged_container = True
    if name == "keeper":
        spawner.remove = False
    if name == "custom":
        spawner.module_source = "{module}"
        spawner.lxd_profiles = ["default", "{PROFILE}"]
        spawner.module_variables = lambda sp: {{
            "extra_note": "made for " + sp.user.name,
            "devices": {{"tfzero": {{"type": "unix-char", "properties": {{"source": "/dev/zero", "path": "/dev/tfzero"}}}}}},
        }}
c.Spawner.pre_spawn_hook = hook
"""
    with second_alias(lxd_client, ALT_ALIAS):
        hub = Hub(work, extra).start()
        hub.work = work
        yield hub
        shut_down(hub, lxd_client)
    if lxd_client.profiles.exists(PROFILE):
        lxd_client.profiles.get(PROFILE).delete()


def spawn(hub, user, server="", options=None):
    r = hub.start_server(user, server, options)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, server)
    return hub.user_token(user)


def stop(hub, user, server=""):
    hub.api("DELETE", f"/users/{user}/servers/{server}" if server else f"/users/{user}/server")
    hub.wait_stopped(user, server)


def audit(hub, user, server="_default"):
    return [json.loads(line) for line in (hub.state_dir / user / server / "audit.jsonl").read_text().splitlines()]


PROBE = r"""
import json, os, socket
def read(*paths):
    for p in paths:
        try:
            return open(p).read().strip()
        except OSError as e:
            err = str(e)
    return err
def cpu_share():  # CPU time a busy loop gets per second of wall time
    import time
    w0, c0 = time.monotonic(), time.process_time()
    while time.monotonic() - w0 < 2.0:
        pass
    return (time.process_time() - c0) / (time.monotonic() - w0)
open(os.path.expanduser("~/from-kernel.txt"), "w").write("x")
print(json.dumps({
    "hostname": socket.gethostname(), "uid": os.getuid(), "gid": os.getgid(),
    "greeting": os.environ.get("TF_LXD_GREETING"),
    "server_cmdline": read(f"/proc/{os.getppid()}/cmdline").split("\x00"),
    "memory_max": read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "cpu_share": cpu_share(), "pids_max": read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"), "uid_map": " ".join(read("/proc/self/uid_map").split()),
    "home": os.path.expanduser("~"),
}))
"""


def probe(hub, user, token, server=""):
    return json.loads(hub.run_code(user, token, PROBE, server=server))


def test_seed_configuration_uids_commands_limits_environment(hub, lxd_client):
    token = spawn(hub, "seed")
    p = probe(hub, "seed", token)
    inst = lxd_client.instances.get("jupyter-seed")
    # get_uid_gid (async): the account inside has those ids, and files in the mounted home
    # belong to the same ids on the host.
    assert (p["uid"], p["gid"]) == (SEED_UID, SEED_UID)
    host_home = hub.work / "homes" / "seed"
    st = os.stat(host_home / "from-kernel.txt")
    assert (st.st_uid, st.st_gid) == (SEED_UID, SEED_UID)
    assert inst.config["raw.idmap"] == f"uid {SEED_UID} {SEED_UID}\ngid {SEED_UID} {SEED_UID}"
    # commands_to_prepare ran in the container as the user; post_hub_commands on the hub host.
    assert os.stat(host_home / "prepared-seed").st_uid == SEED_UID
    assert (hub.work / "post seed-").exists()
    # files_to_push: a seed-style pair with {username}, and an inline dict entry with a mode.
    assert inst.files.get("/etc/pushed-seed") == b"pushed for seed\n"
    assert inst.files.get("/etc/tf-inline") == b"inline text"
    assert inst.execute(["stat", "-c", "%a", "/etc/tf-inline"]).stdout.strip() == "640"
    # mem_limit / cpu_limit / process_limit, as LXD has them and as the container sees them.
    assert inst.config["limits.memory"] == str(1024**3)
    assert inst.config["limits.cpu.allowance"] == "50ms/100ms"
    assert inst.config["limits.processes"] == "500"
    assert p["memory_max"] == str(1024**3)
    assert 0.3 < p["cpu_share"] < 0.65, p["cpu_share"]  # half a CPU, measured from inside
    assert p["pids_max"] == "500"
    # environment and args reach the server; containers are unprivileged by default.
    assert p["greeting"] == "hello from the config"
    assert "--ServerApp.iopub_data_rate_limit=12345678" in p["server_cmdline"]
    assert inst.config.get("security.privileged") == "false"
    assert not p["uid_map"].startswith("0 0 ")
    stop(hub, "seed")


def test_privileged_container(hub, lxd_client):
    token = spawn(hub, "priv")
    p = probe(hub, "priv", token)
    assert lxd_client.instances.get("jupyter-priv").config["security.privileged"] == "true"
    assert p["uid_map"] == "0 0 4294967295"
    stop(hub, "priv")


def login(hub, user):
    s = requests.Session()
    r = s.get(f"{hub.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
    r = s.post(f"{hub.url}/hub/login?next=/hub/home", data={"username": user, "password": "pw", "_xsrf": xsrf})
    assert r.status_code == 200, r.status_code
    return s


def test_image_choice_form_and_server_side_refusal(hub, lxd_client):
    form = login(hub, "chooser").get(f"{hub.url}/hub/spawn/chooser").text
    assert re.search(r'<select[^>]*name="image"', form)
    assert ">Standard</option>" in form and ">Alternative</option>" in form

    # A crafted request for an image outside allowed_images: refused, nothing created.
    r = hub.start_server("chooser", options={"image": "images:debian/12"})
    assert r.status_code in (201, 202, 400, 500), r.text
    deadline = time.monotonic() + 60
    while hub.server_model("chooser") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hub.server_model("chooser") is None
    assert "is not allowed; choose one of ['Alternative', 'Standard']" in hub.log_tail(400)
    assert not lxd_client.instances.exists("jupyter-chooser")
    assert not (hub.state_dir / "chooser").exists()

    spawn(hub, "chooser", options={"image": "Alternative"})
    assert audit(hub, "chooser")[-1]["image"] == ALT_ALIAS
    assert lxd_client.instances.get("jupyter-chooser").status == "Running"
    stop(hub, "chooser")


def test_named_servers_get_their_own_instances_and_workspaces(hub, lxd_client):
    hub.api("POST", "/users/named")
    for server in ("", "second"):
        assert hub.start_server("named", server).status_code in (201, 202)
    threads = [threading.Thread(target=hub.wait_ready, args=("named", s)) for s in ("", "second")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    token = hub.user_token("named")
    assert probe(hub, "named", token)["hostname"] == "jupyter-named"
    assert probe(hub, "named", token, server="second")["hostname"] == "jupyter-named-second"
    assert audit(hub, "named")[-1]["instance"] == "jupyter-named"
    assert audit(hub, "named", "second")[-1]["instance"] == "jupyter-named-second"
    stop(hub, "named")
    stop(hub, "named", "second")
    assert not lxd_client.instances.exists("jupyter-named-second")


def test_custom_module_variables_profiles_and_devices(hub, lxd_client):
    spawn(hub, "custom")
    inst = lxd_client.instances.get("jupyter-custom")
    assert inst.config["user.extra-note"] == "made for custom"  # module_variables -> own module
    assert inst.profiles == ["default", PROFILE]
    assert inst.expanded_config["user.profile-marker"] == "yes"
    assert inst.devices["tfzero"]["type"] == "unix-char"
    assert inst.execute(["test", "-c", "/dev/tfzero"]).exit_code == 0
    stop(hub, "custom")


def test_remove_false_keeps_and_resumes_then_delete_forever(hub, lxd_client):
    token = spawn(hub, "keeper", "nb")
    name = "jupyter-keeper-nb"
    h = {"Authorization": f"token {token}"}
    r = requests.put(hub.server_url("keeper", "nb") + "api/contents/kept.txt", headers=h, timeout=30,
                     json={"type": "file", "format": "text", "content": "still here"})
    assert r.status_code in (200, 201)
    created = lxd_client.instances.get(name).created_at
    stop(hub, "keeper", "nb")
    assert lxd_client.instances.get(name).status == "Stopped"
    ws = hub.state_dir / "keeper" / "nb"
    assert json.loads((ws / "terraform.tfstate").read_text())["resources"]

    token = spawn(hub, "keeper", "nb")
    assert lxd_client.instances.get(name).created_at == created
    r = requests.get(hub.server_url("keeper", "nb") + "api/contents/kept.txt",
                     headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.json()["content"] == "still here"
    assert audit(hub, "keeper", "nb")[-1]["resumed"] is True

    r = hub.api("DELETE", "/users/keeper/servers/nb", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while lxd_client.instances.exists(name) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not lxd_client.instances.exists(name)
    deadline = time.monotonic() + 30
    while ws.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    (archived,) = (hub.state_dir / "keeper").glob("nb.deleted-*")
    ops = [json.loads(line)["operation"] for line in (archived / "audit.jsonl").read_text().splitlines()]
    assert ops == ["start", "stop", "start", "stop", "delete_forever"]
