"""Pure parts of the home volume: sizes, which volume a server mounts, and the storage root."""

from types import SimpleNamespace

import pytest

from tf_lxd_spawner import storage
from tf_lxd_spawner.errors import SpawnError
from tf_lxd_spawner.naming import posix_username


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
    from tf_lxd_spawner.lxd import not_ours

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
