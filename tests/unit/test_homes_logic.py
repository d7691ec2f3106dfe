"""Pure parts of home handling: repointing a volume's state, grown quotas, snapshot config,
retained names and purge times, restore paths, plan events, the culler check, and the pool's
snapshot directories."""

import copy
import datetime as dt
import json
import re
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from tf_lxd_spawner.errors import SpawnError
from tf_lxd_spawner.homes import operations, retention, snapshots, storage
from tf_lxd_spawner.operator import doctor
from tf_lxd_spawner.systems.lxd import VolumeInfo
from tf_lxd_spawner.systems.terraform import planned_creations, planned_replacements

LXD_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
UTC = dt.timezone.utc


# --- storage.repoint_state -------------------------------------------------------------------

CONTAINER = {"mode": "managed", "type": "lxd_container", "name": "server",
             "instances": [{"attributes": {"name": "jupyter-alice", "target": "m1", "id": "jupyter-alice"}}]}


def volume_state():
    return {
        "version": 4,
        "resources": [
            {"mode": "managed", "type": "lxd_volume", "name": "home", "module": "module.storage",
             "instances": [{"attributes": {"name": "home-a", "pool": "default", "type": "custom", "target": "m1",
                                           "id": "default/home-a/custom",
                                           "config": {"snapshots.schedule": "@daily"}}}]},
            copy.deepcopy(CONTAINER),
        ],
        "outputs": {"name": {"value": "home-a"}, "location": {"value": "m1"}, "pool": {"value": "default"}},
    }


def _volume_attrs(state):
    return next(r for r in state["resources"] if r["type"] == "lxd_volume")["instances"][0]["attributes"]


def test_renaming_repoints_the_volumes_name_id_and_name_output():
    state = volume_state()
    storage.repoint_state(state, {"name": "home-a-del-1234abcd"})
    attrs = _volume_attrs(state)
    assert attrs["name"] == "home-a-del-1234abcd"
    assert attrs["id"] == "default/home-a-del-1234abcd/custom"
    assert attrs["target"] == "m1" and attrs["config"] == {"snapshots.schedule": "@daily"}
    assert state["outputs"]["name"]["value"] == "home-a-del-1234abcd"
    assert state["outputs"]["location"]["value"] == "m1" and state["outputs"]["pool"]["value"] == "default"


def test_moving_repoints_the_target_and_location_output_but_not_the_name():
    state = volume_state()
    storage.repoint_state(state, {"target": "m2"})
    attrs = _volume_attrs(state)
    assert attrs["target"] == "m2" and attrs["name"] == "home-a" and attrs["id"] == "default/home-a/custom"
    assert state["outputs"]["location"]["value"] == "m2" and state["outputs"]["name"]["value"] == "home-a"


def test_no_target_gives_location_none():
    state = volume_state()
    storage.repoint_state(state, {"target": None})
    assert _volume_attrs(state)["target"] is None
    assert state["outputs"]["location"]["value"] == "none"


def test_repointing_leaves_the_container_resource_alone():
    state = volume_state()
    storage.repoint_state(state, {"name": "home-b", "target": "m3"})
    assert state["resources"][1] == CONTAINER


def test_repointing_a_state_without_outputs_still_updates_the_resource():
    """An older workspace's state (no outputs yet) must not make a rename fail."""
    state = volume_state()
    del state["outputs"]
    storage.repoint_state(state, {"name": "home-c"})
    assert _volume_attrs(state)["id"] == "default/home-c/custom" and "outputs" not in state


# --- storage.with_grown_quota ----------------------------------------------------------------

def _vol(tmp_path, size, grown=None, raw=None):
    ws = tmp_path / "home-a"
    ws.mkdir()
    if grown is not None:
        (ws / storage.GROWN_FILE).write_text(json.dumps({"size": grown}), encoding="utf-8")
    if raw is not None:
        (ws / storage.GROWN_FILE).write_text(raw, encoding="utf-8")
    return storage.Volume("home-a", "default", size, "/home/alice", ws, True)


