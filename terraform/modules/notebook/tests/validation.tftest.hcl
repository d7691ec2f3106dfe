# Every input validation and the precondition, one plan each: bad input stops at plan time with
# the module's own message, before anything reaches the daemon. Nothing is created here.

provider "lxd" {
  refresh_interval             = "250ms"
  generate_client_certificates = false
  accept_remote_certificate    = false
}

variables {
  name        = "tftest-validation"
  image       = "jupyter-notebook"
  user        = { name = "tftest", uid = 1000, gid = 1000, home = "/home/tftest" }
  listen_port = 20000
}

# Valid input plans, and what connect_via = "instance-ip" and hub_address = null change.
run "instance_ip_plan" {
  command = plan

  variables {
    connect_via = "instance-ip"
    hub_address = null
    listen_port = null
    disks       = [{ name = "data", source = "/srv/data", path = "/data", readonly = true }]
  }

  assert {
    condition     = output.connect_port == 8888
    error_message = "With instance-ip the hub connects to server_port."
  }
  assert {
    condition     = lxd_container.notebook.wait_for_network
    error_message = "With instance-ip the provider should wait for the instance's address when it starts it."
  }
  assert {
    condition     = [for d in lxd_container.notebook.device : d.name] == ["data"]
    error_message = "With instance-ip and no hub_address there should be no proxy device, only the disk."
  }
  assert {
    condition     = one(lxd_container.notebook.device).properties == tomap({ source = "/srv/data", path = "/data", readonly = "true" })
    error_message = "A readonly disk should carry readonly = true and no shift."
  }
  assert {
    condition     = lxd_container.notebook.start_container
    error_message = "With files_via_provider (the default) the provider starts the instance."
  }
}

run "files_via_caller_plan" {
  command = plan

  variables {
    files_via_provider = false
  }

  assert {
    condition     = !lxd_container.notebook.start_container && length(lxd_container.notebook.file) == 0
    error_message = "With files_via_provider = false the instance is created stopped and without files."
  }
}

run "hub_socket_plan" {
  command = plan

  variables {
    hub_address    = null
    hub_socket_dir = "/var/lib/jupyterhub/tf-lxd/_hub-api"
  }

  assert {
    condition     = one([for d in lxd_container.notebook.device : d if d.name == "jupyterhub-api"]).type == "disk"
    error_message = "With hub_socket_dir the hub API comes in as a disk device, not a proxy device."
  }
  assert {
    condition = one([for d in lxd_container.notebook.device : d.properties if d.name == "jupyterhub-api"]) == tomap({
      source = "/var/lib/jupyterhub/tf-lxd/_hub-api", path = "/var/lib/tf-lxd-spawner/hub", readonly = "true"
    })
    error_message = "The hub's socket directory should be mounted read-only where the image's relay looks."
  }
}

run "relative_hub_socket_dir" {
  command = plan
  variables {
    hub_socket_dir = "_hub-api"
  }
  expect_failures = [var.hub_socket_dir]
}

run "proxy_needs_listen_port" {
  command = plan
  variables {
    listen_port = null
  }
  expect_failures = [lxd_container.notebook]
}

run "name_starting_with_hyphen" {
  command = plan
  variables {
    name = "-notebook"
  }
  expect_failures = [var.name]
}

run "name_too_long" {
  command = plan
  variables {
    # 64 characters: one more than LXD allows (no functions here: OpenTofu refuses them in tests).
    name = "n123456789012345678901234567890123456789012345678901234567890123"
  }
  expect_failures = [var.name]
}

run "empty_image" {
  command = plan
  variables {
    image = " "
  }
  expect_failures = [var.image]
}

run "empty_profile" {
  command = plan
  variables {
    profiles = ["default", ""]
  }
  expect_failures = [var.profiles]
}

run "bad_user_name" {
  command = plan
  variables {
    user = { name = "Alice Smith", uid = 1000, gid = 1000, home = "/home/alice" }
  }
  expect_failures = [var.user]
}

run "fractional_uid" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000.5, gid = 1000, home = "/home/alice" }
  }
  expect_failures = [var.user]
}

run "relative_home" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000, gid = 1000, home = "home/alice" }
  }
  expect_failures = [var.user]
}

