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
//!
//! Kernel overlayfs uppers (`indirect.rs`): a metacopy file is compared like any copied-up
//! file (its metadata is the upper's). A redirected directory's lower part is elsewhere: the
//! view there is walked whole (the upper's entries and every name of that lower part) and
//! compared name by name with the image's directory at its path, if any.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::Stat;

use super::indirect;
use super::linked::{Linked, image_at};
use super::listing::{Entry, Listing, is_dir};
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

/// A directory of the view on the diff's path: the upper's (if the upper has one here), the
/// image directory it is compared with, and the lower part the view shows in it.
struct Compared {
    /// The upper's directory (None: the view shows only lower content here).
    fd: Option<PathDir>,
    listing: Listing,
    /// The image's directory here (Absent: the image has none).
    old: PathImage,
    /// Whether the view merges `old` itself here, so that names only the image has are
    /// unchanged. Otherwise the view's lower part is `src` (moved by a kernel redirect, or
    /// nothing), and the two are compared name by name.
    same: bool,
    src: PathImage,
    objects: BTreeSet<OsString>,
    hidden: BTreeSet<OsString>,
    /// Names only the view's lower part shows (when not `same`), sorted, visited after the
    /// upper's.
    lower_names: Vec<OsString>,
    next: std::ops::Range<usize>,
    rel_len: usize,
}

/// Where a directory of the view is: the upper's (fd and listing, if any), and its lower
/// part (`Same`: the image's own directory, which it is compared with).
enum Lower {
    Same,
    Moved(Option<ImageDir>),
}

impl Compared {
    fn new(
        up: Option<(PathDir, Listing)>,
        old: Option<ImageDir>,
        lower: Lower,
        rel: &[u8],
        stack: &Stack,
    ) -> Result<Compared> {
        let own = |s: BTreeSet<&OsStr>| -> BTreeSet<OsString> { s.into_iter().map(OsStr::to_os_string).collect() };
        let (fd, listing) = match up {
            Some((fd, l)) => (Some(fd), l),
            None => (
                None,
                Listing {
                    marks: Default::default(),
                    entries: Vec::new(),
                },
            ),
        };
        let objects = own(listing.object_names());
        let hidden = own(listing.whiteout_targets());
        let (same, src) = match lower {
            Lower::Same => (true, None),
            Lower::Moved(src) => (false, src),
        };
        let lower_names: Vec<OsString> = match &src {
            Some(src) => src
                .list(stack, rel)?
                .into_keys()
                .filter(|n| !objects.contains(n) && !hidden.contains(n))
                .collect(),
            None => Vec::new(),
        };
        Ok(Compared {
            fd,
            next: 0..listing.entries.len() + lower_names.len(),
            listing,
            old: PathImage::new(old),
            same,
            src: PathImage::new(src),
            objects,
            hidden,
            lower_names,
            rel_len: rel.len(),
        })
    }

    /// The lower part the view shows here.
    fn lower(&self) -> rustix::io::Result<Option<&ImageDir>> {
        if self.same { self.old.get() } else { self.src.get() }
    }
}

