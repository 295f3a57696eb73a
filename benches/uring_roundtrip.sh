#!/usr/bin/env bash
# The FUSE round-trip floor (issue 9, item 4): microseconds per getxattr and per stat through
# the io_uring prototype server (examples/fuse_uring_proto.rs), the same server over the classic
# /dev/fuse read/write loop, and a unionfs mount, interleaved in one run. Root only.
#
#   benches/uring_roundtrip.sh                      # N=200000 calls per run, RUNS=5, medians
#   N=50000 RUNS=3 RINGS="plain coop defer" CLASSIC="none 0 1" PIN=0 benches/uring_roundtrip.sh
#
# RINGS: the io_uring setup flags of the prototype's queues, one io_uring mount per mode
# (plain: SQE128 only; coop: + COOP_TASKRUN|TASKRUN_FLAG; defer: + SINGLE_ISSUER|DEFER_TASKRUN).
# Each queue's thread is pinned to its CPU (the kernel queues a request on the queue of the
# CPU the caller runs on).
# CLASSIC: one classic prototype mount per entry: "none" is one thread left to the scheduler, a
# number is one thread pinned to that CPU, "percpu" is one reader thread pinned on each CPU (as a
# multi-threaded daemon would run, all reading the one /dev/fuse).
# UNIONFS: one unionfs mount per entry: "none" left to the scheduler, a number: the daemon (all
# its threads) pinned to that CPU with taskset.
# PIN: run the client on that CPU (taskset); unset, the scheduler places it.
#
# Every call is one round trip: the targets are the mount roots (no LOOKUP to revalidate), the
# prototypes give attributes a validity of 0 s and unionfs runs with --ttl 0, so each stat is
# one GETATTR and each getxattr one GETXATTR (the prototype's counters, printed at the end,
# show it). This turns FUSE over io_uring on for the whole machine (echo Y >
# /sys/module/fuse/parameters/enable_uring) and puts the old value back at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
RUNS=${RUNS:-5}
RINGS=${RINGS:-plain defer}
CLASSIC=${CLASSIC:-none percpu}
UNIONFS=${UNIONFS:-none}
DEPTH=${DEPTH:-4}
PIN=${PIN:-}
param=/sys/module/fuse/parameters/enable_uring

[ "$(id -u)" = 0 ] || { echo "uring_roundtrip: needs root (mount(2), the fuse module parameter)" >&2; exit 1; }
if [ ! -e "$param" ]; then
    echo "uring_roundtrip: no $param: kernel $(uname -r) has no CONFIG_FUSE_IO_URING" >&2
    exit 1
fi

echo "building the prototype and unionfs (cargo -j 1)..."
cargo build --release --locked -j 1 -q --example fuse_uring_proto
cargo build --release --locked -j 1 -q
proto=target/release/examples/fuse_uring_proto
unionfs=target/release/unionfs

old=$(cat "$param")
tmp=$(mktemp -d /tmp/uring-roundtrip.XXXXXX)
pids=()
mnts=()
cleanup() {
    set +e
    for m in "${mnts[@]}"; do mountpoint -q "$m" && umount -l "$m"; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    echo "$old" >"$param"
    rm -rf "$tmp"
}
trap cleanup EXIT
echo "enabling FUSE over io_uring: echo Y > $param (was $old; put back at the end)"
echo Y >"$param"

# start_proto NAME ARGS...: the prototype on $tmp/NAME, once it says READY.
start_proto() {
    local name=$1
    shift
    mkdir -p "$tmp/$name"
    "$proto" serve "$@" "$tmp/$name" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    mnts+=("$tmp/$name")
    for _ in $(seq 100); do
        grep -qs READY "$tmp/$name.out" && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "uring_roundtrip: $name did not start:" >&2
    cat "$tmp/$name.err" >&2
    exit 1
}

targets=()
for ring in $RINGS; do
    start_proto "uring-$ring" --ring "$ring" --depth "$DEPTH"
    targets+=("uring-$ring")
    sed "s/^/  uring-$ring: /" "$tmp/uring-$ring.err" "$tmp/uring-$ring.out"
done
for cpu in $CLASSIC; do
    case $cpu in
        none) name=classic && start_proto "$name" --classic ;;
        percpu) name=classic-percpu && start_proto "$name" --classic --per-cpu-readers ;;
        *) name=classic-cpu$cpu && start_proto "$name" --classic --cpu "$cpu" ;;
    esac
    targets+=("$name")
