//! Shared helpers for tests that mount for real: layer fixtures, a mount guard that always
//! tears the mount down (also when a test panics), and tree snapshots for comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Our binary (never the bare name: Debian's unionfs-fuse owns /usr/bin/unionfs).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs"))
}

/// Whether `p` is a mount point right now.
pub fn is_mounted(p: &Path) -> bool {
    let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    unionfs::mountinfo::topmost_at(&want).is_some()
}

/// A temporary set of directories: `lower0..lowerN` (lower0 on top), `upper`, `work`, `mnt`.
pub struct Layers {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Layers {
    pub fn new(n_lowers: usize) -> Layers {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-test")
            .tempdir()
            .expect("tempdir");
        let lowers: Vec<PathBuf> = (0..n_lowers).map(|i| dir.path().join(format!("lower{i}"))).collect();
        for l in &lowers {
            std::fs::create_dir(l).expect("mkdir lower");
        }
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let mnt = dir.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).expect("mkdir");
        }
        Layers {
            dir,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// Writes `content` at `rel` in lower `i`, creating parents.
    pub fn put(&self, i: usize, rel: &str, content: &[u8]) {
        let p = self.lowers[i].join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
        std::fs::write(p, content).expect("write lower file");
    }

    pub fn mkdir(&self, i: usize, rel: &str) {
        std::fs::create_dir_all(self.lowers[i].join(rel)).expect("mkdir -p");
    }

    /// `--lower` argument, top first.
    pub fn lower_arg(&self) -> String {
        lower_arg(&self.lowers).to_string_lossy().into_owned()
    }

    /// Mounts with the upper and workdir, plus `extra` arguments.
    pub fn mount(&self, extra: &[&str]) -> Mount {
        Mount::unionfs(&self.lowers, Some((&self.upper, &self.work)), extra, &self.mnt)
    }

    /// Snapshot of every lower layer, to prove they were not modified.
    pub fn snapshot_lowers(&self) -> Vec<Tree> {
        self.lowers.iter().map(|l| Tree::read_raw(l)).collect()
    }
}

/// A running unionfs daemon serving a mount. Dropping it unmounts (lazily) and reaps the daemon.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
}

/// `a:b:c` for `--lower`.
pub fn lower_arg(lowers: &[PathBuf]) -> OsString {
    let v: Vec<String> = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    OsString::from(v.join(":"))
}

impl Mount {
    /// `unionfs mount --foreground` of `lowers` (top first), with an (upper, workdir) or
    /// read-only, plus `extra` arguments, at `mnt`.
    pub fn unionfs(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, extra: &[&str], mnt: &Path) -> Mount {
        let mut args: Vec<OsString> = vec![
            "mount".into(),
            "--foreground".into(),
            "--lower".into(),
            lower_arg(lowers),
        ];
        if let Some((upper, work)) = upper_work {
            args.extend(["--upper".into(), upper.into(), "--workdir".into(), work.into()]);
        }
        args.extend(extra.iter().map(OsString::from));
        args.push(mnt.into());
        Mount::start(&args, mnt)
    }

    /// Starts `unionfs ARGS` (a foreground mount) and waits until `mnt` is mounted.
    pub fn start(args: &[OsString], mnt: &Path) -> Mount {
        Mount::start_with_env(args, mnt, &[])
    }

    /// [`Mount::start`] with `env` added to the daemon's environment.
    pub fn start_with_env(args: &[OsString], mnt: &Path, env: &[(&str, &str)]) -> Mount {
        let mut cmd = Command::new(bin());
        cmd.args(args).envs(env.iter().copied());
        Mount::start_command(cmd, mnt)
    }

    /// Starts `cmd` (the daemon in the foreground, set up as the caller likes) and waits for
    /// its mount at `mnt`.
    pub fn start_command(mut cmd: Command, mnt: &Path) -> Mount {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unionfs");
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    m.child = None;
                    panic!("unionfs exited before mounting: {st}");
                }
            }
            assert!(Instant::now() < deadline, "mount did not appear at {}", mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Unmounts and waits for the daemon; returns its exit status code.
    pub fn unmount(mut self) -> Option<i32> {
        self.teardown()
    }

    fn teardown(&mut self) -> Option<i32> {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        wait_or_kill(self.child.take()?, Duration::from_secs(15))
    }
}

