#!/usr/bin/env python3
"""Layer-tools benchmark: `unionfs commit` and `unionfs diff` against `podman commit` and
`podman diff` of the same container, Podman using fuse-overlayfs as its overlay
mount_program (as rootless Podman does).

With a mount_program Podman cannot read the upper directly: `podman diff` and `podman commit`
mount the container and the image and compare the two trees file by file (containers/storage's
naive diff), so their cost follows the size of the image. `unionfs diff`/`commit` read the upper
and look at the lowers only where the upper has something, so theirs follows the size of the
change. This script measures both on images of several sizes with the same small change.

Usage (as root; needs podman, fuse-overlayfs, and target/release/unionfs):

    cargo build --release
    python3 benches/layer_bench.py                          # images of 10,000 and 1,000,000 entries
    python3 benches/layer_bench.py --entries 100000 --reps 5 --json out.json

Options: --entries N[,N...] (default 10000,1000000)   --reps N (default 3)   --bin PATH
         --workdir DIR (default /var/tmp/unionfs-layer-bench; images are generated once and
         kept while WORKDIR/stamp-N.json matches)   --regen   --no-cold   --json FILE

Data: an image of N entries (one layer imported with `podman import`): N/1000 directories of
1,000 files of 16 bytes, plus etc/. The change, made through `podman mount` of a container:
10 new files in a new directory, 5 files appended to, 5 deleted, 2 chmod'ed, 1 directory
removed (100 files) and made again with one file.

Method: every workload runs on the same container. "warm" runs once untimed, then REPS timed
runs; "cold" drops the page/dentry/inode caches (sync; echo 3 > /proc/sys/vm/drop_caches)
before each timed run. Medians are reported, and the ratio unionfs / podman (below 1: unionfs
is faster). `podman commit` writes a new image into the store (removed, untimed, after each
run); `unionfs commit` writes an uncompressed layer tar (what Podman stores) to a file in the
workdir. Check: the set of lines of `podman diff` and `unionfs diff` must be equal (reported
under Notes when not).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target", "release", "unionfs")
DEFAULT_WORKDIR = "/var/tmp/unionfs-layer-bench"
GEN_VERSION = 1
OLD_MTIME = 1704067200


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, timeout=3600, check=True, **kw):
    return subprocess.run(cmd, timeout=timeout, check=check, stdin=subprocess.DEVNULL, **kw)


def out(cmd, timeout=3600):
    return run(cmd, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode()


def drop_caches(workdir):
    run(["sync", "-f", workdir], timeout=600)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Podman:
    def __init__(self, store, mount_program):
        self.base = [
            "podman",
            "--root", os.path.join(store, "root"),
            "--runroot", os.path.join(store, "run"),
            "--storage-driver", "overlay",
            "--storage-opt", f"overlay.mount_program={mount_program}",
            "--events-backend", "none",
        ]

    def __call__(self, *args, check=True, timeout=3600):
        r = run(self.base + list(args), timeout=timeout, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return r.stdout.decode().strip()

    def cmd(self, *args):
        return self.base + list(args)


def generate(workdir, n, podman):
    """The image `localhost/layer-bench:N` and a container `bench-N` with the change."""
    stamp = os.path.join(workdir, f"stamp-{n}.json")
    want = {"version": GEN_VERSION, "entries": n}
    name = f"bench-{n}"
    if os.path.exists(stamp):
        with open(stamp) as f:
            same = json.load(f) == want
        exists = subprocess.run(podman.cmd("container", "exists", name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if same and exists:
            return name
    t0 = time.time()
    rootfs = os.path.join(workdir, f"rootfs-{n}")
    if os.path.exists(rootfs):
        shutil.rmtree(rootfs)
    os.makedirs(os.path.join(rootfs, "etc"))
    with open(os.path.join(rootfs, "etc", "hostname"), "w") as f:
        f.write("bench\n")
    payload = b"0123456789abcdef"
    dirs = max(1, n // 1000)
    for d in range(dirs):
        dp = os.path.join(rootfs, f"d{d:05d}")
        os.mkdir(dp)
        for i in range(min(1000, n)):
            with open(os.path.join(dp, f"f{i:04d}"), "wb") as f:
                f.write(payload)
    run(["find", rootfs, "-exec", "touch", "-h", "-d", f"@{OLD_MTIME}", "{}", "+"])
    tar = os.path.join(workdir, f"image-{n}.tar")
    run(["tar", "--numeric-owner", "-C", rootfs, "-cf", tar, "."])
    shutil.rmtree(rootfs)
    podman("rm", "-f", name, check=False)
    podman("rmi", "-f", f"localhost/layer-bench:{n}", check=False)
    podman("import", tar, f"localhost/layer-bench:{n}")
    os.remove(tar)
    podman("create", "--name", name, f"localhost/layer-bench:{n}", "/bin/sh")
    merged = podman("mount", name)
    try:
        os.mkdir(os.path.join(merged, "new"))
        for i in range(10):
            with open(os.path.join(merged, "new", f"n{i}"), "wb") as f:
                f.write(b"new file\n")
        for i in range(5):
            with open(os.path.join(merged, "d00000", f"f{i:04d}"), "ab") as f:
                f.write(b"appended\n")
            os.remove(os.path.join(merged, "d00000", f"f{100 + i:04d}"))
        for i in range(2):
            os.chmod(os.path.join(merged, "d00000", f"f{200 + i:04d}"), 0o600)
        last = os.path.join(merged, f"d{dirs - 1:05d}")
        shutil.rmtree(last)
        os.mkdir(last)
        with open(os.path.join(last, "again"), "wb") as f:
            f.write(b"made again\n")
    finally:
        podman("umount", name)
    with open(stamp, "w") as f:
        json.dump(want, f)
    log(f"image of {n} entries and its container made in {time.time() - t0:.0f} s")
    return name


def timed(fn, cold, workdir):
    if cold:
        drop_caches(workdir)
    t = time.perf_counter()
    res = fn()
    return (time.perf_counter() - t) * 1000.0, res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", default="10000,1000000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("layer_bench: run as root (podman with --root in the workdir, drop_caches)")
    for prog in ["podman", "fuse-overlayfs"]:
        if shutil.which(prog) is None:
            sys.exit(f"layer_bench: {prog} is not installed (apt-get install {prog})")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"layer_bench: {a.bin} missing: cargo build --release")
    fo = shutil.which("fuse-overlayfs")
    os.makedirs(a.workdir, exist_ok=True)
    podman = Podman(os.path.join(a.workdir, "store"), fo)
    if a.regen:
        for f in os.listdir(a.workdir):
            if f.startswith("stamp-"):
                os.remove(os.path.join(a.workdir, f))
    sizes = [int(x) for x in a.entries.split(",") if x]
    modes = ["warm"] + ([] if a.no_cold else ["cold"])
    rows, notes = [], []
    for n in sizes:
        name = generate(a.workdir, n, podman)
        upper = podman("inspect", name, "--format", "{{.GraphDriver.Data.UpperDir}}")
        lower = podman("inspect", name, "--format", "{{.GraphDriver.Data.LowerDir}}")
        layer_out = os.path.join(a.workdir, "layer.tar")
        counter = [0]

        def podman_diff():
            return set(podman("diff", name).splitlines())

        def unionfs_diff():
            return set(out([a.bin, "diff", "--lower", lower, "--upper", upper]).splitlines())

        def podman_commit():
            counter[0] += 1
            return podman("commit", "--quiet", name, f"localhost/layer-bench-commit:{n}-{counter[0]}")

        def podman_commit_cleanup():
            podman("rmi", "-f", f"localhost/layer-bench-commit:{n}-{counter[0]}", check=False)

        def unionfs_commit():
            return out([a.bin, "commit", "--lower", lower, "--upper", upper, "--output", layer_out]).strip()

        workloads = [
            ("diff", podman_diff, unionfs_diff, None),
            ("commit", podman_commit, unionfs_commit, podman_commit_cleanup),
        ]
        for wname, pf, uf, cleanup in workloads:
            for mode in modes:
                cold = mode == "cold"
                res = {}
                for tool, fn in [("podman", pf), ("unionfs", uf)]:
                    if not cold:
                        fn()
                        if tool == "podman" and cleanup:
                            cleanup()
                    times = []
                    for _ in range(a.reps):
                        ms, r = timed(fn, cold, a.workdir)
                        times.append(ms)
                        res[tool + "-result"] = r
                        if tool == "podman" and cleanup:
                            cleanup()
                    res[tool] = statistics.median(times)
                    log(f"{wname} {mode} {n} entries {tool}: {res[tool]:.1f} ms (runs: {', '.join(f'{t:.0f}' for t in times)})")
                if wname == "diff" and res["podman-result"] != res["unionfs-result"]:
                    only_p = sorted(res["podman-result"] - res["unionfs-result"])
                    only_u = sorted(res["unionfs-result"] - res["podman-result"])
                    notes.append(f"diff, {n} entries: lines differ: podman only {only_p[:5]}, unionfs only {only_u[:5]}")
                rows.append({
                    "workload": f"{wname} ({mode})",
                    "entries": n,
                    "podman_ms": res["podman"],
                    "unionfs_ms": res["unionfs"],
                    "ratio": res["unionfs"] / res["podman"] if res["podman"] else None,
                })
        if os.path.exists(layer_out):
            os.remove(layer_out)
    ver = out(["podman", "--version"]).strip()
    fov = next((l for l in out([fo, "--version"]).splitlines() if "fuse-overlayfs" in l), "fuse-overlayfs ?")
    print(f"\n{platform.node()} {platform.release()}, {os.cpu_count()} CPUs; {ver}; {fov}; "
          f"{a.reps} repetitions, medians; ratio = unionfs / podman (below 1: unionfs faster)\n")
    print("| workload | image entries | podman (fuse-overlayfs) | unionfs | ratio | podman / unionfs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speedup = r["podman_ms"] / r["unionfs_ms"] if r["unionfs_ms"] else float("inf")
        print(f"| {r['workload']} | {r['entries']:,} | {r['podman_ms']:,.0f} ms | {r['unionfs_ms']:.1f} ms "
              f"| {r['ratio']:.1e} | {speedup:,.0f}x |")
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"- {n}")
    else:
        print("\nNotes: `podman diff` and `unionfs diff` printed the same lines for every image.")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "notes": notes, "podman": ver, "fuse-overlayfs": fov}, f, indent=2)


if __name__ == "__main__":
    main()
