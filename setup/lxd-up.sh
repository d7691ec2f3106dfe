#!/usr/bin/env bash
# Start the LXD daemon when it is not running (PID 1 here is not systemd) and give it a
# copy-on-write storage pool and a default profile, with no network: containers are reached
# through loopback proxy devices, never a bridge.
set -euo pipefail
log=${LXD_LOG:-/var/log/lxd-tf-lxd-spawner.log}
# Host ids LXD may map 1:1 into containers (raw.idmap, the spawner's mount_idmap): one line
# `root:<id>:1` each in /etc/subuid and /etc/subgid. LXD reads them when it starts.
allow_ids=${LXD_ALLOW_IDS:-}

added=0
# Unprivileged containers need a large subordinate id range for root; the lxd package does not
# always provide one (seen: a reinstall leaves none). 1000000:1000000000 is LXD's own default.
for f in /etc/subuid /etc/subgid; do
  if ! awk -F: '$1 == "root" && $3 >= 65536 {found=1} END {exit !found}' "$f" 2>/dev/null; then
    echo "root:1000000:1000000000" >>"$f"
    added=1
  fi
done
for id in $allow_ids; do
  for f in /etc/subuid /etc/subgid; do
    if ! grep -qx "root:$id:1" "$f" 2>/dev/null; then
      echo "root:$id:1" >>"$f"
      added=1
    fi
  done
done
# Kernel limits every container shares (their root maps to one host uid): with the defaults
# (128 inotify instances) about 20 systemd containers boot and the next ones die at once
# ("Failed to create control group inotify object: Too many open files"). LXD's production
# set-up values; only ever raised, and a kernel that refuses is said, not fatal.
raise_limit() {
  local now
  now=$(sysctl -n "$1" 2>/dev/null || echo 0)
  if [ "$now" -lt "$2" ]; then
    sysctl -qw "$1=$2" 2>/dev/null || echo "lxd-up: warning: could not raise $1 from $now to $2"
  fi
}
raise_limit fs.inotify.max_user_instances 1024
raise_limit fs.inotify.max_user_watches 1048576
raise_limit kernel.keys.maxkeys 2000
raise_limit kernel.keys.maxbytes 2000000

if [ "$added" = 1 ] && lxc info >/dev/null 2>&1; then
  echo "lxd-up: restarting LXD to read the new /etc/subuid and /etc/subgid"
  lxd shutdown
fi

if ! lxc info >/dev/null 2>&1; then
  # A closed loopback port as proxy: the daemon must not reach out at start-up.
  HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.0/8 \
    setsid nohup lxd --group root >>"$log" 2>&1 </dev/null &
  lxd waitready --timeout=60
fi

bash "$(dirname "$0")/default-pool.sh" lxc
echo "lxd-up: LXD $(lxd --version) ready, pool $(lxc storage get default source 2>/dev/null || true) ($(lxc storage list -f csv | cut -d, -f1,2 | tr '\n' ' '))"
