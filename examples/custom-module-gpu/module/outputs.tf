# The outputs tf-lxd-spawner reads, from the notebook module, and the GPU profile's name.

output "instance_name" {
  description = "Name of the LXD instance."
  value       = module.notebook.instance_name
}

output "location" {
  description = "Cluster member the instance runs on."
  value       = module.notebook.location
}

output "connect_address" {
  description = "Address the hub connects to."
  value       = module.notebook.connect_address
}

output "connect_port" {
  description = "Port the hub connects to."
  value       = module.notebook.connect_port
}

output "files" {
  description = "The files the instance gets besides its environment (see the notebook module)."
  value       = module.notebook.files
  sensitive   = true
}

output "environment_file" {
  description = "Where the server's environment goes (see the notebook module)."
  value       = module.notebook.environment_file
}

output "status" {
  description = "Instance status reported by LXD after apply."
  value       = module.notebook.status
}

output "gpu_profile" {
  description = "Name of the profile that gives the instance its GPU device."
  value       = lxd_profile.gpu.name
}
