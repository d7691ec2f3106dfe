"""The lifecycle room on its own: which action each phase of a record asks of a start and a
stop, the one rule for what is kept, and the keeper, the one writer of the record (act, then
commit the outcome: port released and kept/gone on success; failed, port held, on failure)."""

import asyncio

import pytest

from tf_lxd_spawner.lifecycle.keeper import RecordKeeper
from tf_lxd_spawner.lifecycle.record import Action, Phase, ServerState, read_record
from tf_lxd_spawner.systems.ports import ports
from tf_lxd_spawner.systems.workspace import Workspace

RUNNING = ServerState().creating("i", "/ws", "img", False).running("m1", "http://x", "127.0.0.1", 24001,
                                                                      keep_on_stop=False)
KEPT_RUNNING = ServerState().creating("i", "/ws", "img", False).running("m1", "http://x", "127.0.0.1", 24002,
                                                                           keep_on_stop=True)


@pytest.mark.parametrize("record, on_stop, on_start", [
    (ServerState(), Action.NOTHING, Action.NOTHING),
    (ServerState().creating("i", "/ws", "img", False), Action.RECOVER, Action.RECOVER),
    (RUNNING, Action.STOP, Action.RECOVER),
    (KEPT_RUNNING.kept(), Action.NOTHING, Action.NOTHING),
    (RUNNING.failed("boom"), Action.RECOVER, Action.RECOVER),
])
def test_each_phase_asks_one_action(record, on_stop, on_start):
    assert record.on_stop() is on_stop
    assert record.on_start() is on_start


def test_what_is_kept_is_decided_when_it_started():
    assert RUNNING.ended().phase is Phase.NONE
    assert KEPT_RUNNING.ended().phase is Phase.KEPT
    resuming = KEPT_RUNNING.kept().creating("i", "/ws", "img", True)
    assert resuming.ended().phase is Phase.KEPT  # a failed resume never destroys the kept instance
    assert resuming.failed("x").ended().phase is Phase.KEPT


def test_every_transition_stamps_when():
    placed = ServerState().creating("i", "/ws", "img", False)
    for after in (placed.placed("127.0.0.1", 24003, "m2"), placed.failed("x"), RUNNING.moved("m3"),
                  RUNNING.renamed("/ws2"), RUNNING.kept(), RUNNING.gone()):
        assert after.since


def test_a_failure_keeps_the_name_it_was_given():
    assert ServerState(workspace="/ws").failed("x", "jupyter-ann").instance == "jupyter-ann"
    assert RUNNING.failed("x", "other").instance == "i"


def test_the_keeper_commits_the_outcome_of_an_act(tmp_path):
    ws = Workspace(tmp_path)
    keeper = RecordKeeper()
    ports.claim("127.0.0.1", 24001)

    async def ok():
        return None

    record = asyncio.run(keeper.act_then_commit(ws, RUNNING, ok()))
    assert record.phase is Phase.NONE and keeper.record == record == read_record(tmp_path)
    assert ports.claim("127.0.0.1", 24001), "the port was not released"
    ports.release("127.0.0.1", 24001)


def test_a_failed_act_is_recorded_and_raised_with_the_port_held(tmp_path):
    ws = Workspace(tmp_path)
    keeper = RecordKeeper()
    ports.claim("127.0.0.1", 24002)

    async def broken():
        raise RuntimeError("LXD said no")

    with pytest.raises(RuntimeError, match="LXD said no"):
        asyncio.run(keeper.act_then_commit(ws, KEPT_RUNNING, broken(), failure="the start failed"))
    on_disk = read_record(tmp_path)
    assert on_disk == keeper.record and on_disk.phase is Phase.FAILED and on_disk.error == "the start failed"
    assert on_disk.listen_port == 24002 and not ports.claim("127.0.0.1", 24002), "the port was released"
    ports.release("127.0.0.1", 24002)
