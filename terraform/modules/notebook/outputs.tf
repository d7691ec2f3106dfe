output "instance_name" {
  description = "Name of the LXD instance."
  value       = lxd_container.notebook.name
}

output "location" {
  description = "Cluster member the instance runs on (the target LXD reports; \"none\" on a standalone server)."
  value       = coalesce(lxd_container.notebook.target, "")
}

output "connect_address" {
  description = "Address the hub connects to: the proxy device's listen address, or the instance's IPv4 address (\"\" while the instance is stopped: with files_via_provider = false the caller asks LXD once it started it)."
  value       = var.connect_via == "proxy" ? var.listen_address : lxd_container.notebook.ipv4_address
}

output "connect_port" {
  description = "Port the hub connects to: the proxy device's listen port, or server_port on the instance's address."
  value       = var.connect_via == "proxy" ? var.listen_port : var.server_port
}

output "files" {
  description = "The files the instance gets besides its environment (target_path, content or source, mode, uid, gid): the operator's files and the server's launch file. With files_via_provider = false the caller writes them before it starts the instance."
  value       = concat(var.files, [local.spawn_file])
  sensitive   = true # operators' inline contents (and the launch file) are for the caller, not for plan output
}

output "environment_file" {
  description = "Where the server's environment goes (target_path, mode, uid, gid): with files_via_provider = false the caller writes server_environment there as a JSON object. The content is not an output: it holds the hub API token."
  value       = local.environment_file
}

output "status" {
  description = "Instance status reported by LXD after apply (\"Running\" when the start succeeded; \"Stopped\" with files_via_provider = false, until the caller starts it)."
  value       = lxd_container.notebook.status
}
