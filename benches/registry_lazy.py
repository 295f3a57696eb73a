#!/usr/bin/env python3
"""Lazy registry images against pulling first (issue 21's benchmark).

One image (the 1 GiB image of benches/image_bench.py by default: 100,000 small files and three
big ones in three layers), pushed to a local `docker-registry` as gzip and as zstd:chunked, read
through a proxy that adds LATENCY ms to every request (0 and 30 by default). Jobs read the files
of 2%, 10% or 100% of the image's directories (whole directories, in name order, as a build or a
test run reads a package; the big files only in the 100% job). Targets, each from an empty cache
with the page cache dropped:

  pull+oci   skopeo copy docker://… oci:DIR, then unionfs mount --image oci:DIR (indexes the
             layers), then the job
  pull+tar   skopeo copy, then tar -x of every layer into one directory (what a pull and unpack
             costs), then the job on the unpacked tree
  lazy       unionfs mount --image docker://… of the zstd:chunked image, then the job
  lazy+pre   the same with --prefetch of the job's list (what --record of an earlier run
             writes), the job started at once
  lazy-warm  (with --targets) a second mount of the registry image, the first one's cache kept
  oci-warm   (with --targets) the zstd:chunked image from a local layout, catalogs made

For each: seconds to the job's first byte and to its end, bytes that came through the proxy,
disk used by the cache or copy. Prints one line per (latency, job, target) and the ratios.

Usage (as root; needs docker-registry, skopeo, GNU tar with --zstd, and the images of
benches/image_bench.py, made once with `python3 benches/image_bench.py --generate-only`):

  cargo build --release
  python3 benches/registry_lazy.py [--size 1g|100m|10m] [--latency 0,30] [--jobs 2,10,100]

The registry and the proxy run on free loopback ports; the registry is stopped by its PID at
the end, on failure too, and every mount made here is unmounted.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# UNIONFS_BIN: a copy of the binary, so that a build during a long run changes nothing.
BIN = os.environ.get("UNIONFS_BIN", os.path.join(ROOT, "target/release/unionfs"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proxy:
    """A TCP proxy that holds every chunk a client sends for `delay` seconds before passing it
    on (one request, one added round trip), and counts the bytes the server sends back."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.delay = 0.0
        self.down = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", self.port))
        ready.set()
        self.loop.run_forever()
        server.close()

    async def _pipe(self, r, w, up):
        try:
            while True:
                b = await r.read(1 << 20)
                if not b:
                    break
                if up and self.delay:
                    await asyncio.sleep(self.delay)
                if not up:
                    self.down += len(b)
                w.write(b)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                w.close()
            except Exception:
                pass

    async def _conn(self, cr, cw):
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, sw, True), self._pipe(sr, cw, False))


