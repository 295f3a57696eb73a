#!/usr/bin/env python3
"""Mount-level benchmark: unionfs against kernel overlayfs, fuse-overlayfs and a plain directory.

Runs the same workloads over the same generated layer data on every target and prints, per
workload, the median of the repetitions for each target and the ratios unionfs/kernel and
unionfs/fuse-overlayfs.

Usage (as root; needs kernel overlayfs, fuse3, optionally fuse-overlayfs and fio):

    cargo build --release
    python3 benches/mount_bench.py --quick                   # ~5 minutes, 3 repetitions
    python3 benches/mount_bench.py --full --json out.json    # 7 repetitions, fio 10 s
    python3 benches/mount_bench.py --only stat-all-cold,git-status-warm --targets kernel,unionfs
    python3 benches/mount_bench.py --list                    # the workload names

Options: --targets plain,kernel,fuse-overlayfs,unionfs[,unionfs-volatile]   --only WORKLOAD,...   --reps N
         --bin PATH (default: target/release/unionfs of this repository)   --workdir DIR
         (default /var/tmp/unionfs-bench)   --timeout SECONDS (per repetition)   --regen
         --json FILE   --nofile N (RLIMIT_NOFILE for the daemons; default: inherited)

Targets:
    plain           a plain directory holding a copy of the merged view (the physical limit)
    kernel          mount -t overlay
    fuse-overlayfs  fuse-overlayfs -o lowerdir=..,upperdir=..,workdir=.. (skipped if missing)
    unionfs         target/release/unionfs mount --lower .. --upper .. --workdir ..
Each runs with its default options.

Data (generated once into WORKDIR/layers, reused while WORKDIR/stamp.json matches; --regen to
rebuild). Three lowers l1 (top), l2, l3, all on the workdir's filesystem:
    tree/         12,000 visible files of 1-7 KiB in 12x10 directories merged across the three
                  lowers (10% of the names also exist, shadowed, in the layer below)
    merged10k/    10,000 visible entries spread over the three lowers, plus 500 names in l3
                  hidden by whiteouts (char device 0/0) in l1 and l2
    big.bin       256 MiB in l3 (sequential/random reads, copy-up of a large file)
    append/       50 files of 1 MiB in l3 (directory merged with l2): copy-up appends
    rmtree/       2,000 files in 20 directories merged across l2 and l3: rm -rf
    repo/         a git repository (2,000 committed files, packed) in l2: git status
    metatree/     10,000 files of 100 KiB (1 GiB) in 100 directories in l3: chown -R, mv
and WORKDIR/untar.tar, 5,000 files of 4 KiB in 50 directories: untar.
The plain target is WORKDIR/plain, a `cp -a` of a read-only kernel overlay mount of the lowers.

Method. Every repetition of every workload gets a fresh mount on a fresh (emptied) upper and
workdir. "cold" workloads drop the page/dentry/inode caches (sync -f WORKDIR; echo 3 >
/proc/sys/vm/drop_caches) after mounting and before measuring; "warm" workloads run once
untimed, then timed, on the same mount; the others (writes) run once after a sync. Repetitions
interleave the targets (rep 1 on every target, then rep 2, ...) so that background noise spreads
evenly. The measured code runs in a child process (its own process group) with a timeout: a hung
FUSE daemon is killed (by the pid we started), the mount lazily detached, and the run goes on.
Every mount is detached at exit, also on errors and Ctrl-C. The peak RSS row is the daemon's
VmHWM after one more fresh mount on which every selected workload ran once (stat-all last); a
"*" marks a session in which some workload failed (see Notes). The largest VmHWM seen at the
end of the per-workload mounts is listed under Notes. On the plain target the copy-up workloads
are plain appends and rm -rf removes a copy that is restored between repetitions.

Workloads (units; "better" says which direction wins):
    stat-all-{cold,warm}      walk the whole view (os.walk) and lstat every entry        ms
                              (26,292 entries)
    stat-tree-{cold,warm}     the same for tree/ only (12,132 entries)                   ms
    list-10k-{cold,warm}      os.listdir of the 10,000-entry merged directory            ms
    list-10k-lstat-{cold,warm}  the same plus lstat of every entry (ls -l)               ms
    seqread-256M-{cold,warm}  read big.bin in 1 MiB chunks                               MiB/s
    fio-randread-4k           fio, 2 jobs, 4 KiB random reads of big.bin, buffered, after
                              one sequential pass through the view                       IOPS
    git-status-{cold,warm}    git status --porcelain in repo/                            ms
    create-5000x4K            create and write 5,000 files of 4 KiB in a new directory   ms
    seqwrite-256M             write a new 256 MiB file in 1 MiB writes, then fsync       MiB/s
    copyup-append-50x1M       append 4 KiB to each of 50 lower 1 MiB files (copy-up)     ms
    copyup-append-256M        append 4 KiB to the 256 MiB lower file (copy-up)           ms
    untar-5000                tar -xf of the 5,000-file tarball into a new directory     ms
    rm-rf-2000                rm -rf of the lower-resident 2,000-file tree               ms
    chown-R-1G                chown -R (a plain user: chmod -R go-w) of metatree/        ms
    chown-R-1G-upper          the same, then the upper's growth (du of the upper)        MiB
    mv-dir-10k                mv of the lower directory metatree/ to a new name          ms
    daemon-peak-rss           VmHWM of the FUSE daemon after all workloads               MiB
Copy-up workloads read their lower sources once beforehand (outside the timing) so that the
copy is not dominated by the disk.

Ratios: for ms and MiB rows, unionfs value / other value (below 1: unionfs is faster/smaller);
for MiB/s and IOPS rows, unionfs throughput / other throughput (above 1: unionfs is faster).
Every workload also returns a check value (entry count, bytes, git's changed lines...) that must
be equal on all targets; differences are listed under "Notes".
"""

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(REPO, "target", "release", "unionfs")
DEFAULT_WORKDIR = "/var/tmp/unionfs-bench"
DEFAULT_TARGETS = ["plain", "kernel", "fuse-overlayfs", "unionfs"]
# unionfs-volatile (unionfs --volatile: copy-up without fsync) and unionfs-rdauto
# (--readdirplus auto) run only when asked for;
# unionfs-nopt (--no-passthrough: every read and write through the daemon, the data path of
# rootless mounts, measured as root) and unionfs-rootless (the daemon started by a plain user
# through fusermount3, the workloads run as that user) when named in --targets.
# unionfs-fullcopy: every copy-up copies data, every directory rename copies the tree (what
# unionfs did before metadata-only copy-up and redirects).
ALL_TARGETS = DEFAULT_TARGETS + ["unionfs-volatile", "unionfs-nopt", "unionfs-rootless", "unionfs-rdauto",
                                 "unionfs-fullcopy"]
