"""connect.py's pure parts: where the server binds, which of LXD's addresses the hub uses, and
the connect URL from module outputs (the LXD-state path is tested in tests/e2e/test_instance_ip.py)."""

import asyncio
from types import SimpleNamespace

import pytest

from tf_lxd_spawner.lifecycle.connect import (
    connect_url,
    has_nic,
    http_url,
    pick_ipv4,
    server_bind_ip,
)
from tf_lxd_spawner.systems.lxd import Endpoint, LxdUnavailable, Member


def addr(family, address, scope="global"):
    return {"family": family, "address": address, "netmask": "24", "scope": scope}


# state.network as LXD 5.0.2 and Incus 6.0.4 report it (loopback first in the dict)
NETWORK = {
    "lo": {"addresses": [addr("inet", "127.0.0.1", "local"), addr("inet6", "::1", "local")]},
    "eth1": {"addresses": [addr("inet", "10.214.1.5")]},
    "eth0": {"addresses": [addr("inet6", "fe80::216:3eff:fe75:3def", "link"), addr("inet", "10.214.0.20")]},
}


def test_the_server_binds_loopback_behind_a_proxy_and_every_address_for_instance_ip():
    assert server_bind_ip(SimpleNamespace(connect_via="proxy")) == "127.0.0.1"
    assert server_bind_ip(SimpleNamespace(connect_via="instance-ip")) == "0.0.0.0"


def test_pick_ipv4_takes_the_first_interface_by_name_never_loopback_or_ipv6():
    assert pick_ipv4(NETWORK) == "10.214.0.20"
    assert pick_ipv4({"lo": NETWORK["lo"]}) is None
    assert pick_ipv4({"lo": NETWORK["lo"], "eth0": {"addresses": [addr("inet6", "fd00::5")]}}) is None


def test_pick_ipv4_honours_the_access_interface():
    assert pick_ipv4(NETWORK, "eth1") == "10.214.1.5"
    assert pick_ipv4(NETWORK, "eth7") is None  # that interface has no address (yet): wait, do not guess


def test_pick_ipv4_skips_link_local_ipv4_and_interfaces_without_addresses():
    network = {"eth0": {"addresses": [addr("inet", "169.254.3.4", "link")]}, "eth1": {"addresses": None},
               "eth2": {"addresses": [addr("inet", "192.0.2.9")]}}
    assert pick_ipv4(network) == "192.0.2.9"
    assert pick_ipv4({}) is None


def test_http_url_brackets_ipv6():
    assert http_url("10.214.0.20", 8888) == "http://10.214.0.20:8888"
    assert http_url("fd00::5", 8888) == "http://[fd00::5]:8888"


def spawner(connect_via, **kw):
    return SimpleNamespace(connect_via=connect_via, server_port=8888, remote_endpoint=False, lxd_endpoint="",
                           endpoint=Endpoint(url="/nonexistent/tf-lxd-test/unix.socket"), instance="jupyter-ann",
                           http_timeout=1, **kw)


def url(sp, outputs, members=(), target=None):
    return asyncio.run(connect_url(sp, SimpleNamespace(members=list(members), target=target), outputs))


def test_instance_ip_uses_the_module_address_when_the_module_started_the_instance():
    outputs = {"connect_address": "10.214.0.20", "connect_port": 8888, "status": "Running", "location": ""}
    assert url(spawner("instance-ip"), outputs) == "http://10.214.0.20:8888"


def test_proxy_urls_are_the_module_address_or_the_member_for_a_wildcard():
    outputs = {"connect_address": "127.0.0.1", "connect_port": 20001, "status": "Running", "location": ""}
    assert url(spawner("proxy"), outputs) == "http://127.0.0.1:20001"
    members = [Member("m1", "Online", "127.0.0.11"), Member("m2", "Online", "127.0.0.12")]
    wildcard = {**outputs, "connect_address": "0.0.0.0", "location": "m2"}
    assert url(spawner("proxy"), wildcard, members) == "http://127.0.0.12:20001"


@pytest.mark.parametrize("status", ["Stopped", None])
def test_instance_ip_never_trusts_an_address_read_while_the_instance_was_stopped(status):
    """Created stopped (Incus) or a kept instance resumed: the module read no (or an old)
    address, so the spawner asks LXD: here a socket that does not exist, which must show."""
    outputs = {"connect_address": "10.214.0.99", "connect_port": 8888, "status": status}
    with pytest.raises(LxdUnavailable, match="/nonexistent/tf-lxd-test/unix.socket"):
        url(spawner("instance-ip"), outputs)


ROOT = {"root": {"type": "disk", "path": "/", "pool": "default"}}
NIC = {"eth0": {"type": "nic", "nictype": "bridged", "parent": "br0"}}


def test_has_nic_from_a_profile_or_the_instance_devices():
    assert not has_nic([ROOT], {})
    assert has_nic([ROOT, NIC], {})
    assert has_nic([ROOT], {"eth0": {"type": "nic", "properties": {"nictype": "bridged", "parent": "br0"}}})


def test_a_later_device_of_the_same_name_replaces_the_nic():
    assert not has_nic([NIC, {"eth0": {"type": "none"}}], {})
    assert not has_nic([NIC], {"eth0": {"type": "disk", "properties": {}}})
    assert has_nic([{"eth0": {"type": "none"}}, NIC], {})