impl Frame for Compared {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        // Only a directory the child's can reopen as `..` is closed.
        if let (Some(fd), Some(_)) = (self.fd.as_mut(), child.fd.as_ref()) {
            fd.park()?;
        }
        self.old.park(&child.old)?;
        self.src.park(&child.src)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        if let (Some(fd), Some(below)) = (self.fd.as_mut(), child.fd.as_ref()) {
            fd.unpark(below.fd()?)?;
        }
        self.old.unpark(&child.old)?;
        self.src.unpark(&child.src)
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
        let lower = if merge { Lower::Same } else { Lower::Moved(None) };
        let first = Compared::new(Some((start, listing)), Some(img), lower, &rel, self.stack)?;
        let mut path = Descent::new(first);
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
            let below = if i < top.listing.entries.len() {
                self.entry(&rel, top, i)?
            } else {
                self.lower_entry(&rel, top, i - top.listing.entries.len())?
            };
            if let Some((sub, below)) = below {
                if self.obs.cancelled() {
                    return Err(LayerError::Interrupted);
                }
                rel = sub;
                path.push(below).map_err(|e| io(&rel, e))?;
            }
        }
    }

    /// Entry `i` of the upper directory of `here` (at `rel`); a subdirectory to go into next is
    /// returned with its path.
    fn entry(&mut self, rel: &[u8], here: &Compared, i: usize) -> Result<Option<(Vec<u8>, Compared)>> {
        let upper = self.stack.upper()?;
        let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let e = &here.listing.entries[i];
        self.obs.entry();
        let old = here.old.get().map_err(io)?;
        match &e.kind {
            Marker::OpaqueFile => {}
            Marker::Whiteout { target, .. } => {
                // Where the view's lower part is not the image's, the names are compared at the end.
                if !here.same || here.objects.contains(target) {
                    return Ok(None);
                }
                if let Some(old) = old {
                    if old.lookup(self.stack, rel, target, false)?.is_some() {
                        self.out.insert(abs(&join(rel, target)), Change::Deleted);
                    }
                }
            }
            Marker::Object => {
                let Some(fd) = here.fd.as_ref() else { return Ok(None) };
                let fd = fd.fd().map_err(io)?;
                return self.upper_object(rel, here, fd, e);
            }
        }
        Ok(None)
    }

    /// The upper object `e` of the directory `fd` of `here` (at `rel`).
    fn upper_object(
        &mut self,
        rel: &[u8],
        here: &Compared,
        fd: BorrowedFd<'_>,
        e: &Entry,
    ) -> Result<Option<(Vec<u8>, Compared)>> {
        let upper = self.stack.upper()?;
        let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let path = join(rel, &e.name);
        let at = upper.at(&path);
        let dir = is_dir(&e.st);
        let old = here.old.get().map_err(io)?;
        let found = match old {
            Some(o) => o.lookup(self.stack, rel, &e.name, dir)?,
            None => None,
        };
        match &found {
            None => {
                self.out.insert(abs(&path), Change::Added);
            }
            Some(f) => {
                if stat_different(&f.st, &e.st) || self.cap_differs(old, f, rel, fd, &e.name)? {
                    self.out.insert(abs(&path), Change::Changed);
                }
            }
        }
        if !dir {
            return Ok(None);
        }
        let sfd = sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(&at, err))?;
        let sl = Listing::read(sfd.as_fd(), &at)?;
        let redirect = indirect::redirect_at(&indirect::upper_xattr(fd, &e.name), &at)?;
        let cut = sl.marks.opaque || here.hidden.contains(e.name.as_os_str());
        let old_dir = found.and_then(|f| f.dir);
        // The kernel ignores the redirect of an opaque directory.
        let lower = match redirect {
            Some(r) if !cut => {
                let parent = here.lower().map_err(io)?;
                Lower::Moved(indirect::upper_target_dir(self.stack, parent, rel, &r, &at)?)
            }
            _ if cut => Lower::Moved(None),
            _ if here.same => Lower::Same,
            _ => match here.lower().map_err(io)? {
                Some(src) => Lower::Moved(src.lookup(self.stack, rel, &e.name, true)?.and_then(|f| f.dir)),
                None => Lower::Moved(None),
            },
        };
        let lower = match (lower, &old_dir) {
            // Nothing to compare names with: a new directory's own names are all new.
            (Lower::Same, None) => Lower::Moved(None),
            (l, _) => l,
        };
        let below = Compared::new(Some((PathDir::new(sfd), sl)), old_dir, lower, &path, self.stack)?;
        Ok(Some((path, below)))
    }

    /// Name `i` of those only the view's lower part shows in `here` (at `rel`): compared with
    /// the image's; a directory to go into next is returned with its path.
    fn lower_entry(&mut self, rel: &[u8], here: &Compared, i: usize) -> Result<Option<(Vec<u8>, Compared)>> {
        let upper = self.stack.upper()?;
        let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        self.obs.entry();
        let (Some(name), Some(src)) = (here.lower_names.get(i), here.src.get().map_err(io)?) else {
            return Ok(None);
        };
        let Some(f) = src.lookup(self.stack, rel, name, true)? else {
            return Ok(None);
        };
        let path = join(rel, name);
        let old = here.old.get().map_err(io)?;
        let found = match old {
            Some(o) => o.lookup(self.stack, rel, name, is_dir(&f.st))?,
            None => None,
        };
        match &found {
            None => {
                self.out.insert(abs(&path), Change::Added);
            }
            Some(o) => {
                if stat_different(&o.st, &f.st) || self.lower_cap_differs(old, o, src, &f, rel, name)? {
                    self.out.insert(abs(&path), Change::Changed);
                }
            }
        }
        let Some(sub) = f.dir else { return Ok(None) };
        let old_dir = found.and_then(|f| f.dir);
        let below = Compared::new(None, old_dir, Lower::Moved(Some(sub)), &path, self.stack)?;
        Ok(Some((path, below)))
    }

    /// Once the directory `here` (at `rel`) is done: if the view does not merge the image's,
    /// every old child the view does not show is gone.
    fn gone_children(&mut self, rel: &[u8], here: &Compared) -> Result<()> {
        if here.same {
            return Ok(());
        }
        let upper = self.stack.upper()?;
        let old = here.old.get().map_err(|e| LayerError::io(upper.at(rel), e))?;
        if let Some(old) = old {
            for name in old.list(self.stack, rel)?.keys() {
                if !here.objects.contains(name) && here.lower_names.binary_search(name).is_err() {
                    self.out.insert(abs(&join(rel, name)), Change::Deleted);
                }
            }
        }
        Ok(())
    }

    /// Whether the file capabilities of the image's `o` and the view's lower `f` differ.
    fn lower_cap_differs(
        &self,
        old: Option<&ImageDir>,
        o: &Found,
        src: &ImageDir,
        f: &Found,
        rel: &[u8],
        name: &OsStr,
    ) -> Result<bool> {
        let cap = |dir: &ImageDir, pos: usize| -> Result<Option<Vec<u8>>> {
            let Some(d) = dir.dirs.get(pos) else { return Ok(None) };
            d.place
                .get_xattr(name, CAPABILITY)
                .map_err(|e| LayerError::io(self.stack.lowers[d.layer].at(&join(rel, name)), e))
        };
        let Some(old) = old else { return Ok(false) };
        Ok(cap(old, o.pos)? != cap(src, f.pos)?)
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
