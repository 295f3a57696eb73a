#!/usr/bin/env bash
# Time to the first byte of an image from a registry (issue 21): `unionfs mount --image
# docker://…` with an empty cache against unpack-first (`skopeo copy docker://… oci:` then
# `tar -x` of every layer), both from the same local registry, page cache dropped before each.
#
# Usage (as root; needs docker-registry, skopeo, GNU tar with --zstd, and the images of
# benches/image_bench.py, made once with `python3 benches/image_bench.py --generate-only`):
#
#   cargo build --release
#   bash benches/registry_first_byte.sh [SIZE (1g|100m|10m)] [REPS]
#
# The registry runs on a free loopback port with its storage in a temporary directory; it is
# stopped by its PID at the end, on failure too. Prints one line per format and repetition.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1g}
reps=${2:-2}
bin=${UNIONFS_BIN:-$PWD/target/release/unionfs}
images=${IMAGE_BENCH_DIR:-/var/tmp/unionfs-image-bench}/images/$size
deep=srv/l0/deep/a/b/c/d/e/f/g/h/target.txt
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
[ -d "$images/gzip" ] || { echo "no images in $images: python3 benches/image_bench.py --generate-only" >&2; exit 2; }

w=$(mktemp -d /var/tmp/registry-bench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$w/config.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $w/store
http:
  addr: 127.0.0.1:$port
log:
  level: error
EOF
docker-registry serve "$w/config.yml" > "$w/registry.log" 2>&1 &
registry=$!
cleanup() {
  mountpoint -q "$w/mnt" && umount "$w/mnt"
  kill "$registry" 2>/dev/null || true
  wait "$registry" 2>/dev/null || true
  rm -rf "$w"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done

fresh() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

for f in gzip zstd; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$images/$f:bench" "docker://127.0.0.1:$port/b$f:bench"
done
for rep in $(seq "$reps"); do
  for f in gzip zstd; do
    rm -rf "$w/cache" "$w/up" "$w/wk" "$w/oci" "$w/root"
    mkdir -p "$w/up" "$w/wk" "$w/mnt" "$w/root"
    fresh
    t0=$(now)
    "$bin" mount --image "docker://127.0.0.1:$port/b$f:bench" --tls-verify=false --cache "$w/cache" \
      --upper "$w/up" --workdir "$w/wk" "$w/mnt"
    head -c1 "$w/mnt/$deep" >/dev/null
    t1=$(now)
    umount "$w/mnt"
    fresh
    t2=$(now)
    skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$port/b$f:bench" "oci:$w/oci:x"
    python3 - "$w/oci" <<'EOF' > "$w/layers"
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/index.json"))["manifests"][0]["digest"].split(":")[1]
for l in json.load(open(f"{d}/blobs/sha256/{m}"))["layers"]:
    print(l["mediaType"].rsplit("+", 1)[-1], l["digest"].split(":")[1])
EOF
    while read -r mt h; do
      z=(); case $mt in gzip) z=(-z) ;; zstd) z=(--zstd) ;; esac
      tar -x --numeric-owner -C "$w/root" "${z[@]}" -f "$w/oci/blobs/sha256/$h"
    done < "$w/layers"
    head -c1 "$w/root/$deep" >/dev/null
    t3=$(now)
    python3 -c "a, b = $t1 - $t0, $t3 - $t2; print(f'$size $f rep $rep: unionfs docker:// cold first byte {a:.2f} s; skopeo copy + tar -x {b:.2f} s; {b / a:.2f}x')"
  done
done
