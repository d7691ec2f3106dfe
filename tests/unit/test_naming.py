import random
import re
from types import SimpleNamespace

import pytest

from tf_lxd_spawner import LxdSpawner
from tf_lxd_spawner.homes import storage
from tf_lxd_spawner.systems.naming import (
    instance_name,
    legacy_instance_name,
    posix_username,
)

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


def server_instance(user: str, server: str) -> str:
    """The name LxdSpawner gives (its default template; "-{servername}" dropped for a default server)."""
    stub = SimpleNamespace(instance_name_template=LxdSpawner.instance_name_template.default_value,
                           user=SimpleNamespace(name=user), name=server)
    return LxdSpawner.instance_name(stub)


def server_volume(template: str, user: str, server: str) -> str:
    """The volume name storage.volume_for gives with `template` as storage_name_template."""
    stub = SimpleNamespace(user=SimpleNamespace(name=user), name=server, storage_name_template=template,
                           storage_mount_path="", storage_pool="default", storage_capacity="", state_dir="/srv/state",
                           account={"name": "u", "home": "/home/u"})
    return storage.volume_for(stub).name


def test_a_hyphen_in_a_name_is_not_taken_for_the_separator():
    assert server_instance("a-b", "") != server_instance("a", "b")
    assert server_instance("a-b", "c") != server_instance("a", "b-c")
    per_server = "home-{username}-{servername}"
    assert server_volume(per_server, "a-b", "c") != server_volume(per_server, "a", "b-c")
    assert legacy_instance_name("jupyter-{username}", "a-b") == legacy_instance_name(
        "jupyter-{username}-{servername}", "a", "b") == "jupyter-a-b"  # what earlier releases did


def test_a_name_like_a_hash_cannot_pose_as_a_hashed_name():
    hashed = server_instance("a-b", "")  # jupyter-a-b-<8 hex>
    tail = hashed.rsplit("-", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{8}", tail)
    assert server_instance("ab", tail) != server_instance("ab", "")
    assert server_instance(tail, "") != f"jupyter-{tail}"
    assert instance_name("x-{username}-deadbeef", "a") != "x-a-deadbeef"  # a template's own tail too


PIECES = ["a", "b", "ab", "c1", "0", "A", "é", ".", "_", "deadbeef", "0badcafe", "12345678", "x" * 40, "名"]


def generated_names(rng: random.Random, n: int) -> list[str]:
    names = ["", "a", "b", "a-b", "b-c", "a-b-c", "-", "a-", "-a", "a--b", "deadbeef", "A-B", "a.b"]
    for _ in range(n):
        parts = rng.choices(PIECES, k=rng.randint(1, 4))
        names.append("".join(p + rng.choice(["-", "-", "", ".", "--"]) for p in parts).rstrip(rng.choice(["-", ""])))
    return names


def splits(name: str, prefix: str) -> list[tuple[str, str]]:
    """Every (user, server) whose plain spelling after `prefix` would read as `name`'s rest."""
    rest = name[len(prefix):].split("-")
    return [("-".join(rest[:i]), "-".join(rest[i:])) for i in range(1, len(rest) + 1)]


@pytest.mark.parametrize("kind", ["instance", "shared volume", "per-server volume"])
def test_distinct_users_and_servers_never_share_a_name(kind):
    """Many generated pairs (hyphens, dots, upper case, hex, empty, long), and every way of
    reading each name's hyphens as user and server: no two share a name, and all are valid."""
    rng = random.Random(20261202)
    users = [u for u in generated_names(rng, 150) if u]
    servers = generated_names(rng, 40)
    if kind == "instance":
        prefix, name = "jupyter-", server_instance
    else:
        template = "home-{username}" if kind == "shared volume" else "home-{username}-{servername}"
        prefix, name = "home-", lambda u, s: server_volume(template, u, s)
    pairs = {(u, s) for u in users for s in rng.sample(servers, 10)} | {(u, "") for u in users}
    pairs |= {("a" * 70, "b"), ("a" * 70, "c"), ("b", "s" * 70), ("a-b", "c" * 60)}
    for u, s in list(pairs):
        pairs.update(p for p in splits(name(u, s), prefix) if p[0])
    seen: dict[str, tuple[str, str]] = {}
    for u, s in sorted(pairs):
        key = (u, "") if kind == "shared volume" else (u, s)  # a shared volume is the user's, by design
        got = name(u, s)
        assert LXD_NAME.match(got) and len(got) <= 63, (u, s, got)
        assert seen.setdefault(got, key) == key, f"{key} and {seen[got]} both get {got}"
    assert len(seen) > (300 if kind == "shared volume" else 1000)


@pytest.mark.parametrize("user,server", [("alice", ""), ("alice", "gpu"), ("bob2", "3"), ("x1", "y2z")])
def test_plain_names_keep_their_spelling(user, server):
    expected = f"jupyter-{user}-{server}" if server else f"jupyter-{user}"
    assert server_instance(user, server) == expected
    assert server_volume("home-{username}", user, server) == f"home-{user}"
    if server:
        assert server_volume("home-{username}-{servername}", user, server) == f"home-{user}-{server}"


@pytest.mark.parametrize("user", NASTY)
def test_names_hashed_before_keep_their_spelling(user):
    for template, server in [("jupyter-{username}", ""), ("jupyter-{username}-{servername}", "My Server!")]:
        if legacy_instance_name(template, user, server) != template.format(username=user, servername=server):
            assert instance_name(template, user, server) == legacy_instance_name(template, user, server)


def test_only_ambiguous_names_change_and_the_legacy_name_stays_available():
    assert legacy_instance_name("jupyter-{username}", "jean-luc") == "jupyter-jean-luc"
    assert re.fullmatch(r"jupyter-jean-luc-[0-9a-f]{8}", instance_name("jupyter-{username}", "jean-luc"))
    assert legacy_instance_name("jupyter-{username}", "alice") == instance_name("jupyter-{username}", "alice")


def test_names_are_stable():
    assert instance_name("jupyter-{username}", "zoë") == instance_name("jupyter-{username}", "zoë")


@pytest.mark.parametrize("user", NASTY)
def test_posix_usernames(user):
    name = posix_username(user or "x")
    assert re.match(r"^[a-z_][a-z0-9_-]{0,31}$", name), name


def test_posix_usernames_kept_when_valid_and_distinct_otherwise():
    assert posix_username("alice") == "alice"
    assert posix_username("Alice") != posix_username("alice")
