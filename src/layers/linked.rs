//! Lower files with several names, copied up through one of them. The mount keeps such copies
//! in a hard-link index in its workdir (`W/unionfs-index`, see `union/hardlinks.rs`): every other
//! name of the lower file shows the copy, but joins the upper only when it is next looked up.
//! So the upper alone does not say what those names show; with the workdir the tools do.
//!
//! Cost: nothing without an index. Each index entry records how many names the object has in
//! the view; when the upper holds all of them, nothing more is read. Otherwise the image is
//! walked once to find the missing names (a lower file's other names may be anywhere in it).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{FileType, Stat};

use super::listing::is_dir;
use super::lowers::{Found, ImageDir, PathImage};
use super::stack::Stack;
use super::{LayerError, Observer, Result, join};
use crate::descent::{Descent, Frame};
use crate::format::hardlink::Key;
use crate::format::markers;
use crate::sys;
use crate::union::hardlinks::HardlinkIndex;

/// The index's copy a name shows.
pub(crate) struct IndexCopy {
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    pub st: Stat,
}

/// Names of the view (relative paths) that show an index copy but are not in the upper.
#[derive(Default)]
pub(crate) struct Linked {
    pub names: BTreeMap<Vec<u8>, IndexCopy>,
}

impl Linked {
    /// The names below the directory `rel`: its children that are such names, and its child
    /// directories that lead to some.
    pub fn children(&self, rel: &[u8]) -> (BTreeSet<OsString>, Vec<(OsString, &IndexCopy)>) {
        let mut dirs = BTreeSet::new();
        let mut files = Vec::new();
        let prefix: Vec<u8> = if rel.is_empty() {
            Vec::new()
        } else {
            let mut p = rel.to_vec();
            p.push(b'/');
            p
        };
        for (path, copy) in self.names.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(prefix.as_slice()) else {
                break;
            };
            match rest.iter().position(|&b| b == b'/') {
                Some(i) => {
                    dirs.insert(OsStr::from_bytes(&rest[..i]).to_os_string());
                }
                None => files.push((OsStr::from_bytes(rest).to_os_string(), copy)),
            }
        }
        (dirs, files)
    }

    /// Finds the names of the view that show a copy in the hard-link index a mount of the
    /// stack with the workdir `work` would use (see `HardlinkIndex::as_mounted`).
    pub fn find(stack: &Stack, work: Option<&Path>, obs: &dyn Observer) -> Result<Linked> {
        let upper = stack.upper()?;
        let wfd = match work {
            Some(w) => Some(sys::open_dir_path(w).map_err(|e| LayerError::io(w, e))?),
            None => None,
        };
        let at = work.map_or_else(|| upper.path.clone(), |w| w.join(crate::format::workdir::INDEX_DIR));
        let index = HardlinkIndex::as_mounted(wfd.as_ref().map(|f| f.as_fd()), upper.fd())
            .map_err(|e| LayerError::io(&at, e))?;
        if index.keys().is_empty() {
            return Ok(Linked::default());
        }
        // Keys whose copy the upper does not carry under every name the view gives it.
        let mut incomplete: HashSet<Key> = HashSet::new();
        for key in index.keys() {
            let Some((dir, name)) = index.entry(key) else { continue };
            let Some(st) = sys::stat_at_opt(dir.as_fd(), &name).map_err(|e| LayerError::io(at.join(&name), e))? else {
                continue;
            };
            let in_upper = st.st_nlink.saturating_sub(index.own_links());
            let view = index.view_count(&sys::Target::Entry(dir.as_fd(), &name));
            if view.is_none_or(|n| u64::from(n) != in_upper) {
                incomplete.insert(key);
            }
        }
        if incomplete.is_empty() {
            return Ok(Linked::default());
        }
        let fsids: Vec<u64> = stack.lowers.iter().map(|l| l.fsid()).collect();
        let mut found = Vec::new();
        let root = stack.image_root()?;
        let mut f = Finder {
            stack,
            index: &index,
            incomplete: &incomplete,
            fsids: &fsids,
            obs,
            found: &mut found,
        };
        f.walk(root)?;
        let mut names = BTreeMap::new();
        for (rel, key) in found {
            if !shown_from_lowers(stack, &rel)? {
                continue;
            }
            let Some((dir, name)) = index.entry(key) else { continue };
            let Some(st) = sys::stat_at_opt(dir.as_fd(), &name).map_err(|e| LayerError::io(at.join(&name), e))? else {
                continue;
            };
            names.insert(rel, IndexCopy { dir, name, st });
        }
        Ok(Linked { names })
    }
}

struct Finder<'a> {
    stack: &'a Stack,
    index: &'a HardlinkIndex,
    incomplete: &'a HashSet<Key>,
    fsids: &'a [u64],
    obs: &'a dyn Observer,
    found: &'a mut Vec<(Vec<u8>, Key)>,
}