def test_grown_quota_larger_than_the_configured_one_wins(tmp_path):
    vol = _vol(tmp_path, "200MiB", grown="300MiB")
    grown = storage.with_grown_quota(vol)
    assert grown.size == "300MiB"
    assert (grown.name, grown.pool, grown.workspace) == (vol.name, vol.pool, vol.workspace)


def test_configured_quota_larger_than_the_grown_one_stays(tmp_path):
    assert storage.with_grown_quota(_vol(tmp_path, "1GiB", grown="300MiB")).size == "1GiB"


@pytest.mark.parametrize("raw", [None, "{not json", '["300MiB"]', '{"other": 1}', '{"size": "a lot"}'])
def test_missing_or_bad_grown_quota_leaves_the_volume_as_it_is(tmp_path, raw):
    vol = _vol(tmp_path, "200MiB", raw=raw)
    assert storage.with_grown_quota(vol) == vol


def test_no_quota_is_not_turned_into_the_grown_one(tmp_path):
    """Empty storage_capacity means no quota at all: a left-over quota.json must not impose one."""
    assert storage.with_grown_quota(_vol(tmp_path, "", grown="300MiB")).size == ""


# --- storage.volume_config -------------------------------------------------------------------

def _snap_spawner(schedule="@daily", expiry="2w", pattern="snap-{{ creation_date }}", config=None):
    return SimpleNamespace(storage_snapshot_schedule=schedule, storage_snapshot_expiry=expiry,
                           storage_snapshot_pattern=pattern, storage_config=config)


def test_snapshot_settings_become_lxd_snapshot_keys():
    assert storage.volume_config(_snap_spawner()) == {
        "snapshots.schedule": "@daily", "snapshots.expiry": "2w", "snapshots.pattern": "snap-{{ creation_date }}"}


def test_storage_config_overrides_the_snapshot_settings():
    config = storage.volume_config(_snap_spawner(config={"snapshots.expiry": "30d", "zfs.delegate": "true"}))
    assert config["snapshots.expiry"] == "30d" and config["zfs.delegate"] == "true"
    assert config["snapshots.schedule"] == "@daily"


def test_empty_settings_are_dropped():
    config = storage.volume_config(_snap_spawner(schedule="", expiry="", config={"snapshots.pattern": ""}))
    assert config == {}


def test_config_values_become_strings():
    config = storage.volume_config(_snap_spawner(config={"security.shifted": True, "size.limit": 5}))
    assert config["security.shifted"] == "True" and config["size.limit"] == "5"
    assert all(isinstance(v, str) for v in config.values())


# --- retention.retained_name -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["home-a", "home-" + "x" * 58, "a" * 50 + "-" + "b" * 12,
                                  "a" * 49 + "-" + "b" * 13])
def test_retained_names_are_valid_lxd_names_that_start_with_the_old_one(name):
    new = retention.retained_name(name)
    assert LXD_NAME.match(new), new
    assert len(new) <= 63
    assert new.startswith(name[:50].rstrip("-")) and "-del-" in new


def test_retained_name_keeps_a_short_name_whole():
    assert retention.retained_name("home-a").startswith("home-a-del-")


def test_a_cut_at_a_hyphen_does_not_leave_a_double_hyphen():
    """The cut of a 63-character name lands on its hyphen: no "--del-"."""
    new = retention.retained_name("a" * 49 + "-" + "b" * 13)
    assert new.startswith("a" * 49 + "-del-")


def test_retained_names_differ_each_time():
    """Two deletions of a same-named user's home must not collide."""
    assert len({retention.retained_name("home-a") for _ in range(20)}) == 20


