//! Directory redirects (kernel overlayfs's `redirect_dir`, format in `format::redirect`).
//!
//! Renaming a directory that merges lower directories renames only its upper directory (copied
//! up empty if it had none) and records on it where its lower content is, instead of copying
//! the tree: O(1) whatever the tree holds. The node keeps the lower directories it merged, so
//! nothing is read again; a later lookup (another node, another mount, kernel overlayfs) finds
//! them through the record.
//!
//! Following a redirect never leaves the layers: a value is checked before use (no `.`, `..`,
//! empty component or NUL), resolved one component at a time from the parent's lower
//! directories or a layer's root, each opened without following a symlink; a symlink or any
//! other non-directory on the way ends the merge there, as in the kernel.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::Union;
use super::layerdir::LayerDir;
use super::node::{Node, ROOT};
use crate::error::{Errno, FsResult};
use crate::format::markers;
use crate::format::redirect::{self, Redirect};
use crate::sys;

/// Redirects one lookup may meet before it is taken for a damaged upper (each layer holds at
/// most one per component of the path, so a real stack never comes near).
const MAX_HOPS: usize = 4096;

/// One component of a redirect path in one layer.
enum Step {
    /// A directory; true when an OCI whiteout beside it hides the name in the layers below.
    Dir(Arc<LayerDir>, bool),
    /// Nothing of that name: this layer has nothing, lower layers may.
    Absent,
    /// A whiteout, a symlink or another non-directory: nothing below merges.
    Stop,
}

/// A redirect path walked in one layer.
enum Walk {
    Absent,
    Stop,
    /// The directory at the end; `last` when nothing below it merges (it, or a directory on
    /// the way, is opaque); the path lower layers walk next (this layer's own redirects on the
    /// way rewrite it).
    Found {
        dir: Arc<LayerDir>,
        last: bool,
        path: Vec<OsString>,
        from_root: bool,
        hops: usize,
    },
}

