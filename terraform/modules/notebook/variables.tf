variable "name" {
  description = "Name of the LXD instance. LXD allows letters, digits and hyphens, at most 63 characters, starting with a letter and not ending with a hyphen."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", var.name))
    error_message = "The name must be 1-63 letters, digits or hyphens, start with a letter and not end with a hyphen."
  }
}

variable "image" {
  description = "Image alias or fingerprint on the LXD server (or \"remote:alias\") that has the JupyterHub single-user server and its systemd unit."
  type        = string

  validation {
    condition     = length(trimspace(var.image)) > 0
    error_message = "The image must not be empty."
  }
}

variable "remote" {
  description = "Name of the provider's LXD remote to create the instance on; null uses the provider's default remote."
  type        = string
  default     = null
}

variable "target" {
  description = "Cluster member to create the instance on; null lets LXD choose (and is the only valid value on a standalone server)."
  type        = string
  default     = null
}

variable "profiles" {
  description = "LXD profiles applied to the instance, in order. The default profile must provide the root disk."
  type        = list(string)
  default     = ["default"]

  validation {
    condition     = alltrue([for p in var.profiles : length(trimspace(p)) > 0])
    error_message = "Profile names must not be empty."
  }
}

variable "user" {
  description = "The account the single-user server runs as inside the instance. It is created at boot with this uid and gid when missing, so files in mounted directories belong to the same ids as on the host. groups: supplementary group ids the account is made a member of (created when missing), e.g. a shared folder's group. group_dirs: directories (a shared folder the user may write) the launcher gives to a group and makes setgid 2775 at boot, so files written there by several users stay writable for the group; the server then runs with umask 0002."
  type = object({
    name       = string
    uid        = number
    gid        = number
    home       = string
    groups     = optional(list(number), [])
    group_dirs = optional(list(object({ path = string, gid = number })), [])
  })

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.user.name))
    error_message = "user.name must be a valid POSIX account name: lower-case letters, digits, '_' or '-', at most 32 characters, not starting with a digit or '-'."
  }
  validation {
    condition     = var.user.uid >= 0 && var.user.uid < 4294967295 && floor(var.user.uid) == var.user.uid && var.user.gid >= 0 && var.user.gid < 4294967295 && floor(var.user.gid) == var.user.gid
    error_message = "user.uid and user.gid must be whole numbers between 0 and 4294967294."
  }
  validation {
    condition     = startswith(var.user.home, "/")
    error_message = "user.home must be an absolute path."
  }
  validation {
    condition     = alltrue([for g in concat(var.user.groups, [for d in var.user.group_dirs : d.gid]) : g > 0 && g < 4294967295 && floor(g) == g])
    error_message = "user.groups and user.group_dirs[*].gid must be whole numbers between 1 and 4294967294 (never root's group)."
  }
  validation {
    condition     = alltrue([for d in var.user.group_dirs : startswith(d.path, "/") && d.path != "/"])
    error_message = "user.group_dirs[*].path must be an absolute path other than /."
  }
}

variable "server_cmd" {
  description = "Command line of the single-user server as an argument list (no shell). It must listen on server_port inside the instance: on 127.0.0.1 with connect_via = \"proxy\", on the instance's own address (or all addresses) with \"instance-ip\"."
  type        = list(string)
  default     = ["jupyterhub-singleuser"]

  validation {
    # try(): && does not short-circuit, so [0] of an empty list would fail before this message.
    condition     = length(try(var.server_cmd[0], "")) > 0
    error_message = "server_cmd must name at least a program."
  }
}

variable "server_cwd" {
  description = "Working directory of the single-user server; null means the user's home."
  type        = string
  default     = null
}

variable "server_port" {
  description = "TCP port the single-user server listens on inside the instance."
  type        = number
  default     = 8888

  validation {
    condition     = var.server_port >= 1 && var.server_port <= 65535 && floor(var.server_port) == var.server_port
    error_message = "server_port must be a TCP port number (1-65535)."
  }
}

