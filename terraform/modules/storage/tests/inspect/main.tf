# Test helper: looks at a volume the storage module created, from the machine running
# `terraform test`, with the lxc client (provider v1.5.0 has no data source for volumes, and a
# module test should see what the daemon holds, not only what the state says).
# The apply fails (and with it the run) when the daemon's config differs or the marker is gone.

terraform {
  required_version = ">= 1.3.0"

  # Not used here, but OpenTofu hands the test file's provider "lxd" to every run and would
  # otherwise look for it as hashicorp/lxd.
  required_providers {
    lxd = {
      source = "terraform-lxd/lxd"
    }
  }
}

variable "pool" {
  description = "Pool of the volume to inspect (on the lxc client's default remote)."
  type        = string
}

variable "name" {
  description = "Name of the custom volume to inspect."
  type        = string
}

variable "config" {
  description = "Config keys the volume must hold at the daemon, with their values."
  type        = map(string)
}

variable "mark" {
  description = "Take a snapshot named tftest-mark after the checks, for a later run to find."
  type        = bool
  default     = false
}

variable "expect_mark" {
  description = "Require the tftest-mark snapshot (the volume is still the one that was marked), then delete it."
  type        = bool
  default     = false
}

locals {
  checks = {
    pool        = var.pool
    name        = var.name
    config      = var.config
    mark        = var.mark
    expect_mark = var.expect_mark
  }
}

resource "terraform_data" "inspected" {
  input = local.checks
  # The provisioner runs on create only: any change of what is checked makes a new one.
  triggers_replace = local.checks

  provisioner "local-exec" {
    command = "python3 ${path.module}/look_at_volume.py"
    environment = {
      INSPECT_POOL        = var.pool
      INSPECT_NAME        = var.name
      INSPECT_CONFIG      = jsonencode(var.config)
      INSPECT_MARK        = tostring(var.mark)
      INSPECT_EXPECT_MARK = tostring(var.expect_mark)
    }
  }
}

output "checked" {
  description = "The config keys that matched (known only when every check passed)."
  value       = keys(terraform_data.inspected.output.config)
}
