"""Profiles in KubeSpawner's shape: small, large (with a choice of image) and a GPU stand-in
for one group. A zero-to-jupyterhub `profile_list` works here as it is.

Run from the repository root: `make demo EXAMPLE=profiles`, then http://127.0.0.1:8000 (any
user name, password `demo`; the user `gpu-user` is in the group that sees the GPU profile).
See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/profiles/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "profiles")
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

c.LxdSpawner.backend = os.environ.get("DEMO_BACKEND", "lxd")
c.LxdSpawner.terraform_path = os.environ.get("DEMO_TERRAFORM", "")
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(work, "state")
c.LxdSpawner.image = "jupyter-notebook"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90

# Who sees the GPU profile: the members of this JupyterHub group.
c.JupyterHub.load_groups = {"gpu-users": {"users": ["gpu-user"]}}

c.LxdSpawner.profile_list = [
    {
        "display_name": "Small",
        "description": "Half a CPU and 1 GiB: reading, light notebooks.",
        "default": True,
        "kubespawner_override": {"cpu_limit": 0.5, "mem_limit": "1G"},
    },
    {
        "display_name": "Large",
        "description": "Two CPUs and 4 GiB, a bigger home, and a choice of image.",
        "kubespawner_override": {"cpu_limit": 2, "mem_limit": "4G", "storage_capacity": "20GiB"},
        "profile_options": {
            "image": {
                "display_name": "Image",
                "choices": {
                    "notebook": {"display_name": "Jupyter notebook", "default": True,
                                 "kubespawner_override": {"image": "jupyter-notebook"}},
                },
                # An image alias of the user's own, checked before anything is made.
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Another image (an alias on the server)",
                    "validation_regex": "^[a-z][a-z0-9-]{0,62}$",
                    "validation_message": "an image alias: lower-case letters, digits and '-'",
                    "kubespawner_override": {"image": "{value}"},
                },
            },
        },
    },
    {
        "display_name": "GPU (stand-in)",
        "slug": "gpu",
        "description": "For the gpu-users group. A real one adds a gpu device and lands on GPU members.",
        "groups": ["gpu-users"],
        "spawner_override": {
            "cpu_limit": 2,
            "mem_limit": "4G",
            # This host has no GPU: a label stands in for the device. On a cluster with GPUs:
            #   "lxd_profiles": ["default", "gpu"],   # an LXD profile with a `gpu` device
            #   "cluster_group": "gpu",              # only the members that have one
            "module_variables": {"config": {"user.accelerator": "gpu-stand-in"}},
        },
    },
]
