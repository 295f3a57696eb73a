#!/usr/bin/env python3
"""Per-request cost through a real mount (issue 24, item 1): microseconds per call of each
operation type workloads are made of, on kernel overlayfs, the minimal classic /dev/fuse
server, fuse-overlayfs and unionfs, measured interleaved in one run.

Usage (as root; needs kernel overlayfs, fuse-overlayfs for its column):

    cargo build --release && cargo build --release --example fuse_uring_proto
    python3 benches/request_cost.py --quick                  # ~3 min: N=5,000 (1,000), 5 runs
    python3 benches/request_cost.py                          # N=20,000 (2,000), 5 runs
    python3 benches/request_cost.py --quick --pin 1          # client and daemons on CPU 1
    python3 benches/request_cost.py --only create,mkdir --targets kernel,unionfs --json out.json
    python3 benches/request_cost.py --quick --trace perf --only create --targets unionfs

Options: --targets plain,kernel,minimal,fuse-overlayfs,unionfs,unionfs-nopt   --only OP,...
         --runs N   --calls N   --calls-expensive N   --pin CPU   --json FILE
         --bin PATH (our unionfs; default target/release/unionfs of this repository, never the
         `unionfs` on PATH, which may be Debian's unionfs-fuse)   --workdir DIR
         --trace perf|strace (with --only/--targets: record each FUSE daemon while each op runs)

Targets (each FUSE daemon runs in the foreground as our child, so we know its pid):
    plain           a directory on the same filesystem: the kernel's VFS + ext4 + Python's
                    own cost per call. Every other column includes that Python overhead too.
    kernel          mount -t overlay (metacopy=on,redirect_dir=on, as unionfs's default)
    minimal         examples/fuse_uring_proto.rs serve --classic: one thread reading /dev/fuse,
                    answering LOOKUP (ENOENT for any name but `file`), GETATTR and GETXATTR of a
                    fixed tree: the transport floor. Only for lookup-miss, getattr, getxattr.
    fuse-overlayfs  /usr/bin/fuse-overlayfs -o ...,writeback=0 (no writeback cache, so that
                    write-4k is a WRITE request as on unionfs-nopt)
    unionfs         unionfs mount (as root: FUSE passthrough for upper files)
    unionfs-nopt    unionfs mount --no-passthrough --no-writeback-cache: every read and write
                    through the daemon

Every FUSE target has two mounts, each over its own upper:
  * "meta", kept for the whole run, with entry and attribute caching off (unionfs --ttl 0,
    fuse-overlayfs -o timeout=0; the minimal server caches no attributes and answers misses
    with a plain ENOENT): lookup-hit, lookup-miss, getattr. getattr is one request per call;
    a lookup is more than one on unionfs, which mounts with default_permissions: the kernel
    refreshes the (expired) attributes of the directory to check search permission, and
    stat refreshes the found inode's (strace -c of the daemon: 3 requests per lookup-hit).
    The minimal server has no default_permissions: one LOOKUP per lookup-miss.
  * "data", mounted fresh for every run with the default caching: readdirplus first (cold),
    then the other ops (getxattr too: with expired attributes, unionfs's default_permissions
    would add a GETATTR for the permission check to every getxattr). Names are looked up (stat'ed) before the timing, so a call's requests
    are the op's own: an open is OPEN+FLUSH(+RELEASE, asynchronous), a create LOOKUP (the name
    is new) + CREATE + FLUSH + RELEASE, a chmod one SETATTR.
The kernel target gets the same two mounts (it has no TTL: its stats are dcache hits).

Operations (one call = one system call from the client; N calls per run):
    lookup-hit      stat of an existing lower name in the (merged) root, 1,000 names cycled
    lookup-miss     stat of a missing name in the root
    getattr         stat of the mount root (never revalidated: one GETATTR)
    getxattr        getxattr(root, "user.absent") -> ENODATA (the minimal server: on its
                    only mount, which it serves without default_permissions)
    open-lower      open O_RDONLY + close of a lower file
    open-upper      open O_RDONLY + close of an upper file
    create          open(O_CREAT|O_EXCL) + close of a new name in an upper directory
    setattr-times   utimensat of an upper file (new times each call)
    setattr-mode    chmod of an upper file (alternating modes)
    setattr-owner   chown of an upper file (alternating owners)
    copyup-chmod    the first chmod of a 4 KiB lower file: copy-up (metadata-only on kernel
                    and unionfs, metacopy on; fuse-overlayfs copies the data)
    write-4k        pwrite of 4 KiB at offset 0 of an open upper file
    unlink          unlink of an upper file
    mkdir           mkdir of a new name in an upper directory
    readdirplus     per entry: listdir + lstat of every entry of a 10,000-entry lower
                    directory, on the freshly mounted data mount (cold for the mount; the lower
                    filesystem's own caches are warm for every target alike)
Expensive ops (create, copyup-chmod, unlink, mkdir) run --calls-expensive calls.

Method. RUNS runs; in each, every target in turn (the order rotated each run) runs every op,
so that background noise spreads over the targets. Printed: the median over the runs of
microseconds per call, and ratios of unionfs (and unionfs-nopt) to kernel, fuse-overlayfs
and the minimal server. Columns include the same Python overhead (see "plain"); a ratio of
raw times understates how much more work the FUSE path does, so the table also prints
"over plain" (target minus plain) for the FUSE targets.

--pin CPU: the client (os.sched_setaffinity) and every daemon (started under taskset, then
`taskset -a -p` on its pid, all threads) run on that one CPU: each request costs the work
on both sides plus two context switches, without any cross-CPU wake-up. Unpinned, where the
scheduler puts the daemon's thread decides much of the cost (issue 24).

--trace perf: `perf record -g -p PID` on each FUSE daemon of --targets while each op of --only
runs (N calls), then `perf report --no-children` top entries into WORKDIR/trace/. --trace
strace: `strace -c -f -p PID` instead (system calls per request = count / N).

Every mount is unmounted and every daemon we started (only those, by pid) stopped at exit, also
on errors and Ctrl-C (try/finally, atexit, SIGTERM).
"""