# spawn.json, as the provider writes it (the resource's file) and as a caller would (the files
# output): without groups it is the file a server always had, byte for byte.
run "spawn_without_groups_plan" {
  command = plan

  assert {
    condition     = one([for f in lxd_container.notebook.file : f.content if f.target_file == "/etc/jupyterhub-singleuser/spawn.json"]) == "{\"cmd\":[\"jupyterhub-singleuser\"],\"cwd\":null,\"gid\":1000,\"home\":\"/home/tftest\",\"uid\":1000,\"user\":\"tftest\"}"
    error_message = "Without groups spawn.json should be the file it always was, byte for byte."
  }
  assert {
    condition = [for k, v in jsondecode(one([for f in output.files : f.content if f.target_path == "/etc/jupyterhub-singleuser/spawn.json"])) : k] == [
      "cmd", "cwd", "gid", "home", "uid", "user",
    ]
    error_message = "Without groups spawn.json should have no groups or group_dirs key."
  }
}

# Empty lists given are the same as none given.
run "spawn_with_empty_groups_plan" {
  command = plan
  variables {
    user = { name = "tftest", uid = 1000, gid = 1000, home = "/home/tftest", groups = [], group_dirs = [] }
  }
  assert {
    condition     = [for k, v in jsondecode(one([for f in lxd_container.notebook.file : f.content if f.target_file == "/etc/jupyterhub-singleuser/spawn.json"])) : k] == ["cmd", "cwd", "gid", "home", "uid", "user"]
    error_message = "Empty groups and group_dirs should leave spawn.json without those keys."
  }
}

run "spawn_with_groups_plan" {
  command = plan
  variables {
    user = {
      name       = "tftest"
      uid        = 1000
      gid        = 1000
      home       = "/home/tftest"
      groups     = [5001, 5002]
      group_dirs = [{ path = "/shared/physics", gid = 5001 }]
    }
  }
  assert {
    # Both sides decoded, so the JSON types (tuples, numbers) compare alike.
    condition = jsondecode(one([for f in lxd_container.notebook.file : f.content if f.target_file == "/etc/jupyterhub-singleuser/spawn.json"])) == jsondecode(jsonencode({
      user   = "tftest", uid = 1000, gid = 1000, home = "/home/tftest", cwd = null, cmd = ["jupyterhub-singleuser"]
      groups = [5001, 5002], group_dirs = [{ path = "/shared/physics", gid = 5001 }]
    }))
    error_message = "spawn.json should carry groups and group_dirs when given."
  }
  assert {
    condition = (one([for f in output.files : f.content if f.target_path == "/etc/jupyterhub-singleuser/spawn.json"])
    == one([for f in lxd_container.notebook.file : f.content if f.target_file == "/etc/jupyterhub-singleuser/spawn.json"]))
    error_message = "The files output should hold the same spawn.json as the provider writes."
  }
}

run "user_group_zero" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000, gid = 1000, home = "/home/alice", groups = [0] }
  }
  expect_failures = [var.user]
}

run "user_group_dir_gid_zero" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000, gid = 1000, home = "/home/alice", group_dirs = [{ path = "/shared/physics", gid = 0 }] }
  }
  expect_failures = [var.user]
}

run "user_group_dir_at_root" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000, gid = 1000, home = "/home/alice", groups = [5001], group_dirs = [{ path = "/", gid = 5001 }] }
  }
  expect_failures = [var.user]
}

run "user_group_dir_relative_path" {
  command = plan
  variables {
    user = { name = "alice", uid = 1000, gid = 1000, home = "/home/alice", groups = [5001], group_dirs = [{ path = "shared/physics", gid = 5001 }] }
  }
  expect_failures = [var.user]
}

run "empty_server_cmd" {
  command = plan
  variables {
    server_cmd = []
  }
  expect_failures = [var.server_cmd]
}

run "server_port_out_of_range" {
  command = plan
  variables {
    server_port = 65536
  }
  expect_failures = [var.server_port]
}

run "unknown_connect_via" {
  command = plan
  variables {
    connect_via = "bridge"
  }
  expect_failures = [var.connect_via]
}

run "listen_address_not_an_ip" {
  command = plan
  variables {
    listen_address = "localhost"
  }
  expect_failures = [var.listen_address]
}

run "listen_port_zero" {
  command = plan
  variables {
    listen_port = 0
  }
  expect_failures = [var.listen_port]
}

run "hub_port_fractional" {
  command = plan
  variables {
    hub_port = 8081.5
  }
  expect_failures = [var.hub_port]
}

run "file_with_content_and_source" {
  command = plan
  variables {
    files = [{ target_path = "/etc/x", content = "x", source = "tests/fixtures/source.txt" }]
  }
  expect_failures = [var.files]
}

run "file_relative_target" {
  command = plan
  variables {
    files = [{ target_path = "etc/x", content = "x" }]
  }
  expect_failures = [var.files]
}

run "file_mode_not_octal" {
  command = plan
  variables {
    files = [{ target_path = "/etc/x", content = "x", mode = "0689" }]
  }
  expect_failures = [var.files]
}

