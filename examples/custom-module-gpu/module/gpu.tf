# What this module adds to the notebook module it copies: a profile of the server's own holding
# one GPU-style device, applied after var.profiles. The profile is made and destroyed with the
# server (Terraform deletes the instance first, then its profile), so servers never share one
# and no operator step is needed before the first spawn.

variable "gpu" {
  description = "The device the GPU profile gives the instance, as LXD takes it: a type and its properties. The default is a stand-in that works on any host without a GPU (the host's /dev/null, a character device, appears as /dev/gpu-standin). On a GPU host: { type = \"gpu\", properties = { gputype = \"physical\" } } (all GPUs), or with id, pci, vendorid or productid to pick one."
  type = object({
    type       = string
    properties = map(string)
  })
  default = {
    type = "unix-char"
    properties = {
      source = "/dev/null"
      path   = "/dev/gpu-standin"
    }
  }

  validation {
    condition     = contains(["gpu", "unix-char", "unix-block"], var.gpu.type)
    error_message = "gpu.type must be \"gpu\", \"unix-char\" or \"unix-block\"."
  }
}

variable "gpu_profile_config" {
  description = "Config keys of the GPU profile, e.g. { \"nvidia.runtime\" = \"true\" } to pass the host's NVIDIA user-space libraries into the instance."
  type        = map(string)
  default     = {}
}

resource "lxd_profile" "gpu" {
  name        = "${var.name}-gpu"
  description = "GPU of the JupyterHub server ${var.name} (tf-lxd-spawner example custom-module-gpu)"
  remote      = var.remote
  config      = var.gpu_profile_config

  device {
    name       = "gpu"
    type       = var.gpu.type
    properties = var.gpu.properties
  }
}

output "gpu_profile" {
  description = "Name of the profile that gives the instance its GPU device."
  value       = lxd_profile.gpu.name
}