/// Waits up to `timeout` for `child` (a daemon we started) to exit and returns its exit code;
/// past the timeout it is killed (only that process) and the result is None.
pub fn wait_or_kill(mut child: Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: PathBuf },
    Other { kind: String, mode: u32, rdev: u64 },
}

/// A tree: relative path → entry, plus xattrs (`user.*` only) per path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub xattrs: BTreeMap<PathBuf, BTreeMap<OsString, Vec<u8>>>,
    /// mtimes (ns), for raw layer snapshots only.
    pub mtimes: BTreeMap<PathBuf, i128>,
}

impl Tree {
    /// Snapshot through the mount (or of any directory), no mtimes.
    pub fn read(root: &Path) -> Tree {
        let mut t = Tree::default();
        walk(root, root, &mut t, false);
        t
    }

    /// Snapshot of a raw layer directory including mtimes and all xattrs.
    pub fn read_raw(root: &Path) -> Tree {
        let mut t = Tree::default();
        walk(root, root, &mut t, true);
        t
    }
}

fn walk(root: &Path, dir: &Path, t: &mut Tree, raw: bool) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let e = if ft.is_dir() {
            Entry::Dir { mode }
        } else if ft.is_file() {
            Entry::File {
                data: std::fs::read(&p).expect("read"),
                mode,
            }
        } else if ft.is_symlink() {
            Entry::Symlink {
                target: std::fs::read_link(&p).expect("readlink"),
            }
        } else {
            let kind = if ft.is_char_device() {
                "chr"
            } else if ft.is_block_device() {
                "blk"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "sock"
            };
            Entry::Other {
                kind: kind.into(),
                mode,
                rdev: md.rdev(),
            }
        };
        if raw {
            t.mtimes.insert(
                rel.clone(),
                md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            );
        }
        let xs = list_xattrs(&p, raw);
        if !xs.is_empty() {
            t.xattrs.insert(rel.clone(), xs);
        }
        t.entries.insert(rel, e);
        if ft.is_dir() {
            walk(root, &p, t, raw);
        }
    }
}

fn list_xattrs(p: &Path, all: bool) -> BTreeMap<OsString, Vec<u8>> {
    all_xattrs(p)
        .into_iter()
        .filter(|(n, _)| all || n.starts_with("user."))
        .map(|(n, v)| (OsString::from(n), v))
        .collect()
}

// ---- Helpers for the `mount_*` tests (added; everything above is shared as it was) ----------

/// Unmounts `m`, asserting the daemon exits 0, and mounts the same layers again with `extra`.
pub fn remount(l: &Layers, m: Mount, extra: &[&str]) -> Mount {
    assert_eq!(m.unmount(), Some(0), "unionfs must exit 0 on unmount");
    l.mount(extra)
}

impl Layers {
    /// Path of `rel` in lower `i` (raw, not through the mount).
    pub fn lower(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }

    /// Path of `rel` in the upper (raw, not through the mount).
    pub fn up(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }

    /// Makes the temporary directory reachable by other users (tempdirs are 0700).
    pub fn open_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    }
}

/// The errno of a failed I/O result (`None` when it succeeded).
pub fn err_code<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// The errno of a failed rustix result (`None` when it succeeded).
pub fn rerr<T>(r: rustix::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error())
}

/// `lgetxattr`: `None` when absent.
pub fn xget(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    v.truncate(n);
    Some(v)
}

/// `lgetxattr`, returning the errno on failure.
pub fn xget_err(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut v = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut v[..]) {
        Ok(n) => {
            v.truncate(n);
            Ok(v)
        }
        Err(e) => Err(e.raw_os_error()),
    }
}

