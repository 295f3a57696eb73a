//! `unionfs diff`: what an upper changes in the image, as `docker diff` / `podman diff` print it
//! (`ChangesDirs` of moby's archive package, comparing the image's tree with the container's).
//!
//! - a new path is `A`, and so is everything below a new directory;
//! - a deleted path is `D` (only the top of a deleted tree);
//! - an entry whose type, mode, owner, device, file capability or (not for directories) size
//!   or mtime differs is `C`; a directory made opaque lists its new children `A` and its old
//!   ones `D`;
//! - every parent of a listed entry is `C` (unless it is listed already).
//!
//! A file copied up but left identical is not listed. Only the upper is walked; the image is
//! looked at where the upper has something, plus the listings of directories the upper made
//! opaque (their old children are the `D` lines).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::Stat;

use super::linked::{Linked, image_at};
use super::listing::{Listing, is_dir, refuse_kernel_indirect};
use super::lowers::{Found, ImageDir, PathImage};
use super::stack::Stack;
use super::{LayerError, Observer, Result, join};
use crate::descent::{Descent, Frame, PathDir};
use crate::format::markers::Marker;
use crate::sys;

/// One kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Change {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "C")]
    Changed,
    #[serde(rename = "D")]
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// The changes, by absolute path in the view (`/etc/passwd`), sorted by path bytes.
pub type Changes = BTreeMap<Vec<u8>, Change>;

const CAPABILITY: &str = "security.capability";

/// Compares the upper of `stack` with the image made of its lowers.
pub fn diff(stack: &Stack, obs: &dyn Observer) -> Result<Changes> {
    let upper = stack.upper()?;
    let root = Listing::read(upper.fd(), &upper.path)?;
    let img = stack.image_root()?;
    let merge = !root.marks.opaque;
    let mut d = Differ {
        stack,
        obs,
        out: BTreeMap::new(),
    };
    d.walk(upper.fd(), root, img, merge)?;
    // Names of lower files that show a copy made through another of their names.
    for (rel, copy) in &Linked::find(stack, stack.workdir.as_deref(), obs)?.names {
        if let Some((st, cap)) = image_at(stack, rel, CAPABILITY)? {
            let copy_cap = sys::get_xattr(copy.dir.as_fd(), &copy.name, CAPABILITY)
                .map_err(|e| LayerError::io(upper.at(rel), e))?;
            if stat_different(&st, &copy.st) || cap != copy_cap {
                d.out.insert(abs(rel), Change::Changed);
            }
        }
    }
    // Every parent of a listed entry is changed. A parent listed already has its own parents
    // listed (or will have, being a listed entry itself): the climb stops there, so a deep
    // tree costs its length, not its length squared.
    let paths: Vec<Vec<u8>> = d.out.keys().cloned().collect();
    for p in paths {
        let mut cut = p.len();
        while let Some(i) = p[..cut].iter().rposition(|&b| b == b'/') {
            if i == 0 || d.out.contains_key(&p[..i]) {
                break;
            }
            d.out.insert(p[..i].to_vec(), Change::Changed);
            cut = i;
        }
    }
    Ok(d.out)
}

struct Differ<'a> {
    stack: &'a Stack,
    obs: &'a dyn Observer,
    out: Changes,
}

fn abs(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
}

/// moby's `statDifferent`: mode (with type), owner, device; size and mtime only for
/// non-directories, a zero nanosecond part matching any.
fn stat_different(old: &Stat, new: &Stat) -> bool {
    let same_time = old.st_mtime == new.st_mtime
        && (old.st_mtime_nsec == new.st_mtime_nsec || old.st_mtime_nsec == 0 || new.st_mtime_nsec == 0);
    old.st_mode != new.st_mode
        || old.st_uid != new.st_uid
        || old.st_gid != new.st_gid
        || old.st_rdev != new.st_rdev
        || (!is_dir(old) && (!same_time || old.st_size != new.st_size))
}

/// An upper directory on the diff's path, with the image directory it is compared with.
struct Compared {
    fd: PathDir,
    listing: Listing,
    /// The image's directory here (Absent: the image has none).
    old: PathImage,
    /// Whether the view merges the two.
    merge: bool,
    objects: BTreeSet<OsString>,
    hidden: BTreeSet<OsString>,
    next: std::ops::Range<usize>,
    rel_len: usize,
}

impl Compared {
    fn new(fd: PathDir, listing: Listing, old: Option<ImageDir>, merge: bool, rel_len: usize) -> Compared {
        let own = |s: BTreeSet<&OsStr>| s.into_iter().map(OsStr::to_os_string).collect();
        Compared {
            fd,
            objects: own(listing.object_names()),
            hidden: own(listing.whiteout_targets()),
            next: 0..listing.entries.len(),
            listing,
            old: PathImage::new(old),
            merge,
            rel_len,
        }
    }
}

impl Frame for Compared {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.fd.park()?;
        self.old.park(&child.old)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.fd.unpark(child.fd.fd()?)?;
        self.old.unpark(&child.old)
    }
}

