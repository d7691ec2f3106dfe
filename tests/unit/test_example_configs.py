"""Every example's jupyterhub_config.py loads as JupyterHub loads it and configures the spawner
as its README says: an option name that does not exist, or a value the trait refuses, fails
here. (tests/e2e/test_examples.py spawns with them.)"""

import re
import shutil
import subprocess

import exampleconfig
import pytest
from conftest import CACHE, MODULE_DIR, REPO, terraform_env

EXPECTED = {"demo", "seed", "cluster-weights", "custom-module-gpu", "incus-opentofu", "profiles", "course"}
FOUND = sorted(p.parent.name for p in exampleconfig.EXAMPLES.glob("*/jupyterhub_config.py"))


def test_the_examples_are_the_expected_seven_each_with_a_readme():
    assert set(FOUND) == EXPECTED
    for name in EXPECTED:
        readme = (exampleconfig.EXAMPLES / name / "README.md").read_text()
        # Each README says how to run it and what to change for production.
        assert "jupyterhub_config.py" in readme and "## Production" in readme, name


@pytest.mark.parametrize("name", FOUND)
def test_every_option_exists_and_validates(name):
    """traitlets only warns about an unknown option: check each name against the class, and
    build the spawner so every value goes through its trait's validation."""
    cfg = exampleconfig.load(name)
    sp = exampleconfig.spawner(name)
    for section in ("LxdSpawner", "Spawner"):
        for option, value in cfg[section].items():
            assert sp.has_trait(option), f"{name}: c.{section}.{option} is not an option"
            if callable(value):  # loaded twice (cfg and sp): two function objects of the same code
                assert getattr(getattr(sp, option), "__code__", None) == value.__code__, (name, option)
                continue
            # The value took effect (as the trait converts it: mem_limit "2G" is bytes).
            assert getattr(sp, option) == sp.traits()[option].validate(sp, value), (name, option)
    assert cfg.JupyterHub.spawner_class == "tf-lxd"
    assert sp.state_dir == str(CACHE / ("demo" if name == "demo" else f"examples/{name}") / "state")
    assert sp.terraform_cli_config == str(CACHE / "terraform" / "cli.tfrc")


def test_demo_keeps_its_place_and_defaults(monkeypatch):
    monkeypatch.delenv("DEMO_BACKEND", raising=False)
    monkeypatch.delenv("DEMO_TERRAFORM", raising=False)
    sp = exampleconfig.spawner("demo")
    # Incus: the faster daemon by docs/performance.md (the README says why).
    assert (sp.backend, sp.terraform_path, sp.image) == ("incus", "", "jupyter-notebook")
    assert sp.module_source == str(MODULE_DIR)
    makefile = (REPO / "Makefile").read_text()
    assert "cd examples/$(EXAMPLE) && $(VENV)/bin/jupyterhub -f jupyterhub_config.py" in makefile
    assert "EXAMPLE ?= demo" in makefile


def test_seed_lines_unchanged_with_homes_mounted():
    sp = exampleconfig.spawner("seed")
    assert sp.image == "jupyter-notebook"
    assert sp.files_to_push == [["/etc/passwd", "/etc/passwd"], ["/etc/group", "/etc/group"]]
    homes = CACHE / "examples" / "seed" / "homes"
    assert sp.filesystems_to_mount == [["home", f"{homes}/{{username}}", "/home/{username}"]]
    assert homes.is_dir(), "the config makes the directory homes live in"
    assert sp.privileged_containers  # the seed README's name...
    assert sp.privileged_container and sp.create_mount_dirs  # ...sets ours


