# Every input validation, one plan each: bad input stops at plan time with the module's own
# message, before anything reaches the daemon. Nothing is created here.

provider "lxd" {
  refresh_interval             = "250ms"
  generate_client_certificates = false
  accept_remote_certificate    = false
}

variables {
  name = "tftest-validation"
}

# Valid input plans: no quota at all, "" as no target, the extra config and the labels.
run "no_quota_plan" {
  command = plan

  variables {
    size   = ""
    target = ""
    config = { "snapshots.schedule" = "@daily", "snapshots.expiry" = "" }
    labels = { hub = "h1" }
  }

  assert {
    condition = lxd_volume.home.config == tomap({
      "snapshots.schedule"          = "@daily"
      "user.tf-lxd-spawner.managed" = "true"
      "user.tf-lxd-spawner.hub"     = "h1"
    })
    error_message = "No size key without a quota, and no key with an empty value."
  }
  assert {
    condition     = lxd_volume.home.target == null && output.location == "none" && output.size == null
    error_message = "target = \"\" should mean no target."
  }
}

run "quota_plan" {
  command = plan

  variables {
    size   = "1GB"
    pool   = "other"
    target = "member1"
  }

  assert {
    condition     = lxd_volume.home.config["size"] == "1GB" && lxd_volume.home.pool == "other"
    error_message = "size and pool should reach the volume."
  }
  assert {
    condition     = lxd_volume.home.target == "member1" && output.location == "member1"
    error_message = "The target should reach the volume and be its location."
  }
}

run "name_starting_with_digit" {
  command = plan
  variables {
    name = "1home"
  }
  expect_failures = [var.name]
}

run "name_starting_with_hyphen" {
  command = plan
  variables {
    name = "-home"
  }
  expect_failures = [var.name]
}

run "name_with_underscore" {
  command = plan
  variables {
    name = "home_alice"
  }
  expect_failures = [var.name]
}

run "name_too_long" {
  command = plan
  variables {
    # 64 characters: one more than LXD allows (no functions here: OpenTofu refuses them in tests).
    name = "h123456789012345678901234567890123456789012345678901234567890123"
  }
  expect_failures = [var.name]
}

run "empty_pool" {
  command = plan
  variables {
    pool = " "
  }
  expect_failures = [var.pool]
}

run "size_with_space" {
  command = plan
  variables {
    size = "10 GiB"
  }
  expect_failures = [var.size]
}

run "size_unknown_unit" {
  command = plan
  variables {
    size = "10G"
  }
  expect_failures = [var.size]
}

run "size_zero" {
  command = plan
  variables {
    size = "0"
  }
  expect_failures = [var.size]
}

run "size_negative" {
  command = plan
  variables {
    size = "-1GiB"
  }
  expect_failures = [var.size]
}

run "size_in_config" {
  command = plan
  variables {
    config = { size = "10GiB" }
  }
  expect_failures = [var.config]
}

run "label_key_in_config" {
  command = plan
  variables {
    config = { "user.tf-lxd-spawner.hub" = "h1" }
  }
  expect_failures = [var.config]
}

run "volatile_key_in_config" {
  command = plan
  variables {
    config = { "volatile.idmap.last" = "[]" }
  }
  expect_failures = [var.config]
}

run "label_key_upper_case" {
  command = plan
  variables {
    labels = { Hub = "h1" }
  }
  expect_failures = [var.labels]
}