impl Differ<'_> {
    /// The upper's tree from its root (`fd`, listed as `listing`) against the image's root
    /// `img`, which the view merges with it when `merge`: depth first, each directory's entries
    /// in name order, the path kept on the heap (`descent.rs`): a tree may be of any depth.
    fn walk(&mut self, fd: BorrowedFd<'_>, listing: Listing, img: ImageDir, merge: bool) -> Result<()> {
        let upper = self.stack.upper()?;
        let mut rel: Vec<u8> = Vec::new();
        let io = |rel: &[u8], e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        if self.obs.cancelled() {
            return Err(LayerError::Interrupted);
        }
        let start = PathDir::dup(fd).map_err(|e| io(&rel, e))?;
        let mut path = Descent::new(Compared::new(start, listing, Some(img), merge, 0));
        loop {
            let Some(top) = path.last_mut() else {
                return Ok(());
            };
            let Some(i) = top.next.next() else {
                self.gone_children(&rel, top)?;
                path.pop().map_err(|e| io(&rel, e))?;
                if let Some(up) = path.last() {
                    rel.truncate(up.rel_len);
                }
                continue;
            };
            if let Some((sub, below)) = self.entry(&rel, top, i)? {
                if self.obs.cancelled() {
                    return Err(LayerError::Interrupted);
                }
                rel = sub;
                path.push(below).map_err(|e| io(&rel, e))?;
            }
        }
    }

    /// Entry `i` of the directory `here` (at `rel`); a subdirectory to go into next is returned
    /// with its path.
    fn entry(&mut self, rel: &[u8], here: &Compared, i: usize) -> Result<Option<(Vec<u8>, Compared)>> {
        let upper = self.stack.upper()?;
        let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let e = &here.listing.entries[i];
        self.obs.entry();
        let old = here.old.get().map_err(io)?;
        match &e.kind {
            Marker::OpaqueFile => {}
            Marker::Whiteout { target, .. } => {
                if !here.merge || here.objects.contains(target) {
                    return Ok(None);
                }
                if let Some(old) = old {
                    if old.lookup(self.stack, rel, target, false)?.is_some() {
                        self.out.insert(abs(&join(rel, target)), Change::Deleted);
                    }
                }
            }
            Marker::Object => {
                let fd = here.fd.fd().map_err(io)?;
                let path = join(rel, &e.name);
                refuse_kernel_indirect(&upper.at(&path), fd, &e.name)?;
                let dir = is_dir(&e.st);
                let found = match old {
                    Some(o) => o.lookup(self.stack, rel, &e.name, dir)?,
                    None => None,
                };
                let sub = if dir {
                    let sfd = sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(upper.at(&path), err))?;
                    let sl = Listing::read(sfd.as_fd(), &upper.at(&path))?;
                    Some((PathDir::new(sfd), sl))
                } else {
                    None
                };
                let below = match found {
                    None => {
                        self.out.insert(abs(&path), Change::Added);
                        sub.map(|(sfd, sl)| Compared::new(sfd, sl, None, false, path.len()))
                    }
                    Some(f) => {
                        if stat_different(&f.st, &e.st) || self.cap_differs(old, &f, rel, fd, &e.name)? {
                            self.out.insert(abs(&path), Change::Changed);
                        }
                        sub.map(|(sfd, sl)| {
                            let cut = sl.marks.opaque || here.hidden.contains(e.name.as_os_str());
                            let child_merge = here.merge && !cut && f.dir.is_some();
                            Compared::new(sfd, sl, f.dir, child_merge, path.len())
                        })
                    }
                };
                return Ok(below.map(|b| (path, b)));
            }
        }
        Ok(None)
    }

    /// Once the directory `here` (at `rel`) is done: if not merged, every old child that the
    /// upper does not have is gone.
    fn gone_children(&mut self, rel: &[u8], here: &Compared) -> Result<()> {
        if here.merge {
            return Ok(());
        }
        let upper = self.stack.upper()?;
        let old = here.old.get().map_err(|e| LayerError::io(upper.at(rel), e))?;
        if let Some(old) = old {
            for name in old.list(self.stack, rel)?.keys() {
                if !here.objects.contains(name) {
                    self.out.insert(abs(&join(rel, name)), Change::Deleted);
                }
            }
        }
        Ok(())
    }

    /// Whether the file capabilities of the image's and the upper's `name` differ.
    fn cap_differs(
        &self,
        old: Option<&ImageDir>,
        f: &Found,
        rel: &[u8],
        upper_dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool> {
        let Some(old) = old else { return Ok(false) };
        let Some(d) = old.dirs.get(f.pos) else {
            return Ok(false);
        };
        let path = join(rel, name);
        let a = d
            .place
            .get_xattr(name, CAPABILITY)
            .map_err(|e| LayerError::io(self.stack.lowers[d.layer].at(&path), e))?;
        let b = sys::get_xattr(upper_dir, name, CAPABILITY).map_err(|e| {
            let at = self.stack.upper.as_ref().map(|u| u.at(&path)).unwrap_or_default();
            LayerError::io(at, e)
        })?;
        Ok(a != b)
    }
}