/// `lsetxattr`.
pub fn xset(p: &Path, name: &str, value: &[u8]) -> rustix::io::Result<()> {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
}

/// `llistxattr`, as sorted names.
pub fn xlist(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).expect("llistxattr");
    let mut v: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

/// Prefixes of the xattrs union filesystems keep for themselves (ours, overlayfs' and
/// fuse-overlayfs'), which a comparison of user-visible xattrs leaves out.
pub const PRIVATE_XATTRS: &[&str] = &[
    "user.unionfs.",
    "trusted.unionfs.",
    "user.overlay.",
    "trusted.overlay.",
    "user.fuseoverlayfs.",
];

/// Every xattr of `p` with its value, leaving out [`PRIVATE_XATTRS`] (none where the
/// filesystem has none).
pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut x = all_xattrs(p);
    x.retain(|n, _| !PRIVATE_XATTRS.iter().any(|p| n.starts_with(p)));
    x
}

/// Every xattr of `p` with its value (none where the filesystem has none).
pub fn all_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf[..]) else {
        return BTreeMap::new();
    };
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter_map(|n| xget(p, &n).map(|v| (n, v)))
        .collect()
}

/// Creates an overlay whiteout (char device 0/0) at `p`.
pub fn mknod_whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("mknod whiteout");
}