run "file_source_missing" {
  command = plan
  variables {
    files = [{ target_path = "/etc/x", source = "tests/fixtures/no-such-file" }]
  }
  expect_failures = [var.files]
}

run "disk_bad_name" {
  command = plan
  variables {
    disks = [{ name = "my disk", source = "/srv", path = "/srv" }]
  }
  expect_failures = [var.disks]
}

run "disk_relative_path" {
  command = plan
  variables {
    disks = [{ name = "data", source = "/srv", path = "data" }]
  }
  expect_failures = [var.disks]
}

run "disk_names_repeated" {
  command = plan
  variables {
    disks = [{ name = "data", source = "/srv/a", path = "/a" }, { name = "data", source = "/srv/b", path = "/b" }]
  }
  expect_failures = [var.disks]
}

run "label_key_upper_case" {
  command = plan
  variables {
    labels = { Owner = "alice" }
  }
  expect_failures = [var.labels]
}

run "volume_plan" {
  command = plan
  variables {
    volumes = [{ name = "home", pool = "default", source = "home-alice", path = "/home/alice" }]
  }
  assert {
    condition     = one([for d in lxd_container.notebook.device : d if d.name == "home"]).properties == tomap({ pool = "default", source = "home-alice", path = "/home/alice" })
    error_message = "A volume should be a disk device with pool, source and path."
  }
}

# readonly only where asked: a volume without it (a home) keeps exactly the device it always had.
run "volume_readonly_plan" {
  command = plan
  variables {
    volumes = [
      { name = "home", pool = "default", source = "home-alice", path = "/home/alice" },
      { name = "scratch", pool = "default", source = "scratch", path = "/scratch", readonly = false },
      { name = "shared", pool = "default", source = "shared-physics", path = "/shared/physics", readonly = true },
    ]
  }
  assert {
    condition     = one([for d in lxd_container.notebook.device : d if d.name == "home"]).properties == tomap({ pool = "default", source = "home-alice", path = "/home/alice" })
    error_message = "A volume without readonly should have no readonly key: pool, source and path only."
  }
  assert {
    condition     = one([for d in lxd_container.notebook.device : d if d.name == "scratch"]).properties == tomap({ pool = "default", source = "scratch", path = "/scratch" })
    error_message = "A volume with readonly = false should have no readonly key either."
  }
  assert {
    condition     = one([for d in lxd_container.notebook.device : d.properties if d.name == "shared" && d.type == "disk"]) == tomap({ pool = "default", source = "shared-physics", path = "/shared/physics", readonly = "true" })
    error_message = "A volume with readonly = true should be a disk device with readonly = \"true\"."
  }
}

run "volume_relative_path" {
  command = plan
  variables {
    volumes = [{ name = "home", pool = "default", source = "home-alice", path = "home/alice" }]
  }
  expect_failures = [var.volumes]
}

run "volume_at_root" {
  command = plan
  variables {
    volumes = [{ name = "home", pool = "default", source = "home-alice", path = "/" }]
  }
  expect_failures = [var.volumes]
}

run "volume_names_repeated" {
  command = plan
  variables {
    volumes = [
      { name = "home", pool = "default", source = "a", path = "/a" },
      { name = "home", pool = "default", source = "b", path = "/b" },
    ]
  }
  expect_failures = [var.volumes]
}

run "volume_paths_repeated" {
  command = plan
  variables {
    volumes = [
      { name = "a", pool = "default", source = "a", path = "/data" },
      { name = "b", pool = "default", source = "b", path = "/data/" },
    ]
  }
  expect_failures = [var.volumes]
}

run "volume_named_like_the_server_proxy" {
  command = plan
  variables {
    volumes = [{ name = "jupyter-server", pool = "default", source = "home-alice", path = "/home/alice" }]
  }
  expect_failures = [var.volumes]
}

run "volume_without_source" {
  command = plan
  variables {
    volumes = [{ name = "home", pool = "default", source = "", path = "/home/alice" }]
  }
  expect_failures = [var.volumes]
}

run "volume_named_like_a_disk" {
  command = plan
  variables {
    disks   = [{ name = "data", source = "/srv/data", path = "/data" }]
    volumes = [{ name = "data", pool = "default", source = "home-alice", path = "/home/alice" }]
  }
  expect_failures = [lxd_container.notebook]
}

run "device_named_like_the_hub_proxy" {
  command = plan
  variables {
    devices = { jupyterhub-api = { type = "unix-char", properties = { path = "/dev/x" } } }
  }
  expect_failures = [lxd_container.notebook]
}
