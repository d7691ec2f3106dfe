locals {
  # LXD drops keys with empty values: leaving them out keeps the next plan from seeing a change.
  config = { for k, v in merge(
    var.config,
    { for k, v in var.labels : "user.tf-lxd-spawner.${k}" => v },
    { "user.tf-lxd-spawner.managed" = "true" },
    var.size == null ? {} : { size = var.size },
  ) : k => v if v != "" }

  # null and "" both mean "no target"; the provider's target forces a replacement, so the two
  # must not differ in the plan.
  target = var.target == "" ? null : var.target
}

resource "lxd_volume" "home" {
  name   = var.name
  pool   = var.pool
  type   = "custom"
  target = local.target
  remote = var.remote
  config = local.config
}
