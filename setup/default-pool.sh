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

# Home volumes get a quota (storage_capacity); on btrfs it is a qgroup limit, which the kernel
# enforces only while the pool's qgroup data is consistent. Incus 6.0.4 switches quotas on when
# the first sized volume is made, over a pool that already holds images, and leaves the data
# inconsistent: a 64MiB volume then takes 128MiB. Switch them on here and rescan (well under a
# second on a new pool), so the first volume's quota holds.
if [ "$("$cli" storage show default | sed -n 's/^driver: //p')" = btrfs ]; then
  dir=/var/lib/$([ "$cli" = lxc ] && echo lxd || echo incus)/storage-pools/default
  if [ -d "$dir" ]; then
    btrfs qgroup show "$dir" >/dev/null 2>&1 || btrfs quota enable "$dir"
    if btrfs qgroup show "$dir" 2>&1 | grep -qi inconsistent; then
      btrfs quota rescan -w "$dir" >/dev/null
      echo "$cli: rescanned the quota groups of pool 'default' (inconsistent: quotas were not enforced)"
    fi
  fi
fi
