#!/usr/bin/env bash
# Start the Incus daemon beside LXD when it is not running (PID 1 here is not systemd): its own
# directory (/var/lib/incus), socket and btrfs loop pool, and no network, so the two daemons
# never touch each other's containers, storage or ports. Containers are reached through loopback
# proxy devices, as on LXD. The subordinate id lines (/etc/subuid, /etc/subgid) are the ones
# setup/lxd-up.sh writes; run it first.
set -euo pipefail
log=${INCUS_LOG:-/var/log/incus-tf-lxd-spawner.log}
incusd=/usr/libexec/incus/incusd
[ -x "$incusd" ] || incusd=$(command -v incusd || true)
[ -n "$incusd" ] || { echo "incus-up: incusd not found (Debian package incus-base)" >&2; exit 1; }

if ! incus info >/dev/null 2>&1; then
  # A closed loopback port as proxy: the daemon must not reach out at start-up.
  HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.0/8 \
    setsid nohup "$incusd" --group root >>"$log" 2>&1 </dev/null &
  incus admin waitready --timeout=60
fi

bash "$(dirname "$0")/default-pool.sh" incus
echo "incus-up: Incus $(incus version 2>/dev/null | awk '/Server version/ {print $3}') ready ($(incus storage list -f csv | cut -d, -f1,2 | tr '\n' ' '))"