# --- retention._due --------------------------------------------------------------------------

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _info(purge_after=None):
    config = {retention.DELETED_KEY: "2025-05-01T12:00:00+00:00"}
    if purge_after is not None:
        config[retention.PURGE_KEY] = purge_after
    return VolumeInfo("home-a-del-1234abcd", "default", "", config)


def test_a_volume_past_its_purge_time_is_due():
    assert retention._due(_info((NOW - dt.timedelta(seconds=1)).isoformat()), NOW)
    assert retention._due(_info(NOW.isoformat()), NOW)


def test_a_volume_before_its_purge_time_is_not_due():
    assert not retention._due(_info((NOW + dt.timedelta(days=1)).isoformat()), NOW)


def test_a_purge_time_in_another_offset_is_compared_as_a_moment():
    """13:30+02:00 is 11:30 UTC: already due at 12:00 UTC."""
    assert retention._due(_info("2025-06-01T13:30:00+02:00"), NOW)


@pytest.mark.parametrize("value", [None, "", "soon", "2025-13-45T00:00:00+00:00"])
def test_a_missing_or_garbage_purge_time_is_never_due(value):
    assert not retention._due(_info(value), NOW)


# --- operations._relative -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["work/nb.ipynb", "/work/nb.ipynb", "work/nb.ipynb/", "//work/nb.ipynb"])
def test_restore_paths_are_relative_to_the_home(path):
    assert operations._relative(path) == "work/nb.ipynb"


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b", "work/..", ".", "", "/", "./"])
def test_paths_outside_the_home_or_the_whole_home_are_refused(path):
    with pytest.raises(SpawnError, match="is not a path inside the home"):
        operations._relative(path)


# --- terraform.planned_creations / planned_replacements ---------------------------------------

ADDR = "module.storage.lxd_volume.home"


def _change(action, resource_type="lxd_volume", addr=ADDR, reason=None, type_="planned_change"):
    change = {"action": action, "resource": {"addr": addr, "resource_type": resource_type}}
    if reason:
        change["reason"] = reason
    return {"type": type_, "change": change}


def test_a_create_is_a_creation_not_a_replacement():
    events = [_change("create")]
    assert planned_creations(events, "lxd_volume") == [ADDR]
    assert planned_replacements(events, "lxd_volume") == []


def test_a_replace_is_a_replacement_with_its_reason_not_a_creation():
    events = [_change("replace", reason="cannot_update")]
    assert planned_replacements(events, "lxd_volume") == [f"{ADDR} (cannot_update)"]
    assert planned_creations(events, "lxd_volume") == []


def test_a_delete_is_a_replacement():
    assert planned_replacements([_change("delete")], "lxd_volume") == [ADDR]


def test_other_resource_types_and_events_are_ignored():
    events = [
        _change("create", resource_type="lxd_container", addr="lxd_container.server"),
        _change("replace", resource_type="lxd_container", addr="lxd_container.server", reason="cannot_update"),
        _change("create", type_="apply_start"),
        _change("replace", type_="resource_drift"),
        _change("update"), _change("noop"),
        {"type": "version", "terraform": "1.9.0"},
        {"type": "planned_change"},
    ]
    assert planned_creations(events, "lxd_volume") == []
    assert planned_replacements(events, "lxd_volume") == []


# --- doctor.culler_deletes_users -------------------------------------------------------------

def _hub(*services):
    c = Config()
    c.JupyterHub.services = list(services)
    return c


