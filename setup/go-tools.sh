#!/usr/bin/env bash
# Build the Go tools the project needs from their Go modules, pinned, into the project's cache:
#   <cache>/bin/tofu        OpenTofu (its go.mod replaces hcl/v2, so `go install mod@ver` is
#                           refused: download the module and build inside it)
#   <cache>/bin/terraform   only where the machine has no `terraform` on PATH
#   <cache>/bin/terraform-config-inspect   HashiCorp's module reader, for the module README's
#                           inputs/outputs tables (setup/module_docs.py)
# A binary is rebuilt only when its pinned version changes (a stamp file beside it); the Go
# module and build caches live under <cache>/go so a second run is fast even after a bump.
#   usage: go-tools.sh <cache-dir>
set -euo pipefail
cache=$(realpath -m "${1:?cache dir}")
TOFU_VERSION=${TOFU_VERSION:-v1.10.10}
INSPECT_VERSION=${INSPECT_VERSION:-v0.0.0-20260904064934-75d64de68c31}
TERRAFORM_VERSION=${TERRAFORM_VERSION:-v1.8.5}  # newer go.mods replace nested modules (not in the module zip) or name a godebug Go 1.26 dropped
bin="$cache/bin"
mkdir -p "$bin"
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="-mod=readonly" CGO_ENABLED=0
export GOTOOLCHAIN=local

# build <module> <version> <package> <output> <version-package>: the module's own go.mod and
# go.sum decide every dependency, and the flags are its release build's (without `dev=no` the
# binary calls itself a -dev prerelease).
build() {
  local module=$1 version=$2 package=$3 out=$4
  local ldflags="-s -w -X '$module/$5.dev=no'"
  local stamp="$module@$version $ldflags"
  if [ -x "$out" ] && [ "$(cat "$out.version" 2>/dev/null)" = "$stamp" ]; then
    echo "go-tools: $(basename "$out") $version cached"
    return
  fi
  local started=$SECONDS dir
  dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || { echo "go-tools: could not download $module@$version" >&2; exit 1; }
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$package")
  mv "$out.tmp" "$out"
  echo "$stamp" >"$out.version"
  echo "go-tools: built $(basename "$out") $version in $((SECONDS - started)) s"
}

build github.com/opentofu/opentofu "$TOFU_VERSION" ./cmd/tofu "$bin/tofu" version
if ! command -v terraform >/dev/null 2>&1 || [ "$(command -v terraform)" = "$bin/terraform" ]; then
  build github.com/hashicorp/terraform "$TERRAFORM_VERSION" . "$bin/terraform" version
fi
build github.com/hashicorp/terraform-config-inspect "$INSPECT_VERSION" . "$bin/terraform-config-inspect" main
