# The inputs tf-lxd-spawner passes, handed to the notebook module unchanged: their types,
# defaults and validations are the notebook module's (terraform/modules/notebook/variables.tf),
# so this module keeps up with it instead of copying it. Optional ones default as it does.

variable "name" {
  description = "Instance name (see the notebook module)."
  type        = any
}

variable "image" {
  description = "Image alias or fingerprint (see the notebook module)."
  type        = any
}

variable "remote" {
  description = "Provider remote to create the instance and its GPU profile on; null: the default."
  type        = string
  default     = null
}

variable "target" {
  description = "Cluster member (see the notebook module)."
  type        = any
  default     = null
}

variable "profiles" {
  description = "The operator's profiles; the GPU profile is applied after them."
  type        = list(string)
}

variable "user" {
  description = "The user's account in the container (see the notebook module)."
  type        = any
}

variable "server_cmd" {
  description = "The single-user server's command (see the notebook module)."
  type        = any
}

variable "server_cwd" {
  description = "The server's working directory (see the notebook module)."
  type        = any
  default     = null
}

variable "server_port" {
  description = "The server's port inside the container (see the notebook module)."
  type        = any
}

variable "server_environment" {
  description = "The server's environment, API token included (see the notebook module)."
  type        = any
  sensitive   = true
}

variable "connect_via" {
  description = "How the hub reaches the server (see the notebook module)."
  type        = any
}

variable "listen_address" {
  description = "Proxy device listen address (see the notebook module)."
  type        = any
}

variable "listen_port" {
  description = "Proxy device listen port (see the notebook module)."
  type        = any
  default     = null
}

variable "hub_address" {
  description = "The hub API's address as the member sees it (see the notebook module)."
  type        = any
}

variable "hub_socket_dir" {
  description = "The directory of the hub API's unix socket, when the spawner uses it (see the notebook module)."
  type        = any
  default     = null
}

variable "hub_port" {
  description = "The hub API's port (see the notebook module)."
  type        = any
}

variable "files" {
  description = "Files to write into the instance (see the notebook module)."
  type        = any
}

variable "files_via_provider" {
  description = "Whether the provider writes the files (see the notebook module)."
  type        = bool
  default     = true
}

variable "disks" {
  description = "Host directories to mount (see the notebook module)."
  type        = any
}

variable "volumes" {
  description = "Custom storage volumes to mount, a user's home among them (see the notebook module)."
  type        = any
  default     = []
}

variable "devices" {
  description = "Extra devices of the instance itself (see the notebook module)."
  type        = any
  default     = {}
}

variable "limits" {
  description = "Resource limits (see the notebook module)."
  type        = any
}

variable "privileged" {
  description = "Privileged container (see the notebook module)."
  type        = any
}

variable "config" {
  description = "Extra instance config keys (see the notebook module)."
  type        = any
}

variable "labels" {
  description = "The spawner's ownership labels (see the notebook module)."
  type        = any
}

# ---- this module's own inputs (through c.LxdSpawner.module_variables) -----------------------

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
