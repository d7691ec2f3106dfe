# The module on its own against the real daemon: `terraform test` (or `tofu test`) in the module
# directory creates one container from the jupyter-notebook image, checks the outputs, the
# resource and what the container really got, then destroys it.
#
# The instance name and the proxy port come from the caller, so parallel runs cannot collide:
#   TF_VAR_name=tftest-$USER TF_VAR_listen_port=20999 terraform test
# (tests/e2e/test_module_tftest.py runs it with a random name and a free port).

provider "lxd" {
  # Provider v1.5.0 waits up to 10 s more on every apply and destroy unless this is low.
  refresh_interval             = "250ms"
  generate_client_certificates = false
  accept_remote_certificate    = false
}

variables {
  image = "jupyter-notebook"
  user  = { name = "tftest", uid = 1000, gid = 1000, home = "/home/tftest" }
  server_cmd = [
    "jupyter-server", "--ip=127.0.0.1", "--port=8888", "--ServerApp.root_dir=/home/tftest",
  ]
  server_environment = { JUPYTER_TOKEN = "tftest-token" }
  files = [
    { target_path = "/etc/tftest/inline.txt", content = "pushed inline\n", mode = "0640", uid = 1000, gid = 1000 },
    { target_path = "/opt/tftest/source.txt", source = "tests/fixtures/source.txt" },
  ]
  labels = { owner = "tftest" }
  limits = { processes = "2000" }
}

# A custom volume (what the storage module makes for a user's home) for the instance to mount.
run "volume" {
  module {
    source = "./tests/volume"
  }
}

run "create" {
  variables {
    # The same volume twice: as it always was (a home), and read-only (a shared folder the user
    # may only read), so the look inside can see the daemon refuse a write on the second.
    volumes = [
      { name = "tftest-volume", pool = run.volume.pool, source = run.volume.name, path = "/mnt/tftest-volume" },
      { name = "tftest-volume-ro", pool = run.volume.pool, source = run.volume.name, path = "/mnt/tftest-volume-ro", readonly = true },
    ]
  }

  assert {
    condition     = output.instance_name == var.name && output.status == "Running"
    error_message = "The instance should be named var.name and running, not ${output.instance_name} ${output.status}."
  }
  assert {
    # tostring(): OpenTofu hands a test a variable from TF_VAR_* as a string.
    condition     = output.connect_address == "127.0.0.1" && tostring(output.connect_port) == tostring(var.listen_port)
    error_message = "connect_via = \"proxy\" should connect to the proxy device's listen address and port."
  }
  assert {
    condition     = !lxd_container.notebook.wait_for_network
    error_message = "connect_via = \"proxy\" needs no NIC: the provider should not wait for a network."
  }
  assert {
    condition     = output.location == "none"
    error_message = "A standalone server reports the location \"none\", got ${output.location}."
  }
  assert {
    condition     = [for f in output.files : f.target_path] == ["/etc/tftest/inline.txt", "/opt/tftest/source.txt", "/etc/jupyterhub-singleuser/spawn.json"]
    error_message = "The files output should list the operator's files, then the launch file."
  }
  assert {
    # Both sides decoded, so the JSON types (tuples, numbers) compare alike.
    condition = jsondecode(output.files[2].content) == jsondecode(jsonencode({
      user = "tftest", uid = 1000, gid = 1000, home = "/home/tftest", cwd = null, cmd = var.server_cmd
    }))
    error_message = "The launch file should name the user and the server command."
  }
  assert {
    condition     = output.environment_file == { target_path = "/etc/jupyterhub-singleuser/env.json", mode = "0600", uid = 0, gid = 0 }
    error_message = "The environment file should be root-only."
  }
  assert {
    condition     = [for d in lxd_container.notebook.device : d.properties.listen if d.name == "jupyter-server"] == ["tcp:127.0.0.1:${var.listen_port}"]
    error_message = "The jupyter-server proxy device should listen on the member's listen_address:listen_port."
  }
  assert {
    condition = one([for d in lxd_container.notebook.device : d.properties if d.name == "jupyterhub-api"]) == tomap({
      bind = "container", listen = "tcp:127.0.0.1:8081", connect = "tcp:127.0.0.1:8081"
    })
    error_message = "The jupyterhub-api proxy device should bring the hub API into the container."
  }
  assert {
    condition = (lxd_container.notebook.config["user.tf-lxd-spawner.managed"] == "true"
      && lxd_container.notebook.config["user.tf-lxd-spawner.owner"] == "tftest"
    && lxd_container.notebook.config["security.privileged"] == "false")
    error_message = "The instance should carry the managed flag and its labels, and be unprivileged."
  }
  assert {
    condition = one([for d in lxd_container.notebook.device : d.properties if d.name == "tftest-volume" && d.type == "disk"]) == tomap({
      pool = "default", source = "${var.name}-vol", path = "/mnt/tftest-volume"
    })
    error_message = "The volume should be a disk device with its pool, source and path (no readonly key)."
  }
  assert {
    condition = one([for d in lxd_container.notebook.device : d.properties if d.name == "tftest-volume-ro" && d.type == "disk"]) == tomap({
      pool = "default", source = "${var.name}-vol", path = "/mnt/tftest-volume-ro", readonly = "true"
    })
    error_message = "A volume with readonly = true should be a disk device with readonly = \"true\"."
  }
  assert {
    condition     = lxd_container.notebook.limits == tomap({ processes = "2000" })
    error_message = "limits should reach the instance."
  }
  assert {
    condition     = length(lxd_container.notebook.file) == 4
    error_message = "The provider should write four files: two of the operator's, spawn.json and env.json."
  }
}

# What the container really holds: modes, owners and contents of every pushed file, the volume
# mounted where it should be (writable, and read-only where readonly = true: even root's write is
# refused), and the server answering through the proxy device (tests/inspect runs lxc on this
# machine).
run "inspect" {
  module {
    source = "./tests/inspect"
  }

  # No function calls here: OpenTofu refuses them in a test's variables.
  variables {
    instance         = run.create.instance_name
    files            = run.create.files
    environment_file = run.create.environment_file
    environment      = { JUPYTER_TOKEN = "tftest-token" }
    connect_address  = run.create.connect_address
    connect_port     = run.create.connect_port
    mounts           = ["/mnt/tftest-volume"]
    readonly_mounts  = ["/mnt/tftest-volume-ro"]
  }

  assert {
    condition     = length(output.checked_paths) == 4
    error_message = "Every pushed file should have been checked inside the instance."
  }
  assert {
    condition     = output.checked_mounts == tolist(["/mnt/tftest-volume"])
    error_message = "The volume should have been found mounted inside the instance."
  }
  assert {
    condition     = output.checked_readonly_mounts == tolist(["/mnt/tftest-volume-ro"])
    error_message = "The read-only volume should have been found mounted read-only, refusing a write."
  }
}
