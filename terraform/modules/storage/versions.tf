terraform {
  required_version = ">= 1.3.0"

  required_providers {
    lxd = {
      source  = "terraform-lxd/lxd"
      version = ">= 1.5.0, < 2.0.0"
    }
  }
}
