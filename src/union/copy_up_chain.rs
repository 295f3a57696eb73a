//! Copy-up of a chain of directories at once: the ancestors a deep copy-up needs.
//!
//! Published one by one, each directory of a chain costs a rename from the workdir into its
//! parent, and the kernel's rename locking walks the target's ancestors to the root (neither
//! directory may contain the other): over a chain as deep as the tree, that adds up to the
//! depth squared, minutes for a tree 100,000 deep. Built one inside the other in the workdir
//! and published by one rename, the chain costs one walk, and it shows all at once or not at
//! all, as a single copy-up does.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::Mode;

use super::Union;
use super::copy_up::{copy_xattrs_of, keep_dir_times, remove_any};
use super::node::Node;
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::sys::{self, Target};

impl Union {
    /// Copies up the directories `dirs`, top down (each the parent of the next, the first's
    /// parent in the upper). Returns false, having done nothing, if one of them was copied up
    /// or moved meanwhile: the caller starts again.
    pub(super) fn copy_up_dirs(&self, dirs: &[Arc<Node>], upper: usize) -> FsResult<bool> {
        // Copy-ups of any of them, and of anything below them, wait for this one.
        let _held: Vec<_> = dirs.iter().map(|n| n.copy_lock.lock()).collect();
        let mut names: Vec<(u64, OsString)> = Vec::with_capacity(dirs.len());
        for (i, n) in dirs.iter().enumerate() {
            if n.state.read().layer() == upper {
                return Ok(false);
            }
            let (p, name) = self.live_name(n).ok_or(Errno::ENOENT)?;
            if i > 0 && p != dirs[i - 1].ino {
                return Ok(false);
            }
            names.push((p, name));
        }
        let Some((first_parent, first_name)) = names.first().cloned() else {
            return Ok(true);
        };
        let parent = self.node(first_parent)?;
        if parent.state.read().layer() != upper {
            return Ok(false);
        }
        let pdir_layer = self.upper_layer_dir(&parent).ok_or(Errno::EIO)?;
        let pdir = pdir_layer.fs_fd().ok_or(Errno::EIO)?;
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        if let Err(e) = self.build_dir_chain(dirs, &names, work, &tmp) {
            let _ = remove_any(work, &tmp, Kind::Dir);
            return Err(e);
        }
        {
            let _ns = parent.ns.lock();
            let published = keep_dir_times(pdir.as_fd(), || {
                rustix::fs::renameat_with(work, &tmp, &*pdir, &first_name, rustix::fs::RenameFlags::NOREPLACE)
            });
            if let Err(e) = published {
                let _ = remove_any(work, &tmp, Kind::Dir);
                return Err(e.into());
            }
            self.sync_dir(pdir.as_fd());
        }
        // The chain is in place: each node gains its upper directory, top down.
        let (mut layer_dir, mut fd) = (pdir_layer, pdir);
        for (n, (p, name)) in dirs.iter().zip(&names) {
            let sub = layer_dir.fs_child(name, sys::open_path_dir(fd.as_fd(), name)?)?;
            let _ = self.with_index(&*self.node(*p)?, |idx| idx.moved_up(name, upper));
            {
                let mut s = n.state.write();
                s.set_layer(upper);
                if let Some(d) = s.dir.as_mut() {
                    d.layers.insert(0, (upper, Arc::clone(&sub)));
                }
            }
            fd = sub.fs_fd().ok_or(Errno::EIO)?;
            layer_dir = sub;
        }
        Ok(true)
    }

    /// Builds copies of `dirs` (named `names`) one inside the other, the first as `tmp` in
    /// `work`. Each directory gets its xattrs, owner, mode and times only once the one below it
    /// is made: a default ACL would otherwise be inherited by its child, the child's creation
    /// would change its times, and a mode without write or search permission would stop a
    /// daemon without privileges from going on. Three fds at a time, whatever the depth.
    fn build_dir_chain(
        &self,
        dirs: &[Arc<Node>],
        names: &[(u64, OsString)],
        work: BorrowedFd<'_>,
        tmp: &OsString,
    ) -> FsResult<()> {
        rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
        let mut parent: Option<OwnedFd> = None;
        let mut cur = sys::open_path_dir(work, tmp)?;
        for (i, n) in dirs.iter().enumerate() {
            let next = match names.get(i + 1) {
                Some((_, child)) => {
                    rustix::fs::mkdirat(&cur, child, Mode::from_raw_mode(0o700))?;
                    Some(sys::open_path_dir(cur.as_fd(), child)?)
                }
                None => None,
            };
            let (pfd, name) = match &parent {
                Some(p) => (p.as_fd(), &names[i].1),
                None => (work, tmp),
            };
            let src = self.locate(n, None)?;
            let st = src.stat()?;
            let to = Target::Entry(pfd, name);
            copy_xattrs_of(&src, &to)?;
            // Best effort: without it the copy gets its own number after a remount.
            let _ = to.set_xattr(
                std::ffi::OsStr::new(crate::format::xattrs::origin(Kind::Dir)),
                &n.ino.to_le_bytes(),
                rustix::fs::XattrFlags::empty(),
            );
            self.finish_meta(&to, Kind::Dir, &st)?;
            match next {
                Some(next) => parent = Some(std::mem::replace(&mut cur, next)),
                None => break,
            }
        }
        Ok(())
    }
}