import argparse
import atexit
import errno
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target", "release", "unionfs")
PROTO = os.path.join(REPO, "target", "release", "examples", "fuse_uring_proto")
FUSE_OVERLAYFS = "/usr/bin/fuse-overlayfs"

ALL_TARGETS = ["plain", "kernel", "minimal", "fuse-overlayfs", "unionfs", "unionfs-nopt"]
META_OPS = ["lookup-hit", "lookup-miss", "getattr"]
DATA_OPS = ["readdirplus", "getxattr", "open-lower", "open-upper", "create", "setattr-times", "setattr-mode",
            "setattr-owner", "copyup-chmod", "write-4k", "unlink", "mkdir"]
ALL_OPS = META_OPS + DATA_OPS
EXPENSIVE = {"create", "copyup-chmod", "unlink", "mkdir"}
MINIMAL_OPS = {"lookup-miss", "getattr", "getxattr"}  # what the minimal server answers
BIG_ENTRIES = 10_000
HIT_NAMES = 1_000

# ---- bookkeeping of what we started --------------------------------------------------------

MOUNTS = {}  # mountpoint -> Popen of its daemon (None for kernel overlay)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, check=True, timeout=120, **kw):
    return subprocess.run(cmd, check=check, stdin=subprocess.DEVNULL, timeout=timeout, **kw)


def is_mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def wait_gone(proc, seconds):
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def unmount(mnt):
    """Unmounts mnt and waits for its daemon (our child) to exit; kills it (by its pid) if it
    does not."""
    proc = MOUNTS.pop(mnt, None)
    if is_mounted(mnt):
        if run(["umount", mnt], check=False, capture_output=True).returncode != 0:
            run(["umount", "-l", mnt], check=False, capture_output=True)
    if proc is not None and not wait_gone(proc, 20):
        log(f"daemon {proc.pid} of {mnt} still running after unmount: SIGTERM")
        proc.terminate()
        if not wait_gone(proc, 5):
            proc.kill()
            proc.wait()


def teardown_all():
    for mnt in list(MOUNTS):
        try:
            unmount(mnt)
        except Exception as e:  # keep tearing down the others
            log(f"teardown of {mnt}: {e}")


