//! Rename of files and of any directory, with RENAME_NOREPLACE and RENAME_EXCHANGE.
//!
//! Overlayfs answers EXDEV for lower or merged directories unless `redirect_dir=on`; we never
//! do. A directory that is not purely upper either gets a redirect (`redirect.rs`: only the
//! directory itself is copied up, O(1)) or, where redirects are not written, is materialised:
//! everything it shows is copied up and it is marked opaque, so the moved tree is exactly what
//! `mv` would have copied. Both survive a remount. The old name gets a whiteout when a lower
//! layer has it; a directory without a redirect landing on a name a lower layer has is made
//! opaque.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, RenameFlags};

use super::copy_up::keep_dir_times;
use super::index::{Slot, UpperWhiteout, Visible};
use super::node::{Node, ROOT};
use super::{Held, Union, check_name};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::markers;
use crate::sys;

/// Fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// Swap source and target.
pub const RENAME_EXCHANGE: u32 = 2;
const RENAME_WHITEOUT: u32 = 4;

/// One end of a rename: a name in a directory.
struct End<'a> {
    parent: u64,
    name: &'a OsStr,
    dir: Arc<Node>,
}

/// A rename that passed every check, with the objects it moves pinned.
struct Plan<'a> {
    from: End<'a>,
    to: End<'a>,
    src: Held<'a>,
    /// What the target name shows now, if anything.
    dst: Option<Held<'a>>,
    exchange: bool,
    noreplace: bool,
    /// The source, and the target of an exchange, carry a redirect (they keep their lower
    /// directories and are never made opaque).
    src_redirected: bool,
    dst_redirected: bool,
}

/// The two ends as they are under both directories' locks.
struct Locked {
    from: Slot,
    to: Slot,
    src: Visible,
    upper_from: Arc<OwnedFd>,
    upper_to: Arc<OwnedFd>,
}

