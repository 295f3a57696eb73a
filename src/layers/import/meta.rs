//! `import`: owner, mode, xattrs and times. A directory's are applied once everything below it
//! exists, from its parent, on the way back up a depth-first walk of what was made.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};

use super::tree::ROOT;
use super::{Importer, Made};
use crate::layers::{LayerError, Result};
use crate::sys;

/// What an entry's header says about its object.
#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
}

/// A directory's metadata, applied once everything below it exists.
pub(super) struct DirMeta {
    pub(super) meta: Meta,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

fn ts(sec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    }
}

impl Importer<'_> {
    pub(super) fn owner_mode_times(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        made: Made,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        self.set_meta(dir, n, made, meta, xattrs)
            .map_err(|f| self.meta_failure(raw, f))
    }

    /// Why [`Importer::set_meta`] failed, as the refusal or failure of the entry `raw`.
    fn meta_failure(&self, raw: &[u8], f: MetaFailure) -> LayerError {
        match f {
            MetaFailure::OwnerRange => self.refuse(raw, "owner out of range"),
            MetaFailure::Io(e) => self.fail(raw, e),
        }
    }

    /// Owner, mode, xattrs and times of `dir/n` (the entry's path is named by the caller, only
    /// when this fails: it costs a deep directory its depth).
    fn set_meta(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        made: Made,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> std::result::Result<(), MetaFailure> {
        let (Ok(uid), Ok(gid)) = (u32::try_from(meta.uid), u32::try_from(meta.gid)) else {
            return Err(MetaFailure::OwnerRange);
        };
        let r = rustix::fs::chownat(
            dir,
            n,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        match r {
            Ok(()) => {}
            // Unprivileged: the files stay ours.
            Err(rustix::io::Errno::PERM) if !self.root_user => {}
            Err(err) => return Err(MetaFailure::Io(err)),
        }
        if made != Made::Symlink {
            rustix::fs::chmodat(dir, n, Mode::from_raw_mode(meta.mode & 0o7777), AtFlags::empty())
                .map_err(MetaFailure::Io)?;
        }
        // After the owner change (which drops file capabilities) and the mode (which would
        // rewrite an ACL's mask).
        let target = sys::Target::Entry(dir, n);
        for (k, v) in xattrs {
            match target.set_xattr(OsStr::new(k), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM) if !self.root_user => {}
                Err(err) => return Err(MetaFailure::Io(err)),
            }
        }
        let t = Timestamps {
            last_access: ts(meta.mtime),
            last_modification: ts(meta.mtime),
        };
        rustix::fs::utimensat(dir, n, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(MetaFailure::Io)
    }

    /// Every directory's metadata, the root's last: the tree is walked depth first and each
    /// directory done on the way back up, from its parent.
    pub(super) fn dir_metadata(&mut self) -> Result<()> {
        self.at.go_to(&self.tree, ROOT).map_err(|e| self.fail(b"", e))?;
        let mut stack: Vec<(usize, usize)> = vec![(ROOT, 0)];
        while let Some((id, next)) = stack.last_mut() {
            let node = self.tree.node(*id);
            if let Some(&c) = node.children.get(*next) {
                *next += 1;
                let child = self.tree.node(c);
                if matches!(child.made, Some(Made::Dir | Made::ImplicitDir)) || !child.children.is_empty() {
                    let name = child.name.clone();
                    self.at.enter(&name, c).map_err(|e| self.fail(&self.tree.path(c), e))?;
                    stack.push((c, 0));
                }
                continue;
            }
            let done = *id;
            stack.pop();
            if done == ROOT {
                if let Some(d) = self.root_meta.take() {
                    let fd = self.at.fd().map_err(|e| self.fail(b"", e))?;
                    self.owner_mode_times(fd, OsStr::new("."), b"", Made::Dir, d.meta, &d.xattrs)?;
                }
                continue;
            }
            self.at.leave().map_err(|e| self.fail(&self.tree.path(done), e))?;
            if let Some(d) = self.tree.node_mut(done).meta.take() {
                let fd = self.at.fd().map_err(|e| self.fail(&self.tree.path(done), e))?;
                let n = OsStr::from_bytes(&self.tree.node(done).name);
                self.set_meta(fd, n, Made::Dir, d.meta, &d.xattrs)
                    .map_err(|f| self.meta_failure(&self.tree.path(done), f))?;
            }
        }
        Ok(())
    }
}

/// Why [`Importer::set_meta`] failed.
enum MetaFailure {
    OwnerRange,
    Io(rustix::io::Errno),
}
