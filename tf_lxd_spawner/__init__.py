"""tf-lxd-spawner: a JupyterHub spawner giving each server an LXD container made by Terraform."""

from .spawner import LxdSpawner

__all__ = ["LxdSpawner"]
__version__ = "0.1.0"