def run(*cmd, **kw):
    subprocess.run(cmd, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def du(path):
    # Allocated bytes: the fetched part of a lazy layer is a sparse file.
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else 0


def job_files(files, percent):
    """The files of `percent`% of the directories (every Nth, in name order)."""
    dirs = sorted({p.rsplit("/", 1)[0] for p, _ in files})
    if percent >= 100:
        keep = set(dirs)
    else:
        step = max(1, round(100 / percent))
        keep = set(dirs[::step])
    return [p for p, size in files if p.rsplit("/", 1)[0] in keep and (percent >= 100 or size < 1 << 24)]


def read_all(root, paths):
    """Seconds to the first byte and to the end of reading every path under `root`."""
    t0 = time.monotonic()
    first = None
    for p in paths:
        with open(os.path.join(root, p), "rb") as f:
            while True:
                b = f.read(1 << 20)
                if first is None:
                    first = time.monotonic() - t0
                if not b:
                    break
    return first or 0.0, time.monotonic() - t0


class Mounted:
    def __init__(self, mnt):
        self.mnt = mnt

    def __enter__(self):
        return self

    def __exit__(self, *a):
        if subprocess.run(["mountpoint", "-q", self.mnt]).returncode == 0:
            subprocess.run(["umount", self.mnt])


def target_lazy(w, host, paths):
    cache, mnt = os.path.join(w, "cache"), os.path.join(w, "mnt")
    os.makedirs(mnt, exist_ok=True)
    t0 = time.monotonic()
    run(BIN, "mount", "--image", f"docker://{host}/bchunked:bench", "--tls-verify=false", "--cache", cache, mnt)
    with Mounted(mnt):
        ready = time.monotonic() - t0
        first, end = read_all(mnt, paths)
    return ready + first, ready + end, du(cache)


def target_lazy_prefetch(w, host, paths):
    """The lazy mount given the job's list (as `--record` of an earlier run writes it)."""
    cache, mnt, plist = os.path.join(w, "cache"), os.path.join(w, "mnt"), os.path.join(w, "list")
    os.makedirs(mnt, exist_ok=True)
    with open(plist, "w") as f:
        f.write("".join(p + "\n" for p in paths))
    t0 = time.monotonic()
    run(BIN, "mount", "--image", f"docker://{host}/bchunked:bench", "--tls-verify=false", "--cache", cache,
        "--prefetch", plist, mnt)
    with Mounted(mnt):
        ready = time.monotonic() - t0
        first, end = read_all(mnt, paths)
    return ready + first, ready + end, du(cache)


def target_lazy_warm(w, host, paths):
    """A second mount of the registry image on the same host: the cache the first one left."""
    target_lazy(w, host, paths)
    drop_caches()
    mnt = os.path.join(w, "mnt")
    t0 = time.monotonic()
    run(BIN, "mount", "--image", f"docker://{host}/bchunked:bench", "--tls-verify=false", "--cache",
        os.path.join(w, "cache"), mnt)
    with Mounted(mnt):
        ready = time.monotonic() - t0
        first, end = read_all(mnt, paths)
    return ready + first, ready + end, du(os.path.join(w, "cache"))


def target_oci_warm(w, host, paths):
    """The same zstd:chunked image from a local layout, its catalogs made by a first mount."""
    cache, mnt = os.path.join(w, "cache"), os.path.join(w, "mnt")
    os.makedirs(mnt, exist_ok=True)
    ref = f"oci:{LAYOUTS}/chunked:bench"
    run(BIN, "mount", "--image", ref, "--cache", cache, mnt)
    subprocess.run(["umount", mnt], check=True)
    drop_caches()
    t0 = time.monotonic()
    run(BIN, "mount", "--image", ref, "--cache", cache, mnt)
    with Mounted(mnt):
        ready = time.monotonic() - t0
        first, end = read_all(mnt, paths)
    return ready + first, ready + end, du(cache)


def target_pull_oci(w, host, paths):
    cache, mnt, oci = os.path.join(w, "cache"), os.path.join(w, "mnt"), os.path.join(w, "oci")
    os.makedirs(mnt, exist_ok=True)
    t0 = time.monotonic()
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{host}/bgzip:bench", f"oci:{oci}:x")
    run(BIN, "mount", "--image", f"oci:{oci}:x", "--cache", cache, mnt)
    with Mounted(mnt):
        ready = time.monotonic() - t0
        first, end = read_all(mnt, paths)
    return ready + first, ready + end, du(cache) + du(oci)


def target_pull_tar(w, host, paths):
    oci, root = os.path.join(w, "oci"), os.path.join(w, "root")
    os.makedirs(root, exist_ok=True)
    t0 = time.monotonic()
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{host}/bgzip:bench", f"oci:{oci}:x")
    idx = json.load(open(os.path.join(oci, "index.json")))["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(oci, "blobs/sha256", idx)))
    for layer in manifest["layers"]:
        z = {"gzip": ["-z"], "zstd": ["--zstd"]}.get(layer["mediaType"].rsplit("+", 1)[-1], [])
        blob = os.path.join(oci, "blobs/sha256", layer["digest"].split(":")[1])
        run("tar", "-x", "--numeric-owner", "-C", root, *z, "-f", blob)
    ready = time.monotonic() - t0
    first, end = read_all(root, paths)
    return ready + first, ready + end, du(oci) + du(root)


TARGETS = {
    "pull+oci": target_pull_oci,
    "pull+tar": target_pull_tar,
    "lazy": target_lazy,
    "lazy+pre": target_lazy_prefetch,
    "lazy-warm": target_lazy_warm,
    "oci-warm": target_oci_warm,
}
# Where the images' layouts are (set in main).
LAYOUTS = ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1g")
    ap.add_argument("--latency", default="0,30")
    ap.add_argument("--jobs", default="2,10,100")
    ap.add_argument("--targets", default="pull+oci,pull+tar,lazy,lazy+pre")
    a = ap.parse_args()
    images = os.path.join(os.environ.get("IMAGE_BENCH_DIR", "/var/tmp/unionfs-image-bench"), "images", a.size)
    if not os.access(BIN, os.X_OK):
        sys.exit("build first: cargo build --release")
    if not os.path.isdir(os.path.join(images, "chunked")):
        sys.exit(f"no images in {images}: python3 benches/image_bench.py --generate-only")
    global LAYOUTS
    LAYOUTS = images
    files = json.load(open(os.path.join(images, "files.json")))
    total = sum(s for _, s in files)
    w = tempfile.mkdtemp(prefix="registry-lazy.", dir="/var/tmp")
    port = free_port()
    with open(os.path.join(w, "config.yml"), "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {w}/store\n"
                f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n")
    log = open(os.path.join(w, "registry.log"), "w")
    registry = subprocess.Popen(["docker-registry", "serve", os.path.join(w, "config.yml")], stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        for fmt in ("gzip", "chunked"):
            run("skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
                f"oci:{images}/{fmt}:bench", f"docker://127.0.0.1:{port}/b{fmt}:bench")
        proxy = Proxy(port)
        host = f"127.0.0.1:{proxy.port}"
        print(f"image {a.size}: {len(files)} files, {total / 2**20:.0f} MiB; gzip blobs "
              f"{du(os.path.join(images, 'gzip', 'blobs')) / 2**20:.0f} MiB, zstd:chunked "
              f"{du(os.path.join(images, 'chunked', 'blobs')) / 2**20:.0f} MiB", flush=True)
        for lat in [int(x) for x in a.latency.split(",")]:
            proxy.delay = lat / 1000
            for pct in [int(x) for x in a.jobs.split(",")]:
                paths = job_files(files, pct)
                got = {}
                for name in a.targets.split(","):
                    for d in ("cache", "oci", "root", "mnt", "list"):
                        shutil.rmtree(os.path.join(w, d), ignore_errors=True)
                    drop_caches()
                    before = proxy.down
                    first, end, disk = TARGETS[name](w, host, paths)
                    moved = proxy.down - before
                    got[name] = (first, end)
                    print(f"latency {lat} ms, job {pct}% ({len(paths)} files): {name:8} first byte "
                          f"{first:7.2f} s, end {end:7.2f} s, transferred {moved / 2**20:7.1f} MiB, "
                          f"disk {disk / 2**20:7.1f} MiB", flush=True)
                if "lazy-warm" in got and "oci-warm" in got:
                    print(f"  lazy-warm vs oci-warm: end {got['lazy-warm'][1] / got['oci-warm'][1]:.2f}x")
                for mine in (n for n in ("lazy", "lazy+pre") if n in got):
                    for other in (n for n in got if n.startswith("pull")):
                        f0, e0 = got[other]
                        f1, e1 = got[mine]
                        print(f"  {mine} vs {other}: first byte {f0 / f1:.1f}x sooner, end {e0 / e1:.1f}x sooner")
    finally:
        for d in ("mnt",):
            p = os.path.join(w, d)
            if subprocess.run(["mountpoint", "-q", p]).returncode == 0:
                subprocess.run(["umount", p])
        registry.kill()
        registry.wait()
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
