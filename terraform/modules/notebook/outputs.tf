output "instance_name" {
  description = "Name of the LXD instance."
  value       = lxd_container.notebook.name
}

output "location" {
  description = "Cluster member the instance runs on (the target LXD reports; \"none\" on a standalone server)."
  value       = coalesce(lxd_container.notebook.target, "")
}

output "connect_address" {
  description = "Address the hub connects to: the proxy device's listen address, or the instance's IPv4 address."
  value       = var.connect_via == "proxy" ? var.listen_address : lxd_container.notebook.ipv4_address
}

output "connect_port" {
  description = "Port the hub connects to: the proxy device's listen port, or server_port on the instance's address."
  value       = var.connect_via == "proxy" ? var.listen_port : var.server_port
}

output "files" {
  description = "Every file the instance gets (target_path, content or source, mode, uid, gid): the operator's files, the server's launch file and its environment. With files_via_provider = false the caller writes them before it starts the instance. Sensitive: the environment holds the hub API token."
  value       = local.all_files
  sensitive   = true
}

output "status" {
  description = "Instance status reported by LXD after apply (\"Running\" when the start succeeded)."
  value       = lxd_container.notebook.status
}
