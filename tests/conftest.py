"""Shared facts about the real stack that `make setup` brought up."""

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "terraform" / "modules" / "notebook"
STORAGE_MODULE_DIR = REPO / "terraform" / "modules" / "storage"  # one user's home volume
CACHE = REPO / ".cache"
IMAGE = os.environ.get("TF_LXD_TEST_IMAGE", "jupyter-notebook")


def terraform_env(**extra) -> dict:
    env = dict(os.environ)
    env["CHECKPOINT_DISABLE"] = "1"
    env["TF_CLI_CONFIG_FILE"] = str(CACHE / "terraform" / "cli.tfrc")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


INCUS_SOCKET = "/var/lib/incus/unix.socket"  # setup/incus-up.sh starts Incus beside LXD


@pytest.fixture(scope="session")
def lxd_client():
    import pylxd

    return pylxd.Client()


@pytest.fixture(scope="session")
def incus_client():
    import pylxd

    return pylxd.Client(endpoint=INCUS_SOCKET)


@pytest.fixture(scope="session", autouse=True)
def no_volume_left_behind(tmp_path_factory):
    """At the end of the session, delete every home volume a test's spawner made (its workspace
    label points into this session's temporary directory), on both daemons."""
    yield
    import pylxd
    from hubtools import delete_volumes

    base = str(tmp_path_factory.getbasetemp())
    for endpoint in (None, INCUS_SOCKET):
        try:
            delete_volumes(pylxd.Client(endpoint=endpoint) if endpoint else pylxd.Client(), base)
        except Exception as e:  # a daemon a unit-only run never needed
            print(f"volume sweep ({endpoint or 'LXD'}): {e}")
