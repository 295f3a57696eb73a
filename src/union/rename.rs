//! Rename of files and of any directory, with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! Overlayfs answers EXDEV for lower or merged directories; we do not. A directory that is not
//! purely upper is first materialised: everything it shows is copied up and it is marked opaque,
//! so the moved tree is exactly what `mv` would have copied, and it survives a remount. The old
//! name gets a whiteout when a lower layer has it; a directory landing on a name a lower layer
//! has is made opaque.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, RenameFlags};

use super::copy_up::keep_dir_times;
use super::index::{UpperWhiteout, Visible};
use super::node::{Node, ROOT};
use super::{Ctx, Union, check_name, whiteout};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::sys;

/// Fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap source and target.
pub const RENAME_EXCHANGE: u32 = 2;
const RENAME_WHITEOUT: u32 = 4;

impl Union {
    /// Renames `parent/name` to `newparent/newname`. `flags` are renameat2(2) flags.
    pub fn rename(
        &self,
        _ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let upper = self.upper_index()?;
        check_name(name)?;
        check_name(newname)?;
        if flags & RENAME_WHITEOUT != 0
            || flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
        {
            return Err(Errno::EINVAL);
        }
        if whiteout::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let d1 = self.dir_node(parent)?;
        let d2 = self.dir_node(newparent)?;
        // Errors in the order Linux checks them: a missing source first.
        let src = self.slot(&d1, name)?.vis.ok_or(Errno::ENOENT)?;
        if whiteout::is_reserved_name(newname) {
            // A reserved name is never visible: nothing to exchange with.
            return Err(if exchange { Errno::ENOENT } else { Errno::EINVAL });
        }
        let dst = self.slot(&d2, newname)?.vis;
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if parent == newparent && name == newname {
            return Ok(());
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        let src_node = self.pin_child(parent, name)?;
        let dst_node = match &dst {
            Some(_) => Some(self.pin_child(newparent, newname)?),
            None => None,
        };
        if src.kind == Kind::Dir && self.is_ancestor(src_node.ino, newparent) {
            return Err(Errno::EINVAL);
        }
        if let (Some(dn), Some(dv)) = (&dst_node, &dst) {
            if dv.kind == Kind::Dir && self.is_ancestor(dn.ino, parent) {
                return Err(if exchange { Errno::EINVAL } else { Errno::ENOTEMPTY });
            }
        }
        if let (Some(dv), false) = (&dst, exchange) {
            match (src.kind == Kind::Dir, dv.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => self.ensure_empty(dst_node.as_deref().ok_or(Errno::EIO)?)?,
                _ => {}
            }
            // Two names of one object: rename(2) does nothing.
            if dv.ino == src.ino {
                return Ok(());
            }
        }
        self.copy_up_for_move(&src_node)?;
        self.show_copy_at(&d1, name, &src_node)?;
        if exchange {
            if let Some(dn) = &dst_node {
                self.copy_up_for_move(dn)?;
                self.show_copy_at(&d2, newname, dn)?;
            }
        }
        self.copy_up(&d1)?;
        self.copy_up(&d2)?;
        let u1 = self.upper_dir_fd(&d1).ok_or(Errno::EIO)?;
        let u2 = self.upper_dir_fd(&d2).ok_or(Errno::EIO)?;

        let (_g1, _g2) = lock_pair(&d1, &d2);
        let s1 = self.slot(&d1, name)?;
        let s2 = self.slot(&d2, newname)?;
        let src = s1.vis.clone().ok_or(Errno::ENOENT)?;
        if src.layer != upper {
            return Err(Errno::EIO);
        }
        let dst = s2.vis.clone();
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }

        if exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            if dst.layer != upper {
                return Err(Errno::EIO);
            }
            if src.kind == Kind::Dir && s2.in_lower {
                self.make_opaque(&src_node)?;
            }
            if dst.kind == Kind::Dir && s1.in_lower {
                if let Some(dn) = &dst_node {
                    self.make_opaque(dn)?;
                }
            }
            rustix::fs::renameat_with(&*u1, name, &*u2, newname, RenameFlags::EXCHANGE)?;
            self.with_index(&d1, |idx| idx.show(name, Visible::new(upper, dst.kind, dst.ino)))?;
            self.with_index(&d2, |idx| idx.show(newname, Visible::new(upper, src.kind, src.ino)))?;
            self.moved(&src_node, (parent, name), (newparent, newname));
            if let Some(dn) = &dst_node {
                self.moved(dn, (newparent, newname), (parent, name));
            }
            return Ok(());
        }

