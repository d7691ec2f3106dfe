"""Bad input: each refused with a message naming the problem, nothing created, nothing leaked.
Hostile user and server names: valid, unique instance names and no way into the HCL.
A kept server's failed resume (remove = False) is tested through a real hub: test_kept_servers.py."""

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import IMAGE
from spawnerstub import make_spawner

from tf_lxd_spawner.spawner import SpawnError
from tf_lxd_spawner.systems.ports import ports

pytestmark = pytest.mark.e2e


def refused(tmp_path, lxd_client, message, username="bad", user_options=None, **traits):
    before = {i.name for i in lxd_client.instances.all()}
    ports_before = set(ports._taken)
    sp = make_spawner(tmp_path / "state", username, **{"image": IMAGE, **traits})
    sp.user_options = user_options or {}
    with pytest.raises(SpawnError, match=message):
        asyncio.run(sp.start())
    assert not (tmp_path / "state").exists(), "a refused spawn must not create a workspace"
    assert {i.name for i in lxd_client.instances.all()} == before
    assert set(ports._taken) == ports_before, "a refused spawn must hold no port"


def test_nonexistent_image(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, "image 'no-such-image' does not exist on the LXD server", image="no-such-image")


def test_image_outside_allowed_images(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, r"image 'images:debian/12' is not allowed; choose one of \['Standard'\]",
            allowed_images={"Standard": IMAGE}, user_options={"image": "images:debian/12"})


@pytest.mark.parametrize("value,kind", [(5, "int"), (["a"], "list"), ({"name": "x"}, "dict")])
def test_user_options_that_are_not_strings(tmp_path, lxd_client, value, kind):
    """Through the REST API user_options is any JSON: a non-string image is refused by name
    (a SpawnError, which the hub shows as a 400), not a TypeError (a 500)."""
    refused(tmp_path, lxd_client, rf"user_options\['image'\] must be a string, not {kind}",
            allowed_images={"Standard": IMAGE}, user_options={"image": value})


def test_missing_push_source(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, r"files_to_push\[0\]: source '/nonexistent/bad' does not exist on the hub host",
            files_to_push=[["/nonexistent/{username}", "/etc/x"]])


def test_missing_mount_source(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, "host directory '/nonexistent/homes/bad' does not exist",
            filesystems_to_mount=[["home", "/nonexistent/homes/{username}", "/home/{username}"]])


@pytest.mark.parametrize("traits,message", [
    ({"mem_limit": "1K"}, "mem_limit 1024 bytes is too small"),
    ({"cpu_limit": -1.0}, "cpu_limit -1.0 must be a positive number of CPUs"),
    ({"process_limit": -5}, "process_limit -5 must be positive"),
])
def test_nonsense_limits(tmp_path, lxd_client, traits, message):
    refused(tmp_path, lxd_client, message, **traits)


def test_module_source_missing(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, "module_source '/nonexistent/module' does not exist",
            module_source="/nonexistent/module")


def test_backend_that_is_not_the_daemon_at_the_endpoint(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, r"backend is 'lxd' but the daemon at the local unix socket "
            r"/var/lib/incus/unix.socket is Incus 6\.0\.\d+: set c.LxdSpawner.backend = 'incus'",
            backend="lxd", lxd_endpoint="/var/lib/incus/unix.socket")
    refused(tmp_path, lxd_client, r"backend is 'incus' but the daemon at the local unix socket "
            r"/var/lib/lxd/unix.socket is LXD 5\.0\.\d+: set c.LxdSpawner.backend = 'lxd'",
            backend="incus", lxd_endpoint="/var/lib/lxd/unix.socket")


def test_terraform_path_missing(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, "terraform_path 'no-such-terraform' was not found",
            terraform_path="no-such-terraform")


def test_lxd_unreachable(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, r"LXD is not reachable at https://127\.0\.0\.1:1",
            lxd_endpoint="https://127.0.0.1:1", lxd_verify=False)


HOSTILE = [
    ('o"brien', ""),
    ('${file("/etc/passwd")}', 'x"}; resource "x" "y" {'),
    ("%{ for x in y }", "line\nbreak"),
    ("zoë-名前", "é"),
    ("u" * 85, "s" * 90),
]


