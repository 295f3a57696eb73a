#!/usr/bin/env python3
"""Image benchmark (issue 20): `unionfs mount --image` against unpacking first, and against
`podman pull`, on OCI images of about 100 MiB and 1 GiB in gzip, zstd and zstd:chunked.

Usage (as root; needs buildah, skopeo, umoci, podman, GNU tar with --zstd, fusermount3, and a
unionfs binary; this script never builds it):

    cargo build --release
    python3 benches/image_bench.py --quick                     # small images, a smoke run
    python3 benches/image_bench.py --sizes 100M,1G --reps 3 --json out.json

Options: --sizes S[,S...] (presets 10M, 100M, 1G; default 100M,1G)   --quick (= --sizes 10M
         --reps 1)   --generate-only   --formats gzip,zstd,zstd:chunked   --targets (default
         unpack,unpacked,umoci,podman,cold,warm)   --reps N or N,N,.. per size (default 3)   --bin PATH (default
         target/release/unionfs)   --workdir DIR (default /var/tmp/unionfs-image-bench; images
         are generated once and kept while WORKDIR/images/SIZE/stamp.json matches)   --regen
         --small-cache BYTES (the --cache-size of the cache-limit check; default 1/8 of the
         first size)   --json FILE

Data: a deterministic tree per size: many small files (1-8 KiB, ~100 per directory, nested 4
deep) and a few big ones (10-30 MiB for 100M, 150-200 MiB for 1G); every file's content is
half seeded-random bytes and half text, so it compresses about 2:1. The tree is split over 4
layers (bottom: 40% of the small files and one big file; then 30% + one big, 30% + the rest;
top: a few config files); no layer deletes anything, so applying the layer tars in order with
`tar -x` gives exactly the image. The image is made offline with Buildah (vfs storage, from
scratch, one commit per layer) and pushed to three OCI layouts: `skopeo copy` (gzip),
`skopeo copy --dest-compress-format zstd` (zstd), `buildah push --compression-format
zstd:chunked` (zstd:chunked, with its table of contents).

Targets (each gives a directory whose files are then read; "t0" is the start of its first
command):
  unpack    unpack-first with plain tools: every layer blob applied in order with `tar -x`
            (`-z` / `--zstd`, as `skopeo copy` + `tar -x` would, minus the copy: the blobs are
            already on this disk) into one directory, then `unionfs mount --lower DIR --upper U`.
  unpacked  the same unionfs mount over the directory `unpack` left (nothing to unpack): the
            reference for the warm goals.
  umoci     `umoci unpack --image LAYOUT:TAG BUNDLE` (gzip only: umoci 0.4.7 refuses zstd
            layers), then `unionfs mount --lower BUNDLE/rootfs --upper U`.
  podman    `podman pull oci:LAYOUT:TAG` into a private store (--root/--runroot in the
            workdir, storage driver overlay: kernel overlayfs, as root), then `podman image
            mount`; read through that mount.
  cold      `unionfs mount --image oci:LAYOUT:TAG --cache C --upper U` with C empty (every
            layer is scanned, or its table of contents read, at mount).
  warm      the same with C kept from a previous mount (catalogs and content cache kept).

Method: every run starts with the page, dentry and inode caches dropped (sync; echo 3 >
/proc/sys/vm/drop_caches); cold runs also start from nothing on disk (unpacked directory,
bundle, podman image, unionfs cache all removed, untimed). Then, timed from t0: the unpack /
pull / mount command(s); `first byte`: open and read 1 byte of a 4 KiB file deep in the bottom
layer; `find+stat`: `find MNT -printf '%i %s %m %U'` (stats every entry); `read 10%`: read
every 10th regular file in path order (completely); `read all`: read the other 90%. Figures
are cumulative from t0 ("to first byte", "to find+stat", "to read all"), plus the walk and
the full read alone (what the warm goals compare). Disk: `du -sx` (allocated blocks) of what
the target wrote (unpacked directory + upper; bundle + upper; podman store; unionfs cache +
upper + workdir) after the 10% read and at the end. Memory: VmHWM of the unionfs daemon
(its pid from /run/unionfs/*.pid). Each run checks that every file had its expected size and
the deep file its expected bytes (reported under Notes when not). Repetitions are interleaved
(rep 1 of every target, then rep 2, ...), medians reported, ratios against `unpack` of the same
size and format.

Cache limit: for each format, on the first size, one extra mount with an empty cache and
`--cache-size` small, reading every file, while a thread reads the daemon's running total
(CACHE/content/size) and sums the sizes of the files under CACHE/content every 0.2 s (that walk
is no snapshot: it may overstate by a piece or two); the largest total and the pieces at the end
must stay at most the limit; the final `du` (allocated blocks, with the 256 fan-out
directories) is checked against the limit too.

Goals (printed as holds / misses, never a failure): cold mount-to-first-byte of the largest
image at least 10x sooner than unpack-first for zstd:chunked, 2x for gzip and zstd; disk after
reading 10% of the files at most 15% of the unpacked size; warm find+stat and warm read-all
within 1.2x of unionfs over unpacked directories; the content cache never above --cache-size.

Every mount is detached at exit (normal, error, Ctrl-C, SIGTERM): FUSE mounts with `unionfs
umount` (then `umount -l`, then SIGTERM/SIGKILL of the daemon pid we started), podman image
mounts with `podman image umount -a` in the private store. Commands time out; on a timeout only
the process group we started is killed.
"""

