"""The examples' jupyterhub_config.py files, loaded the way JupyterHub loads its own."""

from pathlib import Path
from types import SimpleNamespace

from conftest import REPO
from traitlets.config import Config, PyFileConfigLoader

from tf_lxd_spawner import LxdSpawner

EXAMPLES = REPO / "examples"


def config_path(name: str) -> Path:
    return EXAMPLES / name / "jupyterhub_config.py"


def load(name: str) -> Config:
    """The example's configuration, as `jupyterhub -f` reads it (the file calls get_config())."""
    path = config_path(name)
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def spawner(name: str, username: str = "alice") -> LxdSpawner:
    """An LxdSpawner configured only by the example, with the hub stand-ins of spawnerstub."""
    user = SimpleNamespace(name=username, url=f"/user/{username}/", escaped_name=username, state=None)
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="",
                          url="http://127.0.0.1:8081/hub/")
    orm_spawner = SimpleNamespace(name="", server=None, state=None)
    return LxdSpawner(config=load(name), user=user, hub=hub, orm_spawner=orm_spawner)