impl Union {
    /// Renames `parent/name` to `newparent/newname`. `flags` are renameat2(2) flags.
    pub fn rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: u32) -> FsResult<()> {
        let Some(mut plan) = self.plan_rename(parent, name, newparent, newname, flags)? else {
            return Ok(());
        };
        plan.src_redirected = self.copy_up_for_move(&plan.src, &plan.from, newparent)?;
        self.show_copy_at(&plan.from.dir, name, &plan.src)?;
        if let (true, Some(dn)) = (plan.exchange, &plan.dst) {
            plan.dst_redirected = self.copy_up_for_move(dn, &plan.to, parent)?;
            self.show_copy_at(&plan.to.dir, newname, dn)?;
        }
        self.copy_up(&plan.from.dir)?;
        self.copy_up(&plan.to.dir)?;
        let upper_from = self.upper_dir_fd(&plan.from.dir).ok_or(Errno::EIO)?;
        let upper_to = self.upper_dir_fd(&plan.to.dir).ok_or(Errno::EIO)?;
        let (_g1, _g2) = lock_pair(&plan.from.dir, &plan.to.dir);
        // What the checks saw may have changed while we copied up: look again, under the locks.
        let from = self.slot(&plan.from.dir, name)?;
        let to = self.slot(&plan.to.dir, newname)?;
        let src = from.vis.clone().ok_or(Errno::ENOENT)?;
        if Some(src.layer) != self.upper {
            return Err(Errno::EIO);
        }
        if plan.noreplace && to.vis.is_some() {
            return Err(Errno::EEXIST);
        }
        let locked = Locked {
            from,
            to,
            src,
            upper_from,
            upper_to,
        };
        if plan.exchange {
            self.exchange(&plan, &locked)
        } else {
            self.move_over(&plan, &locked)
        }
    }

    /// Checks a rename in the order Linux does and pins what it moves; `None` when there is
    /// nothing to do (the same name, or two names of one object).
    fn plan_rename<'a>(
        &'a self,
        parent: u64,
        name: &'a OsStr,
        newparent: u64,
        newname: &'a OsStr,
        flags: u32,
    ) -> FsResult<Option<Plan<'a>>> {
        self.upper_index()?;
        check_name(name)?;
        check_name(newname)?;
        if flags & RENAME_WHITEOUT != 0
            || flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0
        {
            return Err(Errno::EINVAL);
        }
        if markers::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let d1 = self.dir_node(parent)?;
        let d2 = self.dir_node(newparent)?;
        let src = self.slot(&d1, name)?.vis.ok_or(Errno::ENOENT)?;
        if markers::is_reserved_name(newname) {
            // A reserved name is never visible: nothing to exchange with.
            return Err(if exchange { Errno::ENOENT } else { Errno::EINVAL });
        }
        let dst = self.slot(&d2, newname)?.vis;
        if noreplace && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if parent == newparent && name == newname {
            return Ok(None);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        let src_node = self.pin_child(parent, name)?;
        let dst_node = dst.as_ref().map(|_| self.pin_child(newparent, newname)).transpose()?;
        if src.kind == Kind::Dir && self.is_ancestor(src_node.ino, newparent) {
            return Err(Errno::EINVAL);
        }
        if let (Some(dn), Some(dv)) = (&dst_node, &dst) {
            if dv.kind == Kind::Dir && self.is_ancestor(dn.ino, parent) {
                return Err(if exchange { Errno::EINVAL } else { Errno::ENOTEMPTY });
            }
            // Two names of one object: rename(2) does nothing.
            if !exchange && dv.ino == src.ino {
                return Ok(None);
            }
        }
        // vfs_rename's may_delete of the source, then may_delete or may_create of the target.
        self.may_delete(&d1, Some(&src_node))?;
        match &dst_node {
            Some(dn) => self.may_delete(&d2, Some(dn))?,
            None => self.may_create(&d2)?,
        }
        if let (Some(dn), Some(dv), false) = (&dst_node, &dst, exchange) {
            match (src.kind == Kind::Dir, dv.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) => self.ensure_empty(dn)?,
                _ => {}
            }
        }
        Ok(Some(Plan {
            from: End { parent, name, dir: d1 },
            to: End {
                parent: newparent,
                name: newname,
                dir: d2,
            },
            src: src_node,
            dst: dst_node,
            exchange,
            noreplace,
            src_redirected: false,
            dst_redirected: false,
        }))
    }

    /// RENAME_EXCHANGE: both names stay, with their objects swapped.
    fn exchange(&self, plan: &Plan<'_>, l: &Locked) -> FsResult<()> {
        let upper = self.upper_index()?;
        let dst = l.to.vis.clone().ok_or(Errno::ENOENT)?;
        let (from, to) = (&plan.from, &plan.to);
        if dst.layer != upper {
            return Err(Errno::EIO);
        }
        // A directory landing where a lower layer has the name hides what is below.
        if l.src.kind == Kind::Dir && l.to.in_lower && !plan.src_redirected {
            self.make_opaque(&plan.src)?;
        }
        if let (Kind::Dir, true, false, Some(dn)) = (dst.kind, l.from.in_lower, plan.dst_redirected, &plan.dst) {
            self.make_opaque(dn)?;
        }
        rustix::fs::renameat_with(&*l.upper_from, from.name, &*l.upper_to, to.name, RenameFlags::EXCHANGE)?;
        self.with_index(&from.dir, |idx| {
            idx.show(from.name, Visible::new(upper, dst.kind, dst.ino))
        })?;
        self.with_index(&to.dir, |idx| {
            idx.show(to.name, Visible::new(upper, l.src.kind, l.src.ino))
        })?;
        self.moved(
            &plan.src,
            (from.parent, from.name),
            (&to.dir, to.name),
            plan.src_redirected,
        );
        if let Some(dn) = &plan.dst {
            self.moved(dn, (to.parent, to.name), (&from.dir, from.name), plan.dst_redirected);
        }
        Ok(())
    }

    /// A plain rename: the object moves, replacing whatever the target showed, and the old name
    /// keeps a whiteout if a lower layer has it.
    fn move_over(&self, plan: &Plan<'_>, l: &Locked) -> FsResult<()> {
        let upper = self.upper_index()?;
        let (from, to) = (&plan.from, &plan.to);
        let dst = l.to.vis.as_ref();
        // Replacing an upper directory: it holds only whiteouts now, which rename(2) would refuse.
        if let (Some(dv), Some(dn)) = (dst, &plan.dst) {
            if dv.kind == Kind::Dir && dv.layer == upper {
                if let Some(fd) = self.upper_dir_fd(dn) {
                    sys::remove_tree_contents(fd.as_fd())?;
                }
            }
        }
        if l.src.kind == Kind::Dir && l.to.in_lower && !plan.src_redirected {
            self.make_opaque(&plan.src)?;
        }
        // The replaced object loses this name (counted while the name is still there).
        if let Some(dv) = dst {
            let counted = self.counted_at(&self.dir_layers(&to.dir)?, &l.upper_to, to.name, dv);
            self.count_names(counted, -1);
        }
        let mut src_wh = self.rename_in_upper(plan, l)?;
        if l.from.in_lower && src_wh.is_none() {
            src_wh = Some(self.write_whiteout(l.upper_from.as_fd(), from.name, None)?);
        }
        if l.to.upper_wh == Some(UpperWhiteout::Oci) {
            let _ = rustix::fs::unlinkat(&*l.upper_to, markers::oci_name(to.name), AtFlags::empty());
        }
        self.with_index(&to.dir, |idx| {
            idx.show(to.name, Visible::new(upper, l.src.kind, l.src.ino))
        })?;
        self.with_index(&from.dir, |idx| idx.hide(from.name, src_wh))?;
        self.moved(
            &plan.src,
            (from.parent, from.name),
            (&to.dir, to.name),
            plan.src_redirected,
        );
        if let Some(dn) = &plan.dst {
            dn.state.write().name_gone(to.parent, to.name);
        }
        Ok(())
    }

    /// The rename(2) itself, the way the upper allows; returns the whiteout it left at the old
    /// name, if it left one.
    fn rename_in_upper(&self, plan: &Plan<'_>, l: &Locked) -> FsResult<Option<UpperWhiteout>> {
        let (u1, n1, u2, n2) = (&*l.upper_from, plan.from.name, &*l.upper_to, plan.to.name);
        let dst_in_upper = l.to.vis.as_ref().is_some_and(|d| Some(d.layer) == self.upper);
        if l.to.upper_wh == Some(UpperWhiteout::AtName) {
            if l.src.kind != Kind::Dir {
                rustix::fs::renameat(u1, n1, u2, n2)?;
                return Ok(None);
            }
            // A directory cannot replace a whiteout device: swap them. The whiteout lands at the
            // old name, which is where one is needed if a lower layer has it.
            rustix::fs::renameat_with(u1, n1, u2, n2, RenameFlags::EXCHANGE)?;
            if l.from.in_lower {
                return Ok(Some(UpperWhiteout::AtName));
            }
            rustix::fs::unlinkat(u1, n1, AtFlags::empty())?;
            return Ok(None);
        }
        if l.from.in_lower && !self.oci() && self.process.privileged && !dst_in_upper {
            // One atomic step: move and leave a whiteout behind.
            if rustix::fs::renameat_with(u1, n1, u2, n2, RenameFlags::WHITEOUT).is_ok() {
                return Ok(Some(UpperWhiteout::AtName));
            }
        }
        rustix::fs::renameat(u1, n1, u2, n2)?;
        Ok(None)
    }

    /// Makes `dir/name` show the upper copy of `node` if it still shows the lower object: a
    /// hard link to a lower file whose copy was made through another name (see `hardlinks.rs`).
    fn show_copy_at(&self, dir: &Arc<Node>, name: &OsStr, node: &Node) -> FsResult<()> {
        let (layer, kind) = {
            let s = node.state.read();
            (s.layer(), s.kind)
        };
        if Some(layer) != self.upper || kind == Kind::Dir {
            return Ok(());
        }
        if self.slot(dir, name)?.vis.is_none_or(|v| Some(v.layer) == self.upper) {
            return Ok(());
        }
        // An upper object (checked above): its directory is on a filesystem.
        let super::Loc::Entry(src_dir, src_name) = self.locate(node, None)? else {
            return Err(Errno::EIO);
        };
        self.link_up(dir, name, node.ino, |pdir| {
            rustix::fs::linkat(&*src_dir, &src_name, pdir, name, AtFlags::empty())
        })
    }

    /// Copies up what a move of `node` (from `from`) into `to_parent` needs: the object, or for
    /// a directory that is not purely upper, a redirect or its whole visible tree. Returns
    /// whether it carries a redirect.
    fn copy_up_for_move(&self, node: &Arc<Node>, from: &End<'_>, to_parent: u64) -> FsResult<bool> {
        if node.state.read().kind == Kind::Dir {
            return self.prepare_dir_move(node, &from.dir, from.name, to_parent);
        }
        self.copy_up(node)?;
        Ok(false)
    }

    /// Copies up everything `dir` shows, then marks it opaque: afterwards it no longer depends on
    /// any lower layer. Depth first with the path on the heap (the tree may be of any depth).
    /// A directory goes up with the first thing below it that does, or when the walk leaves
    /// it: a chain of directories then goes up as one (`copy_up_chain.rs`). Each directory is
    /// marked once everything below it is copied.
    pub(crate) fn copy_up_tree(&self, dir: &Arc<Node>) -> FsResult<()> {
        let mut path = vec![self.tree_level(Arc::clone(dir), None)?];
        while let Some(level) = path.last_mut() {
            match level.names.next() {
                Some((name, Kind::Dir)) => {
                    let child = self.pin_child(level.node.ino, &name)?;
                    let node = Arc::clone(&child.node);
                    path.push(self.tree_level(node, Some(child))?);
                }
                Some((name, _)) => {
                    let child = self.pin_child(level.node.ino, &name)?;
                    self.copy_up(&child)?;
                }
                None => {
                    if let Some(done) = path.pop() {
                        self.seal_tree_dir(&done)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lists what the directory `node` (pinned by `pin` while the walk is below it) shows.
    fn tree_level<'a>(&'a self, node: Arc<Node>, pin: Option<Held<'a>>) -> FsResult<TreeLevel<'a>> {
        let names: Vec<(OsString, Kind)> = self.with_index(&node, |idx| idx.visible_names())?;
        Ok(TreeLevel {
            node,
            _pin: pin,
            names: names.into_iter(),
        })
    }

    /// A directory whose tree is copied: in the upper, and opaque if it merged lower
    /// directories.
    fn seal_tree_dir(&self, level: &TreeLevel<'_>) -> FsResult<()> {
        self.copy_up(&level.node)?;
        let has_lower = level
            .node
            .state
            .read()
            .dir
            .as_ref()
            .is_some_and(|d| d.layers.iter().any(|(l, _)| Some(*l) != self.upper));
        if !has_lower {
            return Ok(());
        }
        let fd = self.upper_dir_fd(&level.node).ok_or(Errno::EIO)?;
        // Materialising is a copy-up: the directory keeps its times.
        Ok(keep_dir_times(fd.as_fd(), || {
            self.make_opaque(&level.node)
                .map_err(|e| rustix::io::Errno::from_raw_os_error(e.code()))
        })?)
    }

    /// Marks an upper directory opaque and drops the lower layers (and now useless whiteouts).
    fn make_opaque(&self, dir: &Node) -> FsResult<()> {
        let fd = self.upper_dir_fd(dir).ok_or(Errno::EIO)?;
        markers::mark_opaque(fd.as_fd(), self.oci(), self.process.privileged)?;
        for e in sys::read_dir(fd.as_fd())? {
            let is_wh = markers::oci_target(&e.name).is_some()
                || sys::stat_at(fd.as_fd(), &e.name).is_ok_and(|st| markers::is_chr_whiteout(&st));
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

    fn moved(&self, node: &Node, from: (u64, &OsStr), (to_dir, to_name): (&Node, &OsStr), redirected: bool) {
        // The directory's upper fd, when closed, opens again from its new place.
        let new_parent = self.upper_layer_dir(to_dir);
        let mut s = node.state.write();
        s.renamed(from, (to_dir.ino, to_name));
        if let Some(d) = s.dir.as_mut() {
            if let (Some(p), Some((l, upper_dir))) = (new_parent, d.layers.first()) {
                if Some(*l) == self.upper {
                    upper_dir.moved(p, to_name);
                }
            }
            // At its new place the directory is opaque or has nothing below it, unless a
            // redirect says where its lower directories are: then it keeps them (and its index).
            if d.layers.len() > 1 && !redirected {
                d.layers.truncate(1);
                d.reset_index();
            }
        }
    }

    /// Whether `ancestor` is `ino` or one of its parents. A path of parents is at most as long
    /// as the table (a tree may be of any depth; parents that loop end the search).
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..=self.nodes.len() {
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

/// A directory on the path of [`Union::copy_up_tree`]'s walk, and the names left to copy in it.
struct TreeLevel<'a> {
    node: Arc<Node>,
    _pin: Option<Held<'a>>,
    names: std::vec::IntoIter<(OsString, Kind)>,
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
