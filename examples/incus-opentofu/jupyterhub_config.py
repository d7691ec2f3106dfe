"""Incus instead of LXD, OpenTofu instead of Terraform: the same module, the same provider.

Run from the repository root: `make demo EXAMPLE=incus-opentofu`, then http://127.0.0.1:8000
(any user name, password `demo`). See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/incus-opentofu/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "incus-opentofu")
os.makedirs(work, mode=0o700, exist_ok=True)

c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "tf-lxd"
# Trying it out only: any user name with one shared password. Production: a real authenticator.
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("DEMO_PASSWORD", "demo")
c.Authenticator.allow_all = True

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = os.path.join(work, "cookie_secret")
c.ConfigurableHTTPProxy.command = [os.path.join(cache, "npm", "node_modules", ".bin", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(work, "proxy.pid")

# The daemon: Incus on its local socket (/var/lib/incus/unix.socket; `lxd_endpoint` for another).
# Each spawn checks that the daemon there really is Incus. On Incus the spawner writes the
# container's files itself (the LXD provider's file API is gone there) and mounts homes with
# idmapped mounts (mount_idmap defaults to "shift").
c.LxdSpawner.backend = "incus"

# The binary: OpenTofu. `make setup` builds it into .cache/bin/tofu; elsewhere it is on PATH.
tofu = os.path.join(cache, "bin", "tofu")
c.LxdSpawner.terraform_path = tofu if os.path.exists(tofu) else "tofu"
# Providers from the mirror `make setup` made (it serves both binaries' registry addresses).
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(work, "state")

c.LxdSpawner.image = "jupyter-notebook"  # imported into Incus by `make setup`
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90
c.Spawner.mem_limit = "2G"
