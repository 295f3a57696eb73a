#!/usr/bin/env bash
# Installs what building, mounting and testing need, once: fuse3 (fusermount3), the peers we
# compare against (fuse-overlayfs, unionfs-fuse), attr/util-linux/e2fsprogs tools, umoci and
# Podman (layer tools), Buildah and skopeo (image tests); makes /dev/fuse usable by every
# user; and creates the test accounts (below). Idempotent. Run it as root before the test
# suite (scripts/test.sh does): tests only look the accounts up, they never create them.
#
#   bash scripts/setup.sh                    everything the full test suite needs
#   bash scripts/setup.sh --no-accounts      packages and /dev/fuse only (the demo)
#   bash scripts/setup.sh --remove-accounts  only remove the test accounts, their groups, home
#                                            directories and subordinate id ranges (CI starts
#                                            from a fresh machine's state this way)
set -euo pipefail

# The test accounts, one per role; tests/common/src/users.rs (ACCOUNTS) names the same ones, and
# tests/prerequisites.rs checks that the two lists agree.
#   unionfs-user-a, unionfs-user-b  plain users acting on root's mounts (permissions, ACLs)
#   unionfs-rootless-user           a plain user that mounts through fusermount3
#   unionfs-podman-user             rootless Podman: also one subordinate uid and gid range
TEST_ACCOUNTS=(unionfs-user-a unionfs-user-b unionfs-rootless-user unionfs-podman-user)
PODMAN_ACCOUNT=unionfs-podman-user
SUBID_COUNT=65536

die() {
  echo "unionfs setup: $*" >&2
  exit 1
}

# Runs an account tool (useradd, usermod, userdel, groupdel), again while it fails because
# another process holds the lock on the account files: those tools give up rather than wait.
locked_retry() { # COMMAND ARGS...
  local i err
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if err=$("$@" 2>&1); then
      [ -z "$err" ] || echo "$err" >&2
      return 0
    fi
    case $err in
      *lock*) sleep 1 ;;
      *) break ;;
    esac
  done
  echo "$err" >&2
  return 1
}

# Removes one test account by its exact name, with what setup_account made for it. Never
# touches another account: every path and line is derived from the name.
remove_account() { # NAME
  local name=$1 f
  if getent passwd "$name" >/dev/null; then
    locked_retry userdel "$name" || die "userdel $name failed (does a process still run as $name?)"
  fi
  if getent group "$name" >/dev/null; then locked_retry groupdel "$name"; fi
  for f in /etc/subuid /etc/subgid; do
    if [ -f "$f" ] && grep -q "^$name:" "$f"; then sed -i "/^$name:/d" "$f"; fi
  done
  rm -rf -- "/home/${name:?}"
}

# The first id after every range in /etc/subuid and /etc/subgid (at least 100000).
free_subid_start() {
  cat /etc/subuid /etc/subgid 2>/dev/null |
    awk -F: 'BEGIN { m = 100000 } NF == 3 && $2 + $3 > m { m = $2 + $3 } END { print m }'
}

# Creates the account NAME if it is missing (own group, home directory /home/NAME, /bin/sh; no
# subordinate ids unless SUBIDS is 1, then exactly one range of SUBID_COUNT ids), and repairs
# the home directory's owner (an account made again may get another uid).
setup_account() { # NAME SUBIDS
  local name=$1 subids=$2 uid gid home start
  if ! getent passwd "$name" >/dev/null; then
    local group=(--user-group)
    if getent group "$name" >/dev/null; then group=(--gid "$name"); fi
    locked_retry useradd --create-home --home-dir "/home/$name" --shell /bin/sh "${group[@]}" \
      -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$name"
  fi
  IFS=: read -r _ _ uid gid _ home _ < <(getent passwd "$name")
  mkdir -p "$home"
  if [ "$(stat -c %u:%g "$home")" != "$uid:$gid" ]; then chown -R "$uid:$gid" "$home"; fi
  if [ "$subids" = 1 ]; then
    # One start for both, past every range either file has.
    start=$(free_subid_start)
    if ! grep -q "^$name:" /etc/subuid 2>/dev/null; then
      locked_retry usermod --add-subuids "$start-$((start + SUBID_COUNT - 1))" "$name"
    fi
    if ! grep -q "^$name:" /etc/subgid 2>/dev/null; then
      locked_retry usermod --add-subgids "$start-$((start + SUBID_COUNT - 1))" "$name"
    fi
  fi
}

accounts=1
case "${1:-}" in
  "") ;;
  --no-accounts) accounts=0 ;;
  --remove-accounts)
    [ "$(id -u)" -eq 0 ] || die "removing the test accounts needs root"
    for name in "${TEST_ACCOUNTS[@]}"; do remove_account "$name"; done
    echo "unionfs setup: removed the test accounts ${TEST_ACCOUNTS[*]}"
    exit 0
    ;;
  *) die "unknown argument $1 (see the top of $0)" ;;
esac

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
# The image tests (tests/mount/images.rs, image_tools.rs): Buildah builds the images offline,
# skopeo copies them into OCI layouts and inspects what `unionfs commit --image` wrote.
command -v buildah >/dev/null || need+=(buildah)
command -v skopeo >/dev/null || need+=(skopeo)
# tests/mount/chunked_commit.rs: the zstd program checks a committed zstd:chunked blob is one
# plain zstd stream of the layer's tar.
command -v zstd >/dev/null || need+=(zstd)
# The registry tests (tests/mount/registry.rs): Docker Distribution serves pushed images on a
# loopback port; htpasswd (apache2-utils) writes the bcrypt password file of its Basic auth,
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# ... and openssl makes the test CA of its HTTPS registry (--cert-dir).
command -v openssl >/dev/null || need+=(openssl)
# tests/podman.rs: a busybox image, and rootless Podman's subordinate id maps.
[ -x /bin/busybox ] || need+=(busybox-static)
command -v newuidmap >/dev/null || need+=(uidmap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "please install: ${need[*]} (as root: apt-get install ${need[*]})"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Rootless tests and desktop use: distributions ship /dev/fuse world-usable.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ]; then chmod 0666 /dev/fuse; fi
command -v cargo >/dev/null || die "cargo (Rust >= 1.85) is required"

if [ "$accounts" = 1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    for name in "${TEST_ACCOUNTS[@]}"; do
      setup_account "$name" "$([ "$name" = "$PODMAN_ACCOUNT" ] && echo 1 || echo 0)"
    done
  else
    missing=()
    for name in "${TEST_ACCOUNTS[@]}"; do getent passwd "$name" >/dev/null || missing+=("$name"); done
    if [ ${#missing[@]} -gt 0 ]; then
      echo "unionfs setup: not root, so the test accounts ${missing[*]} were not created;" \
        "the tests that need them fail until this script runs as root" >&2
    fi
  fi
fi
