"""A course's shared folders (`shared_volumes`): the course "data-101", whose staff (`prof`, `ta`)
write its data folder and whose students (`alice`, `bob`) only read it, and a staff room that only
the staff see.

Run from the repository root: `make demo EXAMPLE=course`, then http://127.0.0.1:8000 (password
`demo`; log in as `prof`, then as `alice`). See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/course/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "course")
os.makedirs(work, mode=0o700, exist_ok=True)

c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "tf-lxd"
# Trying it out only: any user name with one shared password. Production: a real authenticator
# (and groups from it, or from load_groups as here).
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

# ---- The course ------------------------------------------------------------------------------
# Who is who: JupyterHub groups (made, with their users, when the hub starts). A group change
# (here, on the admin page or through the REST API) takes effect at the user's next start.
c.JupyterHub.load_groups = {
    "staff": {"users": ["prof", "ta"]},
    "students": {"users": ["alice", "bob"]},
}

# Each user's account has ids of its own (as a site's LDAP gives them): two staff members write
# the same folder with different uids, which is what the folders' shared gid (3000) is for.
_IDS = {"prof": 2001, "ta": 2002, "alice": 2101, "bob": 2102}


def uid_gid(spawner):
    uid = _IDS.get(spawner.user.name, 1000)
    return uid, uid


c.LxdSpawner.get_uid_gid = uid_gid

c.LxdSpawner.shared_volumes = [
    # The course's data: ~/data-101 in every server of the course. Staff write it; students get
    # it read-only (the daemon mounts it readonly: no write from inside gets through).
    {
        "name": "data-101",
        "size": "1GiB",
        "path": "data-101",  # relative: under the user's home
        "write_groups": ["staff"],
        "read_groups": ["students"],
        "gid": 3000,
    },
    # The staff's own room: only staff get a device for it; students do not see it at all.
    {
        "name": "staff-room",
        "size": "1GiB",
        "path": "/srv/staff-room",
        "write_groups": ["staff"],
        "gid": 3000,
    },
]
