//! The workdir: scratch space on the upper's filesystem.
//!
//! `W/unionfs/` holds objects while they are built (copy-up, staged creates, whiteouts) under
//! names of their own, and is emptied at every mount, so a crash's leftovers never show or get
//! reused. `W/unionfs-whiteout` is the whiteout device new whiteouts are hard links to (no
//! inode per unlink, as kernel overlayfs does). The hard-link index (`hardlinks.rs`) lives
//! beside them and survives remounts.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno as RErrno;

use crate::error::SetupError;
use crate::format::markers;
use crate::format::workdir::{SCRATCH, SHARED_WHITEOUT};
use crate::sys;

pub(crate) struct Workdir {
    root: OwnedFd,
    scratch: OwnedFd,
    next_tmp: AtomicU64,
}

impl Workdir {
    /// Creates the workdir `w` if needed and empties our scratch directory in it. `private`: the
    /// upper's private mount (see `atime.rs`), which the workdir must be reached through too.
    pub fn prepare(w: &Path, private: Option<&super::atime::PrivateUpper>) -> Result<Workdir, SetupError> {
        let io = |source: std::io::Error| SetupError::Io {
            role: "workdir",
            path: w.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(w).map_err(io)?;
        let root = match private {
            Some(pu) => pu.open(w),
            None => sys::open_dir_path(w),
        }
        .map_err(|e| io(e.into()))?;
        match rustix::fs::mkdirat(&root, SCRATCH, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(RErrno::EXIST) => {}
            Err(e) => return Err(io(e.into())),
        }
        let scratch = sys::open_path_dir(root.as_fd(), OsStr::new(SCRATCH)).map_err(|e| io(e.into()))?;
        sys::remove_tree_contents(scratch.as_fd()).map_err(|e| io(e.into()))?;
        // A fresh shared whiteout each mount (the old one may be near the link limit).
        match rustix::fs::unlinkat(&root, SHARED_WHITEOUT, AtFlags::empty()) {
            Ok(()) | Err(RErrno::NOENT) => {}
            Err(e) => return Err(io(e.into())),
        }
        Ok(Workdir {
            root,
            scratch,
            next_tmp: AtomicU64::new(1),
        })
    }

    /// The workdir itself.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Where objects are built.
    pub fn scratch(&self) -> BorrowedFd<'_> {
        self.scratch.as_fd()
    }

    /// A fresh name in the scratch directory.
    pub fn tmp_name(&self) -> OsString {
        OsString::from(format!("#{:x}", self.next_tmp.fetch_add(1, Ordering::Relaxed)))
    }

    /// Links `dir/name` to the shared whiteout, making that first (or anew, when it has as many
    /// links as the filesystem allows).
    pub fn link_shared_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
        match rustix::fs::linkat(&self.root, SHARED_WHITEOUT, dir, name, AtFlags::empty()) {
            Err(RErrno::NOENT) | Err(RErrno::MLINK) => {}
            r => return r,
        }
        let tmp = self.tmp_name();
        markers::make_device(self.scratch(), &tmp)?;
        // Replacing a concurrent thread's fresh one is harmless: both are whiteouts.
        if let Err(e) = rustix::fs::renameat(&self.scratch, &tmp, &self.root, SHARED_WHITEOUT) {
            let _ = rustix::fs::unlinkat(&self.scratch, &tmp, AtFlags::empty());
            return Err(e);
        }
        rustix::fs::linkat(&self.root, SHARED_WHITEOUT, dir, name, AtFlags::empty())
    }
}
