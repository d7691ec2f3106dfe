variable "name" {
  description = "Name of the LXD custom storage volume (one user's home). LXD allows letters, digits and hyphens, at most 63 characters, starting with a letter and not ending with a hyphen."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", var.name))
    error_message = "The name must be 1-63 letters, digits or hyphens, start with a letter and not end with a hyphen."
  }
}

variable "pool" {
  description = "Storage pool the volume lives in. Changing it replaces the volume (a new, empty one): the spawner never applies such a plan."
  type        = string
  default     = "default"

  validation {
    condition     = length(trimspace(var.pool)) > 0
    error_message = "The pool must not be empty."
  }
}

variable "size" {
  description = "Quota of the volume (LXD's size key): a whole number of bytes with an optional unit, e.g. \"10GiB\", \"500MiB\", \"1GB\". null or \"\" sets no quota. Growing it updates the volume in place; whether a shrink succeeds depends on the pool driver and the data on it."
  type        = string
  default     = null

  validation {
    condition     = var.size == null ? true : (var.size == "" || can(regex("^[1-9][0-9]*(B|kB|MB|GB|TB|PB|EB|KiB|MiB|GiB|TiB|PiB|EiB)?$", var.size)))
    error_message = "size must be a whole number of bytes with an optional unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, ...), e.g. \"10GiB\", or null/\"\" for no quota."
  }
}

variable "config" {
  description = "Extra volume config keys passed to LXD as they are, e.g. { \"snapshots.schedule\" = \"@daily\", \"snapshots.expiry\" = \"2w\" }. Not size (it has its own variable) and not user.tf-lxd-spawner.* (see labels). Keys with empty values are left out: LXD drops them."
  type        = map(string)
  default     = {}

  validation {
    condition     = !contains(keys(var.config), "size")
    error_message = "Set the volume's quota with the size variable, not config[\"size\"]."
  }
  validation {
    condition     = alltrue([for k, _ in var.config : !startswith(k, "user.tf-lxd-spawner.") && !startswith(k, "volatile.")])
    error_message = "config must not hold user.tf-lxd-spawner.* keys (use labels) or volatile.* keys (LXD's own)."
  }
}

variable "target" {
  description = "Cluster member to create the volume on, for a pool local to each member (btrfs, dir, zfs, lvm); null or \"\" on a standalone server, for a remote pool (ceph), or to let LXD choose. Changing it replaces the volume."
  type        = string
  default     = null
}

variable "remote" {
  description = "Name of the provider's LXD remote to create the volume on; null uses the provider's default remote."
  type        = string
  default     = null
}

variable "labels" {
  description = "Labels recorded on the volume as user.tf-lxd-spawner.<key> config keys (hub, owner...), so operators and an orphans tool can find the volumes a hub manages. Changing them updates the volume in place."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, _ in var.labels : can(regex("^[a-z0-9][a-z0-9._-]*$", k))])
    error_message = "Label keys must be lower-case letters, digits, '.', '_' or '-'."
  }
}
