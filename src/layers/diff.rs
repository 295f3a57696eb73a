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

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::Stat;

use super::linked::{Linked, image_at};
use super::walk::{EntryKind, ImageDir, Listing, Stack, is_dir, refuse_kernel_indirect};
use super::{LayerError, Observer, Result, join};
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
    d.dir(b"", upper.fd(), &root, Some(&img), merge)?;
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
    // Every parent of a listed entry is changed.
    let paths: Vec<Vec<u8>> = d.out.keys().cloned().collect();
    for p in paths {
        let mut cut = p.len();
        while let Some(i) = p[..cut].iter().rposition(|&b| b == b'/') {
            if i == 0 {
                break;
            }
            d.out.entry(p[..i].to_vec()).or_insert(Change::Changed);
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

impl Differ<'_> {
    /// The upper directory `rel` (open as `fd`, listed as `listing`), whose image directory is
    /// `old` (None: the image has no directory here) and which merges with it in the view when
    /// `merge`.
    fn dir(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        listing: &Listing,
        old: Option<&ImageDir>,
        merge: bool,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        if self.obs.cancelled() {
            return Err(LayerError::Interrupted);
        }
        let objects = listing.object_names();
        let hidden = listing.whiteout_targets();
        for e in &listing.entries {
            self.obs.entry();
            match &e.kind {
                EntryKind::OpaqueFile => {}
                EntryKind::Whiteout { target, .. } => {
                    if !merge || objects.contains(target.as_os_str()) {
                        continue;
                    }
                    if let Some(old) = old {
                        if old.lookup(self.stack, rel, target, false)?.is_some() {
                            self.out.insert(abs(&join(rel, target)), Change::Deleted);
                        }
                    }
                }
                EntryKind::Object => {
                    let path = join(rel, &e.name);
                    refuse_kernel_indirect(&upper.at(&path), fd, &e.name)?;
                    let dir = is_dir(&e.st);
                    let found = match old {
                        Some(o) => o.lookup(self.stack, rel, &e.name, dir)?,
                        None => None,
                    };
                    let sub = if dir {
                        let sfd =
                            sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(upper.at(&path), err))?;
                        let sl = Listing::read(sfd.as_fd(), &upper.at(&path))?;
                        Some((sfd, sl))
                    } else {
                        None
                    };
                    match found {
                        None => {
                            self.out.insert(abs(&path), Change::Added);
                            if let Some((sfd, sl)) = &sub {
                                self.dir(&path, sfd.as_fd(), sl, None, false)?;
                            }
                        }
                        Some(f) => {
                            if stat_different(&f.st, &e.st) || self.cap_differs(old, &f, rel, fd, &e.name)? {
                                self.out.insert(abs(&path), Change::Changed);
                            }
                            if let Some((sfd, sl)) = &sub {
                                let cut = sl.marks.opaque || hidden.contains(e.name.as_os_str());
                                let child_merge = merge && !cut && f.dir.is_some();
                                self.dir(&path, sfd.as_fd(), sl, f.dir.as_ref(), child_merge)?;
                            }
                        }
                    }
                }
            }
        }
        // Not merged: every old child that the upper does not have is gone.
        if !merge {
            if let Some(old) = old {
                for name in old.list(self.stack, rel)?.keys() {
                    if !objects.contains(name.as_os_str()) {
                        self.out.insert(abs(&join(rel, name)), Change::Deleted);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the file capabilities of the image's and the upper's `name` differ.
    fn cap_differs(
        &self,
        old: Option<&ImageDir>,
        f: &super::walk::Found,
        rel: &[u8],
        upper_dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool> {
        let Some(old) = old else { return Ok(false) };
        let Some(d) = old.dirs.get(f.pos) else {
            return Ok(false);
        };
        let path = join(rel, name);
        let a = sys::get_xattr(d.fd.as_fd(), name, CAPABILITY)
            .map_err(|e| LayerError::io(self.stack.lowers[d.layer].at(&path), e))?;
        let b = sys::get_xattr(upper_dir, name, CAPABILITY).map_err(|e| {
            let at = self.stack.upper.as_ref().map(|u| u.at(&path)).unwrap_or_default();
            LayerError::io(at, e)
        })?;
        Ok(a != b)
    }
}
