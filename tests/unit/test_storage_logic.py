"""Pure parts of the home volume: sizes, which volume a server mounts, and the storage root."""

import json
import os
import re
from types import SimpleNamespace

import pytest

from tf_lxd_spawner.errors import SpawnError
from tf_lxd_spawner.homes import storage
from tf_lxd_spawner.lifecycle.record import ServerState, write_record
from tf_lxd_spawner.systems import naming
from tf_lxd_spawner.systems.naming import posix_username
from tf_lxd_spawner.systems.workspace import Workspace, workspace_path


@pytest.mark.parametrize("text,expected", [
    ("10GiB", 10 * 2**30), ("500MiB", 500 * 2**20), ("1GB", 10**9), ("2kB", 2000), ("4096", 4096), ("", None),
])
def test_sizes_in_lxds_units(text, expected):
    assert storage.size_bytes(text) == expected


@pytest.mark.parametrize("bad", ["ten gigs", "10 parsecs", "-1GiB"])
def test_nonsense_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="is not a size"):
        storage.size_bytes(bad)


def spawner(user="alice", server="", **traits):
    settings = dict(storage_name_template="home-{username}", storage_mount_path="", storage_pool="default",
                    storage_capacity="10GiB", state_dir="/srv/state")
    settings.update(traits)
    name = posix_username(user)
    return SimpleNamespace(user=SimpleNamespace(name=user), name=server,
                           account={"name": name, "home": f"/home/{name}"}, **settings)


def test_a_users_servers_share_one_volume_by_default():
    a, b = storage.volume_for(spawner(server="")), storage.volume_for(spawner(server="gpu"))
    assert a == b and a.shared and a.name == "home-alice" and a.mount_path == "/home/alice"
    assert str(a.workspace) == "/srv/state/alice/_volumes/home-alice"


def test_servername_in_the_template_gives_each_server_its_own():
    t = "home-{username}-{servername}"
    x, y = storage.volume_for(spawner(server="x", storage_name_template=t)), storage.volume_for(
        spawner(server="y", storage_name_template=t))
    assert not x.shared and x.name == "home-alice-x" and y.name == "home-alice-y"


def test_hostile_names_give_valid_distinct_volumes_under_the_users_directory():
    odd = storage.volume_for(spawner(user='o"Brien/../x'))
    assert odd.name.startswith("home-o-brien-x-") and len(odd.name) <= 63
    assert odd.workspace.parent.parent.parent == storage.Path("/srv/state")


def test_mount_path_expands_the_account_name_and_must_be_absolute():
    assert storage.volume_for(spawner(storage_mount_path="/data/{username}")).mount_path == "/data/alice"
    with pytest.raises(SpawnError, match="must be an absolute path"):
        storage.volume_for(spawner(storage_mount_path="data"))


def test_the_storage_root_holds_names_only():
    main_tf = storage.render("/m/storage", ["name", "size"], {"refresh_interval": "250ms", "config_dir": "",
                                                              "accept_remote_certificate": False, "remote": None})
    assert 'module "storage"' in main_tf and "name = var.name" in main_tf and 'output "location"' in main_tf



def test_an_existing_instance_or_volume_is_ours_only_when_its_labels_say_so():
    from tf_lxd_spawner.systems.lxd import not_ours

    ws = "/srv/hub/state/ann/_volumes/home-ann"
    mine = {"user.tf-lxd-spawner.hub_id": "hub1", "user.tf-lxd-spawner.workspace": ws}
    assert not_ours(mine, ws, "hub1", "storage_name_template") is None
    other_hub = not_ours({**mine, "user.tf-lxd-spawner.hub_id": "hub2"}, ws, "hub1", "storage_name_template")
    assert "another hub (hub id hub2" in other_hub and "c.LxdSpawner.storage_name_template" in other_hub
    other_server = not_ours({**mine, "user.tf-lxd-spawner.workspace": "/srv/hub/state/bob/_volumes/x"},
                            ws, "hub1", "instance_name_template")
    assert "another server's workspace (/srv/hub/state/bob/_volumes/x)" in other_server
    assert "{username}" in other_server and "instance_name_template" in other_server
    no_id = not_ours({"user.tf-lxd-spawner.workspace": ws}, ws, "hub1", "instance_name_template")
    assert "no hub id" in no_id and "user.tf-lxd-spawner.hub_id" in no_id
    assert "did not make it" in not_ours({"size": "1GiB"}, ws, "hub1", "storage_name_template")


