"""The port allocator: a wildcard listen address clashes with every address on the same port."""

import pytest

from tf_lxd_spawner.systems.ports import NoFreePort, PortAllocator, is_wildcard

MEMBER = "10.20.0.5"  # not this host's: nothing is test-bound


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "[::]", "0:0:0:0:0:0:0:0"])
def test_wildcards(address):
    assert is_wildcard(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", MEMBER, "m1.example"])
def test_specific_addresses(address):
    assert not is_wildcard(address)


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_a_wildcard_port_is_taken_on_every_address(wildcard):
    p = PortAllocator()
    assert p.allocate(wildcard, 20000, 20000) == 20000
    for address in (MEMBER, "10.20.0.6", "0.0.0.0", "::"):
        with pytest.raises(NoFreePort):
            p.allocate(address, 20000, 20000)
    assert p.reuse_or_allocate(MEMBER, 20000, 20000, 20001) == 20001  # the kept port clashes: a new one


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", ""])
def test_a_specific_address_takes_its_port_from_the_wildcard(wildcard):
    p = PortAllocator()
    assert p.allocate(MEMBER, 20000, 20000) == 20000
    with pytest.raises(NoFreePort):
        p.allocate(wildcard, 20000, 20000)
    assert p.reuse_or_allocate(wildcard, 20000, 20000, 20001) == 20001
    assert p.allocate("10.20.0.6", 20000, 20000) == 20000  # another member's address: no clash


def test_claimed_ports_clash_in_both_directions():
    p = PortAllocator()
    assert p.claim("0.0.0.0", 20000)
    assert not p.claim(MEMBER, 20000)  # found running all the same: held, reported as a clash
    assert p.claim(MEMBER, 20001)
    assert not p.claim("::", 20001)
    with pytest.raises(NoFreePort):
        p.allocate("10.20.0.6", 20000, 20001)


def test_release_gives_back_only_what_was_claimed():
    p = PortAllocator()
    p.claim("0.0.0.0", 20000)
    p.claim(MEMBER, 20000)
    p.release("0.0.0.0", 20000)
    assert (MEMBER, 20000) in p._taken and ("0.0.0.0", 20000) not in p._taken
    with pytest.raises(NoFreePort):
        p.allocate("0.0.0.0", 20000, 20000)  # the member's port is still held
    assert p.allocate("10.20.0.6", 20000, 20000) == 20000
    p.release(MEMBER, 20000)
    p.release("10.20.0.6", 20000)
    p.release(MEMBER, None)
    assert p._taken == set()
    assert p.allocate("0.0.0.0", 20000, 20000) == 20000


def test_the_same_address_spelled_twice_clashes():
    p = PortAllocator()
    p.claim("fd00::5", 20000)
    with pytest.raises(NoFreePort):
        p.allocate("fd00:0::5", 20000, 20000)
