//! Reading one layer directory: its entries classified through `format::markers`, and a walk
//! of a whole layer of any depth.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Stat};

use super::{LayerError, Result, full_path};
use crate::descent::{Descent, Frame, PathDir};
use crate::format::markers::{self, DirMarks, Marker};
use crate::sys;

/// One entry of a layer directory, with its `lstat`.
pub(crate) struct Entry {
    pub name: OsString,
    pub st: Stat,
    pub kind: Marker,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == Marker::Object && is_dir(&self.st)
    }
}

/// A layer directory's entries (sorted by name) and marks.
pub(crate) struct Listing {
    pub marks: DirMarks,
    pub entries: Vec<Entry>,
}

impl Listing {
    /// Reads the directory behind `dir`; `at` names it in errors.
    pub fn read(dir: BorrowedFd<'_>, at: &Path) -> Result<Listing> {
        let io = |e: rustix::io::Errno| LayerError::io(at, e);
        let marks = markers::dir_marks(dir).map_err(io)?;
        let mut raw = sys::read_dir(dir).map_err(io)?;
        raw.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut entries = Vec::with_capacity(raw.len());
        for e in raw {
            let st = match sys::stat_at_opt(dir, &e.name) {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(err) => return Err(LayerError::io(at.join(&e.name), err)),
            };
            let kind = markers::classify(dir, marks, &e.name, &st);
            entries.push(Entry { name: e.name, st, kind });
        }
        Ok(Listing { marks, entries })
    }

    /// Names of the real objects.
    pub fn object_names(&self) -> std::collections::BTreeSet<&OsStr> {
        self.entries
            .iter()
            .filter(|e| e.kind == Marker::Object)
            .map(|e| e.name.as_os_str())
            .collect()
    }

    /// Names some whiteout of this directory hides.
    pub fn whiteout_targets(&self) -> std::collections::BTreeSet<&OsStr> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Marker::Whiteout { target, .. } => Some(target.as_os_str()),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// What [`walk_all`] calls: `(rel, dir fd, listing, entry)`.
pub(crate) type WalkFn<'f> = dyn FnMut(&[u8], BorrowedFd<'_>, &Listing, Option<&Entry>) -> Result<()> + 'f;

/// Every entry below the directory `dir` of a layer, depth first in name order: `f(rel,
/// dir_fd, listing, None)` once for each directory (the root included) when it has been
/// listed, then `f(rel, dir_fd, listing, Some(entry))` for each of its entries; stops at the
/// first error. The path is kept on the heap with few directories open (`descent.rs`): a layer
/// may be of any depth.
pub(crate) fn walk_all(dir: BorrowedFd<'_>, root: &Path, rel: &[u8], f: &mut WalkFn<'_>) -> Result<()> {
    let mut rel = rel.to_vec();
    let io = |rel: &[u8], e: rustix::io::Errno| LayerError::io(full_path(root, rel), e);
    let start = PathDir::dup(dir).map_err(|e| io(&rel, e))?;
    let mut path = Descent::new(Walked::enter(start, &rel, root, f)?);
    loop {
        let Some(top) = path.last_mut() else {
            return Ok(());
        };
        let Some(i) = top.next.next() else {
            path.pop().map_err(|e| io(&rel, e))?;
            if let Some(up) = path.last() {
                rel.truncate(up.rel_len);
            }
            continue;
        };
        let fd = top.dir.fd().map_err(|e| io(&rel, e))?;
        let e = &top.listing.entries[i];
        f(&rel, fd, &top.listing, Some(e))?;
        if !e.is_dir() {
            continue;
        }
        let p = super::join(&rel, &e.name);
        let sub = sys::open_path_dir(fd, &e.name).map_err(|err| io(&p, err))?;
        rel = p;
        let below = Walked::enter(PathDir::new(sub), &rel, root, f)?;
        path.push(below).map_err(|e| io(&rel, e))?;
    }
}

/// A directory on [`walk_all`]'s path: its listing and the entries still to visit.
struct Walked {
    dir: PathDir,
    listing: Listing,
    next: std::ops::Range<usize>,
    rel_len: usize,
}

impl Walked {
    /// Lists the directory `dir` (at `rel`) and reports it to `f`.
    fn enter(dir: PathDir, rel: &[u8], root: &Path, f: &mut WalkFn<'_>) -> Result<Walked> {
        let at = || full_path(root, rel);
        let fd = dir.fd().map_err(|e| LayerError::io(at(), e))?;
        let listing = Listing::read(fd, &at())?;
        f(rel, fd, &listing, None)?;
        Ok(Walked {
            next: 0..listing.entries.len(),
            dir,
            listing,
            rel_len: rel.len(),
        })
    }
}

impl Frame for Walked {
    fn park(&mut self, _child: &Self) -> rustix::io::Result<()> {
        self.dir.park()
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.unpark(child.dir.fd()?)
    }
}