def test_hostile_names_are_data_not_code(tmp_path, lxd_client):
    state = tmp_path / "state"
    spawners = [make_spawner(state, user, server, image=IMAGE) for user, server in HOSTILE]

    async def go():
        return await asyncio.gather(*(s.start() for s in spawners), return_exceptions=True)

    results = asyncio.run(go())
    try:
        assert not [r for r in results if isinstance(r, BaseException)], results
        names = [s.instance for s in spawners]
        assert len(set(names)) == len(names)
        for s, (user, server) in zip(spawners, HOSTILE):
            assert re.fullmatch(r"[a-z][a-z0-9-]{0,61}[a-z0-9]", s.instance), s.instance
            ws = Path(s.workspace)
            assert ws.parent.parent == state  # no name steps out of its directory
            main_tf = (ws / "main.tf").read_text()
            assert user not in main_tf and (not server or server not in main_tf)
            tfvars = json.loads((ws / "terraform.tfvars.json").read_text())
            assert tfvars["labels"]["user"] == user and tfvars["labels"]["server"] == server
            # The names reached LXD intact, as values: nothing was interpreted on the way.
            config = lxd_client.instances.get(s.instance).config
            assert config["user.tf-lxd-spawner.user"] == user
            assert config.get("user.tf-lxd-spawner.server", "") == server  # LXD drops empty values
    finally:
        async def stop_all():
            await asyncio.gather(*(s.stop() for s in spawners))

        asyncio.run(stop_all())
    for s in spawners:
        assert not lxd_client.instances.exists(s.instance)


@pytest.mark.parametrize("owned", ["name", "labels", "listen_port", "server_environment"])
def test_module_variables_cannot_override_owned_inputs(tmp_path, lxd_client, owned):
    refused(tmp_path, lxd_client, f"module_variables may not set {owned}: the spawner sets it itself",
            module_variables={owned: {"x": "y"} if owned in ("labels", "server_environment") else "x"})


def test_get_uid_gid_giving_root_is_refused(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, "get_uid_gid gave uid 0 and gid 0 for 'bad': the server would run as root",
            get_uid_gid=lambda spawner: (0, 0))


def test_user_name_starting_with_dash_is_never_an_option(tmp_path, lxd_client):
    marker = tmp_path / "ran"
    refused(tmp_path, lxd_client, r"post_hub_commands\[0\]: the argument '\{username\}' would become '-rf'",
            username="-rf", post_hub_commands=[["touch", str(marker), "{username}"]])
    assert not marker.exists()


def test_keyboard_interrupt_is_not_turned_into_a_spawn_error(tmp_path, lxd_client):
    def interrupted(spawner):
        raise KeyboardInterrupt

    sp = make_spawner(tmp_path / "state", "interrupted", image=IMAGE, environment={"LATE": interrupted})
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(sp.start())
    records = [json.loads(line) for line in (Path(sp.workspace) / "audit.jsonl").read_text().splitlines()]
    assert (records[-1]["outcome"], records[-1]["error"]) == ("failed", "KeyboardInterrupt")
    assert not lxd_client.instances.exists("jupyter-interrupted")


def test_failed_cleanup_is_audited_and_keeps_its_port(tmp_path, lxd_client):
    """The start fails after apply, and so does the clean-up (LXD refuses to delete a protected
    instance): the audit says so, and the port stays held, since the instance is still there
    and bound to it, until a stop that succeeds."""
    state = tmp_path / "state"
    ws = state / "stuck" / "_default"
    protect = ["lxc", "config", "set", "jupyter-stuck", "security.protection.delete"]
    sp = make_spawner(state, "stuck", image=IMAGE, post_hub_commands=[[*protect, "true"], ["false"]])

    async def go():
        with pytest.raises(SpawnError, match=r"post_hub_commands\[1\] exited 1"):
            await sp.start()
        records = [json.loads(line) for line in (ws / "audit.jsonl").read_text().splitlines()]
        assert records[-1]["outcome"] == "failed" and records[-1]["cleanup"] == "failed", records[-1]
        assert "protect" in records[-1]["cleanup_error"].lower(), records[-1]
        assert lxd_client.instances.exists("jupyter-stuck")
        port = (sp.listen_address, sp.listen_port)
        assert sp.listen_port is not None and port in ports._taken
        subprocess.run([*protect, "false"], check=True)
        await sp.stop()  # what the hub does after a failed start
        assert port not in ports._taken
        assert not lxd_client.instances.exists("jupyter-stuck")

    try:
        asyncio.run(go())
    finally:
        subprocess.run([*protect, "false"], capture_output=True)


