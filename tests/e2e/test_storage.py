"""A user's work is never lost: the persistent home volume (storage_enabled, on by default),
through a real JupyterHub on LXD + terraform and on Incus + tofu.

With the default remove = True every stop destroys the container; the home volume, made by the
storage module in a workspace of its own, outlives it: a file written in the home is there
after a stop and start, a restart of the hub and a change of image; the pool enforces the
quota; all of a user's servers share the volume, or each gets its own with {servername} in
the name template; a smaller size is refused, a larger one grows the volume in place (the
files keep their owner); only deleting the user (or a per-server volume's named server)
deletes it.

One hub per daemon; a control file (hubtools.control_hook) gives each scenario's user its own
storage settings. Independent scenarios run side by side.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import CACHE, IMAGE
from hubtools import Control, Hub, control_hook, delete_volumes, second_alias, shut_down

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}
ALIAS = "tf-lxd-storage-alias"  # a second image name: an operator's image rollout
POOL = "default"

WRITE = ("import os\nh = os.path.expanduser('~')\nos.makedirs(h + '/work', exist_ok=True)\n"
         "open(h + '/work/notes.txt', 'w').write({text!r})\n"
         "print(os.stat(h).st_uid == os.getuid(), os.stat(h + '/work/notes.txt').st_uid == os.getuid())")
READ = ("import os\np = os.path.expanduser('~/work/notes.txt')\n"
        "print(open(p).read() if os.path.exists(p) else '<no file>', os.path.exists(p) and os.stat(p).st_uid == os.getuid())")
FILL = ("import errno, os\nbig = os.path.expanduser('~/big')\ntry:\n    with open(big, 'wb') as f:\n"
        "        for _ in range({mib}):\n            f.write(b'x' * 1048576)\n            f.flush()\n"
        "            os.fsync(f.fileno())\n    print('wrote all')\n"
        "except OSError as e:\n    print('refused', errno.errorcode.get(e.errno))\n"
        "os.remove(big)")


@pytest.fixture(scope="module", params=list(BINARY))
def stack(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")
    work = tmp_path_factory.mktemp(f"storage-{daemon}")
    hub = Hub(work, f"""
