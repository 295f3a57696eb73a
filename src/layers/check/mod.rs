//! `unionfs check`: what in an upper (and its workdir) breaks a mount or a commit, and
//! `--repair`, which makes the upper canonical without changing the merged view.
//!
//! Problems found:
//! - leftovers in the workdir (scratch files of a crashed copy-up, a dirty volatile marker);
//! - a name with two markers (a char-device whiteout and a `.wh.` file; an opaque xattr and a
//!   `.wh..wh..opq` file, as fuse-overlayfs writes; a name both present and whited out);
//! - whiteouts and opaque markers in a form the upper's format does not write (`.wh.` entries
//!   in an overlay-format upper, which kernel overlayfs shows as files; char devices in an OCI
//!   one; a foreign opaque xattr);
//! - whiteouts hiding nothing (no lower shows the name, or the directory is opaque);
//! - our origin xattrs (`user.unionfs.origin`) that are malformed or name no lower object;
//! - kernel overlayfs redirects that are hostile or lead nowhere (repair drops them), and
//!   metacopy files whose lower data is gone, not a regular file or of another size
//!   (reported: nothing can make up lost data).
//!
//! The upper's format is what most of its markers use: overlay (char devices, opaque xattrs)
//! unless it has only OCI markers. Repair keeps each marker's meaning: a whiteout that hides
//! something keeps hiding it in the canonical form, a name present and whited out becomes an
//! opaque directory (or just the object), a useless whiteout goes.
//!
//! One file per job: `workdir.rs` (leftovers in the workdir, the hard-link index),
//! `whiteouts.rs` (a name's whiteout markers), `opaque.rs` (a directory's opaque markers),
//! `origins.rs` (origin xattrs), `indirect.rs` (kernel redirects and metacopy files),
//! `repair.rs` (the fixes they
//! share). This file tells the upper's format, walks it and collects the problems.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use super::listing::{Listing, walk_all};
use super::lowers::{ImageDir, PathImage};
use super::stack::Stack;
use super::{LayerError, Observer, Result, join};
use crate::descent::{Descent, Frame, PathDir};
use crate::format::ino::Numbering;
use crate::format::markers::{self, Marker, WhiteoutForm};
use crate::sys;

mod indirect;
mod opaque;
mod origins;
mod repair;
mod whiteouts;
mod workdir;

use origins::UnresolvedOrigin;

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub workdir: Option<PathBuf>,
    pub repair: bool,
}

/// The marker format an upper uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UpperFormat {
    /// Char-device whiteouts and this opaque xattr.
    Overlay { opaque_xattr: &'static str },
    /// `.wh.NAME` whiteouts and `.wh..wh..opq` files.
    Oci,
}

impl std::fmt::Display for UpperFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpperFormat::Overlay { opaque_xattr } => write!(f, "overlay (char-device whiteouts, {opaque_xattr}=y)"),
            UpperFormat::Oci => write!(
                f,
                "OCI ({}NAME whiteouts, {})",
                String::from_utf8_lossy(markers::WH_PREFIX),
                markers::OPAQUE_MARKER
            ),
        }
    }
}

/// One problem.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub problem: String,
    /// Fixed by `--repair`.
    pub repaired: bool,
}

/// What a check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    #[serde(serialize_with = "display")]
    pub format: UpperFormat,
    pub problems: Vec<Problem>,
}

fn display<S: serde::Serializer>(f: &UpperFormat, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&f.to_string())
}

impl CheckReport {
    /// Problems left after the run (all of them without `--repair`).
    pub fn remaining(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }
}