FULLCOPY_ARGS = ["--metacopy", "off", "--redirect-dir", "follow"]
ROOTLESS_USER = "unionfs-bench"
LOWERS = ["l1", "l2", "l3"]  # top first

# ---- data parameters (bump GEN_VERSION when the layout changes) ------------------------------
GEN_VERSION = 5
MiB = 1 << 20
TREE_A, TREE_B, TREE_C = 12, 10, 100  # 12,000 files
MERGED_NAMES = 10500  # 10,000 visible + 500 whited out
BIG_SIZE = 256 * MiB
APPEND_N, APPEND_SIZE = 50, MiB
RM_DIRS, RM_FILES = 20, 100  # 2,000 files
REPO_DIRS, REPO_FILES = 40, 50  # 2,000 files
META_DIRS, META_FILES, META_SIZE = 100, 100, 100 << 10  # 10,000 files, 1 GiB
TAR_DIRS, TAR_FILES, TAR_SIZE = 50, 100, 4096  # 5,000 files
CREATE_N, CREATE_SIZE = 5000, 4096
SEQWRITE_SIZE = 256 * MiB
APPEND_BYTES = 4096
OLD_MTIME = 1704067200  # 2024-01-01: generated files are never "racily clean" for git

GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C",
           # The rootless target's user reads a repository root made.
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, timeout=600, check=True, env=None, **kw):
    e = None
    if env:
        e = dict(os.environ)
        e.update(env)
    return subprocess.run(cmd, timeout=timeout, check=check, env=e, stdin=subprocess.DEVNULL, **kw)


def rmtree(path):
    if os.path.lexists(path):
        run(["rm", "-rf", "--one-file-system", path], timeout=900)


TRASH = []  # [trash directory], set once the workdir is known


def discard(path):
    """Moves `path` out of the way, to be deleted when the run ends. Deleting between
    repetitions would skew what follows: an ext4 without a journal (as on our benchmark
    machine) skips inodes freed in the last minutes when it allocates new ones, so a target
    that creates files right after thousands were deleted pays for a long scan."""
    if not os.path.lexists(path):
        return
    if not TRASH:
        rmtree(path)
        return
    os.makedirs(TRASH[0], exist_ok=True)
    os.rename(path, os.path.join(TRASH[0], f"{len(os.listdir(TRASH[0]))}-{os.path.basename(path)}"))


def empty_trash():
    if TRASH:
        rmtree(TRASH[0])


SYNC_PATH = DEFAULT_WORKDIR


def sync_data(timeout=300):
    """syncfs of the filesystem holding the layers and uppers (everything we write goes there
    once our mounts are down), in a child with a timeout: a plain sync(2) would also wait for
    every other FUSE mount on the machine, hung ones included."""
    p = subprocess.Popen(["sync", "-f", SYNC_PATH], stdin=subprocess.DEVNULL)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        log(f"warning: sync -f {SYNC_PATH} did not finish in {timeout} s")


def drop_caches():
    sync_data()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---- mount table ---------------------------------------------------------------------------


