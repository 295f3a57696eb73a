//! The image: the union of the lowers, without the upper, looked up only at the paths an upper
//! walk reaches (a few `lstat`s per name and lower layer), so a tool's cost follows the upper.
//! (Here "image" is the lowers' union, whichever kind each lower is: a directory or a layer of
//! an OCI image, see `place.rs`.)

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;

use rustix::fs::Stat;

use super::indirect::{self, RedirectAt, Resolved};
use super::listing::is_dir;
use super::place::{CatalogDir, Place};
use super::stack::Stack;
use super::{LayerError, Result};
use crate::descent::PathDir;
use crate::format::markers::{self, DirMarks, Marker, Stacking};
use crate::format::redirect::Redirect;

/// One lower layer's directory taking part in an image directory.
pub(crate) struct LowerDir {
    /// Index in `Stack::lowers`.
    pub layer: usize,
    pub place: Place,
    pub marks: DirMarks,
    /// Reached through an absolute redirect: not a subdirectory of the directory of its layer
    /// one level up the path, so a walk must not reopen that one as its `..`.
    pub jumped: bool,
}

/// A directory of the image (the union of the lowers): the lower directories merged into it,
/// top first, down to the first opaque one. No directories: the image has nothing here.
pub(crate) struct ImageDir {
    pub dirs: Vec<LowerDir>,
}

/// What the image shows at a name.
pub(crate) struct Found {
    /// Index in `ImageDir::dirs` of the directory holding it.
    pub pos: usize,
    pub st: Stat,
    /// For a directory, when asked for: the image directory it is.
    pub dir: Option<ImageDir>,
}

impl ImageDir {
    /// What the image shows at `name`, following the lookup rules of the union core: the first
    /// layer that has the name wins, a whiteout (at the name, or `.wh.NAME` beside it) hides
    /// it in the layers below, a directory merges with directories below it down to the first
    /// opaque one or the first non-directory. With `open_dir`, a directory comes with its
    /// image directory. `stack` names layers in errors; `rel` is this directory's path.
    pub fn lookup(&self, stack: &Stack, rel: &[u8], name: &OsStr, open_dir: bool) -> Result<Option<Found>> {
        self.lookup_from(stack, rel, name, open_dir, 0)
    }

    /// [`ImageDir::lookup`] in the directories from `start` on. A directory of a lower that
    /// carries a kernel redirect takes its lower part from where the redirect points, in the
    /// layers below its own, as kernel overlayfs follows it (`indirect.rs`).
    pub fn lookup_from(
        &self,
        stack: &Stack,
        rel: &[u8],
        name: &OsStr,
        open_dir: bool,
        start: usize,
    ) -> Result<Option<Found>> {
        if markers::is_reserved_name(name) || name.is_empty() {
            return Ok(None);
        }
        let mut found: Option<Found> = None;
        let mut stacking = Stacking::default();
        for (pos, d) in self.dirs.iter().enumerate().skip(start) {
            let at = || stack.lowers[d.layer].at(&super::join(rel, name));
            let st = d.place.stat_at(name).map_err(|e| LayerError::io(at(), e))?;
            let mut whiteout = d
                .place
                .stat_at(&markers::oci_name(name))
                .map_err(|e| LayerError::io(at(), e))?
                .is_some();
            let mut object = None;
            let mut opened = None;
            if let Some(st) = st {
                if d.place.classify(d.marks, name, &st) == Marker::Object {
                    let dir = is_dir(&st);
                    let mut opaque = false;
                    // Only a directory the view shows (or merges) is opened, and only if asked.
                    if dir && open_dir && (found.is_none() || stacking.merging()) {
                        let place = d.place.open_dir(name).map_err(|e| LayerError::io(at(), e))?;
                        let marks = place.marks().map_err(|e| LayerError::io(at(), e))?;
                        opaque = marks.opaque;
                        opened = Some(LowerDir {
                            layer: d.layer,
                            place,
                            marks,
                            jumped: false,
                        });
                    }
                    object = Some((st, dir, opaque));
                } else {
                    whiteout = true;
                }
            }
            let before = (stacking.shown, stacking.merged.len());
            let more = stacking.layer(pos, object.as_ref().map(|&(_, dir, opaque)| (dir, opaque)), whiteout);
            let took = opened.is_some() && (stacking.shown == Some(pos) || stacking.merged.len() > before.1);
            // A redirect on a directory that merges with layers below moves the rest of the merge.
            let redirect = match (&opened, more && took) {
                (Some(_), true) if d.layer + 1 < stack.lowers.len() => {
                    indirect::redirect_at(&|x| d.place.get_xattr(name, x), &at())?
                }
                _ => None,
            };
            if stacking.shown == Some(pos) && before.0.is_none() {
                let st = object.map(|o| o.0).ok_or(LayerError::invalid(at(), "lookup"))?;
                found = Some(Found {
                    pos,
                    st,
                    dir: opened.map(|d| ImageDir { dirs: vec![d] }),
                });
            } else if stacking.merged.len() > before.1 {
                if let (Some(img), Some(d)) = (found.as_mut().and_then(|f| f.dir.as_mut()), opened) {
                    img.dirs.push(d);
                }
            }
            if let Some(r) = redirect {
                let below = self.redirected(stack, rel, r, (d.layer, pos), &at())?;
                if let (Some(img), Some(below)) = (found.as_mut().and_then(|f| f.dir.as_mut()), below) {
                    img.dirs.extend(below.dirs);
                }
                break;
            }
            // Without its image directory wanted, what shows is known at the first object.
            if !more || (found.is_some() && !open_dir) {
                break;
            }
        }
        Ok(found)
    }

