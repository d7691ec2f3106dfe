import pytest

from tf_lxd_spawner.inputs import (ConfigError, check_subid_allowed, chosen_image, command_lists, limits,
                                   mounts, pushed_files)


def expand(s):
    return s.format(username="al ice;rm -rf /", servername="")


def test_limits_exact_bytes_and_fractional_cpu():
    assert limits(2 * 1024**3, 0.5, 100) == {"memory": "2147483648", "cpu.allowance": "50ms/100ms",
                                             "processes": "100"}
    assert limits(None, 2, 0) == {"cpu.allowance": "200ms/100ms"}
    assert limits(1536 * 1024**2, None) == {"memory": str(1536 * 1024**2)}  # not rounded to "MB"
    assert limits(None, 0.001) == {"cpu.allowance": "1ms/100ms"}  # never truncated to 0
    assert limits(None, None, 0, 10) == {"cpu.allowance": "10%"}  # a soft share
    assert limits(None, 0.5, 0, 10) == {"cpu.allowance": "50ms/100ms"}  # a quota wins


@pytest.mark.parametrize("mem,cpu", [(1, None), (None, -1), (None, float("inf")), (None, float("nan"))])
def test_nonsense_limits_are_refused(mem, cpu):
    with pytest.raises(ConfigError):
        limits(mem, cpu)


def test_commands_keep_names_as_single_arguments():
    cmds = command_lists(["touch '/home/{username}/x'", ["echo", "{username}"]], expand, "commands_to_prepare")
    assert cmds == [["touch", "/home/al ice;rm -rf //x"], ["echo", "al ice;rm -rf /"]]
    with pytest.raises(ConfigError, match=r"commands_to_prepare\[0\] is empty"):
        command_lists([[]], expand, "commands_to_prepare")


def test_pushed_files_pairs_and_dicts(tmp_path):
    src = tmp_path / "f"
    src.write_text("x")
    files = pushed_files([[str(src), "/etc/f"], {"target": "/etc/g", "content": "c", "mode": "0600", "uid": 5}],
                         expand)
    assert files == [{"target_path": "/etc/f", "source": str(src), "mode": "0644"},
                     {"target_path": "/etc/g", "content": "c", "mode": "0600", "uid": 5, "gid": 0}]


@pytest.mark.parametrize("entry,message", [
    (["/nonexistent/file", "/etc/x"], "does not exist on the hub host"),
    ({"target": "/x"}, "exactly one of"),
    ({"target": "/x", "content": "a", "source": "/b"}, "exactly one of"),
    ({"target": "/x", "content": "a", "mode": "rw"}, "not an octal mode"),
    ({"target": "rel", "content": "a"}, "must be absolute"),
    ({"target": "/x", "content": "a", "owner": 1}, "unknown keys"),
    ("just-a-string", "expected"),
])
def test_bad_pushed_files_are_named(entry, message):
    with pytest.raises(ConfigError, match=message):
        pushed_files([entry], expand)


def test_mounts():
    assert mounts([["home", "/srv/{servername}h", "/home/x"]], lambda s: s.format(servername="s"), True) == [
        {"name": "home", "source": "/srv/sh", "path": "/home/x", "shift": True}]
    with pytest.raises(ConfigError, match="not a valid device name"):
        mounts([["bad name", "/a", "/b"]], str, False)
    with pytest.raises(ConfigError, match="must be absolute"):
        mounts([["n", "rel", "/b"]], str, False)


def test_image_choice_is_checked_server_side():
    allowed = {"Standard": "jupyter-notebook", "GPU": "jupyter-gpu"}
    assert chosen_image(allowed, "GPU", "jupyter-notebook") == "jupyter-gpu"
    assert chosen_image(allowed, "jupyter-gpu", "jupyter-notebook") == "jupyter-gpu"
    assert chosen_image(allowed, None, "jupyter-notebook") == "jupyter-notebook"
    assert chosen_image(["a", "b"], None, "zzz") == "a"
    with pytest.raises(ConfigError, match="is not allowed"):
        chosen_image(allowed, "images:debian/12", "jupyter-notebook")
    with pytest.raises(ConfigError, match="offers no image choice"):
        chosen_image([], "other", "jupyter-notebook")
    assert chosen_image([], None, "jupyter-notebook") == "jupyter-notebook"


def test_subid_check_says_what_to_add(tmp_path):
    (tmp_path / "subuid").write_text("root:100000:65536\nroot:2345:1\n")
    (tmp_path / "subgid").write_text("root:100000:65536\n")
    check_subid_allowed(2345, 100001, str(tmp_path / "subuid"), str(tmp_path / "subgid"))
    with pytest.raises(ConfigError, match=r"add 'root:2345:1' in .*subgid"):
        check_subid_allowed(2345, 2345, str(tmp_path / "subuid"), str(tmp_path / "subgid"))


def test_a_name_starting_with_dash_never_becomes_an_option():
    def expand(text):
        return text.format(username="-rf", servername="")

    with pytest.raises(ConfigError, match=r"post_hub_commands\[0\]: the argument '\{username\}' would become '-rf'"):
        command_lists([["rm", "{username}"]], expand, "post_hub_commands")
    # The operator's own options, and a name as an option's value, stay allowed.
    assert command_lists([["useradd", "--comment={username}", "-m", "x"]], expand, "post_hub_commands") == [
        ["useradd", "--comment=-rf", "-m", "x"]]


def test_only_allow_listed_environment_passes():
    from tf_lxd_spawner.environment import DEFAULT_ALLOWED, allowed

    hub_env = {"PATH": "/bin", "LC_ALL": "C", "TF_CLI_CONFIG_FILE": "/x", "CONFIGPROXY_AUTH_TOKEN": "s",
               "JUPYTERHUB_CRYPT_KEY": "k", "AWS_SECRET_ACCESS_KEY": "a", "PATHOLOGICAL": "p"}
    assert allowed(DEFAULT_ALLOWED, hub_env) == {"PATH": "/bin", "LC_ALL": "C", "TF_CLI_CONFIG_FILE": "/x"}