def _unescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_entry(mnt):
    """The last mountinfo line for mountpoint `mnt` as (dev, fstype, options), or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if _unescape(fields[4]) == mnt:
                r = right.split()
                found = (fields[2], r[0], fields[5] + "," + (r[2] if len(r) > 2 else ""))
    return found


def is_mounted(mnt):
    return mount_entry(mnt) is not None


# ---- data generation -----------------------------------------------------------------------


def stamp_params():
    return {
        "version": GEN_VERSION,
        "tree": [TREE_A, TREE_B, TREE_C],
        "merged": MERGED_NAMES,
        "big": BIG_SIZE,
        "append": [APPEND_N, APPEND_SIZE],
        "rm": [RM_DIRS, RM_FILES],
        "repo": [REPO_DIRS, REPO_FILES],
        "tar": [TAR_DIRS, TAR_FILES, TAR_SIZE],
        "meta": [META_DIRS, META_FILES, META_SIZE],
    }


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (OLD_MTIME, OLD_MTIME))


def _whiteout(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _old_times(root):
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (OLD_MTIME, OLD_MTIME), follow_symlinks=False)
    os.utime(root, (OLD_MTIME, OLD_MTIME))


def generate(workdir):
    """Writes the layers and the tarball into WORKDIR (see the module docstring)."""
    tmp = os.path.join(workdir, "layers.tmp")
    rmtree(tmp)
    L = {n: os.path.join(tmp, n) for n in LOWERS}
    for p in L.values():
        os.makedirs(p)
    block = os.urandom(64 << 10)
    t0 = time.time()

    # tree/: every directory exists in all three lowers; 10% of names shadowed one layer lower.
    for a in range(TREE_A):
        for b in range(TREE_B):
            for c in range(TREE_C):
                layer = (a + b + c) % 3
                rel = f"tree/p{a:02d}/q{b:02d}/f{c:03d}.dat"
                size = 1024 * (1 + (c * 37 + a) % 7)
                _write(os.path.join(L[LOWERS[layer]], rel), block[(c * 97) % 4096 :][:size])
                if c % 10 == 0 and layer < 2:
                    _write(os.path.join(L[LOWERS[layer + 1]], rel), block[:size])

    # merged10k/: name i lives in layer i % 3; names i = 2 mod 21 (in l3) are whited out in
    # l1 (even) or l2 (odd); names i = 14 mod 21 (in l3) are also shadowed by a copy in l2.
    for i in range(MERGED_NAMES):
        name = f"merged10k/e{i:05d}"
        _write(os.path.join(L[LOWERS[i % 3]], name), block[i % 1024 :][:512])
        if i % 21 == 2:
            _whiteout(os.path.join(L["l1" if i % 2 == 0 else "l2"], name))
        elif i % 21 == 14:
            _write(os.path.join(L["l2"], name), block[:256])

    # big.bin and append/ in l3 (append/ merged with l2).
    with open(os.path.join(L["l3"], "big.bin"), "wb") as f:
        for _ in range(BIG_SIZE // MiB):
            f.write(os.urandom(MiB))
    for i in range(APPEND_N):
        _write(os.path.join(L["l3"], f"append/a{i:02d}.bin"), os.urandom(APPEND_SIZE))
    _write(os.path.join(L["l2"], "append/README"), b"the appended files live in l3\n")

    # rmtree/: every directory in l2 and l3, files alternating.
    for d in range(RM_DIRS):
        for i in range(RM_FILES):
            layer = "l2" if i % 2 == 0 else "l3"
            _write(os.path.join(L[layer], f"rmtree/d{d:02d}/f{i:03d}"), block[i:][:2048])

    # metatree/: 1 GiB of distinct data in l3, for metadata-only changes and a directory rename.
    for d in range(META_DIRS):
        for i in range(META_FILES):
            _write(os.path.join(L["l3"], f"metatree/d{d:02d}/f{i:03d}"), os.urandom(META_SIZE))

    # repo/: a git repository in l2, committed and packed.
    repo = os.path.join(L["l2"], "repo")
    os.makedirs(repo)
    for d in range(REPO_DIRS):
        for i in range(REPO_FILES):
            text = "".join(f"line {k} of module {d} file {i}\n" for k in range(40 + (i % 20)))
            _write(os.path.join(repo, f"src/m{d:02d}/f{i:03d}.txt"), text.encode())
    git = ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    run(git + ["init", "-q", "-b", "main"], env=GIT_ENV)
    run(git + ["add", "-A"], env=GIT_ENV)
    run(git + ["commit", "-q", "-m", "generated"], env=GIT_ENV)
    run(git + ["gc", "-q"], env=GIT_ENV)
    run(git + ["status", "--porcelain"], env=GIT_ENV, stdout=subprocess.DEVNULL)

    # Everything writable by everyone: the unionfs-rootless target's plain user must be able to
    # do what root does on the other targets (modes cost nothing to the others).
    for p in L.values():
        run(["chmod", "-R", "a+rwX", p])
        _old_times(p)

    # The tarball (outside the layers).
    tar_tmp = os.path.join(workdir, "untar.tar.tmp")
    payload = os.urandom(TAR_SIZE)
    import io

    with tarfile.open(tar_tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(TAR_DIRS):
            ti = tarfile.TarInfo(f"t/d{d:02d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, OLD_MTIME
            tf.addfile(ti)
            for i in range(TAR_FILES):
                ti = tarfile.TarInfo(f"t/d{d:02d}/f{i:03d}")
                ti.size, ti.mode, ti.mtime = TAR_SIZE, 0o644, OLD_MTIME
                tf.addfile(ti, io.BytesIO(payload))
    os.replace(tar_tmp, os.path.join(workdir, "untar.tar"))

    final = os.path.join(workdir, "layers")
    rmtree(final)
    os.rename(tmp, final)
    sync_data()
    log(f"generated layer data in {time.time() - t0:.0f} s")


def ensure_data(workdir, regen):
    os.makedirs(workdir, exist_ok=True)
    stamp = os.path.join(workdir, "stamp.json")
    want = stamp_params()
    try:
        with open(stamp) as f:
            have = json.load(f)
    except (OSError, ValueError):
        have = None
    if regen or have != want or not os.path.isdir(os.path.join(workdir, "layers")):
        log(f"generating layer data in {workdir} (once) ...")
        for p in (stamp, os.path.join(workdir, "plain.stamp")):
            if os.path.exists(p):
                os.unlink(p)
        rmtree(os.path.join(workdir, "plain"))
        generate(workdir)
        with open(stamp, "w") as f:
            json.dump(want, f)
    else:
        log(f"reusing layer data in {workdir}")


# ---- targets -------------------------------------------------------------------------------


class Target:
    """One filesystem under test. mount() gives a fresh view root; unmount() tears it down."""

    fuse = False

    def __init__(self, name, workdir):
        self.name = name
        self.workdir = workdir
        self.layers = [os.path.join(workdir, "layers", n) for n in LOWERS]
        base = os.path.join(workdir, "run", name)
        self.upper = os.path.join(base, "upper")
        self.work = os.path.join(base, "work")
        self.mnt = os.path.join(base, "mnt")
        self.pid = None
        self.mounted = False

    def lower_path(self, rel):
        """Where the object at view path `rel` lives in the layers (top-most occurrence)."""
        for layer in self.layers:
            p = os.path.join(layer, rel)
            if os.path.lexists(p):
                return p
        return None

    def fresh_dirs(self):
        if is_mounted(self.mnt):
            raise RuntimeError(f"{self.mnt} is still mounted")
        for p in (self.upper, self.work):
            discard(p)
            os.makedirs(p)
        os.makedirs(self.mnt, exist_ok=True)

    def mount_cmd(self):
        raise NotImplementedError

    def mount(self):
        self.fresh_dirs()
        MOUNTS[self.mnt] = self
        r = run(self.mount_cmd(), timeout=60, check=False, capture_output=True, text=True)
        deadline = time.time() + 15
        while not is_mounted(self.mnt) and time.time() < deadline and r.returncode == 0:
            time.sleep(0.02)
        if r.returncode != 0 or not is_mounted(self.mnt):
            raise RuntimeError(f"mounting {self.name} failed (exit {r.returncode}): {r.stderr.strip()}")
        self.mounted = True
        if self.fuse:
            self.pid = self.find_daemon()
        return self.mnt

    def find_daemon(self):
        """The pid of the daemon serving our mountpoint (a process we started)."""
        for _ in range(100):
            for d in os.listdir("/proc"):
                if not d.isdigit() or int(d) == os.getpid():
                    continue
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        args = f.read().split(b"\0")
                except OSError:
                    continue
                if self.mnt.encode() in args and self.is_daemon(args):
                    return int(d)
            time.sleep(0.05)
        return None

    def is_daemon(self, args):
        return False

    def peak_rss_mib(self):
        if not self.pid:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def umount_cmd(self):
        return ["umount", self.mnt]

    def unmount(self):
        """Unmounts (waiting for the daemon to exit); returns a problem description or None."""
        problem = None
        if self.mounted:
            r = run(self.umount_cmd(), timeout=60, check=False, capture_output=True, text=True)
            if r.returncode != 0:
                problem = f"unmount of {self.name} failed (exit {r.returncode}): {r.stderr.strip()}"
                force_detach(self)
        if self.pid and not wait_gone(self.pid, 30):
            problem = (problem or "") + f" {self.name} daemon {self.pid} still running 30 s after unmount"
            kill_daemon(self)
        self.mounted = False
        self.pid = None
        MOUNTS.pop(self.mnt, None)
        return problem

    def cleanup(self):
        for p in (self.upper, self.work):
            discard(p)

    def abort(self):
        """After a timeout: kill our daemon and detach the mount."""
        kill_daemon(self)
        force_detach(self)
        self.mounted = False
        MOUNTS.pop(self.mnt, None)


class Plain(Target):
    def __init__(self, workdir):
        super().__init__("plain", workdir)
        self.root = os.path.join(workdir, "plain")
        self.rm_src = os.path.join(workdir, "plain-rmtree-src")

    def lower_path(self, rel):
        return os.path.join(self.root, rel)

    def mount(self):
        return self.root

    def unmount(self):
        return None

    def cleanup(self):
        """Undoes what a workload changed in the plain copy."""
        for n in os.listdir(self.root):
            if n.startswith("bench-"):
                discard(os.path.join(self.root, n))
        for rel, size in [("big.bin", BIG_SIZE)] + [
            (f"append/a{i:02d}.bin", APPEND_SIZE) for i in range(APPEND_N)
        ]:
            p = os.path.join(self.root, rel)
            if os.path.getsize(p) != size:
                os.truncate(p, size)
        moved = os.path.join(self.root, "bench-metatree")
        if os.path.isdir(moved):
            os.rename(moved, os.path.join(self.root, "metatree"))
        mt = os.path.join(self.root, "metatree")
        if os.stat(os.path.join(mt, "d00", "f000")).st_uid != 0:
            run(["chown", "-R", "0:0", mt])
        run(["chmod", "-R", "a+rwX", mt])
        rt = os.path.join(self.root, "rmtree")
        if not os.path.isdir(rt) or sum(len(f) for _, _, f in os.walk(rt)) != RM_DIRS * RM_FILES:
            rmtree(rt)
            run(["cp", "-a", self.rm_src, rt])
            sync_data()

    def abort(self):
        pass

    def ensure(self, kernel_ok):
        stamp = os.path.join(self.workdir, "plain.stamp")
        if os.path.exists(stamp) and os.path.isdir(self.root):
            return
        log("building the plain copy of the merged view (once) ...")
        rmtree(self.root)
        rmtree(self.rm_src)
        src = ReadOnlyView(self.workdir, kernel_ok)
        view = src.mount()
        try:
            os.makedirs(self.root)
            run(["cp", "-a", view + "/.", self.root + "/"], timeout=1800)
        finally:
            src.unmount()
        run(["cp", "-a", os.path.join(self.root, "rmtree"), self.rm_src])
        # The copy has new inode numbers and ctimes: let git refresh its index once.
        run(["git", "-C", os.path.join(self.root, "repo"), "status", "--porcelain"],
            env=GIT_ENV, stdout=subprocess.DEVNULL)
        sync_data()
        with open(stamp, "w") as f:
            f.write("ok\n")


class ReadOnlyView(Target):
    """A read-only kernel overlay of the lowers (or a unionfs one), to copy the merged view."""

    def __init__(self, workdir, kernel_ok):
        super().__init__("ro-view", workdir)
        self.kernel_ok = kernel_ok

    def mount_cmd(self):
        if self.kernel_ok:
            return ["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(self.layers), self.mnt]
        self.fuse = True
        return [BIN, "mount", "--lower", ":".join(self.layers), self.mnt]

    def umount_cmd(self):
        return ["umount", self.mnt] if self.kernel_ok else [BIN, "umount", self.mnt]

    def is_daemon(self, args):
        return True


class Kernel(Target):
    def __init__(self, workdir):
        super().__init__("kernel", workdir)

    def mount_cmd(self):
        # Metadata-only copy-up and directory redirects, as unionfs mount does by default.
        opts = (f"lowerdir={':'.join(self.layers)},upperdir={self.upper},workdir={self.work},"
                "metacopy=on,redirect_dir=on")
        return ["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt]


class FuseOverlayfs(Target):
    fuse = True

    def __init__(self, workdir):
        super().__init__("fuse-overlayfs", workdir)

    def mount_cmd(self):
        opts = f"lowerdir={':'.join(self.layers)},upperdir={self.upper},workdir={self.work}"
        return ["fuse-overlayfs", "-o", opts, self.mnt]

    def is_daemon(self, args):
        return os.path.basename(args[0].decode(errors="replace")) == "fuse-overlayfs"


class Unionfs(Target):
    fuse = True

    def __init__(self, workdir, name="unionfs", extra=()):
        super().__init__(name, workdir)
        self.extra = list(extra)

    def mount_cmd(self):
        return [BIN, "mount", *self.extra, "--lower", ":".join(self.layers), "--upper", self.upper,
                "--workdir", self.work, self.mnt]

    def umount_cmd(self):
        return [BIN, "umount", self.mnt]

    def is_daemon(self, args):
        try:
            return os.path.basename(args[0].decode()) == "unionfs" and b"mount" in args
        except UnicodeDecodeError:
            return False


class RootlessUnionfs(Unionfs):
    """unionfs mounted by a plain user through fusermount3 (no passthrough, no allow_other):
    the worker runs as that user too."""

    def __init__(self, workdir):
        super().__init__(workdir, "unionfs-rootless")
        self.uid, self.gid = rootless_user()

    def as_user(self):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--"]

    def fresh_dirs(self):
        super().fresh_dirs()
        for p in (self.upper, self.work, self.mnt):
            os.chown(p, self.uid, self.gid)

    def mount_cmd(self):
        return self.as_user() + super().mount_cmd()

    def umount_cmd(self):
        return self.as_user() + ["fusermount3", "-u", self.mnt]


def rootless_user():
    """uid and gid of ROOTLESS_USER (created if missing); /dev/fuse made usable by all, as
    desktop distributions ship it."""
    import pwd

    try:
        pw = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        run(["useradd", "-M", "-s", "/usr/sbin/nologin", ROOTLESS_USER], check=False)
        pw = pwd.getpwnam(ROOTLESS_USER)
    os.chmod("/dev/fuse", 0o666)
    return pw.pw_uid, pw.pw_gid


MOUNTS = {}  # mountpoint -> Target, everything we mounted and have not unmounted yet
BIN = DEFAULT_BIN


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


def kill_daemon(t):
    """SIGTERM, then SIGKILL, the daemon we started for target t (by its pid)."""
    if not t.pid:
        return
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
        try:
            os.kill(t.pid, sig)
        except ProcessLookupError:
            return
        if wait_gone(t.pid, wait):
            return


def force_detach(t):
    entry = mount_entry(t.mnt)
    if entry and entry[1].startswith("fuse"):
        conn = entry[0].split(":")[1]
        abort = f"/sys/fs/fuse/connections/{conn}/abort"
        if os.path.exists(abort):
            try:
                with open(abort, "w") as f:
                    f.write("1")
            except OSError:
                pass
    if entry:
        run(["umount", "-l", t.mnt], timeout=60, check=False, capture_output=True)


def teardown_all():
    for t in list(MOUNTS.values()):
        try:
            if is_mounted(t.mnt):
                run(["umount", "-l", t.mnt], timeout=60, check=False, capture_output=True)
            if t.pid and not wait_gone(t.pid, 5):
                kill_daemon(t)
        except Exception as e:  # keep tearing down the others
            log(f"teardown of {t.mnt}: {e}")
        MOUNTS.pop(t.mnt, None)


# ---- workloads (run in the worker process) -------------------------------------------------


def _timed(fn):
    t0 = time.perf_counter()
    check = fn()
    return time.perf_counter() - t0, check


def _read_all(path):
    buf = bytearray(MiB)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                return n
            n += k


def _stat_walk(top):
    n = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def w_stat_all(ctx):
    return lambda: _stat_walk(ctx["root"])


def w_stat_tree(ctx):
    return lambda: _stat_walk(os.path.join(ctx["root"], "tree"))


def w_list(ctx):
    d = os.path.join(ctx["root"], "merged10k")
    return lambda: len(os.listdir(d))


def w_list_lstat(ctx):
    d = os.path.join(ctx["root"], "merged10k")

    def body():
        names = os.listdir(d)
        for n in names:
            os.lstat(os.path.join(d, n))
        return len(names)

    return body


def w_seqread(ctx):
    p = os.path.join(ctx["root"], "big.bin")
    return lambda: _read_all(p)


def w_git_status(ctx):
    repo = os.path.join(ctx["root"], "repo")
    env = dict(os.environ)
    env.update(GIT_ENV)

    def body():
        r = subprocess.run(["git", "-C", repo, "status", "--porcelain"], env=env, check=True,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return len(r.stdout.splitlines())

    return body


def w_create(ctx):
    d = os.path.join(ctx["root"], "bench-create")
    os.mkdir(d)
    data = b"c" * CREATE_SIZE

    def body():
        for i in range(CREATE_N):
            fd = os.open(os.path.join(d, f"f{i:04d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)

    return body, lambda _: len(os.listdir(d))


def w_seqwrite(ctx):
    p = os.path.join(ctx["root"], "bench-seqwrite.bin")
    buf = os.urandom(MiB)

    def body():
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(SEQWRITE_SIZE // MiB):
            os.write(fd, buf)
        os.fsync(fd)
        os.close(fd)

    return body, lambda _: os.path.getsize(p)


def _append(paths):
    data = b"a" * APPEND_BYTES
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, data)
        os.close(fd)


def w_append_small(ctx):
    paths = [os.path.join(ctx["root"], f"append/a{i:02d}.bin") for i in range(APPEND_N)]
    for src in ctx["sources"]:
        _read_all(src)
    return lambda: _append(paths), lambda _: sum(os.path.getsize(p) for p in paths)


def w_append_big(ctx):
    p = os.path.join(ctx["root"], "big.bin")
    for src in ctx["sources"]:
        _read_all(src)
    return lambda: _append([p]), lambda _: os.path.getsize(p)


def w_untar(ctx):
    d = os.path.join(ctx["root"], "bench-untar")
    os.mkdir(d)
    _read_all(ctx["tarball"])

    def body():
        subprocess.run(["tar", "-xf", ctx["tarball"], "-C", d], check=True, stdin=subprocess.DEVNULL)

    def check(_):
        return sum(len(f) for _, _, f in os.walk(d))

    return body, check


def w_rmrf(ctx):
    d = os.path.join(ctx["root"], "rmtree")

    def body():
        subprocess.run(["rm", "-rf", d], check=True, stdin=subprocess.DEVNULL)

    return body, lambda _: int(os.path.lexists(d))


def _chown_tree(d):
    """chown -R as root; a plain user (the rootless target) can only change modes."""
    cmd = ["chown", "-R", "1234:1234", d] if os.geteuid() == 0 else ["chmod", "-R", "go-w", d]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def _count_files(d):
    return sum(len(f) for _, _, f in os.walk(d))


def w_chown(ctx):
    d = os.path.join(ctx["root"], "metatree")
    return lambda: _chown_tree(d), lambda _: _count_files(d)


def w_chown_upper(ctx):
    d = os.path.join(ctx["root"], "metatree")

    def body():
        _chown_tree(d)
        if not ctx["upper"]:
            return 0.0, _count_files(d)
        du = subprocess.run(["du", "-s", "--block-size=1", ctx["upper"]], check=True, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
        return int(du.stdout.split()[0]) / MiB, _count_files(d)

    return body


def w_mv_dir(ctx):
    d = os.path.join(ctx["root"], "metatree")
    new = os.path.join(ctx["root"], "bench-metatree")

    def body():
        subprocess.run(["mv", d, new], check=True, stdin=subprocess.DEVNULL)

    return body, lambda _: _count_files(new)


def w_fio(ctx):
    p = os.path.join(ctx["root"], "big.bin")
    _read_all(p)  # one sequential pass through the view first

    def body():
        r = subprocess.run(
            ["fio", "--name=randread", f"--filename={p}", "--readonly", "--rw=randread", "--bs=4k",
             "--numjobs=2", "--ioengine=psync", "--direct=0", "--invalidate=0", "--time_based",
             f"--runtime={ctx['fio_runtime']}", "--group_reporting", "--output-format=json"],
            check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        out = json.loads(r.stdout[r.stdout.index("{"):])
        job = out["jobs"][0]
        return job["read"]["iops"], job.get("error", 0)

    return body


class Workload:
    def __init__(self, name, fn, mode, unit, timed_as="time"):
        self.name = name
        self.fn = fn  # fn(ctx) -> body or (body, check); run in the worker
        self.mode = mode  # "cold", "warm" or "once"
        self.unit = unit  # "ms", "MiB/s", "IOPS", "MiB"
        # "time": value = elapsed ms; "rate": MiB / elapsed s; "value": body returns (value, check)
        self.timed_as = timed_as

    @property
    def higher_better(self):
        return self.unit in ("MiB/s", "IOPS")


WORKLOADS = []
for _name, _fn, _unit, _as in [
    ("stat-all", w_stat_all, "ms", "time"),
    ("stat-tree", w_stat_tree, "ms", "time"),
    ("list-10k", w_list, "ms", "time"),
    ("list-10k-lstat", w_list_lstat, "ms", "time"),
    ("seqread-256M", w_seqread, "MiB/s", "rate"),
    ("git-status", w_git_status, "ms", "time"),
]:
    for _mode in ("cold", "warm"):
        WORKLOADS.append(Workload(f"{_name}-{_mode}", _fn, _mode, _unit, timed_as=_as))
WORKLOADS += [
    Workload("fio-randread-4k", w_fio, "once", "IOPS", timed_as="value"),
    Workload("create-5000x4K", w_create, "once", "ms"),
    Workload("seqwrite-256M", w_seqwrite, "once", "MiB/s", timed_as="rate"),
    Workload("copyup-append-50x1M", w_append_small, "once", "ms"),
    Workload("copyup-append-256M", w_append_big, "once", "ms"),
    Workload("untar-5000", w_untar, "once", "ms"),
    Workload("rm-rf-2000", w_rmrf, "once", "ms"),
    Workload("chown-R-1G", w_chown, "once", "ms"),
    Workload("chown-R-1G-upper", w_chown_upper, "once", "MiB", timed_as="value"),
    Workload("mv-dir-10k", w_mv_dir, "once", "ms"),
]
RSS = Workload("daemon-peak-rss", None, "once", "MiB")
BY_NAME = {w.name: w for w in WORKLOADS + [RSS]}


def worker(spec):
    """Runs one workload repetition (or, with mode "all", every listed workload once)."""
    ctx = spec["ctx"]
    names = spec["workloads"]
    out = {}
    for name in names:
        w = BY_NAME[name]
        try:
            made = w.fn(ctx)
            body, check = made if isinstance(made, tuple) else (made, None)
            if spec["mode"] == "warm":
                body()
            elapsed, result = _timed(body)
            if check:
                result = check(result)
        except Exception as e:  # reported per workload; the others still run
            out[name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        if w.timed_as == "time":
            value = elapsed * 1000
        elif w.timed_as == "rate":
            nbytes = result if isinstance(result, int) and result > 0 else SEQWRITE_SIZE
            value = nbytes / MiB / elapsed
        else:
            value, result = result
        out[name] = {"value": value, "check": result}
    print(json.dumps(out))


# ---- the driver ----------------------------------------------------------------------------


class Runner:
    def __init__(self, args, targets, workloads):
        self.args = args
        self.targets = targets
        self.workloads = workloads
        self.samples = {w.name: {t.name: [] for t in targets} for w in workloads + [RSS]}
        self.checks = {w.name: {t.name: [] for t in targets} for w in workloads}
        self.errors = {}  # (workload, target) -> message
        self.notes = []
        self.mount_hwm = {t.name: 0.0 for t in targets}
        self.rss_partial = set()  # targets on which some workload failed in the RSS session

    def ctx(self, t, root):
        sources = {
            "copyup-append-50x1M": [t.lower_path(f"append/a{i:02d}.bin") for i in range(APPEND_N)],
            "copyup-append-256M": [t.lower_path("big.bin")],
        }
        return {
            "root": root,
            "upper": None if isinstance(t, Plain) else t.upper,
            "tarball": os.path.join(self.args.workdir, "untar.tar"),
            "fio_runtime": self.args.fio_runtime,
            "sources_by_wl": sources,
        }

    def spawn(self, t, root, names, mode, timeout):
        """Runs the worker on target t's mounted view; returns (results or None, error)."""
        ctx = self.ctx(t, root)
        spec_ctx = dict(ctx)
        spec_ctx["sources"] = []
        for n in names:
            spec_ctx["sources"] += ctx["sources_by_wl"].get(n, [])
        spec = {"ctx": spec_ctx, "workloads": names, "mode": mode}
        prefix = t.as_user() if isinstance(t, RootlessUnionfs) else []
        p = subprocess.Popen(prefix + [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_worker(p, t)
            return None, f"TIMEOUT after {timeout:.0f} s (daemon killed, mount detached)"
        except BaseException:
            self._kill_worker(p, t)
            raise
        if p.returncode != 0:
            lines = [l for l in err.strip().splitlines() if l.strip()]
            return None, f"worker failed (exit {p.returncode}): {lines[-1] if lines else ''}"
        try:
            results = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None, f"worker printed no result: {out[-200:]!r} {err[-200:]!r}"
        return results, None

    def _kill_worker(self, p, t):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        t.abort()  # a worker stuck in a FUSE request dies once the connection is gone
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{t.name}: a worker (pid {p.pid}) could not be killed")

    def rep(self, t, w):
        """One repetition of workload w on target t: fresh mount, caches, measure, tear down."""
        try:
            root = t.mount()
        except Exception as e:
            return None, f"mount: {e}"
        res, err = None, None
        try:
            sync_data()
            if w.mode == "cold":
                drop_caches()
            res, err = self.spawn(t, root, [w.name], w.mode, self.args.timeout)
        finally:
            hwm = t.peak_rss_mib()
            if hwm:
                self.mount_hwm[t.name] = max(self.mount_hwm[t.name], hwm)
            problem = t.unmount()
            if problem:
                self.notes.append(f"{w.name}: {problem}")
            t.cleanup()
        if res and "error" in res[w.name]:
            return None, res[w.name]["error"]
        return (res[w.name] if res else None), err

    def run(self):
        for w in self.workloads:
            t0 = time.time()
            for r in range(self.args.reps):
                for t in self.targets:
                    if (w.name, t.name) in self.errors:
                        continue  # after an error or timeout, skip the remaining repetitions
                    res, err = self.rep(t, w)
                    if err:
                        self.errors[(w.name, t.name)] = err
                        log(f"  {w.name} on {t.name}: {err}")
                        continue
                    self.samples[w.name][t.name].append(res["value"])
                    self.checks[w.name][t.name].append(res["check"])
            log(f"{w.name:24} " + "  ".join(
                f"{t.name}={fmt(med(self.samples[w.name][t.name]))}" for t in self.targets)
                + f"   ({time.time() - t0:.0f} s)")
        self.rss()

    def rss(self):
        fuse = [t for t in self.targets if t.fuse]
        if not fuse or self.args.no_rss:
            return
        # stat-all last: where a daemon runs out of descriptors there, the others are unaffected.
        names = sorted((w.name for w in self.workloads), key=lambda n: n.startswith("stat-all"))
        t0 = time.time()
        for r in range(self.args.rss_reps):
            for t in fuse:
                if ("daemon-peak-rss", t.name) in self.errors:
                    continue
                try:
                    root = t.mount()
                except Exception as e:
                    self.errors[("daemon-peak-rss", t.name)] = f"mount: {e}"
                    continue
                try:
                    sync_data()
                    res, err = self.spawn(t, root, names, "once", self.args.timeout * len(names))
                    hwm = t.peak_rss_mib()
                finally:
                    problem = t.unmount()
                    if problem:
                        self.notes.append(f"daemon-peak-rss: {problem}")
                    t.cleanup()
                if err:
                    self.errors[("daemon-peak-rss", t.name)] = err
                    continue
                failed = sorted(n for n, v in res.items() if "error" in v)
                if failed and t.name not in self.rss_partial:
                    self.rss_partial.add(t.name)
                    self.notes.append(f"daemon-peak-rss on {t.name} (*): {len(failed)} of {len(names)} "
                                      "workloads failed during the session: "
                                      + "; ".join(f"{n}: {res[n]['error']}" for n in failed))
                if hwm:
                    self.samples["daemon-peak-rss"][t.name].append(hwm)
        log(f"{'daemon-peak-rss':24} " + "  ".join(
            f"{t.name}={fmt(med(self.samples['daemon-peak-rss'][t.name]))}" for t in fuse)
            + f"   ({time.time() - t0:.0f} s)")

    def check_consistency(self):
        for w in self.workloads:
            per = {t: c for t, c in self.checks[w.name].items() if c}
            distinct = {json.dumps(c[0]) for c in per.values()}
            inner = [t for t, c in per.items() if len({json.dumps(x) for x in c}) > 1]
            if len(distinct) > 1:
                self.notes.append(f"{w.name}: check values differ between targets: "
                                  + ", ".join(f"{t}={c[0]}" for t, c in per.items()))
            for t in inner:
                self.notes.append(f"{w.name}: check values differ between repetitions on {t}: {per[t]}")
            if w.name.startswith("git-status"):
                for t, c in per.items():
                    if any(c):
                        self.notes.append(f"{w.name}: git status listed {c[0]} changed paths on {t} "
                                          "(the index did not match the view's stat data)")


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x):
    if x is None:
        return "-"
    if x >= 1000:
        return f"{x:.0f}"
    if x >= 100:
        return f"{x:.1f}"
    if x >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def ratio(u, other):
    if u is None or other is None or other == 0 or u == 0:
        return None
    return u / other


def fuse_overlayfs_version():
    try:
        r = run(["fuse-overlayfs", "--version"], timeout=10, check=False, capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("fuse-overlayfs"):
            return line.split("version", 1)[-1].strip(" :")
    return "unknown"


def unionfs_version():
    v = "unknown"
    try:
        r = run([BIN, "--version"], timeout=10, check=False, capture_output=True, text=True)
        v = r.stdout.strip() or v
        g = run(["git", "-C", REPO, "describe", "--always", "--dirty"], timeout=10, check=False,
                capture_output=True, text=True)
        if g.returncode == 0:
            v += f" (git {g.stdout.strip()})"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return v


def kernel_overlay_opts(workdir):
    k = Kernel(workdir)
    k.mnt = os.path.join(workdir, "run", "probe", "mnt")
    k.upper = os.path.join(workdir, "run", "probe", "upper")
    k.work = os.path.join(workdir, "run", "probe", "work")
    try:
        k.mount()
        e = mount_entry(k.mnt)
        opts = e[2] if e else "?"
    except Exception as ex:
        return None, str(ex)
    finally:
        k.unmount()
        k.cleanup()
    keep = [o for o in opts.split(",") if o.split("=")[0] in
            ("index", "redirect_dir", "metacopy", "xino", "uuid", "volatile", "userxattr")]
    return True, ",".join(keep) or "defaults"


def table(runner, meta):
    targets = [t.name for t in runner.targets]
    has_u = "unionfs" in targets
    cols = ["workload", "unit", "better"] + targets
    if has_u and "kernel" in targets:
        cols.append("u/kernel")
    if has_u and "fuse-overlayfs" in targets:
        cols.append("u/fuse-ovl")
    # The rootless data path against fuse-overlayfs (which rootless users run instead).
    rootless = [t for t in ("unionfs-nopt", "unionfs-rootless") if t in targets]
    if "fuse-overlayfs" in targets:
        cols += [f"{t[8:]}/fuse-ovl" for t in rootless]
    rows = []
    for w in runner.workloads + [RSS]:
        if w is RSS and not any(runner.samples[w.name].values()):
            continue
        row = [w.name, w.unit, "higher" if w.higher_better else "lower"]
        meds = {}
        for t in targets:
            m = med(runner.samples[w.name][t])
            meds[t] = m
            if (w.name, t) in runner.errors:
                row.append("ERROR" if "TIMEOUT" not in runner.errors[(w.name, t)] else "TIMEOUT")
            elif w is RSS and t in ("plain", "kernel"):
                row.append("n/a")
            else:
                row.append(fmt(m) + ("*" if w is RSS and t in runner.rss_partial else ""))
        for other in ("kernel", "fuse-overlayfs"):
            if has_u and other in targets:
                r = ratio(meds.get("unionfs"), meds.get(other))
                row.append("-" if r is None else f"{r:.2f}x")
        if "fuse-overlayfs" in targets:
            for t in rootless:
                r = ratio(meds.get(t), meds.get("fuse-overlayfs"))
                row.append("-" if r is None else f"{r:.2f}x")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    lines = []
    lines.append(f"unionfs mount benchmark: {meta['mode']} mode, {meta['reps']} repetitions per workload, medians")
    lines.append(f"kernel {meta['kernel']} (overlay: {meta['kernel_overlay']}) | fuse-overlayfs "
                 f"{meta['fuse_overlayfs']} | {meta['unionfs']} | {meta['cpus']} CPUs | "
                 f"RLIMIT_NOFILE {meta['nofile'][0]}/{meta['nofile'][1]}")
    lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cols)))
    for r in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(r)))
    lines.append("Ratios u/X: ms and MiB rows = unionfs value / X value (below 1.00x: unionfs faster or "
                 "smaller); MiB/s and IOPS rows = unionfs throughput / X throughput (above 1.00x: unionfs faster).")
    notes = [f"{w} on {t}: {e}" for (w, t), e in sorted(runner.errors.items())] + runner.notes + meta["notes"]
    if notes:
        lines.append("Notes:")
        lines += [f"  - {n}" for n in notes]
    return "\n".join(lines)