        // Replacing an upper directory: it holds only whiteouts now, which rename(2) would refuse.
        if let (Some(dv), Some(dn)) = (&dst, &dst_node) {
            if dv.kind == Kind::Dir && dv.layer == upper {
                if let Some(fd) = self.upper_dir_fd(dn) {
                    sys::remove_tree_contents(fd.as_fd())?;
                }
            }
        }
        if src.kind == Kind::Dir && s2.in_lower {
            self.make_opaque(&src_node)?;
        }
        // The replaced object loses this name (counted while the name is still there).
        if let Some(dv) = &dst {
            let counted = self.counted_at(&self.dir_layers(&d2)?, &u2, newname, dv);
            self.count_names(counted, -1);
        }
        let dst_in_upper = dst.as_ref().is_some_and(|d| d.layer == upper);
        let mut src_wh: Option<UpperWhiteout> = None;
        if s2.upper_wh == Some(UpperWhiteout::AtName) {
            if src.kind == Kind::Dir {
                // A directory cannot replace a whiteout device: swap them. The whiteout lands at
                // the old name, which is where one is needed if a lower layer has it.
                rustix::fs::renameat_with(&*u1, name, &*u2, newname, RenameFlags::EXCHANGE)?;
                if s1.in_lower {
                    src_wh = Some(UpperWhiteout::AtName);
                } else {
                    rustix::fs::unlinkat(&*u1, name, AtFlags::empty())?;
                }
            } else {
                rustix::fs::renameat(&*u1, name, &*u2, newname)?;
            }
        } else if s1.in_lower && !self.oci() && self.privileged && !dst_in_upper {
            // One atomic step: move and leave a whiteout behind.
            match rustix::fs::renameat_with(&*u1, name, &*u2, newname, RenameFlags::WHITEOUT) {
                Ok(()) => src_wh = Some(UpperWhiteout::AtName),
                Err(_) => rustix::fs::renameat(&*u1, name, &*u2, newname)?,
            }
        } else {
            rustix::fs::renameat(&*u1, name, &*u2, newname)?;
        }
        if s1.in_lower && src_wh.is_none() {
            src_wh = Some(self.write_whiteout(u1.as_fd(), name, None)?);
        }
        if s2.upper_wh == Some(UpperWhiteout::Oci) {
            let _ = rustix::fs::unlinkat(&*u2, whiteout::oci_name(newname), AtFlags::empty());
        }
        self.with_index(&d2, |idx| idx.show(newname, Visible::new(upper, src.kind, src.ino)))?;
        self.with_index(&d1, |idx| idx.hide(name, src_wh))?;
        self.moved(&src_node, (parent, name), (newparent, newname));
        if let Some(dn) = dst_node {
            dn.state.write().name_gone(newparent, newname);
        }
        Ok(())
    }

    /// Makes `dir/name` show the upper copy of `node` if it still shows the lower object: a
    /// hard link to a lower file whose copy was made through another name (see `hardlinks.rs`).
    fn show_copy_at(&self, dir: &Arc<Node>, name: &OsStr, node: &Node) -> FsResult<()> {
        let (layer, kind) = {
            let s = node.state.read();
            (s.layer, s.kind)
        };
        if Some(layer) != self.upper || kind == Kind::Dir {
            return Ok(());
        }
        if self.slot(dir, name)?.vis.is_none_or(|v| Some(v.layer) == self.upper) {
            return Ok(());
        }
        let super::Loc::Entry(src_dir, src_name) = self.locate(node, None)? else {
            return Err(Errno::EIO);
        };
        self.link_up(dir, name, node.ino, |pdir| {
            rustix::fs::linkat(&*src_dir, &src_name, pdir, name, AtFlags::empty())
        })
    }

    /// Copies up what a move needs: the object, or for a directory that is not purely upper,
    /// its whole visible tree.
    fn copy_up_for_move(&self, node: &Arc<Node>) -> FsResult<()> {
        let upper = self.upper_index()?;
        let lower_part = {
            let s = node.state.read();
            s.dir.as_ref().map(|d| d.layers.iter().any(|(l, _)| *l != upper))
        };
        match lower_part {
            Some(true) => self.copy_up_tree(node),
            _ => self.copy_up(node),
        }
    }

    /// Copies up everything `dir` shows, then marks it opaque: afterwards it no longer depends on
    /// any lower layer.
    pub(crate) fn copy_up_tree(&self, dir: &Arc<Node>) -> FsResult<()> {
        self.copy_up(dir)?;
        let has_lower = dir.state.read().dir.as_ref().is_some_and(|d| d.layers.len() > 1);
        let names: Vec<(OsString, Kind)> = self.with_index(dir, |idx| idx.visible_names())?;
        for (name, kind) in names {
            let child = self.pin_child(dir.ino, &name)?;
            let r = if kind == Kind::Dir {
                self.copy_up_tree(&child)
            } else {
                self.copy_up(&child)
            };
            drop(child);
            r?;
        }
        if !has_lower {
            return Ok(());
        }
        let fd = self.upper_dir_fd(dir).ok_or(Errno::EIO)?;
        // Materialising is a copy-up: the directory keeps its times.
        Ok(keep_dir_times(fd.as_fd(), || {
            self.make_opaque(dir)
                .map_err(|e| rustix::io::Errno::from_raw_os_error(e.0))
        })?)
    }

    /// Marks an upper directory opaque and drops the lower layers (and now useless whiteouts).
    fn make_opaque(&self, dir: &Node) -> FsResult<()> {
        let fd = self.upper_dir_fd(dir).ok_or(Errno::EIO)?;
        whiteout::mark_opaque(fd.as_fd(), self.oci(), self.privileged)?;
        for e in sys::read_dir(fd.as_fd())? {
            let is_wh = whiteout::oci_target(&e.name).is_some()
                || sys::stat_at(fd.as_fd(), &e.name).is_ok_and(|st| whiteout::is_chr_whiteout(&st));
            if is_wh {
                rustix::fs::unlinkat(&*fd, &e.name, AtFlags::empty())?;
            }
        }
        let mut s = dir.state.write();
        if let Some(d) = s.dir.as_mut() {
            d.layers.truncate(1);
            d.reset_index();
        }
        Ok(())
    }

    fn moved(&self, node: &Node, from: (u64, &OsStr), to: (u64, &OsStr)) {
        let mut s = node.state.write();
        s.renamed(from, to);
        if let Some(d) = s.dir.as_mut() {
            // At its new place the directory is opaque or has nothing below it.
            if d.layers.len() > 1 {
                d.layers.truncate(1);
                d.reset_index();
            }
        }
    }

    /// Whether `ancestor` is `ino` or one of its parents.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..100_000 {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT {
                return false;
            }
            match self.nodes.get(ino) {
                Some(n) => ino = n.state.read().parent,
                None => return false,
            }
        }
        false
    }
}

fn lock_pair<'a>(
    a: &'a Node,
    b: &'a Node,
) -> (parking_lot::MutexGuard<'a, ()>, Option<parking_lot::MutexGuard<'a, ()>>) {
    if a.ino == b.ino {
        (a.ns.lock(), None)
    } else if a.ino < b.ino {
        let g1 = a.ns.lock();
        (g1, Some(b.ns.lock()))
    } else {
        let g2 = b.ns.lock();
        (a.ns.lock(), Some(g2))
    }
}
