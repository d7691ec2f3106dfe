"""The server record: transitions, what a saved state from before records means, and the copy
in the workspace."""

from tf_lxd_spawner import state
from tf_lxd_spawner.state import Phase, ServerState


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
    assert state.legacy([], "i", "/ws", keep=True).phase is Phase.NONE
    assert state.legacy([{"type": "lxd_container"}], "i", "/ws", keep=True).resumable
    leftover = state.legacy([{"type": "lxd_container"}], "i", "/ws", keep=False)
    assert leftover.phase is Phase.CREATING and not leftover.keeps_files


def test_the_workspace_copy_is_private_and_atomic(tmp_path):
    assert state.read(tmp_path) is None
    rec = ServerState().creating("i", str(tmp_path), "img", False)
    state.write(tmp_path, rec)
    assert state.read(tmp_path) == rec
    assert (tmp_path / state.STATE_FILE).stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / state.STATE_FILE).write_text("{torn")
    assert state.read(tmp_path) is None
