#!/usr/bin/env bash
# Give a daemon (through its client: `lxc` or `incus`) what the spawner's containers need and
# nothing more: no image refresh from outside, a copy-on-write storage pool `default` (btrfs on
# a loop file; `dir` where btrfs is missing), and a root disk on it in the default profile.
#   usage: default-pool.sh <lxc|incus>
set -euo pipefail
cli=${1:?client: lxc or incus}

"$cli" config set images.auto_update_interval 0

if ! "$cli" storage show default >/dev/null 2>&1; then
  driver=dir
  if command -v mkfs.btrfs >/dev/null && grep -qw btrfs /proc/filesystems; then driver=btrfs; fi
  if [ "$driver" = btrfs ]; then
    "$cli" storage create default btrfs size=40GiB || { driver=dir; "$cli" storage create default dir; }
  else
    "$cli" storage create default dir
  fi
  echo "$cli: created storage pool 'default' ($driver)"
fi

if ! "$cli" profile device get default root pool >/dev/null 2>&1; then
  "$cli" profile device add default root disk path=/ pool=default
fi