import argparse
import atexit
import builtins
import glob
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target", "release", "unionfs")
DEFAULT_WORKDIR = "/var/tmp/unionfs-image-bench"
GEN_VERSION = 2
MTIME = 1704067200
MIB = 1 << 20

# size preset -> (small files, big file sizes in MiB)
PRESETS = {
    "10M": (1500, [2, 3]),
    "100M": (15000, [10, 25]),
    "1G": (100000, [150, 200, 180]),
}
FORMATS = {"gzip": "gzip", "zstd": "zstd", "zstd:chunked": "chunked"}
ALL_TARGETS = ["unpack", "unpacked", "umoci", "podman", "cold", "warm"]
DEEP = "srv/l0/deep/a/b/c/d/e/f/g/h/target.txt"

BIN = None
MOUNTS = {}  # mountpoint -> daemon pid (or None) for FUSE mounts we made
PODMAN_STORES = set()  # private podman stores with images possibly mounted


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class CmdError(Exception):
    pass


def run(cmd, timeout=3600, check=True, capture=True, input_=None):
    """Runs cmd in its own process group; on timeout kills that group (only ours)."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL if input_ is None else subprocess.PIPE,
                         stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        so, se = p.communicate(input=input_, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise CmdError(f"timed out after {timeout} s: {' '.join(cmd)}")
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    if check and p.returncode != 0:
        raise CmdError(f"{' '.join(cmd)} exited {p.returncode}: {(se or b'').decode(errors='replace')[-2000:]}")
    return (so or b"").decode(errors="replace")


def sh(script, timeout=3600):
    return run(["sh", "-ec", script], timeout=timeout)


def drop_caches():
    run(["sync"], timeout=600)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def du(*paths):
    """Allocated bytes of the paths (one file system each, -x), 0 for absent ones."""
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    out = run(["du", "-sxc", "--block-size=1"] + paths, timeout=1200)
    return int(out.strip().splitlines()[-1].split()[0])


def rmtree(p):
    if os.path.lexists(p):
        for m in list(MOUNTS):
            if m == p or m.startswith(p.rstrip("/") + "/"):
                raise CmdError(f"refusing to remove {p}: {m} is mounted")
        run(["rm", "-rf", "--one-file-system", p], timeout=1800)


# ---- mounts --------------------------------------------------------------------------------


def mount_entry(mnt):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if parts[4] == mnt:
                fstype = parts[parts.index("-") + 1]
                return parts[2], fstype
    return None


def daemon_pid(mnt):
    for pf in glob.glob("/run/unionfs/*.pid"):
        try:
            with open(pf) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if len(lines) >= 2 and lines[1] == mnt:
            return int(lines[0].split()[0])
    return None


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def wait_gone(pid, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def unionfs_mount(mnt, args, timeout=3600):
    os.makedirs(mnt, exist_ok=True)
    MOUNTS[mnt] = None
    try:
        run([BIN, "mount"] + args + [mnt], timeout=timeout)
    finally:
        MOUNTS[mnt] = daemon_pid(mnt)
    return MOUNTS[mnt]


def unionfs_umount(mnt):
    pid = MOUNTS.get(mnt)
    try:
        if mount_entry(mnt):
            run([BIN, "umount", mnt], timeout=120, check=False)
        if mount_entry(mnt):
            run(["umount", "-l", mnt], timeout=60, check=False)
        if pid and not wait_gone(pid, 10):
            for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if wait_gone(pid, wait):
                    break
    finally:
        MOUNTS.pop(mnt, None)


class Podman:
    def __init__(self, store):
        self.store = store
        self.base = ["podman", "--root", os.path.join(store, "root"), "--runroot", os.path.join(store, "run"),
                     "--storage-driver", "overlay", "--events-backend", "none"]

    def __call__(self, *args, check=True, timeout=3600):
        PODMAN_STORES.add(self.store)
        return run(self.base + list(args), timeout=timeout, check=check).strip()

    def reset(self):
        if os.path.exists(os.path.join(self.store, "root")):
            self("image", "umount", "-a", "-f", check=False, timeout=300)
            self("rmi", "-a", "-f", check=False, timeout=600)


def teardown_all():
    for m in list(MOUNTS):
        try:
            unionfs_umount(m)
        except Exception as e:  # keep tearing down the others
            log(f"teardown of {m}: {e}")
    for s in list(PODMAN_STORES):
        try:
            Podman(s)("image", "umount", "-a", "-f", check=False, timeout=300)
        except Exception as e:
            log(f"teardown of podman store {s}: {e}")
        PODMAN_STORES.discard(s)


# ---- data ----------------------------------------------------------------------------------


TEXT_WORDS = ("the quick brown fox jumps over lazy dog union filesystem layer image catalog "
              "cache gzip zstd chunked table contents restart point frame digest manifest config "
              "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor").split()


def text_pool():
    r = random.Random(7)
    words, n = [], 0
    while n < 4 * MIB:
        w = r.choice(TEXT_WORDS)
        words.append(w)
        n += len(w) + 1
    return (" ".join(words) + "\n").encode()


def content(seed, size, pool):
    """Deterministic bytes: alternating 2 KiB of seeded random and 2 KiB of text."""
    r = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += r.randbytes(2048)
        off = r.randrange(0, len(pool) - 2048)
        out += pool[off:off + 2048]
    return bytes(out[:size])


def plan(size):
    """The files of each layer: {layer: [(path, seed, bytes)]}."""
    small, bigs = PRESETS[size]
    r = random.Random(size)
    layers = {0: [], 1: [], 2: [], 3: []}
    cuts = [int(small * 0.4), int(small * 0.7), small]
    for i in range(small):
        layer = 0 if i < cuts[0] else 1 if i < cuts[1] else 2
        leaf = i // 100
        path = f"srv/l{layer}/d{leaf // 400:02d}/d{leaf // 20 % 20:02d}/d{leaf % 20:02d}/f{i:06d}.dat"
        layers[layer].append((path, i + 1, r.randint(1024, 8192)))
    for j, mb in enumerate(bigs):
        layers[min(j, 2)].append((f"opt/big/l{min(j, 2)}/blob{j}.bin", 10_000_000 + j, mb * MIB))
    layers[0].append((DEEP, 99, 4096))
    for k in range(5):
        layers[3].append((f"etc/app/conf{k}.txt", 20_000_000 + k, 600))
    return layers


def write_layer(root, files, pool):
    for path, seed, n in files:
        p = os.path.join(root, path)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            if n <= 8 * MIB:
                f.write(content(seed, n, pool))
            else:
                for k in range(0, n, 8 * MIB):
                    f.write(content(seed * 1000 + k // (8 * MIB), min(8 * MIB, n - k), pool))
    run(["find", root, "-exec", "touch", "-h", "-d", f"@{MTIME}", "{}", "+"], timeout=1800)


def generate(workdir, size, regen):
    """The OCI layouts of one size (one per format) and the file list; made once."""
    d = os.path.join(workdir, "images", size.lower())  # lower case: podman names images after the path
    stamp = os.path.join(d, "stamp.json")
    want = json.loads(json.dumps({"version": GEN_VERSION, "size": size, "preset": PRESETS[size]}))
    if not regen and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                with open(os.path.join(d, "files.json")) as f:
                    return d, json.load(f)
    t0 = time.time()
    rmtree(d)
    os.makedirs(d)
    b = os.path.join(d, "build")
    buildah = ["buildah", "--root", f"{b}/root", "--runroot", f"{b}/run", "--storage-driver", "vfs"]
    pool = text_pool()
    layers = plan(size)
    prev = "scratch"
    for layer in range(4):
        c = run(buildah + ["from", prev]).strip().splitlines()[-1]
        m = run(buildah + ["mount", c]).strip()
        write_layer(m, layers[layer], pool)
        run(buildah + ["unmount", c])
        name = f"localhost/bench-{size.lower()}-l{layer}"
        run(buildah + ["commit", "--quiet", c, name], timeout=7200)
        run(buildah + ["rm", c])
        prev = name
        log(f"  {size}: layer {layer} committed ({time.time() - t0:.0f} s)")
    store = f"containers-storage:[vfs@{b}/root+{b}/run]"
    run(["skopeo", "copy", "--quiet", store + prev, f"oci:{d}/gzip:bench"], timeout=7200)
    run(["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", store + prev, f"oci:{d}/zstd:bench"], timeout=7200)
    run(buildah + ["push", "--quiet", "--compression-format", "zstd:chunked", prev, f"oci:{d}/chunked:bench"], timeout=7200)
    run(buildah + ["rmi", "-a", "-f"], check=False, timeout=1800)
    rmtree(b)
    files = sorted((p, n) for fl in layers.values() for p, _, n in fl)
    with open(os.path.join(d, "files.json"), "w") as f:
        json.dump(files, f)
    deep = next(fl for fl in layers[0] if fl[0] == DEEP)
    with open(os.path.join(d, "deep.sha256"), "w") as f:
        f.write(hashlib.sha256(content(deep[1], deep[2], pool)).hexdigest())
    with open(stamp, "w") as f:
        json.dump(want, f)
    log(f"  {size}: images made in {time.time() - t0:.0f} s")
    return d, files


def layout_layers(layout):
    """(media type, blob path) of the layers of tag `bench`, base first."""
    with open(os.path.join(layout, "index.json")) as f:
        idx = json.load(f)
    desc = next(m for m in idx["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench")
    blob = lambda dg: os.path.join(layout, "blobs", *dg.split(":"))
    with open(blob(desc["digest"])) as f:
        man = json.load(f)
    return [(l["mediaType"], blob(l["digest"])) for l in man["layers"]]


# ---- workloads -----------------------------------------------------------------------------


def read_files(root, paths, buf):
    """Reads each file completely; returns {path: bytes read}."""
    got = {}
    for p in paths:
        fd = os.open(os.path.join(root, p), os.O_RDONLY)
        try:
            n = 0
            while True:
                k = os.readv(fd, [buf])
                if k == 0:
                    break
                n += k
        finally:
            os.close(fd)
        got[p] = n
    return got


class Case:
    """One (size, format): its layout, files and scratch directories."""

    def __init__(self, workdir, size, fmt, imgdir, files):
        self.size, self.fmt = size, fmt
        self.layout = os.path.join(imgdir, FORMATS[fmt])
        self.files = files
        self.expect = dict(files)
        with open(os.path.join(imgdir, "deep.sha256")) as f:
            self.deep_sha = f.read().strip()
        paths = [p for p, _ in files]
        self.first10 = paths[::10]
        self.rest = [p for i, p in enumerate(paths) if i % 10]
        self.bytes10 = sum(self.expect[p] for p in self.first10)
        dirs = set()
        for p, _ in files:
            d = os.path.dirname(p)
            while d and d not in dirs:
                dirs.add(d)
                d = os.path.dirname(d)
        self.entries = len(files) + len(dirs)
        self.s = os.path.join(workdir, "run")
        os.makedirs(self.s, exist_ok=True)
        self.podman = Podman(os.path.join(workdir, "podman"))

    def p(self, *names):
        return os.path.join(self.s, *names)


def fresh(*dirs):
    for d in dirs:
        rmtree(d)
        os.makedirs(d)


def run_target(case, target, notes, cache_limit=None):
    """One timed run; returns the figures (ms, bytes)."""
    c = case
    mnt = c.p("mnt")
    upper, wd = c.p("upper"), c.p("work")
    root, bundle, cache = c.p("rootfs"), c.p("bundle"), c.p("cache")
    # untimed preparation
    fresh(upper, wd)
    os.makedirs(mnt, exist_ok=True)
    if target == "unpack":
        rmtree(root)
    elif target == "unpacked":
        if not os.path.isdir(root):
            raise CmdError("unpacked: no directory left by `unpack`")
    elif target == "umoci":
        rmtree(bundle)
    elif target == "podman":
        c.podman.reset()
    elif target == "cold" or cache_limit:
        rmtree(cache)
    elif target == "warm":
        if not os.path.isdir(cache):
            raise CmdError("warm: no cache left by `cold`")
    union_args = ["--upper", upper, "--workdir", wd]
    drop_caches()
    fig = {}
    pid = None
    podman_img = None
    t0 = time.perf_counter()
    if target == "unpack":
        os.makedirs(root)
        for mt, blob in layout_layers(c.layout):
            z = ["-z"] if mt.endswith("+gzip") else ["--zstd"] if mt.endswith("+zstd") else []
            run(["tar", "-x", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", root, "-f", blob] + z)
        pid = unionfs_mount(mnt, ["--lower", root] + union_args)
        view = mnt
        mine = [root, upper, wd]
    elif target == "unpacked":
        pid = unionfs_mount(mnt, ["--lower", root] + union_args)
        view = mnt
        mine = [root, upper, wd]
    elif target == "umoci":
        run(["umoci", "unpack", "--image", f"{c.layout}:bench", bundle])
        pid = unionfs_mount(mnt, ["--lower", os.path.join(bundle, "rootfs")] + union_args)
        view = mnt
        mine = [bundle, upper, wd]
    elif target == "podman":
        out = c.podman("pull", "-q", f"oci:{c.layout}:bench")
        podman_img = out.splitlines()[-1].strip()
        view = c.podman("image", "mount", podman_img).splitlines()[-1].strip()
        mine = [os.path.join(c.podman.store, "root")]
    else:
        args = ["--image", f"oci:{c.layout}:bench", "--cache", cache] + union_args
        if cache_limit:
            args += ["--cache-size", str(cache_limit)]
        pid = unionfs_mount(mnt, args)
        view = mnt
        mine = [cache, upper, wd]
    try:
        with open(os.path.join(view, DEEP), "rb") as f:
            first = f.read(1)
        t1 = time.perf_counter()
        with open(os.path.join(view, DEEP), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != c.deep_sha or not first:
                notes.append(f"{c.size} {c.fmt} {target}: {DEEP} has other bytes")
        t1b = time.perf_counter()
        if cache_limit:
            peak = [0]
            stop = threading.Event()

            def pieces():
                tot, subdirs = 0, 0
                for dp, dns, fns in os.walk(os.path.join(cache, "content")):
                    subdirs += len(dns)
                    for fn in fns:
                        if fn in ("size", "lock"):
                            continue
                        try:
                            tot += os.lstat(os.path.join(dp, fn)).st_size
                        except OSError:
                            pass
                return tot, subdirs

            tally = [0]

            def sample():
                while not stop.is_set():
                    # a walk is no snapshot: a piece counted and then evicted, and one added
                    # later in the walk, are both counted, so this may overstate by a piece or two
                    peak[0] = max(peak[0], pieces()[0])
                    try:  # the daemons' own running total, kept under the cache's lock
                        with open(os.path.join(cache, "content", "size")) as f:
                            tally[0] = max(tally[0], int(f.read().strip() or 0))
                    except (OSError, ValueError):
                        pass
                    stop.wait(0.2)
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            buf = bytearray(MIB)
            got = read_files(view, c.first10 + c.rest, buf)
            stop.set()
            th.join()
            fig["cache_peak"] = peak[0]
            fig["tally_peak"] = tally[0]
            fig["pieces_end"], fig["subdirs"] = pieces()
            fig["cache_du"] = du(os.path.join(cache, "content"))
            fig["cache_apparent"] = int(run(["du", "-sb", os.path.join(cache, "content")]).split()[0]) \
                if os.path.isdir(os.path.join(cache, "content")) else 0
            fig["limit"] = cache_limit
            fig["hwm"] = vm_hwm(pid) if pid else None
            check_sizes(c, target + " (small cache)", got, notes)
            return fig
        out = run(["find", view, "-printf", "%i %s %m %U\n"], timeout=3600)
        t2 = time.perf_counter()
        n = out.count("\n") - 1  # not the root
        if n != c.entries:
            notes.append(f"{c.size} {c.fmt} {target}: find saw {n} entries, expected {c.entries}")
        buf = bytearray(MIB)
        got = read_files(view, c.first10, buf)
        t3 = time.perf_counter()
        fig["disk10"] = du(*mine)
        t4 = time.perf_counter()
        got.update(read_files(view, c.rest, buf))
        t5 = time.perf_counter()
        fig["disk_end"] = du(*mine)
        fig["hwm"] = vm_hwm(pid) if pid else None
        check_sizes(c, target, got, notes)
        ms = lambda s: s * 1000.0
        fig["first_byte"] = ms(t1 - t0)
        fig["find_stat"] = ms(t1 - t0 + t2 - t1b)
        fig["read_all"] = ms(t1 - t0 + t2 - t1b + t3 - t2 + t5 - t4)
        fig["walk_only"] = ms(t2 - t1b)
        fig["reads_only"] = ms(t3 - t2 + t5 - t4)
        return fig
    finally:
        if target == "podman":
            if podman_img:
                c.podman("image", "umount", "-f", podman_img, check=False, timeout=300)
        else:
            unionfs_umount(mnt)


def check_sizes(c, target, got, notes):
    bad = [p for p, n in got.items() if c.expect.get(p) != n]
    if bad or len(got) != len(c.expect):
        notes.append(f"{c.size} {c.fmt} {target}: {len(bad)} files of another size (e.g. {bad[:3]}), "
                     f"{len(got)} read of {len(c.expect)}")


# ---- report --------------------------------------------------------------------------------


def fmt_ms(v):
    return "-" if v is None else f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def fmt_b(v):
    return "-" if v is None else f"{v / MIB:,.1f} MiB"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100M,1G")
    ap.add_argument("--formats", default="gzip,zstd,zstd:chunked")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--reps", default="3", help="N, or N,N,... one per size (0: only the cache-limit check)")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--small-cache", type=int)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.reps = "10M", "1"
    if os.geteuid() != 0:
        sys.exit("image_bench: run as root (drop_caches, buildah, podman with a private store)")
    for prog in ["buildah", "skopeo", "umoci", "podman", "tar", "zstd", "fusermount3"]:
        if shutil.which(prog) is None:
            sys.exit(f"image_bench: {prog} is not installed")
    BIN = os.path.abspath(a.bin)
    if not os.access(BIN, os.X_OK):
        sys.exit(f"image_bench: {BIN} missing: cargo build --release")
    sizes = [s for s in a.sizes.split(",") if s]
    formats = [f for f in a.formats.split(",") if f]
    targets = [t for t in a.targets.split(",") if t]
    for s in sizes:
        if s not in PRESETS:
            sys.exit(f"image_bench: unknown size {s} (presets: {', '.join(PRESETS)})")
    for f in formats:
        if f not in FORMATS:
            sys.exit(f"image_bench: unknown format {f}")
    for t in targets:
        if t not in ALL_TARGETS:
            sys.exit(f"image_bench: unknown target {t}")
    if "unpacked" in targets and "unpack" not in targets:
        sys.exit("image_bench: target unpacked needs unpack")
    if "warm" in targets and "cold" not in targets:
        sys.exit("image_bench: target warm needs cold")
    reps = [int(x) for x in a.reps.split(",")]
    reps = dict(zip(sizes, reps + [reps[-1]] * len(sizes)))
    os.makedirs(a.workdir, exist_ok=True)
    a.workdir = os.path.realpath(a.workdir)
    if a.generate_only:
        for size in sizes:
            generate(a.workdir, size, a.regen)
        return 0
    notes, rows, checks = [], [], []
    unpacked_size = {}
    for size in sizes:
        log(f"images {size}...")
        imgdir, files = generate(a.workdir, size, a.regen)
        for fmt in formats:
            case = Case(a.workdir, size, fmt, imgdir, files)
            tl = [t for t in targets if not (t == "umoci" and fmt != "gzip")]
            figs = {t: [] for t in tl}
            for rep in range(reps[size]):
                for t in tl:
                    try:
                        f = run_target(case, t, notes)
                    except CmdError as e:
                        notes.append(f"{size} {fmt} {t} rep {rep + 1}: {e}")
                        log(f"  {size} {fmt} {t}: FAILED {e}")
                        continue
                    figs[t].append(f)
                    log(f"  {size} {fmt} rep {rep + 1} {t}: first byte {fmt_ms(f['first_byte'])}, find+stat "
                        f"{fmt_ms(f['find_stat'])} (walk {fmt_ms(f['walk_only'])}), read all {fmt_ms(f['read_all'])} "
                        f"(reads {fmt_ms(f['reads_only'])}), disk@10% {fmt_b(f['disk10'])}, end {fmt_b(f['disk_end'])}, "
                        f"hwm {fmt_b(f['hwm'])}")
            if "unpack" in tl and figs["unpack"]:
                unpacked_size[(size, fmt)] = du(case.p("rootfs"))
            for t in tl:
                if not figs[t]:
                    continue
                row = {"size": size, "format": fmt, "target": t, "runs": len(figs[t])}
                for k in ["first_byte", "find_stat", "read_all", "walk_only", "reads_only", "disk10", "disk_end", "hwm"]:
                    row[k] = med([f[k] for f in figs[t]])
                row["all_runs"] = figs[t]
                rows.append(row)
            if size == sizes[0] and ("cold" in targets):
                total = sum(n for _, n in files)
                limit = a.small_cache or max(1 * MIB, total // 8)
                try:
                    f = run_target(case, "cold", notes, cache_limit=limit)
                    checks.append({"size": size, "format": fmt, **f})
                    log(f"  {size} {fmt} cache limit {fmt_b(limit)}: peak {fmt_b(f['cache_peak'])}, du {fmt_b(f['cache_du'])}")
                except CmdError as e:
                    notes.append(f"{size} {fmt} cache-limit check: {e}")
            # a report so far, in case the run is stopped before the end
            with open(os.path.join(a.workdir, "partial-report.md"), "w") as f:
                report(a, sizes, formats, rows, checks, unpacked_size, notes, out=f, json_path=a.json and a.json + ".partial")
            # leave nothing big behind between cases
            for d in ["rootfs", "bundle", "cache", "upper", "work"]:
                rmtree(case.p(d))
            case.podman.reset()
    report(a, sizes, formats, rows, checks, unpacked_size, notes)
    return 0


def report(a, sizes, formats, rows, checks, unpacked_size, notes, out=sys.stdout, json_path=None):
    json_path = json_path or a.json

    def print(*args):
        builtins.print(*args, file=out)
    by = {(r["size"], r["format"], r["target"]): r for r in rows}
    ver = run([BIN, "--version"], check=False).strip()
    pv = run(["podman", "--version"], check=False).strip()
    print(f"\n{platform.node()} {platform.release()}, {os.cpu_count()} CPUs; {ver}; {pv}; repetitions {a.reps} (per size), "
          f"medians; times from the start of the first command (cold caches); ratio = target / unpack "
          f"(below 1: sooner than unpack-first)\n")
    print("| size | format | target | first byte | find+stat | read all | walk alone | reads alone | disk @10% | disk end | daemon VmHWM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = by.get((r["size"], r["format"], "unpack"))

        def cell(k, f=fmt_ms):
            v = r[k]
            s = f(v)
            if base and base[k] and v is not None and r["target"] != "unpack" and k in ("first_byte", "find_stat", "read_all"):
                s += f" ({v / base[k]:.2f})"
            return s
        print(f"| {r['size']} | {r['format']} | {r['target']} | {cell('first_byte')} | {cell('find_stat')} | "
              f"{cell('read_all')} | {fmt_ms(r['walk_only'])} | {fmt_ms(r['reads_only'])} | {fmt_b(r['disk10'])} | "
              f"{fmt_b(r['disk_end'])} | {fmt_b(r['hwm'])} |")
    goals = []
    big = max((r["size"] for r in rows), key=sizes.index, default=sizes[-1])
    for fmt in formats:
        u, c = by.get((big, fmt, "unpack")), by.get((big, fmt, "cold"))
        want = 10 if fmt == "zstd:chunked" else 2
        if u and c:
            x = u["first_byte"] / c["first_byte"]
            goals.append((f"{big} {fmt}: cold first byte >= {want}x sooner than unpack-first",
                          x >= want, f"{fmt_ms(u['first_byte'])} / {fmt_ms(c['first_byte'])} = {x:.1f}x"))
    for size in sizes:
        for fmt in formats:
            un = unpacked_size.get((size, fmt))
            if not un:
                continue
            for t in ["unpack", "umoci", "podman", "cold"]:  # warm: the cache holds the previous full read
                r = by.get((size, fmt, t))
                if r and r["disk10"] is not None:
                    goals.append((f"{size} {fmt} {t}: disk after 10% read <= 15% of unpacked ({fmt_b(un)})",
                                  r["disk10"] <= 0.15 * un, f"{fmt_b(r['disk10'])} = {100 * r['disk10'] / un:.1f}%"))
            w, d = by.get((size, fmt, "warm")), by.get((size, fmt, "unpacked"))
            if w and d:
                for k, name in [("walk_only", "find+stat"), ("reads_only", "read all")]:
                    x = w[k] / d[k]
                    goals.append((f"{size} {fmt}: warm {name} within 1.2x of unionfs over unpacked dirs",
                                  x <= 1.2, f"{fmt_ms(w[k])} / {fmt_ms(d[k])} = {x:.2f}x"))
    for ch in checks:
        lim = ch["limit"]
        goals.append((f"{ch['size']} {ch['format']}: content cache pieces <= --cache-size {lim:,} B reading everything",
                      max(ch.get("tally_peak", 0), ch["pieces_end"]) <= lim,
                      f"largest content/size sampled {ch.get('tally_peak', 0):,} B, pieces at end {ch['pieces_end']:,} B; "
                      f"largest sum of a walk of content/ {ch['cache_peak']:,} B (no snapshot: may count a piece "
                      f"evicted during the walk and one added after it)"))
        goals.append((f"{ch['size']} {ch['format']}: du of CACHE/content <= --cache-size {fmt_b(ch['limit'])} at the end",
                      ch["cache_du"] <= ch["limit"],
                      f"du {fmt_b(ch['cache_du'])} (allocated blocks, with its {ch['subdirs']} fan-out directories), "
                      f"apparent {fmt_b(ch['cache_apparent'])}"))
    print("\nGoals:")
    for name, ok, detail in goals:
        print(f"- {'holds' if ok else 'MISSES'}: {name}: {detail}")
    print("\nUnpacked sizes (du of the unpack-first directory): " +
          ", ".join(f"{s} {f} {fmt_b(v)}" for (s, f), v in unpacked_size.items()))
    print("\nNotes:" if notes else "\nNotes: every run read every file with its expected size and the deep file's expected bytes.")
    for n in notes:
        print(f"- {n}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "cache_checks": checks, "goals": [{"goal": g, "holds": ok, "detail": d} for g, ok, d in goals],
                       "unpacked_size": {f"{s} {f}": v for (s, f), v in unpacked_size.items()},
                       "notes": notes, "unionfs": ver, "podman": pv, "reps": a.reps, "sizes": sizes}, f, indent=1)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    atexit.register(teardown_all)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        code = main()
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        teardown_all()
    sys.exit(code)
