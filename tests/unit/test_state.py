"""The server record: transitions, what a saved state from before records means, and the copy
in the workspace."""

import dataclasses

from tf_lxd_spawner.lifecycle.record import (
    FORMAT,
    RECORD_FILE,
    Phase,
    ServerState,
    legacy_record,
    read_record,
    write_record,
)


def test_a_kept_instance_is_resumable_and_stays_so_through_a_failure():
    made = ServerState().creating("jupyter-a", "/ws", "img", resuming=False)
    assert made.phase is Phase.CREATING and not made.resumable
    ran = made.running("m1", "http://h:1", "127.0.0.1", 20001, keep_on_stop=True)
    assert ran.keeps_files and ran.listen_port == 20001
    kept = ran.kept()
    assert kept.phase is Phase.KEPT and kept.resumable and kept.listen_port is None and kept.url == ""
    resuming = kept.creating("jupyter-a", "/ws", "img", resuming=True)
    assert resuming.keeps_files and resuming.resumable
    assert resuming.failed("boom").resumable  # a failed resume is still the user's container


def test_remove_true_servers_hold_no_files_and_gone_forgets_everything_but_the_workspace():
    ran = ServerState().creating("jupyter-b", "/ws", "img", False).running("", "u", "a", 1, keep_on_stop=False)
    assert not ran.keeps_files and not ran.resumable
    gone = ran.gone()
    assert gone == ServerState(workspace="/ws", since=gone.since) and not gone.exists


def test_round_trip_and_states_saved_before_records():
    rec = ServerState().creating("i", "/ws", "img", True).placed("127.0.0.1", 20002, "m2")
    assert ServerState.from_dict(rec.to_dict()) == rec
    old = ServerState.from_dict({"instance": "jupyter-c", "member": "m1", "url": "http://x", "listen_port": 20003})
    assert old.phase is Phase.RUNNING and old.listen_port == 20003 and not old.keeps_files
    assert ServerState.from_dict({}) == ServerState()
    assert ServerState.from_dict({"phase": "nonsense", "instance": "x"}).phase is Phase.NONE


def test_legacy_workspaces_are_read_from_their_terraform_state():
    assert legacy_record([], "i", "/ws", keep=True).phase is Phase.NONE
    assert legacy_record([{"type": "lxd_container"}], "i", "/ws", keep=True).resumable
    leftover = legacy_record([{"type": "lxd_container"}], "i", "/ws", keep=False)
    assert leftover.phase is Phase.CREATING and not leftover.keeps_files


def test_the_workspace_copy_is_private_and_atomic(tmp_path):
    assert read_record(tmp_path) is None
    rec = ServerState().creating("i", str(tmp_path), "img", False)
    write_record(tmp_path, rec)
    assert read_record(tmp_path) == rec
    assert (tmp_path / RECORD_FILE).stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / RECORD_FILE).write_text("{torn")
    assert read_record(tmp_path) is None


# -- format 2: settings, profile, and states written by earlier releases --------------------------

OLD = "2000-01-01T00:00:00.000Z"


def test_a_hub_state_from_before_records_keeps_files_only_when_the_configuration_says_so():
    saved = {"instance": "jupyter-c", "member": "m1", "url": "http://x", "listen_port": "20003"}
    kept = ServerState.from_dict(saved, keeps_files_before_records=True)
    assert kept.phase is Phase.RUNNING and kept.keeps_files and kept.instance == "jupyter-c"
    assert kept.listen_port == 20003  # a port saved as text is read as a number
    removed = ServerState.from_dict(saved, keeps_files_before_records=False)
    assert removed.phase is Phase.RUNNING and not removed.keeps_files
    assert not ServerState.from_dict(saved).keeps_files  # the default: remove = True
    # Nothing made yet (no instance): nothing to keep, whatever the configuration says
    empty = ServerState.from_dict({"workspace": "/ws"}, keeps_files_before_records=True)
    assert empty == ServerState(workspace="/ws") and not empty.exists and not empty.keeps_files
    # A record (it has a phase) says itself whether it holds files: the configuration is not asked
    record = {"phase": "running", "instance": "jupyter-c", "keeps_files": False}
    assert not ServerState.from_dict(record, keeps_files_before_records=True).keeps_files
    assert ServerState.from_dict({**record, "phase": "kept", "keeps_files": True}).keeps_files


def test_format_of_tells_the_release_that_wrote_a_state():
    assert ServerState.format_of(None) == 0
    assert ServerState.format_of({}) == 0
    assert ServerState.format_of({"instance": "jupyter-c", "url": "http://x"}) == 0  # before records
    assert ServerState.format_of({"phase": "kept", "instance": "i"}) == 1  # 0.1.0's record
    assert ServerState.format_of({"phase": "kept", "format": 2}) == 2
    assert ServerState.format_of({"phase": "kept", "format": "3"}) == 3
    assert ServerState.format_of(ServerState().creating("i", "/ws", "img", False).to_dict()) == FORMAT == 2