def on_sigterm(_sig, _frame):
    sys.exit(143)  # runs the finally blocks and atexit


# ---- layers --------------------------------------------------------------------------------


def write_file(path, size=0):
    with open(path, "wb") as f:
        if size:
            f.write(b"x" * size)


def make_layers(work, runs, n_exp):
    """Two lowers: l2 holds the names the ops use, l1 a few so that the root is merged."""
    l1, l2 = os.path.join(work, "l1"), os.path.join(work, "l2")
    for d in (l1, l2, os.path.join(l2, "big")):
        os.makedirs(d)
    for i in range(10):
        write_file(os.path.join(l1, f"top{i}"))
    for i in range(HIT_NAMES):
        write_file(os.path.join(l2, f"f{i:04d}"))
    write_file(os.path.join(l2, "lowerfile"), 4096)
    for i in range(BIG_ENTRIES):
        write_file(os.path.join(l2, "big", f"e{i:05d}"))
    for r in range(runs):
        d = os.path.join(l2, f"cu{r}")
        os.makedirs(d)
        for i in range(n_exp):
            write_file(os.path.join(d, f"f{i}"), 4096)
    return [l1, l2]


def fill_upper(upper, runs, n_exp):
    """What the data mount's ops find in the upper: made before mounting (every target
    supports an upper prepared offline), one set of directories per run, so that no run
    deletes what another needs and nothing is deleted while measuring."""
    write_file(os.path.join(upper, "upfile"), 4096)
    for r in range(runs):
        for d in (f"c{r}", f"k{r}", f"u{r}"):
            os.makedirs(os.path.join(upper, d))
        for i in range(n_exp):
            write_file(os.path.join(upper, f"u{r}", f"f{i}"))


# ---- targets -------------------------------------------------------------------------------


class Target:
    def __init__(self, name, work, lowers, args):
        self.name = name
        self.base = os.path.join(work, name)
        self.lowers = lowers
        self.args = args
        self.pin = args.pin
        self.meta_mnt = None
        self.daemon_pid = {}  # mountpoint -> pid

    def dirs(self, kind):
        b = os.path.join(self.base, kind)
        up, wk, mnt = (os.path.join(b, x) for x in ("upper", "work", "mnt"))
        for p in (up, wk, mnt):
            os.makedirs(p, exist_ok=True)
        return up, wk, mnt

    def prepare(self, runs, n_exp):
        up, _, _ = self.dirs("data")
        fill_upper(up, runs, n_exp)
        self.dirs("meta")

    def command(self, kind, up, wk, mnt):
        raise NotImplementedError

    def mount(self, kind):
        up, wk, mnt = self.dirs(kind)
        cmd = self.command(kind, up, wk, mnt)
        if self.pin is not None and self.daemon:
            cmd = ["taskset", "-c", str(self.pin)] + cmd
        if not self.daemon:
            MOUNTS[mnt] = None
            run(cmd)
            return mnt
        out = open(os.path.join(self.base, f"{kind}.out"), "w")
        err = open(os.path.join(self.base, f"{kind}.err"), "w")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        MOUNTS[mnt] = proc
        deadline = time.time() + 20
        while not self.ready(kind, mnt):
            if proc.poll() is not None or time.time() > deadline:
                unmount(mnt)
                raise RuntimeError(f"{self.name}: {kind} mount failed: "
                                   + open(err.name).read().strip()[-500:])
            time.sleep(0.02)
        self.daemon_pid[mnt] = proc.pid
        if self.pin is not None:
            # Threads started before this (and the daemon itself) go to the CPU; later ones
            # inherit it.
            run(["taskset", "-a", "-p", "-c", str(self.pin), str(proc.pid)], capture_output=True)
        return mnt

    def ready(self, kind, mnt):
        return is_mounted(mnt)

    daemon = True


