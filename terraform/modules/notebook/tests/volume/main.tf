# Test helper: a custom volume for the notebook module's `volumes` input to mount (what the
# storage module makes for a user's home; a plain resource here, so the test needs only this
# module's directory). Named after the instance, so runs side by side do not collide.

terraform {
  required_version = ">= 1.3.0"

  required_providers {
    lxd = {
      source = "terraform-lxd/lxd"
    }
  }
}

variable "name" {
  description = "Name of the instance under test; the volume is called <name>-vol."
  type        = string
}

resource "lxd_volume" "mounted" {
  name   = "${var.name}-vol"
  pool   = "default"
  config = { size = "50MiB", "user.tf-lxd-spawner.managed" = "true" }
}

output "name" {
  description = "Name of the volume."
  value       = lxd_volume.mounted.name
}

output "pool" {
  description = "Pool of the volume."
  value       = lxd_volume.mounted.pool
}
