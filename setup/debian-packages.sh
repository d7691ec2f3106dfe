#!/usr/bin/env bash
# Install the Debian packages the stack needs, only when one is missing (a cached run costs
# one dpkg query). btrfs-progs comes first: LXD offers btrfs pools only when it is there at start.
set -euo pipefail
# strace: the tests' exec watcher (argv of every program the hub runs); iproute2 and openssl: the
# remote-member tests (network namespaces, client certificates).
packages=(btrfs-progs lxd debootstrap busybox-static strace iproute2 openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v terraform >/dev/null || command -v tofu >/dev/null || {
  echo "debian-packages: terraform (or tofu) must be on PATH; it is not a Debian package" >&2; exit 1; }
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "debian-packages: all present"
  exit 0
fi
echo "debian-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
for p in "${missing[@]}"; do
  apt-get install -y -qq "$p" >/dev/null
done
