# Test helper: looks inside an instance the notebook module created, from the machine running
# `terraform test`, with the lxc client. Provider v1.5.0 has no data source that reads files back,
# and a module test should see what the container got, not only what the plan said.
# The apply fails (and with it the run) when a file differs or the server never answers.

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

variable "instance" {
  description = "Name of the instance to inspect (on the lxc client's default remote)."
  type        = string
}

variable "files" {
  description = "Files expected in the instance: the module's `files` output (content, or the text of source)."
  type = list(object({
    target_path = string
    content     = optional(string)
    source      = optional(string)
    mode        = string
    uid         = number
    gid         = number
  }))
}

variable "environment_file" {
  description = "The module's `environment_file` output: where the environment is, its mode and owner."
  type = object({
    target_path = string
    mode        = string
    uid         = number
    gid         = number
  })
}

variable "environment" {
  description = "The server_environment given to the module (JUPYTER_TOKEN among it): env.json must hold exactly this."
  type        = map(string)
}

variable "connect_address" {
  description = "The module's connect_address: where the server answers through the proxy device (loopback)."
  type        = string
}

variable "connect_port" {
  description = "The module's connect_port."
  type        = number
}

variable "mounts" {
  description = "Paths inside the instance that must be mount points (of the module's volumes) root can write to."
  type        = list(string)
  default     = []
}

variable "readonly_mounts" {
  description = "Paths inside the instance that must be read-only mount points (volumes with readonly = true): even root's write is refused."
  type        = list(string)
  default     = []
}

locals {
  # The environment file is not in the module's files output (it holds the token): rebuild it.
  all_files = concat(var.files, [merge(var.environment_file, {
    content = jsonencode(var.environment)
    source  = null
  })])

  # stat prints modes without a leading zero, so "0640" is compared as "640".
  expected_files = [for f in local.all_files : {
    path   = f.target_path
    sha256 = f.content != null ? sha256(f.content) : filesha256(f.source)
    stat   = "${trimprefix(f.mode, "0")} ${f.uid} ${f.gid}"
  }]
}

resource "terraform_data" "inspected" {
  input = { files = local.expected_files, mounts = var.mounts, readonly_mounts = var.readonly_mounts }

  provisioner "local-exec" {
    command = "python3 ${path.module}/look_inside.py"
    environment = {
      INSPECT_INSTANCE   = var.instance
      INSPECT_FILES      = jsonencode(local.expected_files)
      INSPECT_SERVER_URL = "http://${var.connect_address}:${var.connect_port}/api/status"
      INSPECT_TOKEN      = var.environment["JUPYTER_TOKEN"]
      INSPECT_MOUNTS     = jsonencode(var.mounts)
      INSPECT_RO_MOUNTS  = jsonencode(var.readonly_mounts)
    }
  }
}

output "checked_paths" {
  description = "The paths whose mode, owner and content matched (known only when every check passed)."
  value       = [for f in terraform_data.inspected.output.files : f.path]
}

output "checked_mounts" {
  description = "The mount points found (known only when every check passed)."
  value       = terraform_data.inspected.output.mounts
}

output "checked_readonly_mounts" {
  description = "The read-only mount points found refusing a write (known only when every check passed)."
  value       = terraform_data.inspected.output.readonly_mounts
}