variable "server_environment" {
  description = "Environment of the single-user server (JUPYTERHUB_API_TOKEN among it). Written into the instance as a root-only 0600 file; pass it as data (the spawner's root module takes it as JSON text in TF_VAR_server_environment_json), never on a command line."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "connect_via" {
  description = "How the hub reaches the server: \"proxy\" (an LXD proxy device listening on listen_address:listen_port of the member; needs no network in the instance) or \"instance-ip\" (the instance's own IPv4 address and server_port, with no proxy device for the server: the instance needs a nic device and an address the hub can route to, and the provider waits for that address when it starts the instance)."
  type        = string
  default     = "proxy"

  validation {
    condition     = contains(["proxy", "instance-ip"], var.connect_via)
    error_message = "connect_via must be \"proxy\" or \"instance-ip\"."
  }
}

variable "listen_address" {
  description = "Address on the member where the proxy device exposes the server (connect_via = \"proxy\")."
  type        = string
  default     = "127.0.0.1"

  validation {
    condition     = can(cidrhost("${var.listen_address}/32", 0)) || can(cidrhost("${var.listen_address}/128", 0))
    error_message = "listen_address must be an IPv4 or IPv6 address."
  }
}

variable "listen_port" {
  description = "Port on the member where the proxy device exposes the server (connect_via = \"proxy\"). Each server on a member needs its own."
  type        = number
  default     = null

  validation {
    condition     = var.listen_port == null ? true : (var.listen_port >= 1 && var.listen_port <= 65535 && floor(var.listen_port) == var.listen_port)
    error_message = "listen_port must be a TCP port number (1-65535)."
  }
}

variable "hub_address" {
  description = "Address of the hub API as seen from the member. A proxy device with bind=container makes it reachable inside the instance on 127.0.0.1:hub_port. Null adds no such device (the server then needs another route to the hub)."
  type        = string
  default     = "127.0.0.1"
}

variable "hub_socket_dir" {
  description = "Host directory (on the member: the hub's own host) holding the hub API's unix socket hub-api.sock. When set, it is mounted read-only at /var/lib/tf-lxd-spawner/hub instead of the hub_address proxy device, and the image's relay (its jupyterhub-api.socket unit) serves the hub API inside on 127.0.0.1:8081. A disk device adds nothing to the instance's start, where each proxy device costs about a second."
  type        = string
  default     = null

  validation {
    condition     = var.hub_socket_dir == null ? true : startswith(var.hub_socket_dir, "/")
    error_message = "hub_socket_dir must be an absolute path."
  }
}

variable "hub_port" {
  description = "Port of the hub API, on the member and (through the proxy device) inside the instance."
  type        = number
  default     = 8081

  validation {
    condition     = var.hub_port >= 1 && var.hub_port <= 65535 && floor(var.hub_port) == var.hub_port
    error_message = "hub_port must be a TCP port number (1-65535)."
  }
}

variable "files" {
  description = "Files written into the instance before it starts. Each has target_path (absolute) and exactly one of content (inline text) or source (a path on the machine running Terraform), plus mode (octal string), uid and gid."
  type = list(object({
    target_path = string
    content     = optional(string)
    source      = optional(string)
    mode        = optional(string, "0644")
    uid         = optional(number, 0)
    gid         = optional(number, 0)
  }))
  default = []

  validation {
    condition     = alltrue([for f in var.files : (f.content == null) != (f.source == null)])
    error_message = "Each file needs exactly one of content or source."
  }
  validation {
    condition     = alltrue([for f in var.files : startswith(f.target_path, "/")])
    error_message = "Each file's target_path must be absolute."
  }
  validation {
    condition     = alltrue([for f in var.files : can(regex("^0?[0-7]{3,4}$", f.mode))])
    error_message = "Each file's mode must be an octal string such as \"0644\"."
  }
  validation {
    condition     = alltrue([for f in var.files : f.source == null ? true : fileexists(f.source)])
    error_message = "Each file's source must be an existing file."
  }
}

variable "files_via_provider" {
  description = "True: the provider writes every file (files, the server's launch file and environment) and starts the instance in the same apply. False: the instance is created stopped and the caller writes the files listed in the `files` output, then starts it. Needed on Incus with the LXD provider v1.5.0, whose file uploads use the /1.0/containers API that Incus removed (instance creation itself uses /1.0/instances and works)."
  type        = bool
  default     = true
}

variable "disks" {
  description = "Host directories mounted into the instance: name (device name), source (host path on the member), path (inside the instance), readonly, and shift (an idmapped mount, so ids inside an unprivileged instance are the same ids on the host)."
  type = list(object({
    name     = string
    source   = string
    path     = string
    readonly = optional(bool, false)
    shift    = optional(bool, false)
  }))
  default = []

  validation {
    condition     = alltrue([for d in var.disks : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", d.name))])
    error_message = "Disk names must be letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit."
  }
  validation {
    condition     = alltrue([for d in var.disks : startswith(d.source, "/") && startswith(d.path, "/")])
    error_message = "Disk source and path must be absolute paths."
  }
  validation {
    condition     = length(distinct([for d in var.disks : d.name])) == length(var.disks)
    error_message = "Disk names must be unique."
  }
}

variable "volumes" {
  description = "LXD custom storage volumes mounted into the instance (a user's home from the storage module, a group's shared folder): name (device name), pool and source (the volume's pool and name), path (the mount point inside the instance, absolute), readonly (default false: the daemon mounts it read-only, so nothing in the instance can write it). The volume outlives the instance: destroying the instance only removes the device."
  type = list(object({
    name     = string
    pool     = string
    source   = string
    path     = string
    readonly = optional(bool, false)
  }))
  default = []

  validation {
    condition     = alltrue([for v in var.volumes : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", v.name))])
    error_message = "Volume device names must be letters, digits, '.', '_' or '-' (at most 64), starting with a letter or digit."
  }
  validation {
    condition     = alltrue([for v in var.volumes : !contains(["jupyter-server", "jupyterhub-api", "root"], v.name)])
    error_message = "Volume device names must not be jupyter-server or jupyterhub-api (the module's own proxy devices) or root (the root disk)."
  }
  validation {
    condition     = length(distinct([for v in var.volumes : v.name])) == length(var.volumes)
    error_message = "Volume device names must be unique."
  }
  validation {
    condition     = alltrue([for v in var.volumes : startswith(v.path, "/") && v.path != "/"])
    error_message = "Each volume's path must be an absolute path other than /."
  }
  validation {
    condition     = length(distinct([for v in var.volumes : trimsuffix(v.path, "/")])) == length(var.volumes)
    error_message = "Each volume needs a mount path of its own."
  }
  validation {
    condition     = alltrue([for v in var.volumes : length(trimspace(v.pool)) > 0 && length(trimspace(v.source)) > 0])
    error_message = "Each volume needs a pool and a source (the volume's name)."
  }
}

variable "devices" {
  description = "Extra LXD devices by name (a GPU, a unix-char device, another disk...): each a type and its properties, passed to LXD as they are."
  type = map(object({
    type       = string
    properties = map(string)
  }))
  default = {}
}

variable "limits" {
  description = "LXD limits.* keys without the prefix, e.g. { memory = \"2147483648\", cpu = \"2\", \"cpu.allowance\" = \"50%\", processes = \"500\" }."
  type        = map(string)
  default     = {}
}

variable "privileged" {
  description = "Run the instance privileged (security.privileged). Unprivileged instances are much safer; only set this when pushed /etc/passwd or mounts need host ids unmapped."
  type        = bool
  default     = false
}

variable "config" {
  description = "Extra instance config keys passed to LXD as they are (e.g. { \"security.nesting\" = \"true\" })."
  type        = map(string)
  default     = {}
}

variable "labels" {
  description = "Labels recorded on the instance as user.tf-lxd-spawner.<key> config keys (owner, server...), so operators and the spawner can recognise the instances it manages."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, _ in var.labels : can(regex("^[a-z0-9][a-z0-9._-]*$", k))])
    error_message = "Label keys must be lower-case letters, digits, '.', '_' or '-'."
  }
}
