"""tf-lxd-spawner: a JupyterHub spawner giving each server an LXD container made by Terraform."""

from importlib.metadata import PackageNotFoundError, version

from .spawner import LxdSpawner

__all__ = ["LxdSpawner"]
try:
    __version__ = version("tf-lxd-spawner")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "unknown"
