#!/usr/bin/env bash
# The demo: build, make sample image-like layers, mount them, show lookup, copy-up, whiteouts
# and the upper's contents, then unmount. Everything lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-accounts >/dev/null
if [ -z "${UNIONFS_BIN:-}" ]; then
  cargo build --release --quiet
  UNIONFS_BIN=target/release/unionfs
fi
bin=$(realpath "$UNIONFS_BIN")
demo=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
mnt="$demo/merged"
cleanup() {
  if grep -qs " $mnt " /proc/self/mountinfo; then "$bin" umount --lazy "$mnt" >/dev/null 2>&1 || umount -l "$mnt" || true; fi
  rm -rf "$demo"
}
trap cleanup EXIT
mkdir -p "$demo"/{base,app,upper,work,merged}

# Two read-only layers, as a container image would have: app on top of base.
mkdir -p "$demo"/base/etc "$demo"/base/bin "$demo"/base/var/log
printf 'NAME=demo-os\nVERSION=1\n' > "$demo/base/etc/os-release"
printf 'motd from base\n' > "$demo/base/etc/motd"
printf '#!/bin/sh\necho hello from base\n' > "$demo/base/bin/hello"; chmod 0755 "$demo/base/bin/hello"
printf 'old log\n' > "$demo/base/var/log/old.log"
mkdir -p "$demo"/app/etc "$demo"/app/srv
printf 'motd from app (overrides base)\n' > "$demo/app/etc/motd"
printf 'served\n' > "$demo/app/srv/index.html"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say "mount: $bin mount --lower app:base --upper upper --workdir work merged"
"$bin" mount --lower "$demo/app:$demo/base" --upper "$demo/upper" --workdir "$demo/work" "$mnt"

say "lookup: the merged view (app's etc/motd wins over base's)"
(cd "$mnt" && find . | sort)
echo "etc/motd: $(cat "$mnt/etc/motd")"
echo "bin/hello: $("$mnt/bin/hello")"

say "copy-up: append to a lower file"
echo "VARIANT=unionfs" >> "$mnt/etc/os-release"
echo "merged etc/os-release:"; sed 's/^/  /' "$mnt/etc/os-release"
echo "base layer is untouched:"; sed 's/^/  /' "$demo/base/etc/os-release"

say "whiteout: delete a lower file, replace a lower directory"
rm "$mnt/var/log/old.log"
rm -r "$mnt/srv" && mkdir "$mnt/srv" && echo fresh > "$mnt/srv/new.html"
echo "var/log now: [$(ls "$mnt/var/log")]   srv now: [$(ls "$mnt/srv")]"

say "the upper layer holds only the changes (whiteouts are char devices 0/0)"
(cd "$demo/upper" && find . -mindepth 1 | sort | while read -r p; do
  printf '  %-22s %s\n' "$p" "$(stat -c '%F %t,%T' "$p" | sed 's/ 0,0$//; s/regular file.*/file/; s/directory.*/dir/')"; done)
if command -v getfattr >/dev/null; then
  echo "  srv is opaque: $(getfattr --absolute-names -n trusted.overlay.opaque --only-values "$demo/upper/srv" 2>/dev/null || echo '?')"
fi

say "unmount: $bin umount merged"
"$bin" umount "$mnt"
grep -qs " $mnt " /proc/self/mountinfo && { echo "still mounted!" >&2; exit 1; }
echo "unmounted; demo OK"