/// An image directory on the finder's path: the names it shows still to look at.
struct Searched {
    dir: PathImage,
    names: std::collections::btree_map::IntoIter<OsString, (usize, Stat)>,
    rel_len: usize,
}

impl Frame for Searched {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.park(&child.dir)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.unpark(&child.dir)
    }
}

impl Finder<'_> {
    /// The image from its root `root`: depth first, the path kept on the heap (`descent.rs`):
    /// an image may be of any depth.
    fn walk(&mut self, root: ImageDir) -> Result<()> {
        let mut rel: Vec<u8> = Vec::new();
        let at = |rel: &[u8]| match self.stack.lowers.first() {
            Some(l) => l.at(rel),
            None => PathBuf::from(OsStr::from_bytes(rel)),
        };
        let first = self.enter(&rel, root)?;
        let mut path = Descent::new(first);
        loop {
            let Some(top) = path.last_mut() else {
                return Ok(());
            };
            let Some((name, (pos, st))) = top.names.next() else {
                path.pop().map_err(|e| LayerError::io(at(&rel), e))?;
                if let Some(up) = path.last() {
                    rel.truncate(up.rel_len);
                }
                continue;
            };
            self.obs.entry();
            let dir = top.dir.get().map_err(|e| LayerError::io(at(&rel), e))?;
            let Some(dir) = dir else { continue };
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft == FileType::RegularFile && st.st_nlink > 1 {
                let Some(layer) = dir.dirs.get(pos).map(|d| d.layer) else {
                    continue;
                };
                let key = Key {
                    fsid: self.fsids[layer],
                    ino: st.st_ino,
                };
                if self.incomplete.contains(&key) && self.index.holds(key, &st) {
                    self.found.push((join(&rel, &name), key));
                }
            } else if ft == FileType::Directory {
                if let Some(Found { dir: Some(sub), .. }) = dir.lookup(self.stack, &rel, &name, true)? {
                    let sub_rel = join(&rel, &name);
                    let below = self.enter(&sub_rel, sub)?;
                    rel = sub_rel;
                    path.push(below).map_err(|e| LayerError::io(at(&rel), e))?;
                }
            }
        }
    }

    /// Lists the image directory `dir` (at `rel`) for the walk.
    fn enter(&mut self, rel: &[u8], dir: ImageDir) -> Result<Searched> {
        if self.obs.cancelled() {
            return Err(LayerError::Interrupted);
        }
        let names = dir.list(self.stack, rel)?;
        Ok(Searched {
            dir: PathImage::new(Some(dir)),
            names: names.into_iter(),
            rel_len: rel.len(),
        })
    }
}

/// Whether the view shows `rel` from a lower layer: no entry or whiteout for it in the upper,
/// and no directory on the way is opaque, whited out or replaced there.
fn shown_from_lowers(stack: &Stack, rel: &[u8]) -> Result<bool> {
    let upper = stack.upper()?;
    let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
    let mut cur: OwnedFd = sys::open_path_dir(upper.fd(), OsStr::new(".")).map_err(io)?;
    if markers::dir_marks(cur.as_fd()).map_err(io)?.opaque {
        return Ok(false);
    }
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    for (i, c) in comps.iter().enumerate() {
        let name = OsStr::from_bytes(c);
        let d: BorrowedFd<'_> = cur.as_fd();
        if sys::stat_at_opt(d, &markers::oci_name(name)).map_err(io)?.is_some() {
            return Ok(false);
        }
        let Some(st) = sys::stat_at_opt(d, name).map_err(io)? else {
            // Nothing of it in the upper from here down.
            return Ok(true);
        };
        if i + 1 == comps.len() || !is_dir(&st) {
            return Ok(false);
        }
        let next = sys::open_path_dir(d, name).map_err(io)?;
        if markers::dir_marks(next.as_fd()).map_err(io)?.opaque {
            return Ok(false);
        }
        cur = next;
    }
    Ok(false)
}

/// What the image shows at `rel`, with its file capability (None: nothing).
pub(crate) fn image_at(stack: &Stack, rel: &[u8], cap: &str) -> Result<Option<(Stat, Option<Vec<u8>>)>> {
    let mut dir = stack.image_root()?;
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    // Where the current name starts in `rel`: the path so far is what is before it.
    let mut start = 0usize;
    for (i, c) in comps.iter().enumerate() {
        let name = OsStr::from_bytes(c);
        let last = i + 1 == comps.len();
        let parent = &rel[..start.saturating_sub(1)];
        start += c.len() + 1;
        let Some(f) = dir.lookup(stack, parent, name, !last)? else {
            return Ok(None);
        };
        if last {
            let Some(d) = dir.dirs.get(f.pos) else { return Ok(None) };
            let c = d
                .place
                .get_xattr(name, cap)
                .map_err(|e| LayerError::io(stack.lowers[d.layer].at(rel), e))?;
            return Ok(Some((f.st, c)));
        }
        let Some(sub) = f.dir else { return Ok(None) };
        dir = sub;
    }
    Ok(None)
}