/// Whether `p` is an overlay whiteout (char device 0/0).
pub fn is_chr_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Whether anything (even a dangling symlink or a whiteout) exists at `p`.
pub fn exists_raw(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Sorted names in the directory `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Sets atime and mtime (seconds since the epoch) of `p` without following a symlink.
pub fn set_times(p: &Path, atime: i64, mtime: i64) {
    let ts = |s| rustix::fs::Timespec { tv_sec: s, tv_nsec: 0 };
    let t = rustix::fs::Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// lstat.
pub fn lstat(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

// ---- Prerequisites ---------------------------------------------------------------------------

/// Whether a missing prerequisite fails the test (`UNIONFS_STRICT=1`, as `scripts/test.sh` and
/// CI run the suite) instead of skipping it: with output capture a skip is invisible and counts
/// as a pass, so only a strict run proves that every test ran.
pub fn strict() -> bool {
    std::env::var("UNIONFS_STRICT").is_ok_and(|v| v == "1")
}

/// The one gate every skip goes through: `ok` is whether the prerequisite is there, `missing`
/// says what is missing and how to get it. Returns `ok`; when it is false, strict mode panics
/// naming `missing`, otherwise the test says "SKIPPED" and the caller returns (or leaves out
/// the part that needs it).
#[track_caller]
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if strict() {
        panic!("UNIONFS_STRICT=1: {test}: missing prerequisite: {missing}");
    }
    eprintln!("SKIPPED {test}: {missing} (UNIONFS_STRICT=1 makes this a failure)");
    false
}

/// Whether we run as root, through [`require`]; `why` says what needs it.
#[track_caller]
pub fn require_root(why: &str) -> bool {
    require(
        rustix::process::geteuid().is_root(),
        &format!("root ({why}); run the suite as root, as scripts/test.sh and CI do"),
    )
}

/// Whether `prog` is on `PATH`, through [`require`]; `package` is the Debian package that has it.
#[track_caller]
pub fn require_program(prog: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(
        found,
        &format!("{prog} (Debian package {package}; scripts/setup.sh installs it)"),
    )
}

/// The test accounts, one per role. `scripts/setup.sh` creates exactly these (as root, once,
/// before any test runs; its list must match, which `tests/prerequisites.rs` checks); tests
/// only look them up, so that no two tests ever race to create one.
pub const ACCOUNTS: [&str; 4] = [USER_A, USER_B, ROOTLESS_USER, PODMAN_USER];
/// A plain user acting on root's mounts (permissions, ACLs, set-id bits, layer tools).
pub const USER_A: &str = "unionfs-user-a";
/// A second plain user, where a test needs two.
pub const USER_B: &str = "unionfs-user-b";
/// A plain user that mounts itself through fusermount3 (rootless mounts).
pub const ROOTLESS_USER: &str = "unionfs-rootless-user";
/// Rootless Podman's user: a home directory and one subordinate uid and gid range of 65536.
pub const PODMAN_USER: &str = "unionfs-podman-user";

/// A test account as `getent passwd` shows it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks up the test account `name` (one of [`ACCOUNTS`]); panics, naming it and the fix, when
/// it is missing: accounts are created by `scripts/setup.sh`, never by a test.
#[track_caller]
pub fn account(name: &'static str) -> Account {
    assert!(
        ACCOUNTS.contains(&name),
        "{name} is not one of the test accounts {ACCOUNTS:?}"
    );
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .expect("run getent");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let f: Vec<&str> = line.split(':').collect();
    assert!(
        out.status.success() && f.len() == 7,
        "the test account {name} is missing: run scripts/setup.sh (as root) first"
    );
    Account {
        name,
        uid: f[2].parse().expect("uid"),
        gid: f[3].parse().expect("gid"),
        home: PathBuf::from(f[5]),
    }
}

/// uid and gid of the test account `name` (see [`account`]).
#[track_caller]
pub fn user(name: &'static str) -> (u32, u32) {
    let a = account(name);
    (a.uid, a.gid)
}

/// Panics, naming the fix, unless `/dev/fuse` is usable by every user (as desktop
/// distributions ship it; `scripts/setup.sh` makes it so): plain users mount through it.
#[track_caller]
pub fn assert_dev_fuse_for_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/fuse").map(|m| m.permissions().mode());
    assert!(
        mode.as_ref().is_ok_and(|m| m & 0o666 == 0o666),
        "/dev/fuse is not readable and writable by every user ({mode:?}): run scripts/setup.sh (as root) first"
    );
}

/// Runs `prog args` as `uid:gid` with no supplementary groups.
pub fn run_as(uid: u32, gid: u32, prog: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(prog)
        .args(args)
        .output()
        .expect("run setpriv")
}

/// A kernel overlayfs mount (needs root), the reference for differential tests. Dropping it
/// unmounts (lazily if busy).
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay` with `lowers` (top first); with `upper_work` = `(upper, workdir)` it is
    /// writable, without it a read-only union. Returns mount(8)'s complaint on failure.
    pub fn mount(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, mnt: &Path) -> Result<KernelOverlay, String> {
        KernelOverlay::mount_with(lowers, upper_work, mnt, "")
    }

    /// [`KernelOverlay::mount`] with more mount options (`nodev,noexec,...`; empty for none).
    pub fn mount_with(
        lowers: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        mnt: &Path,
        extra: &str,
    ) -> Result<KernelOverlay, String> {
        let lower = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = format!("lowerdir={lower}");
        if let Some((upper, work)) = upper_work {
            opts.push_str(&format!(",upperdir={},workdir={}", upper.display(), work.display()));
        }
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay -o {opts} {}: {}",
                mnt.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(KernelOverlay { mnt: mnt.to_path_buf() })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts now (lazily if the mount is busy).
    pub fn unmount(self) {}
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        unmount_dir(&self.mnt);
    }
}

/// Unmounts whatever is mounted at `dir` (lazily if it is busy); nothing if nothing is.
pub fn unmount_dir(dir: &Path) {
    if is_mounted(dir) {
        let ok = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

// ---- Helpers for the fault / hostile / permission tests (added) ------------------------------

/// Sends SIGKILL to the daemon this guard started (only that PID).
pub fn kill9(m: &Mount) {
    let pid = m.pid().expect("daemon pid") as i32;
    let pid = rustix::process::Pid::from_raw(pid).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9 daemon");
}

/// Whether the daemon of `m` is still running (not exited, not a zombie).
pub fn daemon_alive(m: &Mount) -> bool {
    let Some(pid) = m.pid() else { return false };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the command name in parentheses.
            let state = s.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')) | None)
        }
        Err(_) => false,
    }
}