impl Union {
    /// The checked redirect of the layer directory `d`, if it has one. A value that is not a
    /// valid redirect is an error (EIO), logged with where it is: never a guess.
    pub(super) fn redirect_of(&self, layer: usize, d: &LayerDir) -> FsResult<Option<Redirect>> {
        let Some(raw) = d.redirect()? else { return Ok(None) };
        match redirect::parse(&raw) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::error!(
                    "refusing the redirect of {}: {e} (value {:?})",
                    self.where_is(layer, d),
                    String::from_utf8_lossy(&raw)
                );
                Err(Errno::EIO)
            }
        }
    }

    /// Called by lookup with the layer directories of a directory found so far (`out`, the
    /// last just opened and not opaque): if that one carries a redirect, completes `out` by it
    /// and returns true (lookup's merge by name is over); false if it carries none.
    pub(super) fn merge_redirected(
        &self,
        out: &mut Vec<(usize, Arc<LayerDir>)>,
        parent_layers: &[(usize, Arc<LayerDir>)],
        name: &OsStr,
    ) -> FsResult<bool> {
        let Some((last, top)) = out.last() else {
            return Ok(false);
        };
        // The bottom layer has nothing below to redirect to.
        if *last + 1 >= self.layers.len() {
            return Ok(false);
        }
        let Some(r) = self.redirect_of(*last, top)? else {
            return Ok(false);
        };
        // Beside an OCI whiteout of its own layer a directory merges nothing below, redirect
        // or not (docs/semantics.md, "Lookup"). Asked only of redirected directories.
        if let Some(pd) = super::locate::layer_fd(parent_layers, *last) {
            if pd.stat_at_opt(&markers::oci_name(name))?.is_some() {
                return Ok(true);
            }
        }
        if !self.config.redirect_dir.follows() {
            // redirect_dir=nofollow: the directory shows its own entries only.
            tracing::debug!("not following the redirect of {}", self.where_is(*last, top));
            return Ok(true);
        }
        self.follow_redirect(out, parent_layers, name, &r)?;
        Ok(true)
    }

    /// Appends to `out` the lower directories a directory named `name` (in a directory merged
    /// from `parent_layers`) merges by the redirect `r` found on its last layer directory.
    fn follow_redirect(
        &self,
        out: &mut Vec<(usize, Arc<LayerDir>)>,
        parent_layers: &[(usize, Arc<LayerDir>)],
        name: &OsStr,
        r: &Redirect,
    ) -> FsResult<()> {
        let root_layers = self.dir_layers(&*self.node(ROOT)?)?;
        let (mut path, mut from_root) = (vec![name.to_os_string()], false);
        redirect::apply(r, &mut path, &mut from_root);
        let mut hops = 1;
        let Some(&(mut last, _)) = out.last() else {
            return Ok(());
        };
        loop {
            let base = if from_root { &root_layers[..] } else { parent_layers };
            let Some((l, start)) = base.iter().find(|(l, _)| *l > last) else {
                break;
            };
            last = *l;
            match self.walk_lower(*l, start, &path, from_root)? {
                Walk::Absent => {}
                Walk::Stop => break,
                Walk::Found {
                    dir,
                    last: stop,
                    path: next,
                    from_root: next_root,
                    hops: h,
                } => {
                    out.push((*l, dir));
                    if stop {
                        break;
                    }
                    (path, from_root) = (next, next_root);
                    hops += h;
                    if hops > MAX_HOPS {
                        tracing::error!("redirect chain of {name:?} is longer than {MAX_HOPS} hops");
                        return Err(Errno::EIO);
                    }
                }
            }
        }
        Ok(())
    }

    /// Walks `path` down from `start` (a layer's root, or the parent's directory in it).
    fn walk_lower(&self, layer: usize, start: &Arc<LayerDir>, path: &[OsString], from_root: bool) -> FsResult<Walk> {
        let mut cur = Arc::clone(start);
        let (mut next, mut next_root, mut hops, mut opaque_above) = (Vec::new(), from_root, 0, false);
        for (i, comp) in path.iter().enumerate() {
            let whited;
            (cur, whited) = match step(&cur, comp)? {
                Step::Dir(d, w) => (d, w),
                Step::Absent => return Ok(Walk::Absent),
                Step::Stop => return Ok(Walk::Stop),
            };
            let opaque = whited || cur.marks()?.opaque;
            if i + 1 < path.len() {
                opaque_above |= opaque;
            } else if opaque {
                return Ok(Walk::Found {
                    dir: cur,
                    last: true,
                    path: next,
                    from_root: next_root,
                    hops,
                });
            }
            next.push(comp.clone());
            // A lower layer that was an upper may have renamed this directory in its turn.
            if let Some(r) = self.redirect_of(layer, &cur)? {
                redirect::apply(&r, &mut next, &mut next_root);
                hops += 1;
            }
        }
        Ok(Walk::Found {
            dir: cur,
            last: opaque_above,
            path: next,
            from_root: next_root,
            hops,
        })
    }

    /// Before the directory `node` (shown as `from_dir/name`) moves into the directory
    /// `to_parent`: copies up what the move needs. Returns true when the directory merges lower
    /// directories and now carries a redirect that stays right after the move (it keeps its
    /// lower directories, and is never made opaque); false when it is purely upper after this
    /// (it had nothing below, or its tree was copied: redirects off, OCI whiteouts, a redirect
    /// too long to write).
    pub(super) fn prepare_dir_move(
        &self,
        node: &Arc<Node>,
        from_dir: &Arc<Node>,
        name: &OsStr,
        to_parent: u64,
    ) -> FsResult<bool> {
        let upper = self.upper_index()?;
        let lower_part = {
            let s = node.state.read();
            s.dir
                .as_ref()
                .is_some_and(|d| d.layers.iter().any(|(l, _)| *l != upper))
        };
        if !lower_part {
            self.copy_up(node)?;
            return Ok(false);
        }
        // OCI layer diffs have no redirects: a tree moved in one must be there in full.
        if !self.config.redirect_dir.writes() || self.oci() {
            self.copy_up_tree(node)?;
            return Ok(false);
        }
        let samedir = from_dir.ino == to_parent;
        let existing = match self.upper_layer_dir(node) {
            Some(d) => self.redirect_of(upper, &d)?,
            None => None,
        };
        // A redirect stays right in the same directory, and an absolute one anywhere.
        if matches!((&existing, samedir), (Some(Redirect::Absolute(_)), _) | (Some(_), true)) {
            return Ok(true);
        }
        let value = if samedir {
            redirect::relative(name)
        } else {
            let own = match existing {
                Some(Redirect::Relative(n)) => n.as_bytes().to_vec(),
                _ => name.as_bytes().to_vec(),
            };
            match self.absolute_redirect(own, from_dir)? {
                Some(v) => v,
                None => {
                    self.copy_up_tree(node)?;
                    return Ok(false);
                }
            }
        };
        self.copy_up(node)?;
        if self.write_redirect(node, &value)? {
            return Ok(true);
        }
        self.copy_up_tree(node)?;
        Ok(false)
    }

    /// Sets the redirect xattr on the upper directory of `node`; false if the upper refuses
    /// that xattr (then the caller copies the tree).
    fn write_redirect(&self, node: &Node, value: &[u8]) -> FsResult<bool> {
        let fd = self.upper_dir_fd(node).ok_or(Errno::EIO)?;
        let t = sys::Target::Fd(fd.as_fd());
        let set = |x: &str| t.set_xattr(OsStr::new(x), value, rustix::fs::XattrFlags::empty());
        match set(redirect::xattr_name(self.process.privileged)) {
            Ok(()) => return Ok(true),
            // A privileged daemon in a user namespace may not write trusted.* xattrs.
            Err(rustix::io::Errno::PERM) if self.process.privileged => {
                if set(redirect::USER_REDIRECT).is_ok() {
                    return Ok(true);
                }
            }
            Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP | rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::debug!("the upper refuses redirect xattrs: renamed directories are copied");
        Ok(false)
    }

    /// The absolute redirect of a directory whose own piece (its lower name) is `own`, in
    /// `from_dir`: the pieces of its ancestors up to the root or to the first one with an
    /// absolute redirect (as kernel overlayfs builds it). `None` if it would be too long or an
    /// ancestor is not known (the caller copies the tree then).
    fn absolute_redirect(&self, own: Vec<u8>, from_dir: &Arc<Node>) -> FsResult<Option<Vec<u8>>> {
        let upper = self.upper_index()?;
        let mut pieces = vec![own];
        let mut len = pieces[0].len() + 1;
        let mut cur = Arc::clone(from_dir);
        // A path of parents is at most as long as the table (parents that loop end here).
        for _ in 0..=self.nodes.len() {
            if cur.ino == ROOT {
                let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                return Ok(redirect::absolute(&refs));
            }
            let (parent, own_name) = {
                let s = cur.state.read();
                (s.parent, s.name.as_bytes().to_vec())
            };
            let r = match self.upper_layer_dir(&cur) {
                Some(d) => self.redirect_of(upper, &d)?,
                None => None,
            };
            let (piece, done) = match r {
                Some(r @ Redirect::Absolute(_)) => (redirect::value(&r), true),
                Some(Redirect::Relative(n)) => (n.as_bytes().to_vec(), false),
                None => (own_name, false),
            };
            len += piece.len() + 1;
            if len > redirect::MAX_WRITE {
                return Ok(None);
            }
            pieces.push(piece);
            if done {
                let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                return Ok(redirect::absolute(&refs));
            }
            match self.nodes.get(parent) {
                Some(p) => cur = p,
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}

/// The entry `comp` of the layer directory `dir`, as a redirect walk sees it. An OCI `.wh.`
/// marker hides the name in the layers below its own only: beside a directory of that name,
/// the directory shows and nothing below merges.
fn step(dir: &Arc<LayerDir>, comp: &OsStr) -> FsResult<Step> {
    let whited = || dir.stat_at_opt(&markers::oci_name(comp)).map(|s| s.is_some());
    let Some(st) = dir.stat_at_opt(comp)? else {
        return Ok(if whited()? { Step::Stop } else { Step::Absent });
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return Ok(Step::Stop);
    }
    match dir.open_dir(comp) {
        Ok(d) => Ok(Step::Dir(d, whited()?)),
        Err(rustix::io::Errno::NOENT) => Ok(Step::Absent),
        // Replaced by a symlink or a file since the stat: never followed.
        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => Ok(Step::Stop),
        Err(e) => Err(e.into()),
    }
}

impl Union {
    /// Where the directory `d` of layer `layer` is, for messages: the layer's path as
    /// configured joined with the directory's place below the layer's root (the daemon may
    /// reach a layer through a private mount, whose paths mean nothing to a reader of the log).
    fn where_is(&self, layer: usize, d: &LayerDir) -> String {
        let Some(l) = self.layers.get(layer) else {
            return "a layer directory".into();
        };
        match (fd_link(d), fd_link(&l.root)) {
            (Some(dir), Some(root)) => match dir.strip_prefix(&root) {
                Ok(rel) => l.path.join(rel).display().to_string(),
                Err(_) => format!("{} in layer {}", dir.display(), l.path.display()),
            },
            _ => format!("a directory of layer {}", l.path.display()),
        }
    }
}

/// The path the kernel gives the fd of a layer directory, if it is on a filesystem.
fn fd_link(d: &LayerDir) -> Option<std::path::PathBuf> {
    let fd = d.fs_fd()?;
    std::fs::read_link(std::path::Path::new(OsStr::from_bytes(
        sys::fd_path(fd.as_fd()).as_bytes(),
    )))
    .ok()
}
