//! Thin, safe wrappers over the system calls the union needs, on top of `rustix`.
//!
//! Everything works relative to directory fds so that a layer's symlinks are never followed:
//! the only path strings built here are `/proc/self/fd/N[/name]`, which resolve through a magic
//! link to an object we already hold.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno as RErrno;

use crate::descent::{Descent, Frame, PathDir};

/// `/proc/self/fd/N`: reaches the object behind `fd` (including an `O_PATH` fd).
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    // An integer formatted as decimal never contains NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `/proc/self/fd/N/name`: the entry `name` of the directory behind `dir`, without following a
/// symlink at `name` when used with an `l*` call.
pub fn entry_path(dir: BorrowedFd<'_>, name: &OsStr) -> OsString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    OsString::from_vec(p)
}

/// Opens the object behind an `O_PATH` fd for I/O.
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = (flags | OFlags::CLOEXEC) & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY);
    match rustix::fs::open(fd_path(fd).as_c_str(), flags, Mode::empty()) {
        // O_NOATIME is refused on files we do not own when unprivileged: retry without.
        Err(RErrno::PERM) if flags.contains(OFlags::NOATIME) => {
            rustix::fs::open(fd_path(fd).as_c_str(), flags & !OFlags::NOATIME, Mode::empty())
        }
        r => r,
    }
}

/// Opens the entry `name` of `dir` for I/O, refusing to follow a symlink there.
pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = (flags | OFlags::CLOEXEC | OFlags::NOFOLLOW) & !(OFlags::CREATE | OFlags::EXCL | OFlags::NOCTTY);
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        // O_NOATIME is refused on files we do not own when unprivileged: retry without.
        Err(RErrno::PERM) if flags.contains(OFlags::NOATIME) => {
            rustix::fs::openat(dir, name, flags & !OFlags::NOATIME, Mode::empty())
        }
        r => r,
    }
}

/// How many layer directories were listed and entries stat'ed since start: the cost of the
/// union's work in system calls, for the daemon's statistics (SIGUSR1) and tests that check a
/// cost does not grow with the size of a layer.
pub static DIR_READS: AtomicU64 = AtomicU64::new(0);
/// See [`DIR_READS`].
pub static STATS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// [`DIR_READS`] of this thread alone: what a test counts of its own union's work while
    /// other tests of its process list directories too (the union core starts no threads).
    static DIR_READS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one listing of a layer directory.
pub fn count_dir_read() {
    DIR_READS.fetch_add(1, Ordering::Relaxed);
    DIR_READS_HERE.with(|c| c.set(c.get() + 1));
}

/// Layer directories listed by this thread so far.
pub fn dir_reads_on_this_thread() -> u64 {
    DIR_READS_HERE.with(std::cell::Cell::get)
}

/// `lstat` of an entry of `dir`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<Stat> {
    STATS.fetch_add(1, Ordering::Relaxed);
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Like [`stat_at`], but a missing entry is `Ok(None)`.
pub fn stat_at_opt(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<Option<Stat>> {
    match stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(RErrno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One directory entry as read from a layer.
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub dtype: rustix::fs::FileType,
}

/// Reads every entry of the directory behind `dir` (an `O_PATH` fd is fine), minus `.` and `..`.
pub fn read_dir(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<RawEntry>> {
    count_dir_read();
    // O_NOATIME: listing the view must not touch the lowers, not even their atime.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, ".", flags | OFlags::NOATIME, Mode::empty()) {
        Err(RErrno::PERM) => rustix::fs::openat(dir, ".", flags, Mode::empty())?,
        r => r?,
    };
    let mut d = rustix::fs::Dir::read_from(&fd)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: e.ino(),
            dtype: e.file_type(),
        });
    }
    Ok(out)
}

/// Reads the first entries of the directory behind `dir` and nothing more: the kernel updates
/// its access time as its mount says, as for any listing that starts.
pub fn read_dir_once(dir: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::Dir::read_from(&fd)?.read().transpose()?;
    Ok(())
}

