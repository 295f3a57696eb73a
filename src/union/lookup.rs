//! Lookup: finding a name in a directory by the layers' merged index, making or finding the
//! node the kernel will hold for it, its attributes as the view shows them, and the kernel's
//! references (lookup counts) on nodes, including internal ones (`Held`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::layerdir::LayerDir;
use super::locate::layer_fd;
use super::node::{DirState, Node, NodeState};
use super::{Union, check_name, index};
use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsResult};
use crate::format::markers;
use crate::sys;

impl Union {
    /// Finds `name` in directory `parent` and returns its node, adding `lookups` kernel references.
    pub(super) fn resolve_child(&self, parent: u64, name: &OsStr, lookups: u64) -> FsResult<(Arc<Node>, Attr)> {
        check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let dir = self.dir_node(parent)?;
        let slot = self.slot(&dir, name)?;
        let in_lower = slot.in_lower;
        let vis = slot.vis.ok_or(Errno::ENOENT)?;
        let dir_layers = self.dir_layers(&dir)?;
        let top = layer_fd(&dir_layers, vis.layer).ok_or(Errno::ESTALE)?;
        let st = top.stat_at(name)?;
        let kind = Kind::from_mode(st.st_mode);
        if kind == Kind::File && st.st_nlink > 1 && Some(vis.layer) != self.upper && !self.hardlinks.is_empty() {
            let key = self.hardlink_key(vis.layer, &st);
            if self.hardlinks.holds(key, &st) {
                // Another name of this object was copied up: this name shows the copy too.
                self.link_up(&dir, name, vis.ino, |pdir| self.hardlinks.link_to(key, pdir, name))?;
                return self.resolve_child(parent, name, lookups);
            }
        }
        let mut layers = Vec::new();
        if kind == Kind::Dir {
            // A node we hold for this very directory keeps its layer fds.
            let known = self.nodes.get(vis.ino).and_then(|n| {
                let s = n.state.read();
                let same = s.layer() == vis.layer && s.kind == kind && !s.unlinked;
                same.then(|| s.dir.as_ref().map(|d| d.layers.clone())).flatten()
            });
            layers = match known {
                Some(l) => l,
                None => self.merged_layers(&dir_layers, &vis, name)?,
            };
        }
        let merged = layers.len() > 1;
        // A metacopy file shadows its lower data; one whose lower data is gone still has its
        // holes (it must fail to read, not read as zeros). Other upper files are never asked.
        let sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
        let data = if kind == Kind::File && Some(vis.layer) == self.upper && (in_lower || sparse) {
            self.metacopy_data(&dir_layers, &top, name, &st)?
        } else {
            None
        };
        let node = self.remember(parent, name, &vis, kind, layers, lookups);
        if let Some((data, elsewhere)) = data {
            node.state.write().set_metacopy(vis.layer, data, elsewhere);
        }
        let mut attr = self.view_attr(vis.ino, &st);
        if merged {
            attr.nlink = 1;
        }
        self.count_lower_blocks(&node, &mut attr);
        if let (true, Some(fd)) = (Some(vis.layer) == self.upper, top.fs_fd()) {
            self.uncount_index_link(&mut attr, &sys::Target::Entry(fd.as_fd(), name));
        }
        Ok((node, attr))
    }
    /// The layer directories that the directory `name` (visible as `vis` in a directory merged
    /// from `dir_layers`) merges, top first, ending at the first opaque one.
    pub(super) fn merged_layers(
        &self,
        dir_layers: &[(usize, Arc<LayerDir>)],
        vis: &index::Visible,
        name: &OsStr,
    ) -> FsResult<Vec<(usize, Arc<LayerDir>)>> {
        let mut out = Vec::new();
        for &l in &vis.merge {
            let Some(dfd) = layer_fd(dir_layers, l) else { break };
            let sub = match dfd.open_dir(name) {
                Ok(d) => d,
                // What the index saw there is no directory now (a changed lower).
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
                    if !out.is_empty() =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let opaque = sub.marks()?.opaque;
            out.push((l, sub));
            // A redirected directory merges what its redirect names, not its namesakes.
            if opaque || self.merge_redirected(&mut out, dir_layers, name)? {
                break;
            }
        }
        Ok(out)
    }
    /// The node of `vis` (found as `parent/name`), from the table or new, with `lookups` more
    /// references.
    pub(super) fn remember(
        &self,
        parent: u64,
        name: &OsStr,
        vis: &index::Visible,
        kind: Kind,
        layers: Vec<(usize, Arc<LayerDir>)>,
        lookups: u64,
    ) -> Arc<Node> {
        let make_state = |layers: Vec<(usize, Arc<LayerDir>)>| {
            NodeState::new(
                parent,
                name,
                kind,
                vis.layer,
                (kind == Kind::Dir).then(|| DirState::new(layers)),
            )
        };
        let mut fresh = Some(layers);
        let (node, created) = self.nodes.get_or_insert(vis.ino, lookups, || {
            Node::new(vis.ino, make_state(fresh.take().unwrap_or_default()))
        });
        if !created {
            let mut s = node.state.write();
            // Only move a node up the stack: after a copy-up, a stale index of another hard-link
            // name may still point at the lower object. But a copy whose every name is gone is
            // no longer what its number shows: a lower name of it, found again, is the lower
            // object (the hard-link index dropped the copy with its last upper name).
            if s.kind != kind || vis.layer < s.layer() || (s.unlinked && vis.layer != s.layer()) {
                *s = make_state(fresh.take().unwrap_or_default());
            } else {
                s.seen_as(parent, name);
            }
        }
        node
    }
    /// Looks up `name` in `parent` for internal use: the node stays in the table (as if the
    /// kernel held it) until the returned pin is dropped, so nested walks cannot drop a node
    /// an outer one still uses.
    pub(crate) fn pin_child(&self, parent: u64, name: &OsStr) -> FsResult<Held<'_>> {
        let (node, _) = self.resolve_child(parent, name, 1)?;
        Ok(Held { union: self, node })
    }
    /// Looks up `name` in `parent`; the kernel now holds one more reference to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.resolve_child(parent, name, 1).map(|(_, a)| a)
    }
    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.fstat(ino, None)
    }
    /// Attributes of `ino`, asked through the open handle `fh` (fstat): the handle reaches a
    /// file whose names are all gone.
    pub fn fstat(&self, ino: u64, fh: Option<u64>) -> FsResult<Attr> {
        let node = self.node(ino)?;
        let (merged, layer) = {
            let s = node.state.read();
            (s.dir.as_ref().is_some_and(|d| d.layers.len() > 1), s.layer())
        };
        let loc = self.locate(&node, fh)?;
        let st = loc.stat()?;
        let mut a = self.view_attr(node.ino, &st);
        if merged {
            a.nlink = 1;
        }
        self.count_lower_blocks(&node, &mut a);
        if Some(layer) == self.upper {
            self.uncount_index_link(&mut a, &loc.target()?);
        }
        Ok(a)
    }
    /// The attributes the view shows for `st` under inode number `ino` (owners mapped).
    pub(crate) fn view_attr(&self, ino: u64, st: &rustix::fs::Stat) -> Attr {
        let mut a = Attr::from_stat(ino, st);
        if !self.idmap.is_identity() {
            (a.uid, a.gid) = self.idmap.to_view(a.uid, a.gid);
        }
        a
    }
    /// An upper copy of a multiply-linked lower file has its names in the view counted for it
    /// (see `hardlinks.rs`): the upper holds only those looked up since, plus the index's link.
    pub(super) fn uncount_index_link(&self, a: &mut Attr, target: &sys::Target<'_>) {
        if a.kind == Kind::File && a.nlink > 1 && !self.hardlinks.is_empty() {
            if let Some(n) = self.hardlinks.view_count(target) {
                a.nlink = n;
            }
        }
    }
    pub(crate) fn attr_of(&self, node: &Node) -> FsResult<Attr> {
        self.fstat(node.ino, None)
    }
    /// The target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        Ok(self.locate(&node, None)?.readlink()?)
    }
}

/// A node referenced by an internal operation; dropping it releases the reference.
pub(crate) struct Held<'a> {
    union: &'a Union,
    pub node: Arc<Node>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.union.nodes.forget(self.node.ino, 1);
    }
}
