#!/usr/bin/env python3
"""Real jobs in a union (issue 24, item 6): builds and a package-manager-like install, run inside
a union whose lower is the source tree, on kernel overlayfs, fuse-overlayfs and unionfs in the
same run, several rounds with the order of targets rotated. Prints each round's times, the
per-round ratios of unionfs to kernel overlayfs and to fuse-overlayfs, and their medians (the
machine is shared: the same target varies by 25% between rounds, so only ratios within a round
mean much).

Usage (as root; needs kernel overlayfs, fuse-overlayfs, gcc and make):

    cargo build --release
    python3 benches/build_bench.py --rounds 3                        # every job: ~45 minutes
    python3 benches/build_bench.py --jobs make,install --rounds 5    # the quick ones: ~5 minutes
    python3 benches/build_bench.py --jobs cargo --targets kernel,fuse-overlayfs,unionfs --rounds 3

Options: --jobs cargo,make,install   --targets kernel,fuse-overlayfs,unionfs,unionfs-nopt,
         unionfs-rootless   --rounds N   --bin PATH (our unionfs; default target/release/unionfs
         of this repository, never Debian's `unionfs` on PATH)   --workdir DIR
         (default /var/tmp/unionfs-build-bench)   --json FILE

Jobs (each on a fresh mount over an empty upper, page/dentry/inode caches dropped first: cold):
    cargo    `cargo build --release --offline --locked` of this repository (HEAD's files, from
             `git archive`; cargo's registry of the crates it needs copied out of root's home,
             with the toolchain, so that any user can build it offline): what a CI sandbox
             runs. rustc writes and maps big .rlib files,
             cargo hard-links every artifact from deps/ into the output directory, renames many
             files and keeps fingerprint directories of small files.
    make     `make -j<CPUs>` of the zstd C library (its sources from the zstd-sys crate in
             cargo's registry, with a Makefile of ours: one object per .c file, then `ar`):
             a C build, many small compiler processes, headers read again and again.
    install  a package manager's install: 5,000 files of 1-16 KiB in 250 directories unpacked
             from a tarball as NAME.new, each fsynced and renamed to NAME (dpkg's way), then the
             staging directory renamed into place.

Targets:
    kernel            mount -t overlay (metacopy=on,redirect_dir=on)
    fuse-overlayfs    fuse-overlayfs 1.10
    unionfs           target/release/unionfs mount (as root: FUSE passthrough)
    unionfs-nopt      unionfs --no-passthrough (the rootless data path, measured as root)
    unionfs-rootless  unionfs mounted by a plain user through fusermount3; the job runs as that
                      user (the toolchain is hard-linked out of root's home so it can)

Every mount is unmounted and every daemon we started (by its pid) stopped at exit, also on
errors and Ctrl-C (the mount code and its teardown are mount_bench.py's).
"""

import argparse
import atexit
import importlib.util
import io
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("mount_bench", os.path.join(HERE, "mount_bench.py"))
mb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mb)

DEFAULT_WORKDIR = "/var/tmp/unionfs-build-bench"
ALL_JOBS = ["cargo", "make", "install"]
ALL_TARGETS = ["kernel", "fuse-overlayfs", "unionfs", "unionfs-nopt", "unionfs-rootless"]
GEN_VERSION = 1
INSTALL_DIRS, INSTALL_FILES = 250, 20  # 5,000 files

