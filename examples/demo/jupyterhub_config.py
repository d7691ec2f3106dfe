"""JupyterHub with tf-lxd-spawner on this machine: `make demo`, then http://127.0.0.1:8000.

Log in with any user name and the password `demo` (DummyAuthenticator: for trying things out,
never for production).
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/demo/ -> the repository
cache = os.path.join(repo, ".cache")
demo = os.path.join(cache, "demo")
os.makedirs(demo, mode=0o700, exist_ok=True)

c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "tf-lxd"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("DEMO_PASSWORD", "demo")
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = f"sqlite:///{demo}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = os.path.join(demo, "cookie_secret")
c.ConfigurableHTTPProxy.command = [os.path.join(cache, "npm", "node_modules", ".bin", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(demo, "proxy.pid")

# The seed project's configuration lines keep working:
c.LxdSpawner.image = "jupyter-notebook"
# Each user's home is a volume of its own (the default, shown here): a notebook written today is
# there after every stop, a restart of `make demo` and an image change; it goes with the user.
c.LxdSpawner.storage_enabled = True
c.LxdSpawner.storage_capacity = "10GiB"
# c.LxdSpawner.files_to_push = [["/etc/passwd", "/etc/passwd"], ["/etc/group", "/etc/group"]]
# c.LxdSpawner.filesystems_to_mount = [["home", "/srv/homes/{username}", "/home/{username}"]]

# Terraform: providers from the project-local mirror that `make demo` set up; one workspace per
# server under state_dir, kept as the audit record.
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(demo, "state")

# The daemon and the binary: Incus, the faster of the two daemons here (a spawn in 4.7 s against
# 8.9 s on LXD 5.0.2, docs/performance.md), and `terraform` when it is on the PATH, else the
# OpenTofu `make demo` builds (.cache/bin/tofu, on the PATH make gives the hub; both measure
# alike). `make demo` runs LXD too; choose, e.g.
#   DEMO_BACKEND=lxd DEMO_TERRAFORM=terraform make demo
c.LxdSpawner.backend = os.environ.get("DEMO_BACKEND", "incus")
c.LxdSpawner.terraform_path = os.environ.get("DEMO_TERRAFORM", "")

c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90
c.Spawner.mem_limit = "2G"

# A way back: users see their home's snapshots in ~/.snapshots and restore their whole home on
# http://127.0.0.1:8000/services/home-snapshots/ (docs/operations.md, "Bringing files back").
import sys  # noqa: E402

c.JupyterHub.services = [{
    "name": "home-snapshots", "url": "http://127.0.0.1:10101",
    "command": [sys.executable, "-m", "tf_lxd_spawner.snapshot_service", "-f", os.path.abspath(__file__)],
}]
c.JupyterHub.load_roles = [
    {"name": "home-snapshots", "services": ["home-snapshots"], "scopes": ["read:users", "servers"]},
    {"name": "user", "scopes": ["self", "access:services!service=home-snapshots"]},
]
