"""The seed project's configuration, unchanged, on tf-lxd-spawner: /etc/passwd and /etc/group
pushed into every container, each user's home mounted from the host.

Run from the repository root: `make demo EXAMPLE=seed`, then http://127.0.0.1:8000 (any user
name, password `demo`). See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/seed/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "seed")
homes = os.path.join(work, "homes")  # production: /srv/homes, the same on every member (NFS)
os.makedirs(homes, mode=0o755, exist_ok=True)

c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "tf-lxd"
# Trying it out only: any user name with one shared password. Production: the default
# PAMAuthenticator (hub users are the host's accounts, which is what pushing /etc/passwd is for).
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

# ---- The seed's lines, as its README gives them --------------------------------------------
c.LxdSpawner.image = 'jupyter-notebook'
c.LxdSpawner.files_to_push = [['/etc/passwd', '/etc/passwd'], ['/etc/group', '/etc/group']]
c.LxdSpawner.filesystems_to_mount = [['home', homes + '/{username}', '/home/{username}']]
# The seed: pushing /etc/passwd "requires the `privileged_containers` option set to `True`" (its
# name for privileged_container, which it sets): the host's uids are then the container's, so a
# home written inside belongs to the same uid on the host.
c.LxdSpawner.privileged_containers = True

# ---- Not in the seed -------------------------------------------------------------------------
# Make a missing <homes>/<user> on the first spawn (owned by the user's uid, mode 0750). Drop it
# when homes are prepared beforehand (they must then exist on every member).
c.LxdSpawner.create_mount_dirs = True
# Terraform: providers from the mirror `make setup` made; one workspace per server, kept.
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(work, "state")

c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90