c.JupyterHub.allow_named_servers = True
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.storage_capacity = "200MiB"
c.LxdSpawner.storage_retention_days = 0  # deletion itself is tested here; retention in test_homes.py
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
""" + control_hook(work / "control.json"), env={"PATH": f"{os.environ['PATH']}:{CACHE / 'bin'}"})
    control = Control(work / "control.json")
    with second_alias(client, ALIAS):
        hub.start()
        try:
            yield daemon, client, hub, control
        finally:
            try:
                shut_down(hub, client)
            finally:
                delete_volumes(client, f"{hub.state_dir}/")


def volume(client, name):
    from pylxd.exceptions import NotFound

    try:
        return client.storage_pools.get(POOL).volumes.get("custom", name)
    except NotFound:
        return None


def spawn(hub, user, server=""):
    r = hub.start_server(user, server)
    assert r.status_code in (201, 202), r.text
    return hub.wait_ready(user, server, timeout=300)


def stop(hub, user, server=""):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    assert hub.api("DELETE", path).status_code in (202, 204)
    hub.wait_stopped(user, server)


def failed_spawn_message(hub, user) -> str:
    r = hub.start_server(user)
    assert r.status_code in (201, 202, 400, 500), r.text
    events = hub.progress_events(user)
    assert events and events[-1].get("failed"), events
    hub.wait_stopped(user)
    return events[-1]["message"]


def instance_of(hub, user, server="_default"):
    starts = [json.loads(line) for line in (hub.state_dir / user / server / "audit.jsonl").read_text().splitlines()]
    return [r for r in starts if r["operation"] == "start"][-1]["instance"]


def newcomer(hub, client, control):
    """remove = True (the default): the container goes at every stop, the home stays."""
    user = "newcomer"
    token = hub.user_token(user)
    spawn(hub, user)
    assert hub.run_code(user, token, WRITE.format(text="draft 1")).split() == ["True", "True"]
    first = client.instances.get(instance_of(hub, user)).created_at
    stop(hub, user)
    assert not client.instances.exists(instance_of(hub, user)), "remove = True destroys the container"
    vol = volume(client, "home-newcomer")
    assert vol is not None and vol.config["size"] == "200MiB"
    assert vol.config["user.tf-lxd-spawner.user"] == user
    spawn(hub, user)
    assert client.instances.get(instance_of(hub, user)).created_at != first  # a new container...
    assert hub.run_code(user, token, READ).split() == ["draft", "1", "True"]  # ...the same home
    stop(hub, user)
    # An image rollout (a new image name): a new container, the same home.
    control.set(user, image=ALIAS)
    spawn(hub, user)
    assert hub.run_code(user, token, READ).split() == ["draft", "1", "True"]
    stop(hub, user)
    control.set(user)
    records = [json.loads(line) for line in
               (hub.state_dir / user / "_volumes" / "home-newcomer" / "audit.jsonl").read_text().splitlines()]
    assert [(r["operation"], r.get("action"), r["outcome"]) for r in records] == [("volume", "created", "ok")]
    return token


def quota(hub, client, control):
    user = "quota"
    control.set(user, storage_capacity="64MiB")
    token = hub.user_token(user)
    spawn(hub, user)
    assert hub.run_code(user, token, FILL.format(mib=16)).strip() == "wrote all"
    assert hub.run_code(user, token, FILL.format(mib=128)).strip() == "refused EDQUOT"
    stop(hub, user)


def grow_and_shrink(hub, client, control):
    user = "grower"
    control.set(user, storage_capacity="100MiB")
    token = hub.user_token(user)
    spawn(hub, user)
    assert hub.run_code(user, token, WRITE.format(text="kept")).split() == ["True", "True"]
    stop(hub, user)
    control.set(user, storage_capacity="50MiB")
    message = failed_spawn_message(hub, user)
    assert "cannot shrink from 100MiB to 50MiB" in message, message
    assert volume(client, "home-grower").config["size"] == "100MiB"
    # Grown in place: the same volume, and the files still the user's (provider v1.5.0 drops the
    # daemon's idmap record on an update; without it put back, the next start shifts them again).
    control.set(user, storage_capacity="150MiB")
    spawn(hub, user)
    assert volume(client, "home-grower").config["size"] == "150MiB"
    assert hub.run_code(user, token, READ).split() == ["kept", "True"]
    assert hub.run_code(user, token, WRITE.format(text="still mine")).split() == ["True", "True"]
    stop(hub, user)


def shared_and_per_server(hub, client, control):
    """All of a user's servers share the volume; with {servername} each has its own, deleted
    with its named server. Three servers starting at once on a volume no instance used yet: the
    daemon shifts a volume's files at its first attach, and two first attaches at once shifted
    them twice (home owned by uid 100000 in both), unless the spawner serialises them."""
    token = hub.user_token("sharer")
    servers = ["a", "b", "c"]
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: spawn(hub, "sharer", s), servers))
    for server in servers:  # the home is the user's in every one of them
        assert hub.run_code("sharer", token, WRITE.format(text=f"from {server}"), server=server).split() == \
            ["True", "True"], server
    assert hub.run_code("sharer", token, READ, server="a").split() == ["from", "c", "True"]
    for server in servers:
        stop(hub, "sharer", server)

    user = "splitter"
    control.set(user, storage_name_template="home-{username}-{servername}")
    token = hub.user_token(user)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: spawn(hub, user, s), ["x", "y"]))
    hub.run_code(user, token, WRITE.format(text="only x"), server="x")
    assert hub.run_code(user, token, READ, server="y").split() == ["<no", "file>", "False"]
    stop(hub, user, "x")
    stop(hub, user, "y")
    assert volume(client, "home-splitter-x") and volume(client, "home-splitter-y")
    r = hub.api("DELETE", f"/users/{user}/servers/x", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 120
    while volume(client, "home-splitter-x") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert volume(client, "home-splitter-x") is None, "deleting the named server deletes its volume"
    assert volume(client, "home-splitter-y") is not None


def leaver(hub, client, control):
    """Deleting the user deletes the volume; its workspace is archived with the audit."""
    user = "leaver"
    token = hub.user_token(user)
    spawn(hub, user)
    hub.run_code(user, token, WRITE.format(text="bye"))
    stop(hub, user)
    assert volume(client, "home-leaver") is not None
    assert hub.api("DELETE", f"/users/{user}").status_code == 204
    assert volume(client, "home-leaver") is None
    [archived] = (hub.state_dir / user / "_volumes").glob("home-leaver.deleted-*")
    last = json.loads((archived / "audit.jsonl").read_text().splitlines()[-1])
    assert (last["operation"], last["outcome"]) == ("volume-delete", "ok")


def taken(hub, client, control):
    """Another hub on the same daemon already has a volume of the name this user's would get:
    the spawn is refused before anything is made, naming the volume; the operator's log line
    says whose it is and what to change; that volume is left as it was."""
    user = "taken"
    foreign = {"user.tf-lxd-spawner.managed": "true", "user.tf-lxd-spawner.user": user,
               "user.tf-lxd-spawner.hub_id": "another-hub",
               "user.tf-lxd-spawner.workspace": f"/srv/another-hub/{user}/_volumes/home-{user}"}
    client.storage_pools.get(POOL).volumes.create({"name": f"home-{user}", "type": "custom", "config": foreign})
    try:
        since = hub.log_path.stat().st_size
        message = failed_spawn_message(hub, user)
        assert f"home volume home-{user} cannot be made" in message and "already exists" in message, message
        log = hub.log_path.read_bytes()[since:].decode(errors="replace")
        assert "belongs to another hub (hub id another-hub" in log and "storage_name_template" in log, log[-3000:]
        vol = volume(client, f"home-{user}")
        assert {k: vol.config.get(k) for k in foreign} == foreign, vol.config
        assert not [i.name for i in client.instances.all() if i.name == f"jupyter-{user}"]
        # Refused before its workspace is written (nothing half-made is left); the server's own
        # audit record has the refusal.
        assert not (hub.state_dir / user / "_volumes" / f"home-{user}").exists()
        records = [json.loads(line) for line in
                   (hub.state_dir / user / "_default" / "audit.jsonl").read_text().splitlines()]
        assert [(r["operation"], r["outcome"]) for r in records] == [("start", "failed")], records
        assert f"home volume home-{user}" in records[0]["error"] and "another hub" in records[0]["error"], records
    finally:
        client.storage_pools.get(POOL).volumes.get("custom", f"home-{user}").delete()


def clash(hub, client, control):
    """The same for the container: another hub's instance already has this server's name. The
    start is refused, naming it, and that instance is neither taken over nor removed."""
    user = "clash"
    name = f"jupyter-{user}"
    foreign = {"user.tf-lxd-spawner.managed": "true", "user.tf-lxd-spawner.hub_id": "another-hub",
               "user.tf-lxd-spawner.workspace": f"/srv/another-hub/{user}/_default"}
    inst = client.instances.create({"name": name, "source": {"type": "image", "alias": IMAGE}, "config": foreign},
                                   wait=True)
    try:
        since = hub.log_path.stat().st_size
        message = failed_spawn_message(hub, user)
        assert f"an instance named {name} already exists" in message, message
        log = hub.log_path.read_bytes()[since:].decode(errors="replace")
        assert "belongs to another hub (hub id another-hub" in log and "instance_name_template" in log, log[-3000:]
        after = client.instances.get(name)
        assert after.created_at == inst.created_at and after.config.get("user.tf-lxd-spawner.hub_id") == "another-hub"
    finally:
        client.instances.get(name).delete(wait=True)


def test_the_home_volume_outlives_every_server(stack):
    daemon, client, hub, control = stack
    scenarios = [newcomer, quota, grow_and_shrink, shared_and_per_server, leaver, taken, clash]
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {s.__name__: pool.submit(s, hub, client, control) for s in scenarios}
        errors = {}
        for name, f in futures.items():
            try:
                f.result()
            except Exception as e:  # every scenario's failure is reported, not just the first
                errors[name] = f"{type(e).__name__}: {e}"
    assert not errors, json.dumps(errors, indent=1)[:6000]
    # A restart of the hub: the newcomer's notebook is still there.
    hub.stop()
    hub.start()
    token = hub.user_token("newcomer")
    spawn(hub, "newcomer")
    assert hub.run_code("newcomer", token, READ).split() == ["draft", "1", "True"]
    stop(hub, "newcomer")
