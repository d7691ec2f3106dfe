"""Servers spread over a cluster's members by weight: least-loaded placement, one member
taking twice the servers of the other, a member kept out for maintenance.

Run from the repository root: `make demo EXAMPLE=cluster-weights` with CLUSTER_* (below) naming
your cluster, then http://127.0.0.1:8000 (any user name, password `demo`). Without CLUSTER_* it
runs on the machine's own LXD. See README.md beside this file.
"""

import os

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))  # examples/cluster-weights/ -> the repository
cache = os.path.join(repo, ".cache")
work = os.path.join(cache, "examples", "cluster-weights")
os.makedirs(work, mode=0o700, exist_ok=True)

c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "tf-lxd"
# Trying it out only: any user name with one shared password. Production: a real authenticator.
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("DEMO_PASSWORD", "demo")
c.Authenticator.allow_all = True

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = 8000
c.JupyterHub.hub_ip = "127.0.0.1"  # members on other hosts: an address they reach (README)
c.JupyterHub.db_url = f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = os.path.join(work, "cookie_secret")
c.ConfigurableHTTPProxy.command = [os.path.join(cache, "npm", "node_modules", ".bin", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = os.path.join(work, "proxy.pid")


def cluster_settings() -> dict:
    """The cluster to use: CLUSTER_* from the environment, else none (the machine's own LXD)."""
    if os.environ.get("CLUSTER_ENDPOINT"):
        return {"backend": os.environ.get("CLUSTER_BACKEND", "lxd"), "endpoint": os.environ["CLUSTER_ENDPOINT"],
                "cert": os.environ["CLUSTER_CERT"], "key": os.environ["CLUSTER_KEY"],
                "verify": os.environ.get("CLUSTER_VERIFY", "true")}
    return {}


cluster = cluster_settings()
if cluster:
    # An https endpoint of any member; the client certificate must be trusted by the cluster
    # (`lxc config trust add` / `incus config trust add-certificate`), and lxd_verify pins the
    # cluster's certificate (its cluster.crt): "true" verifies with the system's CAs instead.
    c.LxdSpawner.backend = cluster["backend"]
    c.LxdSpawner.lxd_endpoint = cluster["endpoint"]
    c.LxdSpawner.lxd_cert = cluster["cert"]
    c.LxdSpawner.lxd_key = cluster["key"]
    c.LxdSpawner.lxd_verify = {"true": True, "false": False}.get(cluster["verify"], cluster["verify"])
# Without a cluster this runs on the machine's own LXD: one member, placement has nothing to do.

# ---- Placement ------------------------------------------------------------------------------
# Each new server goes to the online member with the best weight / (servers on it + 1), spawns
# in flight counted. m1 (weight 2) gets about twice the servers of m2 (weight 1, the default);
# a member not named here weighs 1, weight 0 takes nothing. Names as `lxc cluster list` shows.
c.LxdSpawner.placement = "least-loaded"
c.LxdSpawner.host_weights = {"m1": 2, "m2": 1}
# Members in maintenance get no new servers (their running ones are left alone); members LXD
# reports Evacuated or Offline are skipped anyway.
c.LxdSpawner.excluded_members = ["m3"]
# Count only this hub's servers as load, not other instances on the members.
c.LxdSpawner.count_managed_only = True

c.LxdSpawner.image = "jupyter-notebook"  # must be in the cluster's image store
c.LxdSpawner.terraform_cli_config = os.path.join(cache, "terraform", "cli.tfrc")
c.LxdSpawner.state_dir = os.path.join(work, "state")
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 90
