"""What the spawner drives and nothing of JupyterHub: the LXD/Incus daemon (lxd, backends,
provider), Terraform/OpenTofu (terraform, initialising, modules), the workspace on disk, host
ports, names, the hub API relay. Functions here take plain values."""