class Plain(Target):
    daemon = False

    def prepare(self, runs, n_exp):
        # The same names as the merged view, in one directory.
        root = os.path.join(self.base, "root")
        os.makedirs(self.base)
        run(["cp", "-a", self.lowers[1], root])
        for n in os.listdir(self.lowers[0]):
            run(["cp", "-a", os.path.join(self.lowers[0], n), root])
        fill_upper(root, runs, n_exp)
        self.root = root

    def mount(self, kind):
        return self.root


class Kernel(Target):
    daemon = False

    def command(self, kind, up, wk, mnt):
        opts = (f"lowerdir={':'.join(self.lowers)},upperdir={up},workdir={wk},"
                "metacopy=on,redirect_dir=on")
        return ["mount", "-t", "overlay", "overlay", "-o", opts, mnt]


class Minimal(Target):
    ops = MINIMAL_OPS

    def prepare(self, runs, n_exp):
        self.dirs("meta")

    def command(self, kind, up, wk, mnt):
        return [PROTO, "serve", "--classic", mnt]

    def ready(self, kind, mnt):
        try:
            with open(os.path.join(self.base, f"{kind}.out")) as f:
                return "READY" in f.read()
        except OSError:
            return False


class FuseOverlayfs(Target):
    def command(self, kind, up, wk, mnt):
        opts = f"lowerdir={':'.join(self.lowers)},upperdir={up},workdir={wk},writeback=0"
        if kind == "meta":
            opts += ",timeout=0"
        return [FUSE_OVERLAYFS, "-f", "-o", opts, mnt]


class Unionfs(Target):
    def __init__(self, name, work, lowers, args, extra=()):
        super().__init__(name, work, lowers, args)
        self.extra = list(extra)

    def command(self, kind, up, wk, mnt):
        ttl = ["--ttl", "0"] if kind == "meta" else []
        return [self.args.bin, "mount", "-f", *self.extra, *ttl, "--lower", ":".join(self.lowers),
                "--upper", up, "--workdir", wk, mnt]


def make_target(name, work, lowers, args):
    if name == "plain":
        return Plain(name, work, lowers, args)
    if name == "kernel":
        return Kernel(name, work, lowers, args)
    if name == "minimal":
        return Minimal(name, work, lowers, args)
    if name == "fuse-overlayfs":
        return FuseOverlayfs(name, work, lowers, args)
    if name == "unionfs":
        return Unionfs(name, work, lowers, args)
    if name == "unionfs-nopt":
        return Unionfs(name, work, lowers, args, ["--no-passthrough", "--no-writeback-cache"])
    raise SystemExit(f"unknown target {name}")


def applies(target, op):
    ops = getattr(target, "ops", None)
    return ops is None or op in ops


# ---- the operations ------------------------------------------------------------------------
# Each op(ctx) prepares outside the timing and returns (calls, seconds). The loops are plain
# Python over os.* calls (one system call each); gc is off while they run.


def timed(fn, calls):
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return calls, time.perf_counter() - t0
    finally:
        gc.enable()


class Ctx:
    def __init__(self, mnt, target, run_no, n, n_exp):
        self.mnt, self.target, self.run, self.n, self.n_exp = mnt, target, run_no, n, n_exp
        self.fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)

    def close(self):
        os.close(self.fd)


def op_lookup_hit(c):
    names = [f"f{i % HIT_NAMES:04d}" for i in range(c.n)]
    st, fd = os.stat, c.fd
    for n in names[:HIT_NAMES]:
        st(n, dir_fd=fd)

    def body():
        for n in names:
            st(n, dir_fd=fd)
    return timed(body, c.n)


def op_lookup_miss(c):
    names = [f"m{i % HIT_NAMES:04d}" for i in range(c.n)]
    st, fd = os.stat, c.fd

    def body():
        for n in names:
            try:
                st(n, dir_fd=fd)
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError(f"{n} exists")
    return timed(body, c.n)


def op_getattr(c):
    # The mount root by path: the kernel never revalidates a mount's root dentry, so on a
    # FUSE mount without attribute caching each stat is exactly one GETATTR.
    st, mnt = os.stat, c.mnt

    def body():
        for _ in range(c.n):
            st(mnt)
    return timed(body, c.n)


def op_getxattr(c):
    gx, mnt = os.getxattr, c.mnt

    def body():
        for _ in range(c.n):
            try:
                gx(mnt, "user.absent")
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    return timed(body, c.n)