def ensure_fio():
    if shutil.which("fio"):
        return True
    log("fio is missing: apt-get install -y fio ...")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-qq", "fio"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "fio"]):
        try:
            r = run(cmd, timeout=600, check=False, env=env, capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            break
        if cmd[1] == "install" and r.returncode == 0:
            break
    return shutil.which("fio") is not None


def main():
    global BIN, SYNC_PATH
    ap = argparse.ArgumentParser(description="unionfs mount-level benchmark (see the module docstring)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="3 repetitions, fio 3 s (the default)")
    g.add_argument("--full", action="store_true", help="7 repetitions, fio 10 s")
    ap.add_argument("--reps", type=int, help="repetitions per workload (overrides the mode)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    ap.add_argument("--only", help="comma-separated workload names (see --list)")
    ap.add_argument("--bin", default=DEFAULT_BIN, help="the unionfs binary")
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--timeout", type=float, default=120, help="seconds per repetition")
    ap.add_argument("--json", help="also write all samples and medians to FILE")
    ap.add_argument("--regen", action="store_true", help="regenerate the layer data")
    ap.add_argument("--no-rss", action="store_true", help="skip the daemon peak RSS session")
    ap.add_argument("--nofile", type=int,
                    help="set RLIMIT_NOFILE (soft and hard) of the daemons to N (default: inherited)")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        worker(json.loads(args._worker))
        return 0
    if args.list:
        for w in WORKLOADS + [RSS]:
            print(f"{w.name:24} {w.mode:5} {w.unit}")
        return 0

    full = args.full
    args.reps = args.reps or (7 if full else 3)
    args.rss_reps = 3 if full else 1
    args.fio_runtime = 10 if full else 3
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    SYNC_PATH = args.workdir
    TRASH.append(os.path.join(args.workdir, "trash"))
    empty_trash()  # left by an interrupted run
    BIN = os.path.abspath(args.bin)
    if os.geteuid() != 0:
        log("mount_bench.py must run as root (kernel overlay mounts, drop_caches)")
        return 2

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.nofile:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
        except (ValueError, OSError) as e:
            log(f"cannot set RLIMIT_NOFILE to {args.nofile}: {e} (hard limit {nofile[1]})")
            return 2
        nofile = (args.nofile, args.nofile)

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    bad = [n for n in names if n not in ALL_TARGETS]
    if bad:
        log(f"unknown target(s): {', '.join(bad)} (known: {', '.join(ALL_TARGETS)})")
        return 2
    workloads = WORKLOADS
    if args.only:
        want = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in want if n not in BY_NAME]
        if unknown:
            log(f"unknown workload(s): {', '.join(unknown)}; see --list")
            return 2
        workloads = [w for w in WORKLOADS if w.name in want]
        if "daemon-peak-rss" not in want:
            args.no_rss = True
        if not workloads:
            workloads = list(WORKLOADS)  # only the RSS session: it runs everything once

    meta_notes = []
    fov = fuse_overlayfs_version() if shutil.which("fuse-overlayfs") else None
    if "fuse-overlayfs" in names and not fov:
        names.remove("fuse-overlayfs")
        meta_notes.append("fuse-overlayfs is not installed: skipped")
    if "unionfs" in names and not os.access(BIN, os.X_OK):
        log(f"{BIN} not found: run `cargo build --release` first (or pass --bin)")
        return 2
    if any(w.name == "fio-randread-4k" for w in workloads) and not ensure_fio():
        workloads = [w for w in workloads if w.name != "fio-randread-4k"]
        meta_notes.append("fio is not installed: fio-randread-4k skipped")

    ensure_data(args.workdir, args.regen)
    kernel_ok, kopts = kernel_overlay_opts(args.workdir)
    if not kernel_ok:
        meta_notes.append(f"kernel overlayfs mount failed: {kopts}")
        if "kernel" in names:
            names.remove("kernel")
    targets = []
    for n in ALL_TARGETS:
        if n not in names:
            continue
        if n == "plain":
            p = Plain(args.workdir)
            p.ensure(bool(kernel_ok))
            targets.append(p)
        elif n == "kernel":
            targets.append(Kernel(args.workdir))
        elif n == "fuse-overlayfs":
            targets.append(FuseOverlayfs(args.workdir))
        elif n == "unionfs-volatile":
            targets.append(Unionfs(args.workdir, n, ["--volatile"]))
        elif n == "unionfs-rdauto":
            targets.append(Unionfs(args.workdir, n, ["--readdirplus", "auto"]))
        elif n == "unionfs-fullcopy":
            targets.append(Unionfs(args.workdir, n, FULLCOPY_ARGS))
        elif n == "unionfs-nopt":
            targets.append(Unionfs(args.workdir, n, ["--no-passthrough"]))
        elif n == "unionfs-rootless":
            targets.append(RootlessUnionfs(args.workdir))
        else:
            targets.append(Unionfs(args.workdir))
    if not targets:
        log("no target left to run")
        return 2

    meta = {
        "mode": "full" if full else "quick",
        "reps": args.reps,
        "kernel": platform.release(),
        "kernel_overlay": kopts if kernel_ok else "unavailable",
        "fuse_overlayfs": fov or "not installed",
        "unionfs": unionfs_version(),
        "cpus": os.cpu_count(),
        "nofile": list(nofile),
        "workdir": args.workdir,
        "notes": meta_notes,
    }
    log(f"targets: {', '.join(t.name for t in targets)}; {len(workloads)} workloads x {args.reps} repetitions")
    t0 = time.time()
    runner = Runner(args, targets, workloads)
    runner.run()
    runner.check_consistency()
    for t in targets:
        if t.fuse and runner.mount_hwm[t.name]:
            meta_notes.append(f"{t.name}: largest daemon VmHWM over the per-workload mounts: "
                              f"{runner.mount_hwm[t.name]:.1f} MiB")
    meta["elapsed_s"] = round(time.time() - t0, 1)
    meta_notes.append(f"benchmark time {meta['elapsed_s']:.0f} s")
    print(table(runner, meta), flush=True)
    if args.json:
        doc = {"meta": meta, "workloads": {}}
        for w in workloads + [RSS]:
            doc["workloads"][w.name] = {
                "unit": w.unit,
                "higher_is_better": w.higher_better,
                "mode": w.mode,
                "targets": {
                    t.name: {
                        "samples": runner.samples[w.name][t.name],
                        "median": med(runner.samples[w.name][t.name]),
                        "checks": runner.checks.get(w.name, {}).get(t.name),
                        "error": runner.errors.get((w.name, t.name)),
                    }
                    for t in targets
                },
            }
        doc["notes"] = runner.notes
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 1 if runner.errors else 0


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if "--_worker" not in sys.argv:
        atexit.register(teardown_all)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGHUP, _on_signal)
    try:
        code = main()
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        if "--_worker" not in sys.argv:
            teardown_all()
            empty_trash()
    sys.exit(code)