ZSTD_MAKEFILE = """\
# Written by benches/build_bench.py: every .c of the zstd library to an object, then one archive.
SRCS := $(wildcard common/*.c compress/*.c decompress/*.c dictBuilder/*.c)
OBJS := $(SRCS:%.c=obj/%.o)
CFLAGS ?= -O2 -DZSTD_MULTITHREAD=0 -DZSTD_DISABLE_ASM -I. -Icommon
libzstd.a: $(OBJS)
\tar rcs $@ $^
obj/%.o: %.c
\t@mkdir -p $(dir $@)
\t$(CC) $(CFLAGS) -c $< -o $@
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- sources (made once into WORKDIR/src, reused while WORKDIR/stamp.json matches) -----------


def toolchain_sysroot():
    return subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_sources(workdir):
    src = os.path.join(workdir, "src")
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    stamp = {"version": GEN_VERSION, "head": head, "sysroot": toolchain_sysroot()}
    stamp_path = os.path.join(workdir, "stamp.json")
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return src
    except (OSError, ValueError):
        pass
    log(f"making the job sources in {src} (once) ...")
    mb.rmtree(workdir)
    os.makedirs(src)
    # cargo: HEAD's files.
    rust = os.path.join(src, "rust")
    os.makedirs(rust)
    archive = subprocess.Popen(["git", "-C", REPO, "archive", "HEAD"], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", rust], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError("git archive HEAD failed")
    # cargo's registry (the crates of Cargo.lock, fetched before), copied beside the sources
    # so that every target's user reads and locks the same one; outside the union.
    home = os.path.join(workdir, "cargo-home")
    os.makedirs(home)
    mb.run(["cp", "-a", os.path.join(os.path.expanduser("~"), ".cargo", "registry"), home])
    mb.run(["chmod", "-R", "a+rwX", home])
    tc = os.path.join(workdir, "toolchain")
    mb.run(["cp", "-al", stamp["sysroot"], tc])
    mb.run(["chmod", "-R", "a+rX", tc])
    # make: the zstd library's sources.
    cargo_src = os.path.join(os.path.expanduser("~"), ".cargo", "registry", "src")
    libs = sorted(
        os.path.join(cargo_src, idx, crate, "zstd", "lib")
        for idx in os.listdir(cargo_src)
        for crate in os.listdir(os.path.join(cargo_src, idx))
        if crate.startswith("zstd-sys-")
    )
    if not libs:
        raise RuntimeError(f"no zstd-sys crate under {cargo_src} (cargo fetch of this repository)")
    c = os.path.join(src, "c")
    shutil.copytree(libs[-1], c)
    with open(os.path.join(c, "Makefile"), "w") as f:
        f.write(ZSTD_MAKEFILE)
    # install: the package's tarball, beside the lower (read through the union like a download).
    rng = random.Random(24)
    with tarfile.open(os.path.join(src, "pkg.tar"), "w") as tar:
        for d in range(INSTALL_DIRS):
            for i in range(INSTALL_FILES):
                data = rng.randbytes(rng.randint(1, 16) << 10)
                info = tarfile.TarInfo(f"pkg/d{d:03d}/f{i:02d}")
                info.size = len(data)
                info.mtime = 1704067200
                tar.addfile(info, io.BytesIO(data))
    mb.run(["chmod", "-R", "a+rX", src])
    # The plain user's own checkout, as a rootless user has it (root builds it the same).
    uid, gid = mb.rootless_user()
    mb.run(["chown", "-R", f"{uid}:{gid}", src])
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return src


# ---- jobs ------------------------------------------------------------------------------------


def job_env(workdir, target):
    tc = os.path.join(workdir, "toolchain", "bin")
    return {
        "PATH": f"{tc}:/usr/local/bin:/usr/bin:/bin",
        "CARGO_HOME": os.path.join(workdir, "cargo-home"),
        "HOME": os.path.join(workdir, "home", target.name),
        "RUSTC": os.path.join(tc, "rustc"),
        "LC_ALL": "C",
    }


def job_cmd(job, mnt):
    ncpu = str(os.cpu_count() or 1)
    if job == "cargo":
        return ["cargo", "build", "--release", "--offline", "--locked", "-q",
                "--manifest-path", os.path.join(mnt, "rust", "Cargo.toml")]
    if job == "make":
        return ["make", "-s", "-j", ncpu, "-C", os.path.join(mnt, "c")]
    # The system's Python: ours may live in root's home, where a plain user cannot run it.
    py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    return [py, os.path.abspath(__file__), "--install-into", mnt]


def check_of(job, mnt, as_user):
    """Whether the job produced what it must, the same on every target (looked at as the
    job's user: a rootless mount lets nobody else in)."""
    if job == "cargo":
        cmd = ["test", "-s", os.path.join(mnt, "rust", "target", "release", "unionfs")]
    elif job == "make":
        cmd = ["test", "-s", os.path.join(mnt, "c", "libzstd.a")]
    else:
        cmd = ["sh", "-c", f'test "$(find {os.path.join(mnt, "usr", "pkg")} -type f | wc -l)" = '
               f'{INSTALL_DIRS * INSTALL_FILES}']
    return subprocess.run(as_user + cmd, stdin=subprocess.DEVNULL).returncode == 0


def install_into(mnt):
    """The install job itself (run as a child, as the target's user)."""
    staging = os.path.join(mnt, "usr", ".pkg-staging")
    os.makedirs(staging)
    with tarfile.open(os.path.join(mnt, "pkg.tar")) as tar:
        for m in tar:
            rel = m.name.split("/", 1)[1]
            final = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = final + ".new"
            with tar.extractfile(m) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, final)
    os.rename(staging, os.path.join(mnt, "usr", "pkg"))
    fd = os.open(os.path.join(mnt, "usr"), os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def run_job(job, target, workdir):
    """Mounts `target`, runs `job` cold, unmounts; returns seconds."""
    mnt = target.mount()
    try:
        env = job_env(workdir, target)
        as_user = target.as_user() if hasattr(target, "as_user") else []
        os.makedirs(env["HOME"], exist_ok=True)
        if as_user:
            os.chown(env["HOME"], target.uid, target.gid)
        mb.drop_caches()
        t0 = time.perf_counter()
        r = subprocess.run(as_user + ["env", "-i"] + [f"{k}={v}" for k, v in env.items()] +
                           job_cmd(job, mnt), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=3600)
        secs = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{job} on {target.name} failed (exit {r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-2000:]}")
        if not check_of(job, mnt, as_user):
            raise RuntimeError(f"{job} on {target.name}: its output is missing")
        return secs
    finally:
        problem = target.unmount()
        if problem:
            log(f"warning: {problem}")
        target.cleanup()


def make_target(name, workdir, src):
    if name == "kernel":
        t = mb.Kernel(workdir)
    elif name == "fuse-overlayfs":
        t = mb.FuseOverlayfs(workdir)
    elif name == "unionfs":
        t = mb.Unionfs(workdir)
    elif name == "unionfs-nopt":
        t = mb.Unionfs(workdir, "unionfs-nopt", ["--no-passthrough"])
    elif name == "unionfs-rootless":
        t = mb.RootlessUnionfs(workdir)
    else:
        raise SystemExit(f"unknown target {name}")
    t.layers = [src]
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default=",".join(ALL_JOBS))
    ap.add_argument("--targets", default="kernel,fuse-overlayfs,unionfs,unionfs-nopt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=mb.DEFAULT_BIN)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--json")
    ap.add_argument("--install-into", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.install_into:
        return install_into(a.install_into)
    if os.geteuid() != 0:
        raise SystemExit("run as root (kernel overlayfs, dropping caches)")
    mb.BIN = os.path.abspath(a.bin)
    if not os.access(mb.BIN, os.X_OK):
        raise SystemExit(f"{mb.BIN} is missing: cargo build --release first")
    jobs = a.jobs.split(",")
    names = a.targets.split(",")
    for n in names:
        if n not in ALL_TARGETS:
            raise SystemExit(f"unknown target {n}; choose from {','.join(ALL_TARGETS)}")
    for prog, pkg in (("fuse-overlayfs", "fuse-overlayfs"), ("gcc", "gcc"), ("make", "make")):
        if shutil.which(prog) is None and (prog != "fuse-overlayfs" or prog in names):
            raise SystemExit(f"{prog} is missing (apt-get install {pkg})")
    os.makedirs(a.workdir, exist_ok=True)
    mb.SYNC_PATH = a.workdir
    src = make_sources(a.workdir)
    os.chmod(a.workdir, 0o755)
    targets = [make_target(n, a.workdir, src) for n in names]
    results = {j: {t.name: [] for t in targets} for j in jobs}
    for r in range(a.rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for j in jobs:
            for t in order:
                secs = run_job(j, t, a.workdir)
                results[j][t.name].append(secs)
                log(f"round {r + 1}/{a.rounds} {j:8} {t.name:17} {secs:8.2f} s")
    print(report(results, names, a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kernel": platform.release(), "cpus": os.cpu_count(), "bin": mb.BIN,
                       "results": results}, f, indent=1)


def report(results, names, a):
    lines = [f"real jobs in a union, {a.rounds} rounds (targets rotated each round), seconds; "
             f"kernel {platform.release()}, {os.cpu_count()} CPUs", ""]
    ours = [n for n in names if n.startswith("unionfs")]
    others = [n for n in ("kernel", "fuse-overlayfs") if n in names]
    head = ["job"] + names + [f"{u} / {o} (per round; median)" for u in ours for o in others]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for j, by in results.items():
        row = [j] + [f"{statistics.median(by[n]):.1f}" for n in names]
        for u in ours:
            for o in others:
                ratios = [x / y for x, y in zip(by[u], by[o])]
                row.append(", ".join(f"{x:.2f}" for x in ratios) + f"; **{statistics.median(ratios):.2f}**")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    atexit.register(mb.teardown_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    main()
