//! One user at a time for an upper and a workdir.
//!
//! Two daemons on one upper diverge (each caches the upper as it saw it and writes over the
//! other's changes), and two on one workdir empty each other's scratch directory in the middle
//! of a copy-up. So a mount holds an exclusive `flock` on its upper and its workdir for its
//! whole life. The kernel drops the lock when the process dies, however it dies (`kill -9`
//! leaves nothing to clean up), and `/proc/locks` names the holder, so a refusal can say who.
//!
//! The layer tools take the same locks: `check --repair` and `import` exclusively (they write),
//! `commit` shared (it must read a tree that holds still), `diff`, `size` and `layers` try a
//! shared one and, when a mount holds the directory, run anyway and say their answer is a
//! snapshot of a moving target.
//!
//! Kernel overlayfs and fuse-overlayfs take no such lock. A kernel overlay mount that uses a
//! directory as its upper or workdir is visible in the mount table, and is refused as well; a
//! fuse-overlayfs daemon is not (its mount table entry does not name its directories).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::config::MountConfig;
use crate::error::SetupError;

/// A held lock on a directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _fd: OwnedFd,
}

/// How a directory is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A mount, or a tool that changes the directory: nobody else at all.
    Exclusive,
    /// A tool that reads: other readers are fine, a mount or a writer is not.
    Shared,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Somebody else holds it (described as "process 1234 (unionfs)", or by the kernel mount).
    #[error("in use by {holder}")]
    Busy { holder: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Locks the directory `dir` for `access`, without waiting.
pub fn lock(dir: &Path, access: Access) -> Result<DirLock, LockError> {
    if let Some(m) = kernel_overlay_using(dir) {
        return Err(LockError::Busy {
            holder: format!("the kernel overlay mount at {}", m.display()),
        });
    }
    // flock needs a real open (not O_PATH); a directory needs only read permission for it.
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(std::io::Error::from)?;
    let op = match access {
        Access::Exclusive => FlockOperation::NonBlockingLockExclusive,
        Access::Shared => FlockOperation::NonBlockingLockShared,
    };
    match rustix::fs::flock(&fd, op) {
        Ok(()) => Ok(DirLock { _fd: fd }),
        Err(Errno::WOULDBLOCK) => Err(LockError::Busy {
            holder: holder_of(&fd).unwrap_or_else(|| "another process".into()),
        }),
        Err(e) => Err(LockError::Io(e.into())),
    }
}

/// Who holds a lock on the directory `fd`, from `/proc/locks`: "process PID (COMMAND)".
fn holder_of(fd: &OwnedFd) -> Option<String> {
    let st = rustix::fs::fstat(fd.as_fd()).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let me = std::process::id();
    let pid = locks
        .lines()
        .filter_map(lock_line)
        .find(|l| l.dev == (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)) && l.ino == st.st_ino)
        .map(|l| l.pid)
        .filter(|&p| p != 0)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    Some(match (comm.is_empty(), pid == me) {
        (_, true) => format!("this process ({pid})"),
        (true, false) => format!("process {pid}"),
        (false, false) => format!("process {pid} ({comm})"),
    })
}

/// One granted lock of `/proc/locks`.
#[derive(Debug, PartialEq, Eq)]
struct LockLine {
    pid: u32,
    dev: (u32, u32),
    ino: u64,
}

/// `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`; waiting requests (`1: -> FLOCK ...`) and
/// other lock kinds are not holders of a directory flock.
fn lock_line(l: &str) -> Option<LockLine> {
    let f: Vec<&str> = l.split_whitespace().collect();
    if f.get(1) != Some(&"FLOCK") {
        return None;
    }
    let pid = f.get(4)?.parse().ok()?;
    let mut id = f.get(5)?.split(':');
    let maj = u32::from_str_radix(id.next()?, 16).ok()?;
    let min = u32::from_str_radix(id.next()?, 16).ok()?;
    let ino = id.next()?.parse().ok()?;
    Some(LockLine {
        pid,
        dev: (maj, min),
        ino,
    })
}

/// The mount point of a kernel overlay mount (in this process's mount table) whose upper or
/// work directory is `dir`.
fn kernel_overlay_using(dir: &Path) -> Option<PathBuf> {
    let want = std::fs::metadata(dir).ok()?;
    crate::mountinfo::table()
        .into_iter()
        .filter(|m| m.fstype == "overlay")
        .find(|m| {
            m.options_named(&["upperdir", "workdir"])
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .any(|md| md.dev() == want.dev() && md.ino() == want.ino())
        })
        .map(|m| m.mountpoint)
}

/// Locks the upper and the workdir of `config` (validated) for one mount, creating the workdir
/// first if needed (nobody can hold a directory that did not exist). The daemon holds the
/// result until it exits; the union library itself takes no lock, so tests can open a second
/// union over the same layers to see what a remount would show.
pub fn hold_for_mount(config: &MountConfig) -> Result<Vec<DirLock>, SetupError> {
    let mut held = Vec::new();
    let dirs = [("upper", config.upper.as_ref()), ("workdir", config.workdir.as_ref())];
    for (role, path) in dirs {
        let Some(path) = path.filter(|_| config.upper.is_some()) else {
            continue;
        };
        if role == "workdir" {
            std::fs::create_dir_all(path).map_err(|source| SetupError::Io {
                role,
                path: path.clone(),
                source,
            })?;
        }
        let lock = lock(path, Access::Exclusive).map_err(|e| match e {
            LockError::Busy { holder } => SetupError::InUse {
                role,
                path: path.clone(),
                holder,
            },
            LockError::Io(source) => SetupError::Io {
                role,
                path: path.clone(),
                source,
            },
        })?;
        held.push(lock);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flock_lines_and_skips_waiters_and_posix_locks() {
        assert_eq!(
            lock_line("1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"),
            Some(LockLine {
                pid: 1234,
                dev: (0xfd, 1),
                ino: 5678
            })
        );
        assert_eq!(lock_line("1: -> FLOCK  ADVISORY  WRITE 99 00:2a:5678 0 EOF"), None);
        assert_eq!(lock_line("2: POSIX  ADVISORY  READ 55 00:2a:5678 0 EOF"), None);
        assert_eq!(lock_line("garbage"), None);
    }

    #[test]
    fn a_second_exclusive_lock_is_refused_and_names_this_process() {
        let d = tempfile::tempdir().expect("tempdir");
        let first = lock(d.path(), Access::Exclusive).expect("first lock");
        match lock(d.path(), Access::Shared) {
            Err(LockError::Busy { holder }) => {
                assert!(holder.contains(&std::process::id().to_string()), "{holder}")
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        drop(first);
        let a = lock(d.path(), Access::Shared).expect("shared after release");
        let _b = lock(d.path(), Access::Shared).expect("two readers");
        assert!(matches!(lock(d.path(), Access::Exclusive), Err(LockError::Busy { .. })));
        drop(a);
    }
}
