import time

import pytest

from tf_lxd_spawner.lifecycle.stages import Stages


def test_stages_add_up_and_a_failed_stage_is_still_timed():
    stages = Stages()
    with stages.timed("apply"):
        time.sleep(0.02)
    with stages.timed("apply"):  # a retried apply counts as one stage
        time.sleep(0.02)
    with pytest.raises(RuntimeError), stages.timed("server"):
        time.sleep(0.01)
        raise RuntimeError("no answer")
    record = stages.record()
    assert list(record["stages"]) == ["apply", "server"]
    assert 0.04 <= record["stages"]["apply"] < 5
    assert 0.01 <= record["stages"]["server"] < 5
    assert record["duration"] >= record["stages"]["apply"] + record["stages"]["server"] - 0.002  # rounding