done

# unionfs over one empty lower and an upper whose root carries the xattr.
mkdir -p "$tmp/L" "$tmp/U"
setfattr -n user.proto -v round-trip "$tmp/U"
for cpu in $UNIONFS; do
    name=unionfs
    taskset=()
    if [ "$cpu" != none ]; then
        name=unionfs-cpu$cpu
        taskset=(taskset -c "$cpu")
    fi
    mkdir -p "$tmp/$name" "$tmp/W-$name"
    "${taskset[@]}" "$unionfs" mount -f --lower "$tmp/L" --upper "$tmp/U" --workdir "$tmp/W-$name" --ttl 0 \
        "$tmp/$name" 2>"$tmp/$name.err" &
    pids+=($!)
    mnts+=("$tmp/$name")
    for _ in $(seq 100); do mountpoint -q "$tmp/$name" && break; sleep 0.1; done
    mountpoint -q "$tmp/$name" || { echo "uring_roundtrip: $name did not mount:" >&2; cat "$tmp/$name.err" >&2; exit 1; }
    targets+=("$name")
done

# The prototype serves what it should: LOOKUP of file, its attributes, its xattr.
for t in "${targets[@]}"; do
    case $t in unionfs*) f="$tmp/$t" ;; *) f="$tmp/$t/file" ;; esac
    getfattr --absolute-names --only-values -n user.proto "$f" | grep -qx round-trip || { echo "uring_roundtrip: $t: bad xattr" >&2; exit 1; }
    stat -c '%F' "$f" >/dev/null
done

client=("$proto" bench --calls "$N")
[ -n "$PIN" ] && client=(taskset -c "$PIN" "${client[@]}")
declare -A res
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "measuring: $RUNS runs x $N calls per target and call, interleaved..."
for run in $(seq "$RUNS"); do
    for t in "${targets[@]}"; do
        for op in getxattr stat; do
            res[$t.$op]+="$("${client[@]}" --op "$op" "$tmp/$t") "
        done
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
spread() { tr ' ' '\n' | grep . | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

echo
echo "FUSE round trip, microseconds per call: median of $RUNS runs x $N calls (min-max)"
echo "kernel $(uname -r), $(nproc) CPUs, client: $([ -n "$PIN" ] && echo "pinned to CPU $PIN" || echo "not pinned")," \
    "load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-36s %20s %20s\n' target getxattr stat
declare -A med
for t in "${targets[@]}"; do
    case $t in
        uring-*) label="io_uring prototype (${t#uring-})" ;;
        classic) label="classic /dev/fuse prototype" ;;
        classic-cpu*) label="classic prototype on CPU ${t#classic-cpu}" ;;
        classic-percpu) label="classic prototype, reader per CPU" ;;
        unionfs) label="unionfs (--ttl 0)" ;;
        unionfs-cpu*) label="unionfs (--ttl 0) on CPU ${t#unionfs-cpu}" ;;
    esac
    row=()
    for op in getxattr stat; do
        med[$t.$op]=$(median <<<"${res[$t.$op]}")
        row+=("$(printf '%.2f (%s)' "${med[$t.$op]}" "$(spread <<<"${res[$t.$op]}")")")
    done
    printf '%-36s %20s %20s\n' "$label" "${row[@]}"
done
ratio() { awk -v a="${med[$1.$3]}" -v b="${med[$2.$3]}" 'BEGIN {printf "%.2f", a/b}'; }
for ring in $RINGS; do
    for base in "${targets[@]}"; do
        case $base in uring-*) continue ;; esac
        printf '%-36s %20s %20s\n' "io_uring ($ring) / $base" \
            "$(ratio "uring-$ring" "$base" getxattr)" "$(ratio "uring-$ring" "$base" stat)"
    done
done

# Tear down: unmount, let the servers exit, show where their requests came through.
echo
for i in "${!mnts[@]}"; do
    umount "${mnts[$i]}"
    wait "${pids[$i]}" || echo "uring_roundtrip: the server of ${mnts[$i]} exited with $?" >&2
done
mnts=()
pids=()
for t in "${targets[@]}"; do
    case $t in unionfs*) ;; *) echo "$t $(grep '^served' "$tmp/$t.err")" ;; esac
done
