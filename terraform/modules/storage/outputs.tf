output "name" {
  description = "Name of the volume: the source of a disk device (the notebook module's volumes input)."
  value       = lxd_volume.home.name
}

output "pool" {
  description = "Storage pool the volume lives in: the pool of a disk device."
  value       = lxd_volume.home.pool
}

output "location" {
  description = "Cluster member the volume was created on: the target given, or \"none\" without one (what LXD reports on a standalone server). Provider v1.5.0 reads no location back, so with a local pool in a cluster pass target, and place the user's servers on that member."
  value       = coalesce(local.target, "none")
}

output "size" {
  description = "Quota of the volume as LXD holds it (its size key); null when it has none."
  value       = lookup(lxd_volume.home.config, "size", null)
}