/// Checks (and with `repair`, repairs) the upper of `stack` and the workdir.
pub fn check(stack: &Stack, opts: &CheckOptions, obs: &dyn Observer) -> Result<CheckReport> {
    let upper = stack.upper()?;
    let format = detect_format(stack)?;
    let mut c = Checker {
        stack,
        format,
        repair: opts.repair,
        obs,
        problems: Vec::new(),
        unresolved_origins: Vec::new(),
        numbering: Numbering::new(
            std::iter::once(upper.dev)
                .chain(stack.lowers.iter().map(|l| l.dev()))
                .collect(),
        ),
    };
    if let Some(w) = &opts.workdir {
        c.workdir(w)?;
    }
    let root = Listing::read(upper.fd(), &upper.path)?;
    let img = stack.image_root()?;
    c.walk(upper.fd(), root, img)?;
    c.origins_pointing_nowhere()?;
    Ok(CheckReport {
        format,
        problems: c.problems,
    })
}

/// The upper's format: overlay if any marker is in overlay form (or there are none), else OCI.
fn detect_format(stack: &Stack) -> Result<UpperFormat> {
    let upper = stack.upper()?;
    let (mut overlay, mut oci) = (0u64, 0u64);
    let mut trusted = false;
    let mut user = false;
    walk_all(upper.fd(), &upper.path, b"", &mut |rel, dir, _, e| {
        match e {
            None => {
                let xs = markers::opaque_xattrs_set(dir).map_err(|err| LayerError::io(upper.at(rel), err))?;
                for x in xs {
                    overlay += 1;
                    trusted |= x == markers::OVERLAY_OPAQUE_XATTRS[0];
                    user |= x == markers::OVERLAY_OPAQUE_XATTRS[1];
                }
            }
            Some(e) => match &e.kind {
                Marker::Whiteout {
                    form: WhiteoutForm::Oci,
                    ..
                }
                | Marker::OpaqueFile => oci += 1,
                Marker::Whiteout { .. } => overlay += 1,
                Marker::Object => {}
            },
        }
        Ok(())
    })?;
    if overlay == 0 && oci > 0 {
        return Ok(UpperFormat::Oci);
    }
    let opaque_xattr = if trusted || (!user && sys::privileged()) {
        markers::OVERLAY_OPAQUE_XATTRS[0]
    } else {
        markers::OVERLAY_OPAQUE_XATTRS[1]
    };
    Ok(UpperFormat::Overlay { opaque_xattr })
}

/// An upper directory on the check's path: its subdirectories still to check.
struct Checked {
    dir: PathDir,
    listing: Listing,
    /// Names a whiteout of this directory hides (which cuts the merge below them).
    hidden: HashSet<OsString>,
    /// Whether the view merges it with `old`.
    merge: bool,
    /// The image's directory at this path.
    old: PathImage,
    next: std::ops::Range<usize>,
    rel_len: usize,
}

impl Frame for Checked {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.park()?;
        self.old.park(&child.old)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.unpark(child.dir.fd()?)?;
        self.old.unpark(&child.old)
    }
}

struct Checker<'a> {
    stack: &'a Stack,
    format: UpperFormat,
    repair: bool,
    obs: &'a dyn Observer,
    problems: Vec<Problem>,
    /// Origins that name no object at their own path, for one walk of the lowers at the end.
    unresolved_origins: Vec<UnresolvedOrigin>,
    /// The mount's inode numbering (`format::ino`), upper first.
    numbering: Numbering,
}

