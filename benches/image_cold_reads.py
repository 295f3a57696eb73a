#!/usr/bin/env python3
"""Cold reads of an image's small files: how long each first read of a file takes through
`unionfs mount --image` with an empty cache (each read decompresses a piece and admits it into
the content cache). A focused companion of image_bench.py's "read all" column.

Usage (as root; drops the page cache):

    python3 benches/image_cold_reads.py BIN oci:LAYOUT:TAG CACHE_PARENT [DIR] [N]

mounts oci:LAYOUT:TAG with a fresh cache directory under CACHE_PARENT, reads the first N (300)
files under DIR (default srv/l0, as image_bench.py's images have it) in path order once each,
prints the median and mean milliseconds a read, then unmounts and removes the cache. Run it with
two binaries alternately to compare them.
"""
import os, sys, subprocess, time, tempfile, statistics
bin_, layout, cachebase = sys.argv[1], sys.argv[2], sys.argv[3]
sub = sys.argv[4] if len(sys.argv) > 4 else "srv/l0"
n = int(sys.argv[5]) if len(sys.argv) > 5 else 300
d = tempfile.mkdtemp(dir=cachebase); mnt = tempfile.mkdtemp()
subprocess.run(["sync"]); open("/proc/sys/vm/drop_caches","w").write("3")
subprocess.run([bin_, "mount", "--image", layout, "--cache", d, mnt], check=True)
try:
    files = []
    for root, _, fs in os.walk(os.path.join(mnt, sub)):
        for f in sorted(fs):
            files.append(os.path.join(root, f))
    files = sorted(files)[:n]
    ts = []
    for f in files:
        t = time.perf_counter()
        with open(f, "rb") as h: h.read()
        ts.append((time.perf_counter() - t) * 1000)
    print(f"{bin_}: {len(ts)} reads, median {statistics.median(ts):.3f} ms, mean {statistics.mean(ts):.3f} ms")
finally:
    subprocess.run([bin_, "umount", mnt])
    subprocess.run(["rm", "-rf", d]); os.rmdir(mnt)
