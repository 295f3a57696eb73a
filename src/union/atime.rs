//! Access times, as the `noatime`, `relatime`, `strictatime` and `nodiratime` mount options
//! say.
//!
//! The kernel updates no access time of a FUSE file itself: every read that reaches the upper
//! file (the daemon's, or the kernel's own with FUSE passthrough) updates it as the mount the
//! upper is reached through says. So, when we may (CAP_SYS_ADMIN), the upper and the workdir are
//! reached through a private bind mount that carries the mount's atime options (see
//! `sys::private_binds`), and the kernel applies them exactly as on any filesystem; each lower
//! layer through a private read-only `noatime` bind mount, as kernel overlayfs does (reading a
//! lower symlink would otherwise touch its atime). Without them, `noatime` still holds for files
//! (our fds on upper files are opened with O_NOATIME, on lower files always); the other options
//! follow the upper's own mount.
//!
//! Reads the kernel serves from its page cache, and listings from its directory cache, never
//! reach us: files and directories whose next access must update the atime are opened without
//! keeping those caches (see [`ReadAtime`]), and a listing read from the start updates the upper
//! directory's atime. Lower layers are never touched (their fds are O_NOATIME).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::Stat;

use super::Union;
use super::node::Node;
use crate::config::{AtimeMode, AtimePolicy, MountConfig};
use crate::sys::{self, MountFlags};

/// How an open file's reads relate to its access time (what the FUSE adapter may cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAtime {
    /// No read updates it now (a lower file, `noatime`, or `relatime` with a recent atime):
    /// the page cache may serve the reads.
    Untouched,
    /// The next read updates it (`relatime`): that read must reach the upper file.
    NextRead,
    /// Every read updates it (`strictatime`): no read may be served from the page cache.
    EveryRead,
}

/// The layers seen through private bind mounts (see the module documentation); each one
/// missing is reached through its own mount.
#[derive(Default)]
pub(crate) struct PrivateMounts {
    pub upper: Option<PrivateUpper>,
    /// By position in the config's lowers: an `O_PATH` fd on the layer.
    pub lowers: Vec<Option<OwnedFd>>,
}

impl PrivateMounts {
    /// Makes them for `config` when we may (CAP_SYS_ADMIN).
    pub(crate) fn make(config: &MountConfig) -> PrivateMounts {
        if !sys::privileged() {
            return PrivateMounts::default();
        }
        let upper = config.upper.as_ref().map(|u| {
            let work = config.workdir.as_ref().unwrap_or(u);
            // It must exist to be checked below; the union creates it anyway.
            let _ = std::fs::create_dir_all(work);
            (u, work, common_ancestor(u, work))
        });
        let lower_flags = MountFlags::NOATIME | MountFlags::RDONLY;
        let mut dirs: Vec<_> = config.lowers.iter().map(|l| (l.as_path(), lower_flags, true)).collect();
        if let Some((_, _, base)) = &upper {
            dirs.push((base.as_path(), mount_flags(config.atime), false));
        }
        let Ok(mut fds) = sys::private_binds(&dirs) else {
            return PrivateMounts::default();
        };
        let upper = upper
            .zip(fds.pop())
            .and_then(|((u, w, base), fd)| PrivateUpper::checked(fd.ok()?, base, u, w));
        let lowers = config
            .lowers
            .iter()
            .zip(fds)
            .map(|(l, fd)| fd.ok().filter(|fd| same_dir(fd, l)))
            .collect();
        PrivateMounts { upper, lowers }
    }
}

