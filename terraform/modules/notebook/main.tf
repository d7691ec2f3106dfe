locals {
  conf_dir = "/etc/jupyterhub-singleuser"

  # What the image's launcher reads: who to run as and what to run (an argument list, no shell).
  # groups and group_dirs only when given: a server without shared folders keeps the file it had.
  spawn = merge({
    user = var.user.name
    uid  = var.user.uid
    gid  = var.user.gid
    home = var.user.home
    cwd  = var.server_cwd
    cmd  = var.server_cmd
    }, length(var.user.groups) > 0 ? { groups = var.user.groups } : {},
    length(var.user.group_dirs) > 0 ? { group_dirs = var.user.group_dirs } : {},
  )

  spawn_file = {
    target_path = "${local.conf_dir}/spawn.json"
    content     = jsonencode(local.spawn)
    source      = null
    mode        = "0600"
    uid         = 0
    gid         = 0
  }

  # The environment holds the hub API token: a file of its own, 0600, owned by root.
  environment_file = {
    target_path = "${local.conf_dir}/env.json"
    mode        = "0600"
    uid         = 0
    gid         = 0
  }

  # Every file the instance gets, in order: the operator's, then the server's own.
  all_files = concat(var.files, [
    local.spawn_file,
    merge(local.environment_file, { content = jsonencode(var.server_environment), source = null }),
  ])

  proxy_devices = merge(
    # coalesce(): a null listen_port would fail in the template before the precondition on the
    # instance could name the problem.
    var.connect_via == "proxy" ? {
      jupyter-server = {
        type = "proxy"
        properties = {
          bind    = "host"
          listen  = "tcp:${var.listen_address}:${coalesce(var.listen_port, 0)}"
          connect = "tcp:127.0.0.1:${var.server_port}"
        }
      }
    } : {},
    var.hub_socket_dir != null ? {
      jupyterhub-api = {
        type = "disk"
        properties = {
          source   = var.hub_socket_dir
          path     = "/var/lib/tf-lxd-spawner/hub"
          readonly = "true"
        }
      }
      } : var.hub_address == null ? {} : {
      jupyterhub-api = {
        type = "proxy"
        properties = {
          bind    = "container"
          listen  = "tcp:127.0.0.1:${var.hub_port}"
          connect = "tcp:${var.hub_address}:${var.hub_port}"
        }
      }
    },
  )

  disk_devices = {
    for d in var.disks : d.name => {
      type = "disk"
      properties = merge(
        { source = d.source, path = d.path },
        d.readonly ? { readonly = "true" } : {},
        d.shift ? { shift = "true" } : {},
      )
    }
  }

  volume_devices = {
    for v in var.volumes : v.name => {
      type = "disk"
      # readonly only when set: a home's device keeps exactly the properties it always had.
      properties = merge(
        { pool = v.pool, source = v.source, path = v.path },
        v.readonly ? { readonly = "true" } : {},
      )
    }
  }

  # A name in two of these would silently lose a device: the precondition below refuses that.
  devices = merge(local.disk_devices, local.volume_devices, var.devices, local.proxy_devices)
  device_names = concat(
    keys(local.disk_devices), keys(local.volume_devices), keys(var.devices), keys(local.proxy_devices),
  )

  # LXD drops keys with empty values: leaving them out keeps the next plan from seeing a
  # change (a change of config replaces the instance with provider v1.5.0).
  config = { for k, v in merge(
    var.config,
    { for k, v in var.labels : "user.tf-lxd-spawner.${k}" => v },
    {
      "user.tf-lxd-spawner.managed" = "true"
      "security.privileged"         = tostring(var.privileged)
    },
  ) : k => v if v != "" }
}

resource "lxd_container" "notebook" {
  name            = var.name
  image           = var.image
  remote          = var.remote
  target          = var.target
  profiles        = var.profiles
  limits          = var.limits
  config          = local.config
  ephemeral       = false
  start_container = var.files_via_provider
  # instance-ip: when the provider starts the instance, it waits for an IPv4 address (up to
  # 3 minutes); with files_via_provider = false the caller starts it and waits itself.
  wait_for_network = var.connect_via == "instance-ip"

  dynamic "device" {
    for_each = local.devices
    content {
      name       = device.key
      type       = device.value.type
      properties = device.value.properties
    }
  }

  dynamic "file" {
    for_each = var.files_via_provider ? local.all_files : []
    content {
      target_file        = file.value.target_path
      content            = file.value.content
      source             = file.value.source
      mode               = file.value.mode
      uid                = file.value.uid
      gid                = file.value.gid
      create_directories = true
    }
  }

  lifecycle {
    precondition {
      condition     = var.connect_via != "proxy" || var.listen_port != null
      error_message = "connect_via = \"proxy\" needs listen_port."
    }
    precondition {
      condition     = length(distinct(local.device_names)) == length(local.device_names)
      error_message = "Device names must be unique across disks, volumes, devices and the module's own proxy devices (jupyter-server, jupyterhub-api)."
    }
    # A stopped instance (created stopped, or a kept one before it is resumed) has no address yet.
    postcondition {
      condition     = var.connect_via != "instance-ip" || self.status != "Running" || self.ipv4_address != ""
      error_message = "connect_via = \"instance-ip\" needs an IPv4 address on the instance: give it a nic device on a network that provides one (profiles or devices), or use connect_via = \"proxy\"."
    }
  }
}