impl Checker<'_> {
    pub(super) fn report(&mut self, path: PathBuf, problem: String, repaired: bool) {
        self.problems.push(Problem {
            path,
            problem,
            repaired,
        });
    }

    /// Runs `fix` when repairing; the problem counts as repaired when it succeeded.
    pub(super) fn problem(
        &mut self,
        path: PathBuf,
        problem: String,
        fix: Option<&mut dyn FnMut() -> rustix::io::Result<()>>,
    ) -> Result<()> {
        let mut repaired = false;
        if self.repair {
            if let Some(fix) = fix {
                fix().map_err(|e| {
                    LayerError::invalid(
                        &path,
                        format!("repair of \"{problem}\" failed: {}", std::io::Error::from(e)),
                    )
                })?;
                repaired = true;
            }
        }
        self.report(path, problem, repaired);
        Ok(())
    }

    /// The upper's tree from its root (`fd`, listed as `listing`), whose image directory is
    /// `img`: depth first, the path kept on the heap (`descent.rs`): a tree may be of any depth.
    fn walk(&mut self, fd: BorrowedFd<'_>, listing: Listing, img: ImageDir) -> Result<()> {
        let upper = self.stack.upper()?;
        let io = |rel: &[u8], e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let mut rel: Vec<u8> = Vec::new();
        let merge = !listing.marks.opaque;
        let start = PathDir::dup(fd).map_err(|e| io(&rel, e))?;
        let first = self.dir(&rel, start, listing, merge, Some(img))?;
        let mut path = Descent::new(first);
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
            if let Some((sub, below)) = self.subdir(&rel, top, i)? {
                rel = sub;
                path.push(below).map_err(|e| io(&rel, e))?;
            }
        }
    }

    /// Checks the upper directory `rel` (open as `dir`, listed as `listing`) and returns it as a
    /// frame of the walk, to go into its subdirectories; `old` is the image's directory at this
    /// path, which the view merges with it when `merge`.
    fn dir(
        &mut self,
        rel: &[u8],
        dir: PathDir,
        listing: Listing,
        merge: bool,
        old: Option<ImageDir>,
    ) -> Result<Checked> {
        let upper = self.stack.upper()?;
        if self.obs.cancelled() {
            return Err(LayerError::Interrupted);
        }
        let here = upper.at(rel);
        let fd = dir.fd().map_err(|e| LayerError::io(&here, e))?;
        let merge_img = if merge { old.as_ref() } else { None };
        self.opaque_forms(&here, fd, &listing)?;
        self.whiteouts(rel, fd, &listing, merge_img)?;
        self.objects(rel, fd, &listing, old.as_ref(), merge_img)?;
        // Re-read after repairs: they may have changed markers.
        let listing = if self.repair {
            Listing::read(fd, &here)?
        } else {
            listing
        };
        let hidden = listing
            .whiteout_targets()
            .into_iter()
            .map(|n| n.to_os_string())
            .collect();
        Ok(Checked {
            next: 0..listing.entries.len(),
            dir,
            listing,
            hidden,
            merge,
            old: PathImage::new(old),
            rel_len: rel.len(),
        })
    }

    /// Entry `i` of the directory `here` (at `rel`): if it is a subdirectory, checks it and
    /// returns it with its path, to go into next.
    fn subdir(&mut self, rel: &[u8], here: &Checked, i: usize) -> Result<Option<(Vec<u8>, Checked)>> {
        let upper = self.stack.upper()?;
        let Some(e) = here.listing.entries.get(i).filter(|e| e.is_dir()) else {
            return Ok(None);
        };
        let fd = here.dir.fd().map_err(|err| LayerError::io(upper.at(rel), err))?;
        let path = join(rel, &e.name);
        let at = upper.at(&path);
        let sfd = sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(&at, err))?;
        let sl = Listing::read(sfd.as_fd(), &at)?;
        let old = here.old.get().map_err(|err| LayerError::io(upper.at(rel), err))?;
        let found_old = match old {
            Some(o) => o.lookup(self.stack, rel, &e.name, true)?,
            None => None,
        };
        let old_dir = found_old.and_then(|f| f.dir);
        let cut = sl.marks.opaque || here.hidden.contains(&e.name);
        // A redirect (which the kernel ignores on an opaque directory) moves the lower part.
        let parent = if here.merge { old } else { None };
        let moved = match cut {
            false => self.redirect(rel, fd, e, parent, old_dir.is_some())?,
            true => None,
        };
        let (child_merge, old_dir) = match moved {
            Some(target) => (target.is_some(), target),
            None => (here.merge && !cut && old_dir.is_some(), old_dir),
        };
        let below = self.dir(&path, PathDir::new(sfd), sl, child_merge, old_dir)?;
        Ok(Some((path, below)))
    }
}