    /// The lower directories a redirect `r` on the directory of layer `layer` (entry `pos` of
    /// this directory's layers) moves the rest of its merge to.
    fn redirected(
        &self,
        stack: &Stack,
        rel: &[u8],
        r: RedirectAt,
        (layer, pos): (usize, usize),
        at: &Path,
    ) -> Result<Option<ImageDir>> {
        let resolved = match &r.to {
            Redirect::Relative(n) => {
                let f = self.lookup_from(stack, rel, n, true, pos + 1)?;
                indirect::target_dir(stack, f, &super::join(rel, n))?
            }
            Redirect::Absolute(c) => indirect::dir_at_from(stack, c, layer + 1)?,
        };
        match resolved {
            Resolved::Dir(d) => Ok(Some(d)),
            Resolved::Nothing(_) => Ok(None),
            Resolved::Hostile(why) => Err(indirect::hostile(at, &r.value, &why)),
        }
    }

    /// Every name the image shows in this directory, with what shows it.
    pub fn list(&self, stack: &Stack, rel: &[u8]) -> Result<BTreeMap<OsString, (usize, Stat)>> {
        let mut names: BTreeMap<OsString, (Stacking, Option<Stat>)> = BTreeMap::new();
        for (pos, d) in self.dirs.iter().enumerate() {
            let at = stack.lowers[d.layer].at(rel);
            let listing = d.place.listing(&at)?;
            let mut here: BTreeMap<OsString, (Option<Stat>, bool)> = BTreeMap::new();
            for e in listing.entries {
                match e.kind {
                    Marker::OpaqueFile => {}
                    Marker::Whiteout { target, .. } => here.entry(target).or_default().1 = true,
                    Marker::Object => here.entry(e.name).or_default().0 = Some(e.st),
                }
            }
            for (name, (obj, whiteout)) in here {
                let (stacking, shown) = names.entry(name).or_default();
                // Listings do not merge: what shows in a directory is its first object.
                let was = stacking.shown;
                stacking.layer(pos, obj.map(|_| (false, false)), whiteout);
                if was.is_none() && stacking.shown == Some(pos) {
                    *shown = obj;
                }
            }
        }
        Ok(names
            .into_iter()
            .filter_map(|(n, (s, st))| Some((n, (s.shown?, st?))))
            .collect())
    }
}

/// An image directory on the path of a deep walk (see `descent.rs`): open, or parked with the
/// fds of its lower directories closed where the directory below it on the path has the same
/// layer (and can reopen them as its `..`). Directories of image layers hold no fd: they stay.
pub(crate) enum PathImage {
    /// The image has no directory here.
    Absent,
    Open(ImageDir),
    Parked(Vec<(usize, DirMarks, bool, Parked)>),
}

/// A lower directory of a parked image directory.
pub(crate) enum Parked {
    Fs(PathDir),
    Catalog(CatalogDir),
}

impl PathImage {
    pub fn new(img: Option<ImageDir>) -> PathImage {
        img.map_or(PathImage::Absent, PathImage::Open)
    }

    /// The image directory, if the image has one here; EBADF while parked (a walk works at the
    /// open end of its path only).
    pub fn get(&self) -> rustix::io::Result<Option<&ImageDir>> {
        match self {
            PathImage::Absent => Ok(None),
            PathImage::Open(img) => Ok(Some(img)),
            PathImage::Parked(_) => Err(rustix::io::Errno::BADF),
        }
    }

    fn has_layer(&self, layer: usize) -> bool {
        match self {
            PathImage::Absent => false,
            PathImage::Open(img) => img.dirs.iter().any(|d| d.layer == layer && !d.jumped),
            PathImage::Parked(v) => v.iter().any(|&(l, _, jumped, _)| l == layer && !jumped),
        }
    }

    /// Parks what `child` (the image directory one level down the path) can reopen.
    pub fn park(&mut self, child: &PathImage) -> rustix::io::Result<()> {
        let PathImage::Open(img) = self else {
            return Ok(());
        };
        let mut parked = Vec::with_capacity(img.dirs.len());
        for d in std::mem::take(&mut img.dirs) {
            let slot = match d.place {
                Place::Fs(fd) => {
                    let mut dir = PathDir::new(fd);
                    if child.has_layer(d.layer) {
                        dir.park()?;
                    }
                    Parked::Fs(dir)
                }
                Place::Catalog(c) => Parked::Catalog(c),
            };
            parked.push((d.layer, d.marks, d.jumped, slot));
        }
        *self = PathImage::Parked(parked);
        Ok(())
    }

    /// Reopens what [`PathImage::park`] closed, through `child`, which is open.
    pub fn unpark(&mut self, child: &PathImage) -> rustix::io::Result<()> {
        let PathImage::Parked(parked) = self else {
            return Ok(());
        };
        let below = child.get()?;
        let mut dirs = Vec::with_capacity(parked.len());
        for (layer, marks, jumped, slot) in std::mem::take(parked) {
            let place = match slot {
                Parked::Fs(mut dir) => {
                    if !dir.is_open() {
                        let c = below
                            .and_then(|b| b.dirs.iter().find(|d| d.layer == layer && !d.jumped))
                            .and_then(|d| d.place.fd())
                            .ok_or(rustix::io::Errno::BADF)?;
                        dir.unpark(c)?;
                    }
                    Place::Fs(dir.into_fd()?)
                }
                Parked::Catalog(c) => Place::Catalog(c),
            };
            dirs.push(LowerDir {
                layer,
                place,
                marks,
                jumped,
            });
        }
        *self = PathImage::Open(ImageDir { dirs });
        Ok(())
    }
}