def test_cluster_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("CLUSTER_ENDPOINT", raising=False)
    sp = exampleconfig.spawner("cluster-weights")
    assert sp.placement == "least-loaded"
    assert sp.host_weights == {"m1": 2, "m2": 1}
    assert sp.excluded_members == ["m3"] and sp.count_managed_only
    # A cluster of one's own, from the environment: endpoint, client certificate, pinned cert.
    monkeypatch.setenv("CLUSTER_BACKEND", "incus")
    monkeypatch.setenv("CLUSTER_ENDPOINT", "https://10.0.0.21:8443")
    monkeypatch.setenv("CLUSTER_CERT", str(tmp_path / "client.crt"))
    monkeypatch.setenv("CLUSTER_KEY", str(tmp_path / "client.key"))
    monkeypatch.setenv("CLUSTER_VERIFY", str(tmp_path / "cluster.crt"))
    sp = exampleconfig.spawner("cluster-weights")
    assert (sp.backend, sp.lxd_endpoint) == ("incus", "https://10.0.0.21:8443")
    assert (sp.lxd_cert, sp.lxd_key, sp.lxd_verify) == (str(tmp_path / "client.crt"), str(tmp_path / "client.key"),
                                                         str(tmp_path / "cluster.crt"))
    monkeypatch.setenv("CLUSTER_VERIFY", "false")
    assert exampleconfig.spawner("cluster-weights").lxd_verify is False


def test_custom_module_gpu_points_at_its_module():
    sp = exampleconfig.spawner("custom-module-gpu")
    module = exampleconfig.EXAMPLES / "custom-module-gpu" / "module"
    assert sp.module_source == str(module)
    for f in ("versions.tf", "variables.tf", "main.tf", "outputs.tf", "README.md"):
        assert (module / f).is_file(), f


def test_custom_module_gpu_is_fmt_clean_and_valid(tmp_path):
    module = exampleconfig.EXAMPLES / "custom-module-gpu" / "module"
    env = terraform_env(TF_DATA_DIR=str(tmp_path / "data"))
    subprocess.run(["terraform", "fmt", "-check", "-diff", "-recursive", str(module)], check=True, env=env)
    copy = shutil.copytree(module, tmp_path / "module")  # init writes a lock file: not into the repository
    subprocess.run(["terraform", "init", "-backend=false", "-input=false"], cwd=copy, check=True, env=env,
                   capture_output=True)
    out = subprocess.run(["terraform", "validate", "-json"], cwd=copy, env=env, capture_output=True, text=True)
    assert '"valid": true' in out.stdout, out.stdout


NOTEBOOK_SOURCE = "./notebook"  # a symlink: a module path may not leave its package


def _declared(directory, kind):
    return {m for f in directory.glob("*.tf") for m in re.findall(rf'^{kind} "(\w+)"', f.read_text(), re.M)}


def test_custom_module_gpu_accepts_the_notebook_modules_inputs_and_gives_its_outputs():
    """The spawner passes the notebook module's inputs and reads its outputs: the wrapper must
    declare every one of them (a new input of the notebook module has to be passed on), and call
    the notebook module itself, with the GPU profile after the operator's."""
    module = exampleconfig.EXAMPLES / "custom-module-gpu" / "module"
    assert _declared(module, "variable") == _declared(MODULE_DIR, "variable") | {"gpu", "gpu_profile_config"}
    assert _declared(module, "output") == _declared(MODULE_DIR, "output") | {"gpu_profile"}
    main = (module / "main.tf").read_text()
    assert f'source = "{NOTEBOOK_SOURCE}"' in main
    assert (module / "notebook").is_symlink()
    assert (module / NOTEBOOK_SOURCE).resolve() == MODULE_DIR.resolve()
    assert "profiles = concat(var.profiles, [lxd_profile.gpu.name])" in main
    for name in _declared(MODULE_DIR, "variable"):
        assert re.search(rf"^\s+{name}\s+= var\.{name}$", main, re.M) or name == "profiles", name


def test_incus_with_opentofu():
    sp = exampleconfig.spawner("incus-opentofu")
    assert sp.backend == "incus"
    assert sp.terraform_path == str(CACHE / "bin" / "tofu")  # built by make setup
    assert sp.mount_idmap == "shift"  # Incus's default