def _open_close(c, name):
    op, cl, fd = os.open, os.close, c.fd
    cl(op(name, os.O_RDONLY, dir_fd=fd))

    def body():
        for _ in range(c.n):
            cl(op(name, os.O_RDONLY, dir_fd=fd))
    return timed(body, c.n)


def op_open_lower(c):
    return _open_close(c, "lowerfile")


def op_open_upper(c):
    return _open_close(c, "upfile")


def op_create(c):
    names = [f"c{c.run}/n{i}" for i in range(c.n_exp)]
    op, cl, fd = os.open, os.close, c.fd
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    os.stat(f"c{c.run}", dir_fd=fd)

    def body():
        for n in names:
            cl(op(n, flags, 0o644, dir_fd=fd))
    return timed(body, c.n_exp)


def op_setattr_times(c):
    ut, fd = os.utime, c.fd
    os.stat("upfile", dir_fd=fd)
    base = 1_600_000_000_000_000_000

    def body():
        for i in range(c.n):
            t = base + i * 1000
            ut("upfile", ns=(t, t), dir_fd=fd)
    return timed(body, c.n)


def op_setattr_mode(c):
    ch, fd = os.chmod, c.fd
    os.stat("upfile", dir_fd=fd)
    modes = (0o600, 0o644)

    def body():
        for i in range(c.n):
            ch("upfile", modes[i & 1], dir_fd=fd)
    return timed(body, c.n)


def op_setattr_owner(c):
    ch, fd = os.chown, c.fd
    os.stat("upfile", dir_fd=fd)
    uids = (1000, 0)

    def body():
        for i in range(c.n):
            ch("upfile", uids[i & 1], -1, dir_fd=fd)
    return timed(body, c.n)


def op_copyup_chmod(c):
    names = [f"cu{c.run}/f{i}" for i in range(c.n_exp)]
    ch, fd = os.chmod, c.fd
    for n in names:  # looked up beforehand: the timing holds SETATTR and the copy-up only
        os.stat(n, dir_fd=fd)

    def body():
        for n in names:
            ch(n, 0o600, dir_fd=fd)
    return timed(body, c.n_exp)


def op_write_4k(c):
    fd = os.open("upfile", os.O_WRONLY, dir_fd=c.fd)
    buf = b"w" * 4096
    pw = os.pwrite
    try:
        pw(fd, buf, 0)

        def body():
            for _ in range(c.n):
                pw(fd, buf, 0)
        return timed(body, c.n)
    finally:
        os.close(fd)


def op_unlink(c):
    names = [f"u{c.run}/f{i}" for i in range(c.n_exp)]
    ul, fd = os.unlink, c.fd
    for n in names:
        os.stat(n, dir_fd=fd)

    def body():
        for n in names:
            ul(n, dir_fd=fd)
    return timed(body, c.n_exp)


def op_mkdir(c):
    names = [f"k{c.run}/d{i}" for i in range(c.n_exp)]
    mk, fd = os.mkdir, c.fd
    os.stat(f"k{c.run}", dir_fd=fd)

    def body():
        for n in names:
            mk(n, 0o755, dir_fd=fd)
    return timed(body, c.n_exp)


def op_readdirplus(c):
    d = os.open("big", os.O_RDONLY | os.O_DIRECTORY, dir_fd=c.fd)
    ls, fd_list = os.lstat, os.listdir
    try:
        def body():
            names = fd_list(d)
            if len(names) != BIG_ENTRIES:
                raise RuntimeError(f"big/ lists {len(names)} entries")
            for n in names:
                ls(n, dir_fd=d)
        return timed(body, BIG_ENTRIES)
    finally:
        os.close(d)


OPS = {name: globals()["op_" + name.replace("-", "_")] for name in ALL_OPS}


# ---- tracing (--trace) ---------------------------------------------------------------------


