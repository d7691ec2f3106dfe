"""The doctor's pure parts: version constraints, subordinate id ranges, and the settings the CLI
builds from jupyterhub_config.py (the hub API address as JupyterHub makes it, the spawner's own
defaults, command-line overrides)."""

from types import SimpleNamespace

import pytest

from tf_lxd_spawner.operator import cli, doctor


@pytest.mark.parametrize("version, constraint, holds", [
    ((1, 11, 4), ">= 1.3.0", True),
    ((1, 2, 9), ">= 1.3.0", False),
    ((1, 5, 0), ">= 1.3.0, < 2.0.0", True),
    ((2, 0, 0), ">= 1.3.0, < 2.0.0", False),
    ((1, 9, 3), "~> 1.5", True),
    ((2, 0, 0), "~> 1.5", False),
    ((1, 5, 9), "~> 1.5.2", True),
    ((1, 6, 0), "~> 1.5.2", False),
    ((1, 8, 5), "!= 1.8.5", False),
    ((1, 8, 5), "1.8.5", True),
])
def test_version_constraints(version, constraint, holds):
    assert doctor.satisfies(version, constraint) is holds


def test_module_required_version_is_read_from_the_module():
    from tf_lxd_spawner.spawner import default_module_source

    assert doctor.module_required_version(default_module_source()) == ">= 1.3.0"
    assert doctor.module_required_version("git::https://example.invalid/module") == ""


def test_allowed_ranges(tmp_path):
    subuid = tmp_path / "subuid"
    subuid.write_text("_lxd:100000:65536\nroot:100000:65536\nroot:2345:1\nbroken line\n")
    assert doctor.allowed_ranges(str(subuid)) == ["100000-165535", "2345"]
    assert doctor.allowed_ranges(str(tmp_path / "missing")) == []


def settings(tmp_path, text, *argv):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(text)
    args = SimpleNamespace(config=str(config), state_dir=None)
    for key, value in zip(argv[::2], argv[1::2]):
        setattr(args, key, value)
    return cli.spawner_from(args)


@pytest.mark.parametrize("text, api_url", [
    ("", "http://127.0.0.1:8081/hub/api"),
    ("c.JupyterHub.hub_port = 9000\nc.JupyterHub.base_url = '/jh/'", "http://127.0.0.1:9000/jh/hub/api"),
    ("c.JupyterHub.hub_ip = '10.0.0.5'\nc.JupyterHub.hub_connect_ip = '10.0.0.6'", "http://10.0.0.6:8081/hub/api"),
    ("c.JupyterHub.hub_connect_url = 'http://hub.internal:8090'", "http://hub.internal:8090/hub/api"),
    ("c.JupyterHub.hub_bind_url = 'http://127.0.0.2:8123'", "http://127.0.0.2:8123/hub/api"),
])
def test_hub_api_url_as_jupyterhub_makes_it(tmp_path, text, api_url):
    assert settings(tmp_path, text).hub.api_url == api_url


def test_hub_urls_follow_the_spawner_hub_connect_url(tmp_path):
    sp = settings(tmp_path, "c.JupyterHub.base_url = '/jh/'\nc.Spawner.hub_connect_url = 'http://10.1.2.3:8081'")
    assert doctor.hub_urls(sp) == ("10.1.2.3", 8081, "http://10.1.2.3:8081/jh/hub/api",
                                   "http://127.0.0.1:8081/jh/hub/api")


def test_settings_are_the_spawners_own_with_overrides(tmp_path):
    sp = settings(tmp_path, "c.LxdSpawner.backend = 'incus'\nc.LxdSpawner.state_dir = '/from/config'",
                  "state_dir", "/from/argv", "lxd_verify", "false")
    assert sp.state_dir == "/from/argv"
    assert sp.lxd_verify is False
    assert sp.mount_idmap == "shift"  # the spawner's own default for Incus, not restated by the CLI
    assert sp.orphan_grace_period == 600.0
    assert cli._settings(sp)["backend"] == "incus"


def test_a_bad_setting_is_refused_by_the_spawner(tmp_path, capsys):
    config = tmp_path / "jupyterhub_config.py"
    config.write_text("c.LxdSpawner.backend = 'docker'\n")
    assert cli.main(["-f", str(config), "doctor"]) == 2
    assert "backend" in capsys.readouterr().err


def test_check_lines():
    assert doctor.Check("ports", "ok", "3 of 3 free").line() == "ok   ports: 3 of 3 free"
    assert (doctor.Check("image", "fail", "'x' missing", "import it").line()
            == "FAIL image: 'x' missing — fix: import it")
    assert doctor.Check("hub", "skip", "needs the image check, which failed").line().startswith("skip hub: ")


def test_stand_in_user_is_not_a_hub_user():
    sp = cli.spawner_from(SimpleNamespace(config=None, state_dir=None))
    assert sp.user.name == "doctor"
    assert sp.hub.api_url == cli.DEFAULT_HUB_API
