import re

import pytest

from tf_lxd_spawner.naming import instance_name, posix_username

LXD_NAME = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")
NASTY = ["alice", "Alice", 'o"brien', "${file(\"/etc/passwd\")}", "%{ for x in y }", "a\nb",
         "zoë", "名前", "x" * 90, "-leading", "1digit", "a.b@c.d", ""]


@pytest.mark.parametrize("user", NASTY)
@pytest.mark.parametrize("server", ["", "gpu", "My Server!", "y" * 80])
def test_instance_names_are_valid_for_lxd(user, server):
    name = instance_name("jupyter-{username}-{servername}", user, server)
    assert LXD_NAME.match(name), name


def test_clean_names_stay_readable():
    assert instance_name("jupyter-{username}", "alice") == "jupyter-alice"
    assert instance_name("jupyter-{username}-{servername}", "alice", "gpu") == "jupyter-alice-gpu"


def test_names_that_clean_alike_stay_distinct():
    names = {instance_name("jupyter-{username}", u) for u in ["Alice", "alice", "a.lice", "a_lice", "zoë", "zoe"]}
    assert len(names) == 6
    long = {instance_name("jupyter-{username}", "x" * 90 + str(i)) for i in range(20)}
    assert len(long) == 20


def test_names_are_stable():
    assert instance_name("jupyter-{username}", "zoë") == instance_name("jupyter-{username}", "zoë")


@pytest.mark.parametrize("user", NASTY)
def test_posix_usernames(user):
    name = posix_username(user or "x")
    assert re.match(r"^[a-z_][a-z0-9_-]{0,31}$", name), name


def test_posix_usernames_kept_when_valid_and_distinct_otherwise():
    assert posix_username("alice") == "alice"
    assert posix_username("Alice") != posix_username("alice")