/// Entries left in the workdir's `unionfs/` scratch directory (missing dir counts as empty).
pub fn workdir_leftovers(work: &Path) -> Vec<String> {
    match std::fs::read_dir(work.join("unionfs")) {
        Ok(rd) => rd
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// A size-limited tmpfs mounted at a directory; dropping it unmounts (lazily).
pub struct TmpfsGuard {
    pub dir: PathBuf,
}

impl TmpfsGuard {
    pub fn mount(dir: &Path, size: &str) -> TmpfsGuard {
        std::fs::create_dir_all(dir).expect("mkdir tmpfs dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("spawn mount");
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        TmpfsGuard { dir: dir.to_path_buf() }
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Checks that `upper` is a valid overlay-style upper: only regular files, directories,
/// symlinks and char 0/0 whiteouts; no `.wh.` names. Returns the problems found.
pub fn upper_format_problems(upper: &Path) -> Vec<String> {
    fn go(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir upper") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("lstat upper");
            let ft = md.file_type();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".wh.")) {
                out.push(format!("OCI marker in overlay-style upper: {}", p.display()));
            }
            if ft.is_dir() {
                go(&p, out);
            } else if ft.is_file() || ft.is_symlink() || (ft.is_char_device() && md.rdev() == 0) {
            } else {
                out.push(format!(
                    "unexpected file type {:?} rdev {} at {}",
                    ft,
                    md.rdev(),
                    p.display()
                ));
            }
        }
    }
    let mut out = Vec::new();
    go(upper, &mut out);
    out
}

/// Writes `data` at `off` of `f` through a shared mapping, then msync and munmap.
pub fn mmap_write(f: &std::fs::File, len: usize, off: usize, data: &[u8]) {
    mapped_write(f, len, off, data, true);
}

/// Reads and then writes `data` at the start of `f`'s first page through a shared mapping and
/// unmaps it without msync (what a process exiting after such a write does).
pub fn mmap_write_no_msync(f: &std::fs::File, data: &[u8]) {
    mapped_write(f, 4096, 0, data, false);
}

fn mapped_write(f: &std::fs::File, len: usize, off: usize, data: &[u8], msync: bool) {
    assert!(off + data.len() <= len);
    // SAFETY: we map `len` bytes of a file that is at least that long, read and write only
    // inside the mapping, and unmap it before returning; no other reference to the memory exists.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        std::hint::black_box(std::ptr::read_volatile(p as *const u8));
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off), data.len());
        if msync {
            assert_eq!(
                libc::msync(p, len, libc::MS_SYNC),
                0,
                "msync: {}",
                std::io::Error::last_os_error()
            );
        }
        assert_eq!(libc::munmap(p, len), 0);
    }
}

/// Starts `prog ARGS`, a program just written. A sibling test's fork may still hold our
/// just-closed write fd for a moment (the classic ETXTBSY-on-exec race of threaded test
/// runners), so an ETXTBSY spawn is retried briefly.
pub fn spawn_fresh_program(prog: &Path, args: &[&str]) -> Child {
    let spawn = || Command::new(prog).args(args).spawn();
    let mut spawned = spawn();
    for _ in 0..50 {
        match &spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
                spawned = spawn();
            }
            _ => break,
        }
    }
    spawned.unwrap_or_else(|e| panic!("spawn {}: {e}", prog.display()))
}

/// Seeded, reproducible random numbers (xorshift64*) for tests.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03);
        if r.0 == 0 {
            r.0 = 1;
        }
        for _ in 0..4 {
            r.next();
        }
        r
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `xs` (which must not be empty).
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// A buffer whose usable part starts at a 4 KiB boundary, as `O_DIRECT` I/O on most
/// filesystems needs.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub const ALIGN: usize = 4096;

    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + Self::ALIGN];
        let start = raw.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// An aligned buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::new(data.len());
        b.as_mut().copy_from_slice(data);
        b
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}
pub mod deep;
pub mod podman;
