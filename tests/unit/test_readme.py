"""Every option of LxdSpawner is in the README's configuration table, with its help text."""

import re

from conftest import REPO
from tf_lxd_spawner import LxdSpawner
from jupyterhub.spawner import Spawner


def test_every_trait_documented():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", readme, re.M))
    own = {name for name, t in LxdSpawner.class_traits(config=True).items()
           if name not in Spawner.class_traits(config=True)}
    assert own, "no traits found"
    assert own - documented == set()
    for name in own:
        assert LxdSpawner.class_traits()[name].help.strip(), name


def test_entry_point():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "tf-lxd"]
    assert ep.load() is LxdSpawner
