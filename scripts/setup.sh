#!/usr/bin/env bash
# Installs what building, mounting and testing need, once: fuse3 (fusermount3), the peers we
# compare against (fuse-overlayfs, unionfs-fuse), attr/util-linux/e2fsprogs tools, umoci and
# Podman (layer tools). Idempotent.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fuse-overlayfs >/dev/null || need+=(fuse-overlayfs)
command -v unionfs-fuse >/dev/null || [ -x /usr/bin/unionfs ] || need+=(unionfs-fuse)
command -v getfattr >/dev/null || need+=(attr)
command -v setpriv >/dev/null || need+=(util-linux)
command -v fio >/dev/null || need+=(fio)
command -v setfacl >/dev/null || need+=(acl)
command -v lsattr >/dev/null || need+=(e2fsprogs)
# The layer tools' oracles (tests/layer_tools.rs): umoci applies committed layers; Podman's
# `podman diff` (with unionfs as the overlay driver's mount_program) checks `unionfs diff`.
command -v umoci >/dev/null || need+=(umoci)
command -v podman >/dev/null || need+=(podman)
# tests/podman.rs: a busybox image, and rootless Podman's subordinate id maps.
[ -x /bin/busybox ] || need+=(busybox-static)
command -v newuidmap >/dev/null || need+=(uidmap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "unionfs setup: please install: ${need[*]} (as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Rootless tests and desktop use: distributions ship /dev/fuse world-usable.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ]; then chmod 0666 /dev/fuse; fi
command -v cargo >/dev/null || { echo "unionfs setup: cargo (Rust >= 1.85) is required" >&2; exit 1; }