CULLER = [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"]


@pytest.mark.parametrize("flag", [["--cull-users"], ["--cull-users=true"], ["--cull-users=True"],
                                  ["--cull-users", "true"], ["--IdleCuller.cull_users=True"],
                                  ["--cull-users", "--timeout=60"]])
def test_a_culler_with_cull_users_deletes_users(flag):
    assert doctor.culler_deletes_users(_hub({"name": "idle-culler", "command": CULLER + flag}))


def test_one_such_service_among_others_is_found():
    config = _hub({"name": "other", "command": ["/usr/bin/true"]}, {"name": "nocmd", "url": "http://x"},
                  {"name": "idle-culler", "command": CULLER + ["--cull-users"]})
    assert doctor.culler_deletes_users(config)


@pytest.mark.parametrize("command", [CULLER, CULLER + ["--cull-users=false"], CULLER + ["--cull-users=False"],
                                     CULLER + ["--cull-users=0"], CULLER + ["--cull-users", "false"],
                                     CULLER + ["--IdleCuller.cull_users=False"],
                                     None, []])
def test_a_culler_that_keeps_users_is_not_flagged(command):
    service = {"name": "idle-culler"} if command is None else {"name": "idle-culler", "command": command}
    assert not doctor.culler_deletes_users(_hub(service))


def test_no_services_means_no_user_deletion():
    assert not doctor.culler_deletes_users(Config())
    assert not doctor.culler_deletes_users(_hub())


# --- snapshots: directories ------------------------------------------------------------------

def test_the_default_pool_dir_is_under_the_daemons_directory():
    assert snapshots.pool_dir("", "/var/lib/lxd", "default") == Path("/var/lib/lxd/storage-pools/default")


def test_a_pool_dir_template_is_formatted_with_the_pool():
    assert snapshots.pool_dir("/mnt/pools/{pool}", "/var/lib/lxd", "fast") == Path("/mnt/pools/fast")


def test_a_volumes_snapshot_and_live_directories():
    pool = Path("/var/lib/lxd/storage-pools/default")
    assert snapshots.host_dir(pool, "home-a") == pool / "custom-snapshots" / "default_home-a"
    assert snapshots.volume_dir(pool, "home-a") == pool / "custom" / "default_home-a"


def test_make_browsable_without_the_pool_dir_makes_nothing(tmp_path):
    path = snapshots.host_dir(tmp_path / "absent", "home-a")
    assert snapshots.make_browsable(path) is False
    assert not (tmp_path / "absent").exists()


def test_make_browsable_makes_the_volumes_directory_listable(tmp_path):
    pool = tmp_path / "default"
    (pool / "custom-snapshots").mkdir(parents=True, mode=0o700)
    path = snapshots.host_dir(pool, "home-a")
    assert snapshots.make_browsable(path) is True
    assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o755


def test_make_browsable_opens_an_existing_private_directory(tmp_path):
    """The daemon makes it 0700 (root's): the user's server could not list its snapshots."""
    pool = tmp_path / "default"
    path = snapshots.host_dir(pool, "home-a")
    path.mkdir(parents=True)
    (path / "snap0").mkdir()
    path.chmod(0o700)
    assert snapshots.make_browsable(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 and (path / "snap0").is_dir()


def test_make_browsable_without_custom_snapshots_is_false(tmp_path):
    pool = tmp_path / "default"
    pool.mkdir()
    path = snapshots.host_dir(pool, "home-a")
    assert snapshots.make_browsable(path) is False
    assert not (pool / "custom-snapshots").exists()


def test_a_purge_time_without_a_zone_is_read_as_utc_not_an_error():
    """An operator's hand-set date without a zone must not stop every purge (TypeError)."""
    assert retention._due(_info((NOW - dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()), NOW)
    assert not retention._due(_info((NOW + dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()), NOW)


def test_a_pools_listing_of_snapshots_is_not_taken_for_volumes():
    """The daemons list each custom volume's snapshots among the pool's volumes (<volume>/<snapshot>):
    a retained home's snapshot must never be purged, reported or followed as a volume of its own."""
    from tf_lxd_spawner.systems import lxd

    assert lxd._is_custom_volume({"type": "custom", "name": "home-a"})
    assert not lxd._is_custom_volume({"type": "custom", "name": "home-a/before-delete-2026-12-07_11-56-49"})
    assert not lxd._is_custom_volume({"type": "container", "name": "jupyter-a"})