/// Reads an extended attribute of the entry `name` of `dir` (not following a symlink).
/// A missing attribute (or one the filesystem does not support) is `Ok(None)`.
pub fn get_xattr(dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> rustix::io::Result<Option<Vec<u8>>> {
    xattr_value(|buf| rustix::fs::lgetxattr(entry_path(dir, name).as_os_str(), attr, buf))
}

/// Reads an extended attribute of the object behind `fd` (a non-symlink).
pub fn get_xattr_fd(fd: BorrowedFd<'_>, attr: &OsStr) -> rustix::io::Result<Option<Vec<u8>>> {
    xattr_value(|buf| rustix::fs::getxattr(fd_path(fd).as_c_str(), attr, buf))
}

fn xattr_value(get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Option<Vec<u8>>> {
    match read_xattr_with(get) {
        Ok(v) => Ok(Some(v)),
        Err(RErrno::NODATA) | Err(RErrno::NOTSUP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a whole value, each attempt one call: a buffer too small for it (ERANGE) is grown
/// and the read repeated, so the value returned is one that was there at one moment.
fn read_xattr_with(mut get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    // Most values are small; the largest the kernel allows is 64 KiB.
    let mut buf = vec![0u8; 4096];
    loop {
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(RErrno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Lists the extended attribute names of an object, addressed as for [`Target`].
pub fn list_xattrs(t: &Target<'_>) -> rustix::io::Result<Vec<OsString>> {
    let path = t.path();
    let mut buf = vec![0u8; 1024];
    let n = loop {
        let r = if let Target::Open(fd) = t {
            rustix::fs::flistxattr(fd, &mut buf[..])
        } else if t.follow() {
            rustix::fs::listxattr(path.as_os_str(), &mut buf[..])
        } else {
            rustix::fs::llistxattr(path.as_os_str(), &mut buf[..])
        };
        match r {
            Ok(n) => break n,
            Err(RErrno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(RErrno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect())
}

/// How an object is addressed for xattr and metadata calls: by its own fd (non-symlinks), or
/// as an entry of its parent directory (required for symlinks, which `O_PATH` cannot reach).
pub enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Entry(BorrowedFd<'a>, &'a OsStr),
    /// A file open for I/O: the `f*xattr` calls work on it directly, with no path walk through
    /// /proc (the kernel asks for `security.capability` before writes, so this is a hot path).
    Open(BorrowedFd<'a>),
}

impl Target<'_> {
    fn path(&self) -> OsString {
        match self {
            Target::Fd(fd) => OsString::from_vec(fd_path(*fd).into_bytes()),
            Target::Entry(d, n) => entry_path(*d, n),
            Target::Open(fd) => OsString::from_vec(fd_path(*fd).into_bytes()),
        }
    }
    fn follow(&self) -> bool {
        matches!(self, Target::Fd(_))
    }

    pub fn get_xattr(&self, attr: &OsStr) -> rustix::io::Result<Option<Vec<u8>>> {
        if let Target::Open(fd) = self {
            return xattr_value(|buf| rustix::fs::fgetxattr(fd, attr, buf));
        }
        let path = self.path();
        if self.follow() {
            xattr_value(|buf| rustix::fs::getxattr(path.as_os_str(), attr, buf))
        } else {
            xattr_value(|buf| rustix::fs::lgetxattr(path.as_os_str(), attr, buf))
        }
    }

    /// The value of `attr`; a missing one is an error (ENODATA), as is any other failure.
    pub fn read_xattr(&self, attr: &OsStr) -> rustix::io::Result<Vec<u8>> {
        if let Target::Open(fd) = self {
            return read_xattr_with(|buf| rustix::fs::fgetxattr(fd, attr, buf));
        }
        let path = self.path();
        if self.follow() {
            read_xattr_with(|buf| rustix::fs::getxattr(path.as_os_str(), attr, buf))
        } else {
            read_xattr_with(|buf| rustix::fs::lgetxattr(path.as_os_str(), attr, buf))
        }
    }

    pub fn set_xattr(&self, attr: &OsStr, value: &[u8], flags: rustix::fs::XattrFlags) -> rustix::io::Result<()> {
        if let Target::Open(fd) = self {
            return rustix::fs::fsetxattr(fd, attr, value, flags);
        }
        let path = self.path();
        if self.follow() {
            rustix::fs::setxattr(path.as_os_str(), attr, value, flags)
        } else {
            rustix::fs::lsetxattr(path.as_os_str(), attr, value, flags)
        }
    }

    pub fn remove_xattr(&self, attr: &OsStr) -> rustix::io::Result<()> {
        if let Target::Open(fd) = self {
            return rustix::fs::fremovexattr(fd, attr);
        }
        let path = self.path();
        if self.follow() {
            rustix::fs::removexattr(path.as_os_str(), attr)
        } else {
            rustix::fs::lremovexattr(path.as_os_str(), attr)
        }
    }

    pub fn list_xattrs(&self) -> rustix::io::Result<Vec<OsString>> {
        list_xattrs(self)
    }
}

/// Removes the entry `name` of `dir`, a whole tree if `is_dir` (made writable first: a
/// half-built or broken tree may hold read-only directories), never following symlinks.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> rustix::io::Result<()> {
    if !is_dir {
        return rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
    }
    if let Ok(sub) = open_path_dir(dir, name) {
        let _ = rustix::fs::chmod(fd_path(sub.as_fd()).as_c_str(), Mode::from_raw_mode(0o700));
        remove_tree_contents(sub.as_fd())?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Removes everything below the directory `dir` (not `dir` itself), never following symlinks.
/// Depth first without recursion, with a bounded number of fds open (see `descent.rs`): a tree
/// left in the workdir, or an import being undone, may be of any depth.
pub fn remove_tree_contents(dir: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let first = Emptying {
        dir: PathDir::dup(dir)?,
        entries: read_dir(dir)?.into_iter(),
        name: OsString::new(),
    };
    let mut path = Descent::new(first);
    loop {
        let Some(top) = path.last_mut() else {
            return Ok(());
        };
        let Some(e) = top.entries.next() else {
            // Emptied: remove it from its parent, which `pop` reopened.
            if let (Some(done), Some(parent)) = (path.pop()?, path.last()) {
                rustix::fs::unlinkat(parent.dir.fd()?, &done.name, AtFlags::REMOVEDIR)?;
            }
            continue;
        };
        let fd = top.dir.fd()?;
        let is_dir = if e.dtype == rustix::fs::FileType::Unknown {
            stat_at(fd, &e.name)
                .map(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
                .unwrap_or(false)
        } else {
            e.dtype.is_dir()
        };
        if !is_dir {
            rustix::fs::unlinkat(fd, &e.name, AtFlags::empty())?;
            continue;
        }
        let sub = open_path_dir(fd, &e.name)?;
        // A directory left read-only (mkdir -m 0555 mid copy-up) must become writable to empty it.
        let _ = rustix::fs::chmod(fd_path(sub.as_fd()).as_c_str(), Mode::from_raw_mode(0o700));
        let entries = read_dir(sub.as_fd())?.into_iter();
        path.push(Emptying {
            dir: PathDir::new(sub),
            entries,
            name: e.name,
        })?;
    }
}

/// What [`for_each_file`] calls: the directory holding the entry, its path, the entry.
pub type FileVisitor<'a> = dyn FnMut(BorrowedFd<'_>, &[u8], &RawEntry) -> rustix::io::Result<()> + 'a;

/// Calls `f` with every entry below the directory `dir` that is not a directory (with the fd and
/// the path below `dir` of the directory holding it), never following symlinks; depth first
/// without recursion, with a bounded number of fds open (see `descent.rs`).
pub fn for_each_file(dir: BorrowedFd<'_>, f: &mut FileVisitor<'_>) -> rustix::io::Result<()> {
    let mut rel: Vec<u8> = Vec::new();
    let first = Emptying {
        dir: PathDir::dup(dir)?,
        entries: read_dir(dir)?.into_iter(),
        name: OsString::new(),
    };
    let mut path = Descent::new(first);
    loop {
        let Some(top) = path.last_mut() else {
            return Ok(());
        };
        let Some(e) = top.entries.next() else {
            if let Some(done) = path.pop()? {
                let keep = rel.len().saturating_sub(done.name.len() + 1);
                rel.truncate(if path.len() > 1 { keep } else { 0 });
            }
            continue;
        };
        let fd = top.dir.fd()?;
        let is_dir = match e.dtype {
            rustix::fs::FileType::Unknown => stat_at(fd, &e.name)
                .map(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
                .unwrap_or(false),
            t => t.is_dir(),
        };
        if !is_dir {
            f(fd, &rel, &e)?;
            continue;
        }
        let sub = open_path_dir(fd, &e.name)?;
        let entries = read_dir(sub.as_fd())?.into_iter();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.name.as_bytes());
        path.push(Emptying {
            dir: PathDir::new(sub),
            entries,
            name: e.name,
        })?;
    }
}

/// A directory [`remove_tree_contents`] is emptying (or [`for_each_file`] is walking): the
/// entries still to visit, and its name in its parent.
struct Emptying {
    dir: PathDir,
    entries: std::vec::IntoIter<RawEntry>,
    name: OsString,
}

impl Frame for Emptying {
    fn park(&mut self, _child: &Self) -> rustix::io::Result<()> {
        self.dir.park()
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.unpark(child.dir.fd()?)
    }
}

/// An `O_PATH` fd on the directory `rel` below `root` (empty: `root` itself), without following
/// any symlink and without leaving `root`. A path longer than one system call takes (PATH_MAX)
/// is resolved a piece at a time, each piece beneath the directory the last one reached: without
/// `..` in it, that is the same walk (with `..`, the kernel's ENAMETOOLONG stands).
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &OsStr) -> rustix::io::Result<OwnedFd> {
    const PIECE: usize = 2048;
    let b = rel.as_bytes();
    if b.len() <= PIECE || b.split(|&c| c == b'/').any(|c| c == b"..") {
        return openat2_beneath(root, if rel.is_empty() { OsStr::new(".") } else { rel });
    }
    let mut at: Option<OwnedFd> = None;
    let mut rest = b;
    loop {
        while let Some(r) = rest.strip_prefix(b"/") {
            rest = r;
        }
        if rest.is_empty() {
            break;
        }
        // Cut at a '/' (a name longer than a piece goes whole: the kernel refuses it).
        let cut = match rest.len() <= PIECE {
            true => rest.len(),
            false => match rest[..PIECE].iter().rposition(|&c| c == b'/') {
                Some(i) => i,
                None => rest.iter().position(|&c| c == b'/').unwrap_or(rest.len()),
            },
        };
        let base = at.as_ref().map_or(root, |f| f.as_fd());
        at = Some(openat2_beneath(base, OsStr::from_bytes(&rest[..cut]))?);
        rest = &rest[cut..];
    }
    match at {
        Some(fd) => Ok(fd),
        None => openat2_beneath(root, OsStr::new(".")),
    }
}

fn openat2_beneath(root: BorrowedFd<'_>, rel: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// An `O_PATH` fd on the directory at `path` (a path given by the user: symlinks in it are
/// followed, as the shell would).
pub fn open_dir_path(path: &std::path::Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
}

/// An `O_PATH` fd on the subdirectory `name` of `dir`, refusing symlinks.
pub fn open_path_dir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether this process is privileged: it has CAP_SYS_ADMIN, which decides everything that
/// differs between a root daemon and a plain user's (the `trusted.*` namespace our markers and
/// ids are written in, passthrough, private mounts). Asked once: it does not change while the
/// process runs, and every part of the program must agree on it.
pub fn privileged() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        rustix::thread::capabilities(None)
            .map(|c| c.effective.contains(rustix::thread::CapabilitySet::SYS_ADMIN))
            .unwrap_or(false)
    })
}

/// Per-mount flags (see [`private_binds`]).
pub use rustix::mount::MountFlags;

/// Private bind mounts of directories (canonical paths), each with its own per-mount flags
/// instead of its mount's (`recursive`: with the mounts below it), reachable through the
/// returned `O_PATH` fds only. The kernel then applies those flags to everything done through
/// fds opened beneath them: access-time updates (including FUSE passthrough reads of backing
/// files), read-only.
///
/// Made in a short-lived thread that moves into a mount namespace of its own (needs
/// CAP_SYS_ADMIN there): the namespace goes away with the thread, the mounts stay alive,
/// detached, as long as fds on them do. Nothing is ever mounted where other processes could
/// see it. The outer error is the namespace's; each mount has its own result.
pub fn private_binds(dirs: &[(&std::path::Path, MountFlags, bool)]) -> std::io::Result<Vec<std::io::Result<OwnedFd>>> {
    let dirs: Vec<_> = dirs.iter().map(|(d, f, r)| (d.to_path_buf(), *f, *r)).collect();
    std::thread::spawn(move || {
        enter_private_namespace()?;
        Ok(dirs.iter().map(|(d, f, r)| bind_with_flags(d, *f, *r)).collect())
    })
    .join()
    .map_err(|_| std::io::Error::other("the private mount thread panicked"))?
}

/// Moves the calling thread into a mount namespace of its own whose mounts pass nothing on to
/// the ones they were copied from.
fn enter_private_namespace() -> std::io::Result<()> {
    use nix::sched::CloneFlags;
    use rustix::mount::MountPropagationFlags;
    // CLONE_FS too: threads share their root and cwd, which a namespace change must not touch.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(std::io::Error::from)?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)?;
    Ok(())
}

/// Binds `dir` onto itself (in the private namespace) and gives the bind mount `flags`.
fn bind_with_flags(dir: &std::path::Path, flags: MountFlags, recursive: bool) -> std::io::Result<OwnedFd> {
    if recursive {
        rustix::mount::mount_bind_recursive(dir, dir)?;
    } else {
        rustix::mount::mount_bind(dir, dir)?;
    }
    let keep = kept_mount_flags(rustix::fs::statvfs(dir)?.f_flag);
    rustix::mount::mount_remount(dir, MountFlags::BIND | keep | flags, "")?;
    Ok(rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The flags of a mount (statvfs `f_flag`) other than its atime ones, which a bind remount
/// must repeat.
fn kept_mount_flags(f: rustix::fs::StatVfsMountFlags) -> MountFlags {
    use rustix::fs::StatVfsMountFlags as S;
    [
        (S::RDONLY, MountFlags::RDONLY),
        (S::NOSUID, MountFlags::NOSUID),
        (S::NODEV, MountFlags::NODEV),
        (S::NOEXEC, MountFlags::NOEXEC),
    ]
    .into_iter()
    .filter(|(s, _)| f.contains(*s))
    .fold(MountFlags::empty(), |m, (_, flag)| m | flag)
}

/// What the kernel knows of a process and the daemon cannot see in a FUSE request: its
/// supplementary groups and whether it holds CAP_FSETID (from `/proc/PID/status`). `None` when
/// the process is gone or outside our pid namespace (pid 0).
pub fn process_creds(pid: u32) -> Option<ProcessCreds> {
    if pid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let groups = field("Groups:")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    let caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some(ProcessCreds {
        groups,
        fsetid: caps & (1 << CAP_FSETID) != 0,
    })
}

/// See [`process_creds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCreds {
    pub groups: Vec<u32>,
    /// CAP_FSETID: writing keeps setuid and setgid bits.
    pub fsetid: bool,
}

const CAP_FSETID: u32 = 4;

/// Whether the process umask is 0, read from /proc (setting it to find out would race with
/// other threads creating files).
pub fn umask_is_zero() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .map(|v| v.trim() == "0000")
        })
        .unwrap_or(false)
}
