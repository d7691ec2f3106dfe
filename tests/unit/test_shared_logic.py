"""Shared folders: which shared volumes a user's groups give, and how; bad
shared_volumes entries refused with a message naming the entry."""

import pytest

from tf_lxd_spawner.homes.shared import SharedConfigError, access, access_changes, parse

COURSE = [{"name": "data8", "size": "5GiB", "path": "/srv/data8", "write_groups": ["data8-staff"],
           "read_groups": ["data8-students"]},
          {"name": "team-a", "size": "1GiB", "path": "team-a", "write_groups": ["team-a"]}]


def test_writers_win_readers_read_others_see_nothing():
    vols = parse(COURSE)
    assert access(vols, ["data8-staff"]) == {"data8": False}
    assert access(vols, ["data8-students"]) == {"data8": True}
    assert access(vols, ["data8-students", "data8-staff", "team-a"]) == {"data8": False, "team-a": False}
    assert access(vols, ["other"]) == {}


def test_changes_of_membership_are_named():
    assert access_changes({"data8": True}, {"data8": False, "team-a": False}) == {
        "data8": "now rw", "team-a": "granted rw"}
    assert access_changes({"data8": False}, {}) == {"data8": "revoked"}
    assert access_changes({"data8": True}, {"data8": True}) == {}


@pytest.mark.parametrize("entry, message", [
    ({"name": "Data8", "size": "1GiB", "path": "/x", "read_groups": ["g"]}, "lower-case"),
    ({"name": "d", "size": 5, "path": "/x", "read_groups": ["g"]}, "size must be a size"),
    ({"name": "d", "size": "1GiB", "path": "/", "read_groups": ["g"]}, "must name a directory"),
    ({"name": "d", "size": "1GiB", "path": "a/../b", "read_groups": ["g"]}, "without '..'"),
    ({"name": "d", "size": "1GiB", "path": "/x"}, "nobody would get it"),
    ({"name": "d", "size": "1GiB", "path": "/x", "read_groups": "g"}, "list of JupyterHub group names"),
    ({"name": "d", "size": "1GiB", "path": "/x", "read_groups": ["g"], "gid": 0}, "gid must be"),
    ({"name": "d", "size": "1GiB", "path": "/x", "read_groups": ["g"], "mode": "ro"}, "unknown keys"),
])
def test_bad_entries_are_refused_naming_them(entry, message):
    with pytest.raises(SharedConfigError, match=message):
        parse([entry])


def test_names_and_paths_are_unique():
    with pytest.raises(SharedConfigError, match="name 'data8' is given twice"):
        parse([COURSE[0], {**COURSE[0], "path": "/elsewhere"}])
    with pytest.raises(SharedConfigError, match="path '/srv/data8' is given twice"):
        parse([COURSE[0], {**COURSE[0], "name": "other"}])


def test_no_size_is_no_quota():
    assert parse([{"name": "d", "path": "/x", "read_groups": ["g"]}])[0].size == ""


def _spawner(groups, volumes=COURSE):
    from types import SimpleNamespace
    return SimpleNamespace(shared_volumes=volumes, storage_pool="default", state_dir="/srv/state",
                           user=SimpleNamespace(name="u", groups=[SimpleNamespace(name=g) for g in groups]))


def test_mounts_devices_and_account_follow_the_groups():
    from tf_lxd_spawner.homes import shared_folders

    mounts = shared_folders.mounts_for(_spawner(["data8-students", "team-a"]), "/home/u")
    assert [(m.folder.name, m.readonly, m.volume.mount_path, str(m.volume.workspace)) for m in mounts] == [
        ("data8", True, "/srv/data8", "/srv/state/_shared/data8"),
        ("team-a", False, "/home/u/team-a", "/srv/state/_shared/team-a")]
    assert shared_folders.devices(mounts) == [
        {"name": "tf-lxd-shared-data8", "pool": "default", "source": "shared-data8", "path": "/srv/data8",
         "readonly": True},
        {"name": "tf-lxd-shared-team-a", "pool": "default", "source": "shared-team-a", "path": "/home/u/team-a",
         "readonly": False}]
    # The account joins every folder's group; only the folders it writes are made setgid.
    assert shared_folders.account(mounts) == {"groups": [1000], "group_dirs": [{"path": "/home/u/team-a",
                                                                                "gid": 1000}]}
    assert shared_folders.mounts_for(_spawner([]), "/home/u") == [] and shared_folders.account([]) == {}


def test_last_access_is_read_back_from_the_saved_inputs():
    from tf_lxd_spawner.homes import shared_folders

    saved = {"volumes": [{"name": "tf-lxd-home"}, {"name": "tf-lxd-shared-data8", "readonly": True},
                         {"name": "tf-lxd-shared-team-a", "readonly": False}]}
    assert shared_folders.access_before(saved) == {"data8": True, "team-a": False}
    assert shared_folders.access_before({}) == {}


def test_a_folder_at_the_home_itself_is_refused():
    from tf_lxd_spawner.errors import SpawnError
    from tf_lxd_spawner.homes import shared_folders

    with pytest.raises(SpawnError, match="is the home itself"):
        shared_folders.mounts_for(_spawner(["g"], [{"name": "h", "path": "/home/u/", "read_groups": ["g"]}]),
                                  "/home/u")