def test_to_dict_writes_format_2_and_settings_and_profile_survive_a_round_trip(tmp_path):
    settings = {"remove": False, "lxd_endpoint": "https://lxd2:8443", "limits": {"cpu": "2"}}
    rec = ServerState().creating("i", str(tmp_path), "img", False).running(
        "m1", "http://h:1", "127.0.0.1", 20001, keep_on_stop=True, settings=settings, profile="big")
    d = rec.to_dict()
    assert d["format"] == 2 and d["settings"] == settings and d["profile"] == "big" and d["phase"] == "running"
    back = ServerState.from_dict(d)
    assert back == rec and back.settings == settings and back.profile == "big"
    write_record(tmp_path, rec)
    assert read_record(tmp_path) == rec
    assert read_record(tmp_path).settings["limits"] == {"cpu": "2"}
    # A record that says it is of an older format is written back as the current one
    assert ServerState.from_dict({"phase": "kept", "instance": "i", "format": 1}).to_dict()["format"] == 2
    assert ServerState.from_dict({"phase": "kept", "instance": "i", "keeps_files": True}).to_dict()["format"] == 2


def test_records_from_0_1_0_and_nonsense_settings_read_as_no_settings():
    v010 = {"phase": "kept", "instance": "jupyter-a", "keeps_files": True, "workspace": "/ws", "volume": "/v"}
    rec = ServerState.from_dict(v010)
    assert rec.settings == {} and rec.profile == "" and rec.resumable and rec.volume == "/v"
    for bad in (None, "remove=False", ["remove"], 3):
        assert ServerState.from_dict({**v010, "settings": bad, "profile": None}).settings == {}
    assert ServerState.from_dict({**v010, "profile": None}).profile == ""


def test_running_keeps_its_own_copy_of_the_settings_and_a_stop_keeps_them():
    settings = {"remove": False}
    ran = ServerState().creating("i", "/ws", "img", False).running("", "u", "a", 1, keep_on_stop=True,
                                                                  settings=settings, profile="p")
    settings["remove"] = True  # the caller's dict changes later: the record does not
    assert ran.settings == {"remove": False}
    kept = ran.kept()
    assert kept.settings == {"remove": False} and kept.profile == "p"  # a stop after a restart needs them
    assert kept.failed("boom").settings == {"remove": False} and kept.failed("boom").profile == "p"
    again = kept.creating("i", "/ws", "img", resuming=True).running("", "u", "a", 2, keep_on_stop=True)
    assert again.settings == {} and again.profile == ""  # this start's settings, not the last one's


def test_running_keeps_the_volume_unless_it_is_given():
    creating = ServerState().creating("i", "/ws", "img", False, volume="/v/home-a")
    assert creating.volume == "/v/home-a"
    assert creating.running("", "u", "a", 1, keep_on_stop=False).volume == "/v/home-a"
    assert creating.running("", "u", "a", 1, keep_on_stop=False, volume=None).volume == "/v/home-a"
    assert creating.running("", "u", "a", 1, keep_on_stop=False, volume="/v/home-b").volume == "/v/home-b"
    assert creating.running("", "u", "a", 1, keep_on_stop=False, volume="").volume == ""  # "" is a value
    # creating without a volume keeps the one recorded before (a resumed kept instance)
    assert creating.kept().creating("i", "/ws", "img", True).volume == "/v/home-a"


def _old(rec: ServerState) -> ServerState:
    return dataclasses.replace(rec, since=OLD)


def test_moved_renamed_and_placed_stamp_the_time_and_change_only_their_fields():
    running = _old(ServerState().creating("i", "/ws", "img", True, volume="/v").running(
        "m1", "http://h:1", "127.0.0.1", 20001, keep_on_stop=True, settings={"remove": False}, profile="p"))
    moved = running.moved("m2")
    assert moved.since != OLD and moved.since.endswith("Z")
    assert moved == dataclasses.replace(running, member="m2", since=moved.since)
    renamed = running.renamed("/ws2")
    assert renamed.since != OLD and renamed.phase is Phase.RUNNING
    assert renamed == dataclasses.replace(running, workspace="/ws2", since=renamed.since)
    kept = _old(running.kept())
    assert kept.moved("m3").phase is Phase.KEPT and kept.renamed("/ws3").phase is Phase.KEPT
    assert kept.renamed("/ws3").keeps_files and kept.renamed("/ws3").volume == "/v"

    creating = _old(ServerState().creating("i", "/ws", "img", False, volume="/v").placed("", None, "m1"))
    placed = creating.placed("10.0.0.1", 20005, "m2")
    assert placed.phase is Phase.CREATING and placed.since != OLD
    assert placed == dataclasses.replace(creating, listen_address="10.0.0.1", listen_port=20005, member="m2",
                                         since=placed.since)
    assert creating.placed("10.0.0.1", 20005, "").member == "m1"  # no member named: the one known stays


def test_a_vanished_kept_instance_leaves_only_its_workspace_and_volume():
    kept = _old(ServerState().creating("i", "/ws", "img", True, volume="/v").running(
        "m1", "http://h:1", "127.0.0.1", 20001, keep_on_stop=True, settings={"remove": False}, profile="p").kept())
    assert kept.resumable
    gone = kept.gone()  # what a kept instance deleted outside the hub leaves
    assert gone == ServerState(workspace="/ws", volume="/v", since=gone.since)
    assert gone.phase is Phase.NONE and not gone.exists and not gone.resumable and not gone.keeps_files
    assert gone.instance == "" and gone.settings == {} and gone.profile == "" and gone.member == ""
    assert gone.since != OLD
