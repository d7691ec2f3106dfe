"""An operator's own Terraform module: the notebook module plus a GPU profile per server
(module/ beside this file).

Run from the repository root: `make demo EXAMPLE=custom-module-gpu`, then http://127.0.0.1:8000
(any user name, password `demo`). See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/custom-module-gpu/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "custom-module-gpu")
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

# The module every server is made by: a local directory (an absolute path: the workspaces live
# elsewhere) or any module address Terraform accepts (git::https://..., a registry module).
c.LxdSpawner.module_source = os.path.join(here, "module")
# Its own inputs come through module_variables. The module's default device is a stand-in that
# works without a GPU (/dev/null as /dev/gpu-standin); on a GPU host give the real one:
# c.LxdSpawner.module_variables = {
#     "gpu": {"type": "gpu", "properties": {"gputype": "physical"}},
#     "gpu_profile_config": {"nvidia.runtime": "true"},
# }

c.LxdSpawner.image = "jupyter-notebook"
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(work, "state")
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90