# -- whose a volume workspace is, and which volume a server gets ---------------------------------

PER_SERVER = "home-{username}-{servername}"


def at(tmp_path, user="alice", server="", **traits):
    """A stand-in spawner whose state_dir is tmp_path (workspace_dir as the spawner's)."""
    sp = spawner(user, server, state_dir=str(tmp_path / "state"), **traits)
    sp.workspace_dir = lambda: Workspace(workspace_path(os.path.abspath(sp.state_dir), user, server))
    return sp


def made(path, name, server="", owner=None, shared=None):
    """A volume workspace as ensure leaves it: its inputs (labels.server), and owner.json when
    `owner` is given."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "terraform.tfvars.json").write_text(json.dumps(
        {"name": name, "pool": "fast", "size": "5GiB", "labels": {"managed": "true", "server": server}}))
    if owner is not None:
        storage.set_owner(path, "alice", owner, not owner if shared is None else shared)
    return path


def test_owner_json_says_whose_a_volume_workspace_is_else_its_saved_labels(tmp_path):
    ws = tmp_path / "home-alice-x"
    assert storage.owner_of(ws) is None  # no such workspace
    made(ws, "home-alice-x", server="x")
    assert storage.owner_of(ws) == "x"
    storage.set_owner(ws, "alice", "y", False)  # renamed to y: owner.json wins over the labels
    assert storage.owner_of(ws) == "y"
    assert json.loads((ws / storage.OWNER_FILE).read_text()) == {"user": "alice", "server": "y", "shared": False,
                                                               "format": 2}
    assert (ws / storage.OWNER_FILE).stat().st_mode & 0o777 == 0o600
    storage.set_owner(ws, "alice", "", True)
    assert storage.owner_of(ws) == ""  # the default server's (or the user's shared one)
    (ws / storage.OWNER_FILE).write_text("{torn")
    assert storage.owner_of(ws) == "x"  # an unreadable owner.json: the labels say
    (ws / storage.OWNER_FILE).unlink()
    (ws / "terraform.tfvars.json").write_text('{"name": "home-alice-x"}')
    assert storage.owner_of(ws) == ""  # made without labels.server: the default server's


def test_from_workspace_takes_shared_from_owner_json_else_from_the_labels(tmp_path):
    assert storage.from_workspace(tmp_path / "none") is None
    (tmp_path / "empty").mkdir()
    assert storage.from_workspace(tmp_path / "empty") is None
    per_server = storage.from_workspace(made(tmp_path / "a", "home-alice-x", server="x"))
    assert per_server == storage.Volume("home-alice-x", "fast", "5GiB", "", tmp_path / "a", shared=False)
    assert storage.from_workspace(made(tmp_path / "b", "home-alice", server="")).shared
    # A default server's own volume (per-server template) has labels.server "": owner.json says
    assert not storage.from_workspace(made(tmp_path / "c", "home-alice", server="", owner="", shared=False)).shared
    assert storage.from_workspace(made(tmp_path / "d", "home-alice", server="x", owner="x", shared=True)).shared


def test_a_fresh_name_is_used_as_the_template_gives_it(tmp_path):
    for server, template in (("x", PER_SERVER), ("", PER_SERVER), ("x", "home-{username}")):
        sp = at(tmp_path, server=server, storage_name_template=template)
        vol = storage.volume_for(sp)
        assert storage._unclaimed(sp, vol) == vol


@pytest.mark.parametrize("claimed_by", ["owner.json", "labels"])
def test_a_name_another_server_keeps_gives_this_one_a_valid_name_of_its_own(tmp_path, claimed_by):
    sp = at(tmp_path, server="x", storage_name_template=PER_SERVER)
    vol = storage.volume_for(sp)
    # Server x was renamed to "y" and kept its volume: a new server x must not get y's files
    made(vol.workspace, vol.name, server="x" if claimed_by == "owner.json" else "y",
         owner="y" if claimed_by == "owner.json" else None)
    own = storage._unclaimed(sp, vol)
    assert own.name != vol.name and own.name.startswith("home-alice-x-")
    assert re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", own.name) and len(own.name) <= 63
    assert own.workspace == vol.workspace.with_name(own.name) and own.workspace.parent == storage.volumes_dir(sp)
    assert (own.pool, own.size, own.mount_path, own.shared) == (vol.pool, vol.size, vol.mount_path, vol.shared)
    assert storage.owner_of(own.workspace) is None
    assert storage._unclaimed(sp, vol) == own  # stable: the next spawn finds the same name
    made(own.workspace, own.name, server="x", owner="x")  # ensure made it for x
    assert storage._unclaimed(sp, vol) == own
    # Another server of the same user with the same trouble gets another name
    other = at(tmp_path, server="z", storage_name_template=PER_SERVER)
    other_vol = storage.volume_for(other)
    made(other_vol.workspace, other_vol.name, owner="q")
    assert storage._unclaimed(other, other_vol).name not in (own.name, vol.name)
    # This server's own volume under the template's name is simply its own
    storage.set_owner(vol.workspace, "alice", "x", False)
    assert storage._unclaimed(sp, vol) == vol


def test_a_name_of_its_own_skips_names_other_servers_took_and_stays_within_lxds_limit(tmp_path):
    user = "a" * 80  # the template's name is already cut to 63 with a hash
    sp = at(tmp_path, user=user, server="x", storage_name_template=PER_SERVER)
    vol = storage.volume_for(sp)
    assert len(vol.name) == 63
    made(vol.workspace, vol.name, owner="y")
    first = storage._unclaimed(sp, vol)
    assert len(first.name) <= 63 and re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", first.name)
    made(first.workspace, first.name, owner="w")  # taken by yet another server
    second = storage._unclaimed(sp, vol)
    assert second.name not in (vol.name, first.name) and len(second.name) <= 63
    assert storage.owner_of(second.workspace) is None and storage._unclaimed(sp, vol) == second
    # Cut to the same head, two servers of the user still get different names of their own
    # (two spawns at once never pick the same unmade one)
    other = at(tmp_path, user=user, server="z", storage_name_template=PER_SERVER)
    other_vol = storage.volume_for(other)
    assert other_vol.name[:54] == vol.name[:54] and other_vol.name != vol.name
    made(other_vol.workspace, other_vol.name, owner="y2")
    assert storage._unclaimed(other, other_vol).name not in (vol.name, first.name, second.name)


def test_a_shared_volume_is_always_the_users_own(tmp_path):
    sp = at(tmp_path, server="gpu")
    vol = storage.volume_for(sp)
    made(vol.workspace, vol.name, owner="")
    assert storage._unclaimed(sp, vol) == vol
    # whatever server its workspace was made for: all of the user's servers mount it
    storage.set_owner(vol.workspace, "alice", "x", False)
    assert storage._unclaimed(sp, vol) == vol


@pytest.mark.parametrize("server,template", [("", "home-{username}"), ("x", PER_SERVER)],
                         ids=["shared", "per-server"])
def test_a_volume_an_earlier_release_named_is_kept_when_it_is_this_servers(tmp_path, server, template):
    sp = at(tmp_path, user="jean-luc", server=server, storage_name_template=template)
    vol = storage.volume_for(sp)
    legacy = naming.legacy_instance_name(template.replace("{servername}", "") if not server else template,
                                         "jean-luc", server)
    assert legacy != vol.name and legacy in ("home-jean-luc", "home-jean-luc-x")
    old = made(vol.workspace.with_name(legacy), legacy, server=server)
    found = storage._unclaimed(sp, vol)
    assert (found.name, found.workspace) == (legacy, old) and found.mount_path == vol.mount_path
    # Once the new name's workspace exists, it is the one
    made(vol.workspace, vol.name, server=server)
    assert storage._unclaimed(sp, vol) == vol


@pytest.mark.parametrize("server,template", [("", "home-{username}"), ("x", PER_SERVER)],
                         ids=["shared", "per-server"])
def test_a_volume_an_earlier_release_named_for_another_server_is_not_taken(tmp_path, server, template):
    sp = at(tmp_path, user="jean-luc", server=server, storage_name_template=template)
    vol = storage.volume_for(sp)
    legacy = "home-jean-luc" if not server else "home-jean-luc-x"
    made(vol.workspace.with_name(legacy), legacy, owner="other")
    assert storage._unclaimed(sp, vol) == vol
    # an earlier release's workspace that never got as far as its inputs is not a volume either
    sp2 = at(tmp_path / "2", user="jean-luc", server=server, storage_name_template=template)
    vol2 = storage.volume_for(sp2)
    vol2.workspace.with_name(legacy).mkdir(parents=True)
    storage.set_owner(vol2.workspace.with_name(legacy), "jean-luc", server, not server)
    assert storage._unclaimed(sp2, vol2) == vol2


# -- who still has a volume attached ---------------------------------------------------------------

def _server(sp, server, record):
    ws = workspace_path(os.path.abspath(sp.state_dir), sp.user.name, server)
    write_record(ws, record)
    return ws


def _running(instance, volume):
    return ServerState().creating(instance, "/ws", "img", False, volume=volume).running(
        "", "http://h:1", "127.0.0.1", 20001, keep_on_stop=False)


def test_holders_are_the_users_other_servers_whose_record_mounts_the_volume(tmp_path):
    sp = at(tmp_path, server="", storage_name_template=PER_SERVER)
    vol = storage.volume_for(sp)
    made(vol.workspace, vol.name, owner="", shared=False)
    assert storage.holders(sp, vol) == []
    mine = str(vol.workspace)
    _server(sp, "", _running("jupyter-alice", mine))  # the spawner's own workspace
    assert storage.holders(sp, vol) == []
    _server(sp, "gpu", _running("jupyter-alice-gpu", mine))
    _server(sp, "kept", _running("jupyter-alice-kept", mine).kept())
    _server(sp, "broken", ServerState(workspace="/ws", volume=mine).creating("", "/ws", "img", False).failed("x"))
    _server(sp, "gone", _running("jupyter-alice-gone", mine).gone())  # destroyed: holds nothing
    _server(sp, "elsewhere", _running("jupyter-alice-elsewhere", mine + "-2"))  # another volume
    _server(sp, "novolume", _running("jupyter-alice-novolume", ""))  # per-server: not this one's
    _server(sp, "old.deleted-20261201T000000Z", _running("jupyter-alice-old", mine))  # archived
    write_record(storage.volumes_dir(sp), _running("in-volumes", mine))  # _volumes is no server
    (storage.volumes_dir(sp).parent / "stray-file").write_text("x")
    (storage.volumes_dir(sp).parent / "legacy").mkdir()  # a workspace without a record
    # by workspace name; a record without an instance name is named by its workspace
    assert storage.holders(sp, vol) == ["broken", "jupyter-alice-gpu", "jupyter-alice-kept"]


def test_a_shared_volume_is_held_by_servers_whose_record_names_no_volume(tmp_path):
    sp = at(tmp_path, server="")
    vol = storage.volume_for(sp)
    assert vol.shared
    _server(sp, "gpu", _running("jupyter-alice-gpu", ""))  # started before records named volumes
    _server(sp, "cpu", _running("jupyter-alice-cpu", str(vol.workspace)))
    _server(sp, "other", _running("jupyter-alice-other", "/elsewhere/_volumes/x"))
    assert storage.holders(sp, vol) == ["jupyter-alice-cpu", "jupyter-alice-gpu"]
    named = at(tmp_path, server="cpu")  # asked by a named server: it is not its own holder
    assert storage.holders(named, vol) == ["jupyter-alice-gpu"]
    assert storage.holders(at(tmp_path, user="bob"), storage.volume_for(at(tmp_path, user="bob"))) == []


def test_a_deferred_deletion_is_marked_in_the_volume_workspace(tmp_path):
    vol = storage.volume_for(at(tmp_path))
    assert not storage.delete_pending(vol)  # no workspace at all
    made(vol.workspace, vol.name)
    assert not storage.delete_pending(vol)
    (vol.workspace / storage.PENDING_DELETE).write_text('{"user": "alice", "waiting_for": ["jupyter-alice-gpu"]}\n')
    assert storage.delete_pending(vol)
