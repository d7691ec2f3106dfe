#!/usr/bin/env bash
# Build the Jupyter image offline into the project's cache and import it, under a fixed alias,
# into every daemon given (LXD's `lxc`, Incus's `incus`: the same unified tarball serves both).
# The tarball is named by the recipe hash (this directory's files): it is built only when no
# tarball of this recipe is cached, and a daemon imports it only when its image has another
# recipe. Only Debian's and PyPI's registries are used.
#   usage: build.sh <cache-dir> [lxc] [incus]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m "${1:?cache dir}")
shift
clis=("$@")
[ ${#clis[@]} -gt 0 ] || clis=(lxc)
alias=${IMAGE_ALIAS:-jupyter-notebook}
suite=bookworm

recipe_hash=$(cd "$here" && sha256sum build.sh requirements.txt jupyterhub-singleuser.service \
  jupyterhub-singleuser-launch jupyterhub-singleuser-ended jupyterhub-api.socket jupyterhub-api.service | sha256sum | cut -c1-16)
tarball="$cache/image/$alias-$recipe_hash.tar"

up_to_date() {
  [ "$("$1" image show "$alias" 2>/dev/null | sed -n 's/^ *recipe_hash: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' || true)" = "$recipe_hash" ]
}

# import_into <cli>: the daemon gets the cached tarball (its image is of another recipe).
import_into() {
  "$1" image delete "$alias" 2>/dev/null || true
  "$1" image import "$tarball" --alias "$alias" >/dev/null
  echo "image: '$alias' imported into $1 (recipe $recipe_hash)"
}

stale=()
for cli in "${clis[@]}"; do
  if up_to_date "$cli"; then
    echo "image: '$alias' in $cli is up to date (recipe $recipe_hash)"
  else
    stale+=("$cli")
  fi
done
[ ${#stale[@]} -gt 0 ] || exit 0
if [ -s "$tarball" ]; then  # built before: only the imports are missing
  for cli in "${stale[@]}"; do import_into "$cli"; done
  exit 0
fi

# The Debian mirror the host already uses (its apt sources), so the build needs no other host.
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "image: no Debian mirror found in the host's apt sources" >&2; exit 1; }

work=$(mktemp -d /var/tmp/tf-lxd-image.XXXXXX)
root="$work/rootfs"
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

echo "image: debootstrap $suite from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,python3,python3-venv,ca-certificates,iproute2,passwd,procps \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

echo "image: venv with $(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')"
# pip behind the TLS-re-signing proxy needs the host's CA bundle, for the build only.
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.crt"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$here/requirements.txt" "$root/tmp/requirements.txt"
mount -t proc proc "$root/proc"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
  chroot "$root" sh -ec 'python3 -m venv /opt/jupyter && /opt/jupyter/bin/pip install -q -r /tmp/requirements.txt
    # rfc3987-syntax (pulled in by jupyter-events via jsonschema[format-nongpl]) compiles a Lark
    # grammar when imported: 2.1 of the 3.6 s the server took to import on 2 cores. jsonschema
    # only loses its "iri" format check without it.
    /opt/jupyter/bin/pip uninstall -q -y rfc3987-syntax lark
    # JupyterLab would ask every new user about news and fetch them from the internet.
    /opt/jupyter/bin/jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements"'
umount "$root/proc"
rm -f "$root/tmp/host-ca.crt" "$root/tmp/requirements.txt"
: >"$root/etc/resolv.conf"

install -m 0755 "$here/jupyterhub-singleuser-launch" "$root/usr/local/sbin/jupyterhub-singleuser-launch"
install -m 0755 "$here/jupyterhub-singleuser-ended" "$root/usr/local/sbin/jupyterhub-singleuser-ended"
install -m 0644 "$here/jupyterhub-singleuser.service" "$root/etc/systemd/system/jupyterhub-singleuser.service"
install -d -m 0700 "$root/etc/jupyterhub-singleuser"
ln -sf /etc/systemd/system/jupyterhub-singleuser.service \
  "$root/etc/systemd/system/multi-user.target.wants/jupyterhub-singleuser.service"
# The hub API at 127.0.0.1:8081 from the hub's unix socket, where the spawner mounts it
# (hub_api_via = "socket"): no proxy device, whose start costs each container start a second.
install -m 0644 "$here/jupyterhub-api.socket" "$here/jupyterhub-api.service" "$root/etc/systemd/system/"
install -d -m 0755 "$root/etc/systemd/system/sockets.target.wants"
ln -sf /etc/systemd/system/jupyterhub-api.socket "$root/etc/systemd/system/sockets.target.wants/jupyterhub-api.socket"
# binfmt cannot be set up in an unprivileged container and would keep systemd 'degraded'.
ln -sf /dev/null "$root/etc/systemd/system/systemd-binfmt.service"
rm -f "$root/etc/hostname"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

mkdir -p "$work/templates"
printf '{{ container.name }}\n' >"$work/templates/hostname.tpl"
printf '127.0.0.1 localhost\n127.0.1.1 {{ container.name }}\n::1 localhost ip6-localhost ip6-loopback\n' \
  >"$work/templates/hosts.tpl"
cat >"$work/metadata.yaml" <<META
architecture: $(uname -m)
creation_date: $(date +%s)
properties:
  os: debian
  release: $suite
  description: Debian $suite with JupyterHub single-user server (tf-lxd-spawner)
  recipe_hash: "$recipe_hash"
  # The spawner's hub_api_via = "auto" uses the unix socket relay only on images that say so.
  tf_lxd_spawner_hub_api_socket: "/var/lib/tf-lxd-spawner/hub/hub-api.sock"
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
  /etc/hosts:
    when: [create, copy]
    template: hosts.tpl
META

echo "image: packing into $tarball"
mkdir -p "$(dirname "$tarball")"
rm -f "$cache/image/$alias"-*.tar   # tarballs of older recipes
tar -C "$work" --numeric-owner -cf "$tarball.tmp" metadata.yaml templates rootfs
mv "$tarball.tmp" "$tarball"
echo "image: built (recipe $recipe_hash) in $(( $(date +%s) - start )) s"
for cli in "${stale[@]}"; do import_into "$cli"; done
