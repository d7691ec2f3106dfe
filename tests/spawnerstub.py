"""LxdSpawner driven directly, with a stand-in for the hub object (only its URLs are read).

For tests whose subject is the spawner against real LXD and Terraform, where a running hub
adds nothing (placement, bad input, orphans)."""

import os
from types import SimpleNamespace

from conftest import CACHE

from tf_lxd_spawner import LxdSpawner


def make_spawner(state_dir, username, servername="", **traits):
    user = SimpleNamespace(name=username, url=f"/user/{username}/", escaped_name=username, state=None)
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="",
                          url="http://127.0.0.1:8081/hub/")
    # No hub answers the server here: start() returns when the container runs, not when it answers.
    # Without the home volume unless a test asks for it: these tests are about placement, input
    # and orphans; the volume is tested through real hubs (test_storage), with its clean-up.
    settings = dict(state_dir=str(state_dir), terraform_cli_config=str(CACHE / "terraform" / "cli.tfrc"),
                    wait_for_server=False, storage_enabled=False,
                    api_token=os.urandom(16).hex(), oauth_client_id=f"jupyterhub-user-{username}")
    settings.update(traits)
    orm_spawner = SimpleNamespace(name=servername, server=None, state=None)
    return LxdSpawner(user=user, hub=hub, orm_spawner=orm_spawner, **settings)
