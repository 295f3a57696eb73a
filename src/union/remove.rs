//! Removing names: unlink and rmdir, leaving a whiteout where a lower layer has the name.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno as RErrno;

use super::copy_up::remove_any;
use super::index::UpperWhiteout;
use super::{Union, check_name};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::markers;
use crate::sys;

impl Union {
    /// Removes a non-directory.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty directory (empty in the view: whiteouts inside it do not count).
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, rmdir: bool) -> FsResult<()> {
        let upper = self.upper_index()?;
        check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let dir = self.dir_node(parent)?;
        let vis = self.slot(&dir, name)?.vis.ok_or(Errno::ENOENT)?;
        // Only a directory carries protection of its own (a file's flags are its upper copy's).
        let child = (vis.kind == Kind::Dir)
            .then(|| self.pin_child(parent, name))
            .transpose()?;
        self.may_delete(&dir, child.as_deref().map(|c| &**c))?;
        match (rmdir, vis.kind == Kind::Dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if let Some(c) = &child {
            self.ensure_empty(c)?;
        }
        self.copy_up(&dir)?;
        let pdir = self.upper_dir_fd(&dir).ok_or(Errno::EIO)?;
        let _ns = dir.ns.lock();
        let slot = self.slot(&dir, name)?;
        let vis = slot.vis.clone().ok_or(Errno::ENOENT)?;
        if let Some(c) = &child {
            // Re-check under the lock: a create may have raced us.
            self.ensure_empty(c)?;
        }
        let existing = (vis.layer == upper).then_some(vis.kind);
        // Counted while the name is still there (it may be the object's only upper name).
        let counted = self.counted_at(&self.dir_layers(&dir)?, &pdir, name, &vis);
        self.count_names(counted, -1);
        if existing == Some(Kind::Dir) {
            if let Some(c) = &child {
                if let Some(cfd) = self.upper_dir_fd(c) {
                    // Only whiteouts and markers are left in it.
                    sys::remove_tree_contents(cfd.as_fd())?;
                }
            }
        }
        let wh = if slot.in_lower {
            Some(self.write_whiteout(pdir.as_fd(), name, existing)?)
        } else {
            rustix::fs::unlinkat(&*pdir, name, if rmdir { AtFlags::REMOVEDIR } else { AtFlags::empty() })?;
            None
        };
        self.with_index(&dir, |idx| idx.hide(name, wh))?;
        if let Some(n) = self.nodes.get(vis.ino) {
            n.state.write().name_gone(parent, name);
        }
        drop(child);
        Ok(())
    }

    /// ENOTEMPTY unless the directory shows no entry.
    pub(crate) fn ensure_empty(&self, dir: &super::node::Node) -> FsResult<()> {
        if self.with_index(dir, |idx| idx.any_visible())? {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    fn link_shared_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
        self.work.as_ref().ok_or(RErrno::ROFS)?.link_shared_whiteout(dir, name)
    }

    /// Puts a whiteout at `dir/name`, atomically replacing the upper object `existing` if any.
    pub(crate) fn write_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        existing: Option<Kind>,
    ) -> FsResult<UpperWhiteout> {
        if !self.oci() {
            let work = self.work_fd()?;
            if existing.is_none() {
                // No rename needed: linkat never replaces.
                match self.link_shared_whiteout(dir, name) {
                    Ok(()) => return Ok(UpperWhiteout::AtName),
                    Err(RErrno::EXIST) => return Err(Errno::EEXIST),
                    Err(_) => {}
                }
            }
            let tmp = self.tmp_name();
            let made = match self.link_shared_whiteout(work, &tmp) {
                Ok(()) => Ok(()),
                Err(_) => markers::make_device(work, &tmp),
            };
            match made {
                Ok(()) => {
                    let r = match existing {
                        None => rustix::fs::renameat_with(work, &tmp, dir, name, RenameFlags::NOREPLACE),
                        Some(Kind::Dir) => rustix::fs::renameat_with(work, &tmp, dir, name, RenameFlags::EXCHANGE),
                        Some(_) => rustix::fs::renameat(work, &tmp, dir, name),
                    };
                    if let Err(e) = r {
                        let _ = rustix::fs::unlinkat(work, &tmp, AtFlags::empty());
                        return Err(e.into());
                    }
                    if existing == Some(Kind::Dir) {
                        // The emptied directory now sits in the workdir under the temporary name.
                        let _ = remove_any(work, &tmp, Kind::Dir);
                    }
                    return Ok(UpperWhiteout::AtName);
                }
                // The upper refuses whiteout devices: use OCI markers from now on.
                Err(RErrno::PERM) | Err(RErrno::NOTSUP) => self.oci.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => return Err(e.into()),
            }
        }
        let f = rustix::fs::openat(
            dir,
            markers::oci_name(name),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        drop(f);
        if let Some(k) = existing {
            rustix::fs::unlinkat(
                dir,
                name,
                if k == Kind::Dir {
                    AtFlags::REMOVEDIR
                } else {
                    AtFlags::empty()
                },
            )?;
        }
        Ok(UpperWhiteout::Oci)
    }
}
