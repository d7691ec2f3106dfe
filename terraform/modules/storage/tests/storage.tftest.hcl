# The module on its own against the real daemon: `terraform test` (or `tofu test`) in the module
# directory creates one custom volume with a quota, checks the outputs, the resource and what the
# daemon holds, grows the quota (in place: the volume keeps a snapshot taken before), then
# destroys it.
#
# The volume name comes from the caller, so parallel runs cannot collide:
#   TF_VAR_name=tftest-$USER terraform test
# (tests/e2e/test_module_tftest.py runs it with a random name).

provider "lxd" {
  # Provider v1.5.0 waits up to 10 s more on every apply and destroy unless this is low.
  refresh_interval             = "250ms"
  generate_client_certificates = false
  accept_remote_certificate    = false
}

variables {
  size   = "100MiB"
  config = { "snapshots.expiry" = "2w" }
  labels = { hub = "tftest", owner = "tftest" }
}

run "create" {
  assert {
    condition     = output.name == var.name && output.pool == "default"
    error_message = "The volume should be var.name in the default pool, not ${output.pool}/${output.name}."
  }
  assert {
    condition     = output.location == "none"
    error_message = "Without a target the location is \"none\" (a standalone server), got ${output.location}."
  }
  assert {
    condition     = output.size == "100MiB"
    error_message = "The size output should be the quota, got ${coalesce(output.size, "null")}."
  }
  assert {
    condition     = lxd_volume.home.type == "custom"
    error_message = "The volume should be a custom volume."
  }
  assert {
    # The provider reads the config back from the daemon after creating the volume.
    condition = lxd_volume.home.config == tomap({
      size                          = "100MiB"
      "snapshots.expiry"            = "2w"
      "user.tf-lxd-spawner.managed" = "true"
      "user.tf-lxd-spawner.hub"     = "tftest"
      "user.tf-lxd-spawner.owner"   = "tftest"
    })
    error_message = "The volume should carry the quota, the extra config, the managed flag and its labels."
  }
}

# What the daemon holds (not only the state), and a snapshot as a marker for the grow below.
run "inspect_created" {
  module {
    source = "./tests/inspect"
  }

  variables {
    # No run.* references: OpenTofu evaluates them again when it destroys this run's state, and
    # fails there. The name comes from TF_VAR_name, as for the module itself.
    pool   = "default"
    config = { size = "100MiB", "user.tf-lxd-spawner.hub" = "tftest", "user.tf-lxd-spawner.managed" = "true" }
    mark   = true
  }

  assert {
    condition     = length(output.checked) == 3
    error_message = "The quota and the labels should have been checked at the daemon."
  }
}

# A bigger quota is a config change, which provider v1.5.0 applies in place.
run "grow" {
  variables {
    size = "200MiB"
  }

  assert {
    # var.name, not run.create.name: OpenTofu allows no run.* references in assertions.
    condition     = output.name == var.name && output.size == "200MiB"
    error_message = "The same volume should now have the 200MiB quota."
  }
  assert {
    condition     = lxd_volume.home.id == "default/${var.name}/custom"
    error_message = "The volume's id should still be pool/name/custom."
  }
}

# The same volume (the snapshot taken before the grow is still there) with the new quota.
run "inspect_grown" {
  module {
    source = "./tests/inspect"
  }

  variables {
    pool        = "default"
    config      = { size = "200MiB" }
    expect_mark = true
  }

  assert {
    condition     = output.checked == tolist(["size"])
    error_message = "The new quota should have been checked at the daemon."
  }
}
