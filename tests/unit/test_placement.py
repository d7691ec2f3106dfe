from collections import Counter

import pytest

from tf_lxd_spawner.lifecycle.placement import (
    NoMemberAvailable,
    Reservations,
    least_loaded,
)
from tf_lxd_spawner.systems.lxd import Member

M = [Member("m1", "Online", "127.0.0.11"), Member("m2", "Online", "127.0.0.12"), Member("m3", "Online", "127.0.0.13")]


def spread(n, weights=None, members=M):
    load = Counter()
    for _ in range(n):
        load[least_loaded(members, load, weights)] += 1
    return load


def test_equal_members_spread_evenly():
    assert spread(6) == {"m1": 2, "m2": 2, "m3": 2}


def test_weights_two_one_one():
    assert spread(12, {"m1": 2}) == {"m1": 6, "m2": 3, "m3": 3}


def test_offline_evacuated_and_excluded_members_get_nothing():
    members = [Member("m1", "Evacuated", ""), Member("m2", "Offline", ""), Member("m3", "Online", ""),
               Member("m4", "Online", "")]
    assert least_loaded(members, {}, exclude=["m4"]) == "m3"
    with pytest.raises(NoMemberAvailable):
        least_loaded(members[:2], {})


def test_zero_weight_takes_nothing():
    assert spread(4, {"m1": 0}) == {"m2": 2, "m3": 2}


def test_tie_break_is_deterministic():
    assert least_loaded(list(reversed(M)), {}) == "m1"


def test_reservations_count_until_released():
    r = Reservations()
    with r.hold("m1"):
        with r.hold("m1"):
            assert r.snapshot() == {"m1": 2}
        assert r.snapshot() == {"m1": 1}
    assert r.snapshot() == {}