class Tracer:
    """perf record or strace -c attached to a daemon pid for the duration of one op."""

    def __init__(self, kind, outdir):
        self.kind, self.outdir, self.proc = kind, outdir, None
        os.makedirs(outdir, exist_ok=True)

    def start(self, pid, label):
        self.label = label
        if self.kind == "perf":
            self.out = os.path.join(self.outdir, f"{label}.perf.data")
            cmd = ["perf", "record", "-g", "-q", "-o", self.out, "-p", str(pid)]
        else:
            self.out = os.path.join(self.outdir, f"{label}.strace")
            cmd = ["strace", "-c", "-f", "-o", self.out, "-p", str(pid)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach to every thread

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        if not wait_gone(self.proc, 60):
            self.proc.kill()
            self.proc.wait()
        if self.kind == "perf":
            # Flat: where the daemon's CPU time goes, by object (kernel, unionfs, libc) and by
            # function; then the kernel call chains of the top entries (user-space frames
            # are partial: the release build keeps no frame pointers).
            for suffix, extra in (("dso", ["--sort", "dso", "-g", "none"]),
                                  ("flat", ["--sort", "dso,sym", "-g", "none",
                                            "--percent-limit", "1"]),
                                  ("chains", ["--sort", "sym", "-g", "caller,0.5,callee,function,percent",
                                              "--percent-limit", "3"])):
                with open(os.path.join(self.outdir, f"{self.label}.perf-{suffix}.txt"), "w") as f:
                    run(["perf", "report", "-i", self.out, "--stdio", "--no-children", *extra],
                        stdout=f, stderr=subprocess.DEVNULL, check=False)
        log(f"  trace of {self.label}: {self.out}")


# ---- driver --------------------------------------------------------------------------------


def measure(args, targets, ops):
    n, n_exp = args.calls, args.calls_expensive
    res = {t.name: {op: [] for op in ops} for t in targets}
    meta_ops = [o for o in ops if o in META_OPS]
    data_ops = [o for o in ops if o in DATA_OPS]
    tracer = Tracer(args.trace, os.path.join(args.workdir, "trace")) if args.trace else None
    for t in targets:
        if meta_ops and not isinstance(t, Plain):  # kept for the whole run
            t.meta_mnt = t.mount("meta")
    for r in range(args.runs):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        log(f"run {r + 1}/{args.runs}: " + " ".join(t.name for t in order))
        for t in order:
            def one(mnt, op):
                if not applies(t, op):
                    return
                c = Ctx(mnt, t, r, n, n_exp)
                pid = t.daemon_pid.get(mnt)
                trace = tracer and pid and r == 0
                try:
                    if trace:
                        tracer.start(pid, f"{t.name}.{op}")
                    calls, secs = OPS[op](c)
                finally:
                    if trace:
                        tracer.stop()
                    c.close()
                res[t.name][op].append(secs / calls * 1e6)
            if meta_ops:
                mnt = t.meta_mnt if t.meta_mnt else t.mount("meta")
                for op in meta_ops:
                    one(mnt, op)
            if data_ops and applies_any(t, data_ops):
                mnt = t.mount("data")
                try:
                    for op in data_ops:
                        one(mnt, op)
                finally:
                    if t.daemon or isinstance(t, Kernel):
                        unmount(mnt)
    return res


def applies_any(t, ops):
    return any(applies(t, o) for o in ops)


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "–"


def report(args, targets, ops, res):
    names = [t.name for t in targets]
    m = {t: {op: med(res[t][op]) for op in ops} for t in names}
    lines = []
    where = (f"client and daemons pinned to CPU {args.pin}" if args.pin is not None
             else "not pinned (the scheduler places client and daemon threads)")
    lines.append(f"microseconds per call, median of {args.runs} runs; N={args.calls:,} "
                 f"({args.calls_expensive:,} for {', '.join(sorted(EXPENSIVE))}; readdirplus: per "
                 f"entry of {BIG_ENTRIES:,}); {where}")
    lines.append(f"kernel {platform.release()}, {os.cpu_count()} CPUs, load average "
                 f"{' '.join(open('/proc/loadavg').read().split()[:3])} at the end")
    hdr = ["op"] + names
    ucols = [u for u in ("unionfs", "unionfs-nopt") if u in names]
    peers = [p for p in ("kernel", "fuse-overlayfs", "minimal") if p in names]
    for u in ucols:
        for p in peers:
            hdr.append(f"{'nopt' if u == 'unionfs-nopt' else 'unionfs'} / {p}")
    fuse = [x for x in names if x not in ("plain", "kernel")]
    if "plain" in names:
        hdr += [f"{x} over plain" for x in fuse if x in ("minimal", "fuse-overlayfs", "unionfs")]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "---|" * len(hdr))
    for op in ops:
        row = [op] + [fmt(m[x][op]) for x in names]
        for u in ucols:
            for p in peers:
                row.append(ratio(m[u][op], m[p][op]))
        if "plain" in names:
            for x in fuse:
                if x in ("minimal", "fuse-overlayfs", "unionfs"):
                    v = m[x][op]
                    row.append(fmt(v - m["plain"][op]) if v is not None and m["plain"][op] else "–")
        lines.append("| " + " | ".join(row) + " |")
    spread = []
    for x in names:
        for op in ops:
            xs = res[x][op]
            if xs and max(xs) > 2 * min(xs):
                spread.append(f"{x} {op}: {fmt(min(xs))}-{fmt(max(xs))}")
    if spread:
        lines.append("")
        lines.append("noisy (max > 2x min over runs): " + "; ".join(spread))
    print("\n".join(lines), flush=True)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=5,000, 1,000 for expensive ops")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int)
    ap.add_argument("--calls-expensive", type=int)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS))
    ap.add_argument("--only", default=",".join(ALL_OPS))
    ap.add_argument("--pin", type=int)
    ap.add_argument("--json")
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("--workdir")
    ap.add_argument("--trace", choices=["perf", "strace"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("request_cost: needs root (mount(2), kernel overlayfs)")
    args.calls = args.calls or (5_000 if args.quick else 20_000)
    args.calls_expensive = args.calls_expensive or (1_000 if args.quick else 2_000)
    ops = [o for o in args.only.split(",") if o]
    for o in ops:
        if o not in ALL_OPS:
            raise SystemExit(f"unknown op {o}; ops: {', '.join(ALL_OPS)}")
    names = [x for x in args.targets.split(",") if x]
    if "fuse-overlayfs" in names and not os.path.exists(FUSE_OVERLAYFS):
        log(f"no {FUSE_OVERLAYFS}: fuse-overlayfs skipped")
        names.remove("fuse-overlayfs")
    for need in ([args.bin] if any(x.startswith("unionfs") for x in names) else []) + \
            ([PROTO] if "minimal" in names else []):
        if not os.access(need, os.X_OK):
            raise SystemExit(f"request_cost: {need} missing: cargo build --release "
                             "(--example fuse_uring_proto)")
    args.workdir = args.workdir or f"/var/tmp/unionfs-reqcost.{os.getpid()}"
    if os.path.exists(args.workdir):
        raise SystemExit(f"{args.workdir} exists")
    os.makedirs(args.workdir)
    atexit.register(teardown_all)
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    try:
        log(f"layers and uppers in {args.workdir} ...")
        lowers = make_layers(os.path.join(args.workdir, "layers"), args.runs, args.calls_expensive)
        targets = [make_target(x, args.workdir, lowers, args) for x in names]
        for t in targets:
            t.prepare(args.runs, args.calls_expensive)
        run(["sync", "-f", args.workdir])
        res = measure(args, targets, ops)
        m = report(args, targets, ops, res)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": args.runs, "calls": args.calls,
                           "calls_expensive": args.calls_expensive, "pin": args.pin,
                           "kernel": platform.release(), "samples_us": res, "median_us": m},
                          f, indent=1)
    finally:
        teardown_all()
        if not args.trace:
            # ~100,000 files: on a busy disk this takes minutes; results are already out.
            log(f"removing {args.workdir} ...")
            try:
                run(["rm", "-rf", "--one-file-system", args.workdir], check=False, timeout=3600)
            except subprocess.TimeoutExpired:
                log(f"could not remove {args.workdir} within an hour; left behind")
        else:
            log(f"kept {args.workdir} (traces in {args.workdir}/trace)")


if __name__ == "__main__":
    main()
