import pytest

from tf_lxd_spawner.lifecycle.settings_values import (
    ConfigError,
    Names,
    check_subid_allowed,
    checked_user_options,
    chosen_image,
    command_lists,
    container_path,
    host_path,
    limits,
    mounts,
    pushed_files,
)


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
                         Names("alice"))
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
        pushed_files([entry], Names("alice"))


def test_mounts():
    assert mounts([["home", "/srv/{servername}h", "/home/x"]], Names("u", "s"), True) == [
        {"name": "home", "source": "/srv/sh", "path": "/home/x", "shift": True}]
    with pytest.raises(ConfigError, match="not a valid device name"):
        mounts([["bad name", "/a", "/b"]], Names("u"), False)
    with pytest.raises(ConfigError, match="must be absolute"):
        mounts([["n", "rel", "/b"]], Names("u"), False)


@pytest.mark.parametrize("user,server,escaped_user,escaped_server", [
    ("alice", "", "alice", ""),
    ("jean-luc", "gpu-1", "jean-luc", "gpu-1"),
    ("a/b", "x/../y", "a_2Fb", "x_2F.._2Fy"),
    ("..", ".", "_2E_2E", "_2E"),
    ("x..y", "...", "x..y", "..."),
    ("John.Doe@example.com", "gpu 1", "John.Doe_40example.com", "gpu_201"),
    ("nul\0", "", "nul_0", ""),
])
def test_names_in_host_paths_are_escaped(user, server, escaped_user, escaped_server):
    """As DockerSpawner does for volumes: {username}/{servername} on the host are the escaped
    names (as in the workspace's directory names), one directory name whatever the name."""
    path = host_path("/srv/homes/{username}/{servername}", user, server)
    assert path == f"/srv/homes/{escaped_user}/{escaped_server}"
    assert path.split("/")[:3] == ["", "srv", "homes"] and len(path.split("/")) == 5
    assert ".." not in path.split("/") and "\0" not in path


def test_raw_names_in_host_paths_only_when_written_and_never_out_of_the_directory():
    assert host_path("/srv/{raw_username}/{raw_servername}", "Al Ice", "s") == "/srv/Al Ice/s"
    assert host_path("/srv/{raw_username}", "x..y") == "/srv/x..y"  # '..' inside a name is a name
    assert host_path("/srv/../{username}", "u") == "/srv/../u"  # the operator's own '..' is theirs
    for name in ("a/b", "..", ".", "/", "../../etc", "nul\0"):
        with pytest.raises(ConfigError, match=r"^filesystems_to_mount\[3\]: the host path "
                                              r"'/srv/homes/\{raw_username\}' would be '/srv/homes/.*refused"):
            host_path("/srv/homes/{raw_username}", name, "", "filesystems_to_mount[3]")
    with pytest.raises(ConfigError, match=r"the host path '/srv/\{raw_servername\}' would be '/srv/\.\.'"):
        host_path("/srv/{raw_servername}", "u", "..", "files_to_push[0]")
    with pytest.raises(ConfigError, match=r"files_to_push\[1\]: cannot expand the host path '/srv/\{user\}'"):
        host_path("/srv/{user}", "u", "", "files_to_push[1]")


def test_names_in_container_paths_stay_raw_but_never_lead_out():
    assert container_path("/home/{username}/{servername}", "Al Ice", "x..y") == "/home/Al Ice/x..y"
    for user, server in (("a/b", ""), ("..", ""), ("u", "."), ("u", "../../etc"), ("u\0", "")):
        with pytest.raises(ConfigError, match=r"^files_to_push\[0\]: the container path '/home/\{username\}/"
                                              r"\{servername\}' would be .*refused"):
            container_path("/home/{username}/{servername}", user, server, "files_to_push[0]")


def test_pushed_files_and_mounts_expand_host_and_container_sides_apart(tmp_path):
    (tmp_path / "a_2Fb").mkdir()
    (tmp_path / "a_2Fb" / "rc").write_text("x")
    names = Names("a/b")
    files = pushed_files([[f"{tmp_path}/{{username}}/rc", "/etc/rc-{servername}"]], names)
    assert files[0]["source"] == f"{tmp_path}/a_2Fb/rc" and files[0]["target_path"] == "/etc/rc-"
    with pytest.raises(ConfigError, match=r"files_to_push\[0\]: the container path '/home/\{username\}/rc'"):
        pushed_files([{"target": "/home/{username}/rc", "content": "x"}], names)
    with pytest.raises(ConfigError, match=rf"files_to_push\[1\]: the host path '{tmp_path}/\{{raw_username\}}/rc' "
                                          rf"would be '{tmp_path}/a/b/rc'"):
        pushed_files([{"target": "/rc", "content": "x"}, [f"{tmp_path}/{{raw_username}}/rc", "/rc"]], names)
    disks = mounts([["home", "/srv/homes/{username}", "/home/{servername}x"]], Names("..", "s"), False)
    assert disks[0]["source"] == "/srv/homes/_2E_2E" and disks[0]["path"] == "/home/sx"
    with pytest.raises(ConfigError, match=r"filesystems_to_mount\[0\]: the container path '/home/\{username\}' "
                                          r"would be '/home/\.\.'"):
        mounts([["home", "/srv/homes/{username}", "/home/{username}"]], Names(".."), False)


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


@pytest.mark.parametrize("options,message", [
    ({"image": 5}, r"user_options\['image'\] must be a string, not int \(5\)"),
    ({"image": ["a"]}, r"user_options\['image'\] must be a string, not list \(\['a'\]\)"),
    ({"image": {"x": 1}}, r"user_options\['image'\] must be a string, not dict"),
    ({"image": True}, r"user_options\['image'\] must be a string, not bool"),
    (["image"], "user_options must be an object of option names and values, not list"),
])
def test_user_options_of_the_wrong_type_are_refused_by_name(options, message):
    with pytest.raises(ConfigError, match=message):
        checked_user_options(options)


def test_user_options_strings_and_unknown_keys_pass():
    assert checked_user_options(None) == {}
    assert checked_user_options({"image": "GPU"}) == {"image": "GPU"}
    assert checked_user_options({"image": None}) == {"image": None}  # not chosen: the default
    # Keys the spawner does not read are the operator's (a form of their own): kept, any type.
    assert checked_user_options({"image": "a", "gpus": 2, "extra": ["x"]}) == {"image": "a", "gpus": 2,
                                                                              "extra": ["x"]}


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
    from tf_lxd_spawner.systems.environment import DEFAULT_ALLOWED, allowed

    hub_env = {"PATH": "/bin", "LC_ALL": "C", "TF_CLI_CONFIG_FILE": "/x", "CONFIGPROXY_AUTH_TOKEN": "s",
               "JUPYTERHUB_CRYPT_KEY": "k", "AWS_SECRET_ACCESS_KEY": "a", "PATHOLOGICAL": "p"}
    assert allowed(DEFAULT_ALLOWED, hub_env) == {"PATH": "/bin", "LC_ALL": "C", "TF_CLI_CONFIG_FILE": "/x"}
