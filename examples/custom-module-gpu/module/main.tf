# The notebook module, called with one change: a profile of the server's own, holding one
# GPU-style device, is applied after the operator's profiles. The profile is made and destroyed
# with the server (Terraform deletes the instance first, then the profile), so servers never
# share one and no operator step is needed before the first spawn.

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

module "notebook" {
  source = "./notebook" # a symlink to terraform/modules/notebook: a module path may not leave its package

  profiles = concat(var.profiles, [lxd_profile.gpu.name])

  name               = var.name
  image              = var.image
  remote             = var.remote
  target             = var.target
  user               = var.user
  server_cmd         = var.server_cmd
  server_cwd         = var.server_cwd
  server_port        = var.server_port
  server_environment = var.server_environment
  connect_via        = var.connect_via
  listen_address     = var.listen_address
  listen_port        = var.listen_port
  hub_address        = var.hub_address
  hub_port           = var.hub_port
  hub_socket_dir     = var.hub_socket_dir
  files              = var.files
  files_via_provider = var.files_via_provider
  disks              = var.disks
  volumes            = var.volumes
  devices            = var.devices
  limits             = var.limits
  privileged         = var.privileged
  config             = var.config
  labels             = var.labels
}