/// Whether `fd` is the directory `p` (no other mount hides it on the private mount).
fn same_dir(fd: &OwnedFd, p: &Path) -> bool {
    let ours = rustix::fs::fstat(fd);
    let theirs = rustix::fs::stat(p);
    matches!((ours, theirs), (Ok(a), Ok(b)) if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
}

/// The upper and workdir seen through a private bind mount of a directory holding both.
pub(crate) struct PrivateUpper {
    root: OwnedFd,
    base: PathBuf,
}

impl PrivateUpper {
    /// The private mount `root` of `base`, if `upper` and `work` are the very directories there
    /// (another mount on the way, such as a bind-mounted upper, would hide them).
    fn checked(root: OwnedFd, base: PathBuf, upper: &Path, work: &Path) -> Option<PrivateUpper> {
        let pu = PrivateUpper { root, base };
        (pu.is_same(upper) && pu.is_same(work)).then_some(pu)
    }

    /// An `O_PATH` fd on the directory `p` (under the private mount's base).
    pub(crate) fn open(&self, p: &Path) -> rustix::io::Result<OwnedFd> {
        let rel = p.strip_prefix(&self.base).map_err(|_| rustix::io::Errno::XDEV)?;
        sys::open_dir_beneath(self.root.as_fd(), rel.as_os_str())
    }

    fn is_same(&self, p: &Path) -> bool {
        self.open(p).is_ok_and(|fd| same_dir(&fd, p))
    }
}

/// The deepest directory holding both `a` and `b` (canonical paths).
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect()
}

/// The per-mount flags for `policy`.
fn mount_flags(policy: AtimePolicy) -> MountFlags {
    let mode = match policy.mode {
        AtimeMode::Relatime => MountFlags::RELATIME,
        AtimeMode::Strict => MountFlags::STRICTATIME,
        AtimeMode::NoAtime => MountFlags::NOATIME,
    };
    if policy.nodiratime {
        mode | MountFlags::NODIRATIME
    } else {
        mode
    }
}

/// Whether an access to the object of `st` would update its atime under `policy` now.
fn due(policy: AtimePolicy, st: &Stat) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
    policy.updates(
        dir,
        (st.st_atime, st.st_atime_nsec as i64),
        (st.st_mtime, st.st_mtime_nsec as i64),
        (st.st_ctime, st.st_ctime_nsec as i64),
        now,
    )
}

impl Union {
    /// Whether the upper is reached through a private mount carrying the atime options (else
    /// its own mount decides, but for `noatime`).
    pub fn atime_by_mount(&self) -> bool {
        self.atime_by_mount
    }

    /// Whether our fds on upper files must carry O_NOATIME: `noatime` without a private mount.
    pub(crate) fn upper_fds_noatime(&self) -> bool {
        self.config.atime.mode == AtimeMode::NoAtime && !self.atime_by_mount
    }

    /// What reads through `fd`, an upper file just opened, do to its access time.
    pub(crate) fn read_atime(&self, fd: &OwnedFd) -> ReadAtime {
        let policy = self.config.atime;
        match policy.mode {
            AtimeMode::NoAtime => ReadAtime::Untouched,
            AtimeMode::Strict => ReadAtime::EveryRead,
            AtimeMode::Relatime => match rustix::fs::fstat(fd) {
                Ok(st) if due(policy, &st) => ReadAtime::NextRead,
                _ => ReadAtime::Untouched,
            },
        }
    }

    /// Whether listing the directory `ino` now would update its access time (it has an upper
    /// directory, and the options say so): its listing must then reach us, not the kernel's
    /// directory cache.
    pub fn listing_updates_atime(&self, ino: u64) -> bool {
        self.node(ino).is_ok_and(|n| self.upper_dir_due(&n).is_some())
    }

    /// The upper directory of `dir`, when a listing would update its atime now.
    fn upper_dir_due(&self, dir: &Node) -> Option<std::sync::Arc<OwnedFd>> {
        let policy = self.config.atime;
        if policy.mode == AtimeMode::NoAtime || policy.nodiratime {
            return None;
        }
        let fd = self.upper_dir_fd(dir)?;
        let st = rustix::fs::fstat(&*fd).ok()?;
        due(policy, &st).then_some(fd)
    }

    /// A listing of `dir` started from its beginning: updates its upper directory's access time
    /// when the options say so, the way the kernel does, by reading the directory.
    pub(crate) fn listing_started(&self, dir: &Node) {
        if let Some(fd) = self.upper_dir_due(dir) {
            // Best effort, as for the kernel: a failure to update an atime fails no read.
            let _ = sys::read_dir_once(fd.as_fd());
        }
    }
}
