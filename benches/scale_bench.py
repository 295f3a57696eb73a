#!/usr/bin/env python3
"""Scale benchmark: costs on big layers and hard-link farms, unionfs against a plain directory,
kernel overlayfs, fuse-overlayfs 1.10 and the Rust fuse-overlayfs 2.0, measured in one run over
the same generated data. Beside benches/mount_bench.py (same method and helpers).

Usage (as root; needs kernel overlayfs, fuse3, optionally fuse-overlayfs and git):

    cargo build --release
    python3 benches/scale_bench.py --quick        # under 10 minutes: 1 repetition at 1M
    python3 benches/scale_bench.py --full         # 3 repetitions everywhere
    python3 benches/scale_bench.py --only find-cold --sizes 100k --targets kernel,unionfs

Options: --sizes 100k,1m (or 300k)   --targets plain,kernel,fuse-overlayfs,fuse-overlayfs-2,unionfs
         --only WORKLOAD,...   --reps N   --bin PATH   --fo2 PATH (fuse-overlayfs 2.0 binary;
         default: fuse-overlayfs in ~/.cargo/bin or /var/tmp/fo2/bin, from
         `cargo install fuse-overlayfs --version 2.0.0`)   --workdir DIR (default
         /var/tmp/unionfs-scale)   --regen   --json FILE

Data (generated once per size into WORKDIR/SIZE, reused while its stamp matches), one lower
layer per size:
    tree/              SIZE entries: directories of 1,000 empty files
    copy/linked/       100 files of 64 KiB, each with a second name outside the layer
    copy/single/       100 files of 64 KiB with one name
and, for the 100k size only, two more single-layer datasets:
    farm               100,000 files in directories of 1,000, every one with a second name
                       outside the layer (an ostree/flatpak checkout, a `cp -al` snapshot)
    repo               a git repository (10,000 committed files) whose working-tree files all
                       have a second name outside the layer (hard-linked checkouts)

Workloads:
    find-{cold,warm}        walk the layer's view and lstat every entry (os.walk)       ms
    farm-find-{cold,warm}   the same on the hard-link farm                            ms
    copyup-linked-100       append one byte to each of the 100 multiply-linked files   ms
    copyup-single-100       the same for the 100 singly-linked files                   ms
    git-status-{cold,warm}  git status --porcelain in repo/                           ms
    rss-peak                the daemon's VmHWM after find-warm                          MiB
    rss-forgotten           its VmRSS 20 s after echo 2 > /proc/sys/vm/drop_caches      MiB
"cold" drops the page, dentry and inode caches after mounting; "warm" repeats on the same
mount. Every repetition gets a fresh mount on an emptied upper. The plain target reads the
layer directory itself (copy-ups append there to a copy restored each time).

Ratios: unionfs value / other value (below 1: unionfs faster or smaller). The goals of the
project's scale issue are printed beside the ratios to kernel overlayfs: copy-up of a
multiply-linked file within 1.5x of a singly-linked one at 1M; cold find within 1.5x of kernel
overlayfs at 1M, warm within 1.0x; daemon RSS at most fuse-overlayfs 1.10's.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mount_bench as mb  # noqa: E402  (shared mount helpers)

DEFAULT_WORKDIR = "/var/tmp/unionfs-scale"
GEN_VERSION = 1
SIZES = {"100k": 100_000, "300k": 300_000, "1m": 1_000_000}
PER_DIR = 1000
COPY_N, COPY_SIZE = 100, 64 * 1024
FARM_N = 100_000
REPO_FILES = 10_000
ALL_TARGETS = ["plain", "kernel", "fuse-overlayfs", "fuse-overlayfs-2", "unionfs"]
OLD_MTIME = 1704067200
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- data ------------------------------------------------------------------------------------


def _tree(root, n):
    d = 0
    made = 0
    while made < n:
        dp = os.path.join(root, "tree", f"g{d // 100:03d}", f"d{d:04d}")
        os.makedirs(dp, exist_ok=True)
        for i in range(min(PER_DIR, n - made)):
            open(os.path.join(dp, f"f{i:04d}"), "wb").close()
        made += PER_DIR
        d += 1


def _copy_files(root, outside):
    payload = os.urandom(COPY_SIZE)
    for kind in ("linked", "single"):
        os.makedirs(os.path.join(root, "copy", kind))
        for i in range(COPY_N):
            p = os.path.join(root, "copy", kind, f"f{i:03d}")
            with open(p, "wb") as f:
                f.write(payload)
            if kind == "linked":
                os.link(p, os.path.join(outside, f"copy-{i:03d}"))


def _farm(root, outside):
    for i in range(FARM_N):
        dp = os.path.join(root, f"d{i // PER_DIR:03d}")
        if i % PER_DIR == 0:
            os.makedirs(dp)
        p = os.path.join(dp, f"f{i % PER_DIR:04d}")
        with open(p, "wb") as f:
            f.write(b"x" * (i % 100))
        os.link(p, os.path.join(outside, f"farm-{i}"))


def _repo(root, outside):
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    for i in range(REPO_FILES):
        d = os.path.join(repo, f"src{i // 250:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"m{i:05d}.c"), "w") as f:
            f.write(f"int f{i}(void) {{ return {i}; }}\n")
    git = ["git", "-C", repo, "-c", "gc.auto=0", "-c", "maintenance.auto=false"]
    mb.run(git + ["init", "-q"], env=GIT_ENV)
    mb.run(git + ["add", "-A"], env=GIT_ENV)
    mb.run(git + ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init"], env=GIT_ENV)
    mb.run(git + ["gc", "-q"], env=GIT_ENV)
    # Hard-link every working-tree file outside the layer; old times so git never sees them
    # as racily clean.
    for dp, dns, fns in os.walk(repo):
        if ".git" in dp.split(os.sep):
            continue
        for fn in fns:
            p = os.path.join(dp, fn)
            os.utime(p, (OLD_MTIME, OLD_MTIME))
            os.link(p, os.path.join(outside, "repo-" + p[len(repo) + 1 :].replace("/", "_")))
    mb.run(git + ["update-index", "--refresh", "-q"], env=GIT_ENV, check=False)


def ensure_data(workdir, sizes, regen):
    """One lower layer per dataset: WORKDIR/data/NAME/layer (and NAME/outside for links)."""
    wanted = [f"n{s}" for s in sizes] + (["farm", "repo"] if "100k" in sizes else [])
    for name in wanted:
        base = os.path.join(workdir, "data", name)
        stamp = os.path.join(base, "stamp.json")
        params = {"v": GEN_VERSION, "name": name, "per_dir": PER_DIR, "copy": [COPY_N, COPY_SIZE]}
        if not regen and os.path.exists(stamp):
            with open(stamp) as f:
                if json.load(f) == params:
                    continue
        log(f"generating {name} in {base} ...")
        t0 = time.time()
        mb.rmtree(base)
        layer, outside = os.path.join(base, "layer"), os.path.join(base, "outside")
        os.makedirs(layer)
        os.makedirs(outside)
        if name.startswith("n"):
            _tree(layer, SIZES[name[1:]])
            _copy_files(layer, outside)
        elif name == "farm":
            _farm(layer, outside)
        else:
            _repo(layer, outside)
        with open(stamp, "w") as f:
            json.dump(params, f)
        log(f"  {name}: {time.time() - t0:.0f} s")


# ---- targets ---------------------------------------------------------------------------------


class ScaleTarget:
    """A target over one dataset's layer (mb.Target's mounting, with our own layers)."""

    def __init__(self, inner, layer):
        self.t = inner
        self.t.layers = [layer]
        self.name = inner.name

    def mount(self):
        if self.name == "plain":
            return self.t.layers[0]
        return self.t.mount()

    def unmount(self):
        if self.name != "plain":
            return self.t.unmount()
        return None


class FuseOverlayfs2(mb.Target):
    fuse = True

    def __init__(self, workdir, binary):
        super().__init__("fuse-overlayfs-2", workdir)
        self.binary = binary

    def mount_cmd(self):
        return [self.binary, "-o", f"lowerdir={':'.join(self.layers)},upperdir={self.upper},workdir={self.work}",
                self.mnt]

    def is_daemon(self, args):
        return args[0].decode(errors="replace") == self.binary


def make_target(name, workdir, fo2):
    run_dir = os.path.join(workdir, "run")
    if name == "plain":
        t = mb.Target("plain", run_dir)
    elif name == "kernel":
        t = mb.Kernel(run_dir)
    elif name == "fuse-overlayfs":
        t = mb.FuseOverlayfs(run_dir)
    elif name == "fuse-overlayfs-2":
        t = FuseOverlayfs2(run_dir, fo2)
    else:
        t = mb.Unionfs(run_dir)
    return t


# ---- workloads -------------------------------------------------------------------------------


walk = mb._stat_walk  # os.walk + lstat of every entry, as mount_bench's stat-all


def append_all(d):
    names = sorted(os.listdir(d))
    for n in names:
        with open(os.path.join(d, n), "ab") as f:
            f.write(b"+")
    return len(names)


def git_status(repo):
    r = mb.run(["git", "-C", repo, "status", "--porcelain"], env=GIT_ENV, capture_output=True, text=True)
    return len(r.stdout.splitlines())


def timed(fn):
    t0 = time.perf_counter()
    check = fn()
    return (time.perf_counter() - t0) * 1000, check


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def bench_dataset(tgt, dataset_root, plan, reps, results, checks, measure_rss):
    """Runs the workloads of `plan` for one target over one dataset; with `measure_rss`, the
    daemon's memory after the last repetition too (once per target: it waits for the kernel to
    forget and the allocator to give memory back)."""
    for rep in range(reps):
        root = tgt.mount()
        try:
            pid = tgt.t.pid if tgt.name != "plain" else None
            for wl, fn in plan:
                if wl.endswith("-cold"):
                    mb.sync_data()
                    mb.drop_caches()
                if wl.startswith("copyup"):
                    # The plain target appends to a copy of the files, restored each time.
                    d = fn(root)
                    if tgt.name == "plain":
                        scratch = os.path.join(os.path.dirname(dataset_root), "plain-scratch")
                        mb.rmtree(scratch)
                        shutil.copytree(d, scratch)
                        d = scratch
                    for n in os.listdir(d):  # sources in the page cache, as in mount_bench
                        with open(os.path.join(d, n), "rb") as f:
                            f.read()
                    mb.sync_data()
                    ms, check = timed(lambda: append_all(d))
                else:
                    ms, check = timed(lambda: fn(root))
                results.setdefault(wl, {}).setdefault(tgt.name, []).append(ms)
                checks.setdefault(wl, {})[tgt.name] = check
            if measure_rss and pid and rep == reps - 1 and any(w.startswith("find-warm") or w == "farm-find-warm" for w, _ in plan):
                peak = rss_kib(pid, "VmHWM")
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("2")
                time.sleep(20)
                after = rss_kib(pid)
                key = "rss-peak" if plan[0][0].startswith("find") else "farm-rss-peak"
                if peak:
                    results.setdefault(key, {}).setdefault(tgt.name, []).append(peak / 1024)
                if after:
                    results.setdefault(key.replace("peak", "forgotten"), {}).setdefault(tgt.name, []).append(
                        after / 1024
                    )
        finally:
            problem = tgt.unmount()
            if problem:
                log(f"  {tgt.name}: {problem}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--sizes", default="100k,1m")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--only", default="")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--bin", default=mb.DEFAULT_BIN)
    ap.add_argument("--fo2", default="")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scale_bench: needs root (mounts, drop_caches)")
    mb.BIN = os.path.abspath(a.bin)
    mb.SYNC_PATH = a.workdir
    sizes = [s for s in a.sizes.split(",") if s]
    for s in sizes:
        if s not in SIZES:
            sys.exit(f"scale_bench: unknown size {s} (100k, 300k, 1m)")
    targets = [t for t in a.targets.split(",") if t]
    fo2 = a.fo2 or next(
        (p for p in (os.path.expanduser("~/.cargo/bin/fuse-overlayfs"), "/var/tmp/fo2/bin/fuse-overlayfs")
         if os.access(p, os.X_OK)),
        "",
    )
    if "fuse-overlayfs-2" in targets and not fo2:
        log("fuse-overlayfs 2.0 not found (cargo install fuse-overlayfs --version 2.0.0): skipped")
        targets.remove("fuse-overlayfs-2")
    if "fuse-overlayfs" in targets and not shutil.which("fuse-overlayfs"):
        log("fuse-overlayfs (Debian package) not found: skipped")
        targets.remove("fuse-overlayfs")
    only = set(w for w in a.only.split(",") if w)
    os.makedirs(a.workdir, exist_ok=True)
    ensure_data(a.workdir, sizes, a.regen)

    def keep(w):
        return not only or w in only

    datasets = []
    for s in sizes:
        layer = os.path.join(a.workdir, "data", f"n{s}", "layer")
        plan = [(w, f) for w, f in [
            ("find-cold", lambda r: walk(os.path.join(r, "tree"))),
            ("find-warm", lambda r: walk(os.path.join(r, "tree"))),
            ("copyup-linked-100", lambda r: os.path.join(r, "copy", "linked")),
            ("copyup-single-100", lambda r: os.path.join(r, "copy", "single")),
        ] if keep(w)]
        reps = a.reps or (1 if (a.quick and s == "1m") else 3)
        datasets.append((s, layer, plan, reps))
    if "100k" in sizes:
        farm = os.path.join(a.workdir, "data", "farm", "layer")
        plan = [(w, f) for w, f in [
            ("farm-find-cold", lambda r: walk(r)),
            ("farm-find-warm", lambda r: walk(r)),
        ] if keep(w)]
        datasets.append(("100k", farm, plan, a.reps or 3))
        repo = os.path.join(a.workdir, "data", "repo", "layer")
        plan = [(w, f) for w, f in [
            ("git-status-cold", lambda r: git_status(os.path.join(r, "repo"))),
            ("git-status-warm", lambda r: git_status(os.path.join(r, "repo"))),
        ] if keep(w)]
        datasets.append(("100k", repo, plan, a.reps or 3))

    all_results = {}
    mb.atexit.register(mb.teardown_all)
    for size, layer, plan, reps in datasets:
        if not plan:
            continue
        results, checks = {}, {}
        log(f"dataset {os.path.basename(os.path.dirname(layer))} ({size}), {reps} repetition(s): "
            + ", ".join(w for w, _ in plan))
        for rep in range(reps):
            for name in targets:
                tgt = ScaleTarget(make_target(name, a.workdir, fo2), layer)
                bench_dataset(tgt, layer, plan, 1, results, checks, measure_rss=rep == reps - 1)
        for wl, per in results.items():
            key = f"{wl} ({size})" if not wl.startswith(("farm", "git")) else wl
            all_results[key] = {t: statistics.median(v) for t, v in per.items()}
        for wl, per in checks.items():
            if len(set(per.values())) > 1:
                log(f"note: {wl} gave different results per target: {per}")
    report(all_results, targets)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(all_results, f, indent=1)


def report(res, targets):
    cols = [t for t in targets]
    print()
    print("| workload | " + " | ".join(cols) + " | unionfs vs kernel | vs fuse-overlayfs 1.10 |")
    print("|---|" + "---|" * (len(cols) + 2))
    for wl, per in res.items():
        unit = "MiB" if wl.startswith(("rss", "farm-rss")) else "ms"

        def fmt(v):
            return "–" if v is None else (f"{v:.1f} {unit}" if unit == "MiB" else f"{v:,.0f} ms")

        u = per.get("unionfs")
        ratio = lambda o: f"{u / o:.2f}x" if (u is not None and o) else "–"  # noqa: E731
        print(f"| {wl} | " + " | ".join(fmt(per.get(t)) for t in cols)
              + f" | {ratio(per.get('kernel'))} | {ratio(per.get('fuse-overlayfs'))} |")
    for size in SIZES:
        linked, single = res.get(f"copyup-linked-100 ({size})", {}), res.get(f"copyup-single-100 ({size})", {})
        if linked.get("unionfs") and single.get("unionfs"):
            print(f"copy-up multiply-linked / singly-linked at {size}, unionfs: "
                  f"{linked['unionfs'] / single['unionfs']:.2f}x (goal <= 1.5x at 1m)")


if __name__ == "__main__":
    main()