NAMES_AS_PATHS = ["a/b", "..", "x..y"]  # '/' and '..' cannot come from the hub's login, but from its API or an
# authenticator of the operator's; whatever the source, a name must stay one directory name


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_names_in_host_paths_are_escaped_and_stay_in_their_directory(tmp_path, lxd_client):
    """{username} in host paths is the escaped name (as in DockerSpawner's volumes): with
    create_mount_dirs, each hostile name gets one directory inside homes/, owned by the user's
    ids, and its pushed file is read from inside pushed/; nothing is made anywhere else."""
    from tf_lxd_spawner.systems.naming import (
        host_component as path_component,  # what {username} becomes
    )

    homes, pushed = tmp_path / "host" / "homes", tmp_path / "host" / "pushed"
    homes.mkdir(parents=True)
    for user in NAMES_AS_PATHS:
        (pushed / path_component(user)).mkdir(parents=True)
        (pushed / path_component(user) / "rc").write_text(f"rc of {user}\n")
    before = _files_under(tmp_path / "host")
    spawners = [make_spawner(tmp_path / "state", user, image=IMAGE, create_mount_dirs=True,
                             get_uid_gid=lambda spawner: (2345, 2345),  # allowed for raw.idmap by make's set-up
                             filesystems_to_mount=[["home", f"{homes}/{{username}}", "/mnt/home"]],
                             files_to_push=[[f"{pushed}/{{username}}/rc", "/etc/tf-lxd-rc"]])
                for user in NAMES_AS_PATHS]

    async def go():
        return await asyncio.gather(*(s.start() for s in spawners), return_exceptions=True)

    results = asyncio.run(go())
    try:
        assert not [r for r in results if isinstance(r, BaseException)], results
        made = {f"homes/{path_component(u)}" for u in NAMES_AS_PATHS}
        assert _files_under(tmp_path / "host") == before | made
        for s, user in zip(spawners, NAMES_AS_PATHS):
            home = homes / path_component(user)
            assert (home.stat().st_uid, home.stat().st_gid) == (2345, 2345)
            instance = lxd_client.instances.get(s.instance)
            assert instance.devices["home"]["source"] == str(home)
            assert instance.files.get("/etc/tf-lxd-rc") == f"rc of {user}\n".encode()
    finally:
        async def stop_all():
            await asyncio.gather(*(s.stop() for s in spawners))

        asyncio.run(stop_all())
    for s in spawners:
        assert not lxd_client.instances.exists(s.instance)
    assert _files_under(tmp_path / "host") == before | made  # the user's directories stay


@pytest.mark.parametrize("user", ["a/b", "..", "../../etc"])
def test_raw_names_leading_out_of_a_host_directory_are_refused(tmp_path, lxd_client, user):
    """{raw_username}, written by the operator, is the name as it is: one that would lead out
    of its directory is refused before anything is made (create_mount_dirs makes nothing)."""
    homes = tmp_path / "host" / "homes"
    homes.mkdir(parents=True)
    template = f"{homes}/{{raw_username}}"
    refused(tmp_path, lxd_client,
            rf"filesystems_to_mount\[0\]: the host path '{re.escape(template)}' would be "
            rf"'{re.escape(str(homes) + '/' + user)}'", username=user, create_mount_dirs=True,
            filesystems_to_mount=[["home", template, "/mnt/home"]])
    refused(tmp_path, lxd_client, r"files_to_push\[0\]: the host path .* would be", username=user,
            files_to_push=[[f"{homes}/{{raw_username}}/rc", "/etc/rc"]])
    assert _files_under(tmp_path / "host") == {"homes"}


def test_names_leading_out_of_a_container_path_are_refused(tmp_path, lxd_client):
    refused(tmp_path, lxd_client, r"filesystems_to_mount\[0\]: the container path '/home/\{username\}' would be "
            r"'/home/\.\.'", username="..", create_mount_dirs=True,
            filesystems_to_mount=[["home", f"{tmp_path}/homes/{{username}}", "/home/{username}"]])
    assert not (tmp_path / "homes").exists()


COURSE = {"name": "course", "size": "10MiB", "path": "course", "read_groups": ["students"]}


@pytest.mark.parametrize("entry, message", [
    ({**COURSE, "name": "Bad Name!"}, r"shared_volumes\[0\]: name 'Bad Name!' must be lower-case"),
    ({**COURSE, "size": "lots"}, r"shared_volumes \(course\): size: 'lots' is not a size"),
    ({**COURSE, "path": "/home/bad"}, r"shared_volumes \(course\): path '/home/bad' is the home itself"),
    ({**COURSE, "read_groups": "students"}, r"read_groups must be a list of JupyterHub group names"),
    ({**COURSE, "pool": "no-such-pool"}, r"shared_volumes \(course\): storage pool 'no-such-pool' does not exist"),
    ({**COURSE, "colour": "red"}, r"shared_volumes\[0\]: unknown keys \['colour'\]"),
])
def test_shared_volumes_entries_that_cannot_work(tmp_path, lxd_client, entry, message):
    """A wrong shared_volumes entry is named before anything is made (no volume, no workspace)."""
    from types import SimpleNamespace

    volumes = {v.name for v in lxd_client.storage_pools.get("default").volumes.all()}
    sp = make_spawner(tmp_path / "state", "bad", image=IMAGE, shared_volumes=[entry])
    sp.user.groups = [SimpleNamespace(name="students")]
    with pytest.raises(SpawnError, match=message):
        asyncio.run(sp.start())
    assert not (tmp_path / "state").exists(), "a refused spawn must not create a workspace"
    assert {v.name for v in lxd_client.storage_pools.get("default").volumes.all()} == volumes
