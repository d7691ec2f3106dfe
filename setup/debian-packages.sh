#!/usr/bin/env bash
# Install the Debian packages the stack needs, only when one is missing (a cached run costs
# one dpkg query). btrfs-progs comes first: LXD and Incus offer btrfs pools only when it is
# there at start. Incus comes from bookworm-backports on Debian 12 (main on Debian 13): the
# backports suite is added from the mirror the machine already uses, so no host name is ours.
set -euo pipefail
# strace: the tests' exec watcher (argv of every program the hub runs); iproute2 and openssl: the
# remote-member tests (network namespaces, client certificates); golang-go only where no Go is
# installed (OpenTofu and Terraform are built from their Go modules by setup/go-tools.sh);
# chromium and chromium-driver: the browser test drives the demo headless (tests/e2e/test_browser.py).
packages=(btrfs-progs lxd debootstrap busybox-static strace iproute2 openssl unzip zip chromium chromium-driver)
backports=(incus-base incus-client)
missing=() missing_bp=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${backports[@]}"; do installed "$p" || missing_bp+=("$p"); done
command -v npm >/dev/null || missing+=(npm)
command -v go >/dev/null || missing+=(golang-go)
if [ ${#missing[@]} -eq 0 ] && [ ${#missing_bp[@]} -eq 0 ]; then
  echo "debian-packages: all present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
suite_args=()
if [ ${#missing_bp[@]} -gt 0 ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  list=/etc/apt/sources.list.d/tf-lxd-spawner-backports.sources
  if [ ! -e "$list" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "debian-packages: no Debian mirror found to add bookworm-backports" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" >"$list"
  fi
  suite_args=(-t bookworm-backports)
fi
echo "debian-packages: installing ${missing[*]} ${missing_bp[*]}"
apt-get update -qq
for p in "${missing[@]}"; do
  apt-get install -y -qq "$p" >/dev/null
done
if [ ${#missing_bp[@]} -gt 0 ]; then
  # --no-install-recommends: the daemon only; no qemu, no dnsmasq-driven bridge tooling.
  apt-get install -y -qq --no-install-recommends "${suite_args[@]}" "${missing_bp[@]}" >/dev/null
fi
