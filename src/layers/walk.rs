//! Reading layers: an upper directory's entries classified through `whiteout.rs`, and the image
//! (the union of the lowers, without the upper) at the paths an upper walk reaches.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use super::{LayerError, Result, full_path};
use crate::descent::{Descent, Frame, PathDir};
use crate::format::markers::{self, DirMarks, Marker, Stacking};
use crate::format::xattrs::KERNEL_INDIRECT as KERNEL_INDIRECT_XATTRS;
use crate::sys;

/// One layer directory, opened.
pub struct Layer {
    pub path: PathBuf,
    pub(crate) root: OwnedFd,
    pub dev: u64,
    pub ino: u64,
}

impl Layer {
    /// Opens the layer directory at `path` (`role` names it in errors).
    pub fn open(role: &str, path: &Path) -> Result<Layer> {
        let fd = sys::open_dir_path(path).map_err(|e| match e {
            rustix::io::Errno::NOTDIR => LayerError::invalid(path, format!("{role} is not a directory")),
            e => LayerError::invalid(path, format!("{role}: {}", std::io::Error::from(e))),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| LayerError::io(path, e))?;
        Ok(Layer {
            path: path.to_path_buf(),
            root: fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// `path/rel`, for messages.
    pub(crate) fn at(&self, rel: &[u8]) -> PathBuf {
        full_path(&self.path, rel)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// A layer stack: lowers top first, and the upper if there is one.
pub struct Stack {
    pub lowers: Vec<Layer>,
    pub upper: Option<Layer>,
    /// The workdir the union is mounted with: its hard-link index says what lower files with
    /// several names show after one of them was copied up (see `linked.rs`).
    pub workdir: Option<PathBuf>,
}

impl Stack {
    /// Opens the layers; a layer given twice (or the upper among the lowers) is refused.
    pub fn open(lowers: &[PathBuf], upper: Option<&Path>) -> Result<Stack> {
        let upper = upper.map(|u| Layer::open("upper", u)).transpose()?;
        let mut ls: Vec<Layer> = Vec::new();
        for l in lowers {
            let layer = Layer::open("lower layer", l)?;
            let same = |o: &Layer| o.dev == layer.dev && o.ino == layer.ino;
            if upper.as_ref().is_some_and(same) {
                return Err(LayerError::invalid(l, "is the upper too; a layer must appear once"));
            }
            if ls.iter().any(same) {
                return Err(LayerError::invalid(l, "lower layer given twice"));
            }
            ls.push(layer);
        }
        Ok(Stack {
            lowers: ls,
            upper,
            workdir: None,
        })
    }

    /// The same stack, read with the workdir `w` (see [`Stack::workdir`]).
    pub fn with_workdir(mut self, w: Option<PathBuf>) -> Stack {
        self.workdir = w;
        self
    }

    /// The upper, or an error naming what is missing.
    pub fn upper(&self) -> Result<&Layer> {
        self.upper
            .as_ref()
            .ok_or_else(|| LayerError::invalid(PathBuf::from("--upper"), "an upper layer is required"))
    }

    /// The image's root directory: the lowers' roots, down to the first opaque one.
    pub(crate) fn image_root(&self) -> Result<ImageDir> {
        let mut dirs = Vec::new();
        for (i, l) in self.lowers.iter().enumerate() {
            let fd = sys::open_path_dir(l.fd(), OsStr::new(".")).map_err(|e| LayerError::io(&l.path, e))?;
            let marks = markers::dir_marks(fd.as_fd()).map_err(|e| LayerError::io(&l.path, e))?;
            dirs.push(LowerDir { layer: i, fd, marks });
            if marks.opaque {
                break;
            }
        }
        Ok(ImageDir { dirs })
    }
}

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

/// One lower layer's directory taking part in an image directory.
pub(crate) struct LowerDir {
    /// Index in `Stack::lowers`.
    pub layer: usize,
    pub fd: OwnedFd,
    pub marks: DirMarks,
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
        if markers::is_reserved_name(name) || name.is_empty() {
            return Ok(None);
        }
        let mut found: Option<Found> = None;
        let mut stacking = Stacking::default();
        for (pos, d) in self.dirs.iter().enumerate() {
            let at = || stack.lowers[d.layer].at(&super::join(rel, name));
            let st = sys::stat_at_opt(d.fd.as_fd(), name).map_err(|e| LayerError::io(at(), e))?;
            let mut whiteout = sys::stat_at_opt(d.fd.as_fd(), &markers::oci_name(name))
                .map_err(|e| LayerError::io(at(), e))?
                .is_some();
            let mut object = None;
            let mut opened = None;
            if let Some(st) = st {
                if markers::classify(d.fd.as_fd(), d.marks, name, &st) == Marker::Object {
                    let dir = is_dir(&st);
                    let mut opaque = false;
                    // Only a directory the view shows (or merges) is opened, and only if asked.
                    if dir && open_dir && (found.is_none() || stacking.merging()) {
                        let fd = sys::open_path_dir(d.fd.as_fd(), name).map_err(|e| LayerError::io(at(), e))?;
                        let marks = markers::dir_marks(fd.as_fd()).map_err(|e| LayerError::io(at(), e))?;
                        opaque = marks.opaque;
                        opened = Some(LowerDir {
                            layer: d.layer,
                            fd,
                            marks,
                        });
                    }
                    object = Some((st, dir, opaque));
                } else {
                    whiteout = true;
                }
            }
            let before = (stacking.shown, stacking.merged.len());
            let more = stacking.layer(pos, object.as_ref().map(|&(_, dir, opaque)| (dir, opaque)), whiteout);
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
            // Without its image directory wanted, what shows is known at the first object.
            if !more || (found.is_some() && !open_dir) {
                break;
            }
        }
        Ok(found)
    }

    /// Every name the image shows in this directory, with what shows it.
    pub fn list(&self, stack: &Stack, rel: &[u8]) -> Result<BTreeMap<OsString, (usize, Stat)>> {
        let mut names: BTreeMap<OsString, (Stacking, Option<Stat>)> = BTreeMap::new();
        for (pos, d) in self.dirs.iter().enumerate() {
            let at = stack.lowers[d.layer].at(rel);
            let listing = Listing::read(d.fd.as_fd(), &at)?;
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

/// An image directory on the path of a deep walk (see `descent.rs`): open, or parked with the
/// fds of its lower directories closed where the directory below it on the path has the same
/// layer (and can reopen them as its `..`).
pub(crate) enum PathImage {
    /// The image has no directory here.
    Absent,
    Open(ImageDir),
    Parked(Vec<(usize, DirMarks, PathDir)>),
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
            PathImage::Open(img) => img.dirs.iter().any(|d| d.layer == layer),
            PathImage::Parked(v) => v.iter().any(|(l, ..)| *l == layer),
        }
    }

    /// Parks what `child` (the image directory one level down the path) can reopen.
    pub fn park(&mut self, child: &PathImage) -> rustix::io::Result<()> {
        let PathImage::Open(img) = self else {
            return Ok(());
        };
        let mut parked = Vec::with_capacity(img.dirs.len());
        for d in std::mem::take(&mut img.dirs) {
            let mut dir = PathDir::new(d.fd);
            if child.has_layer(d.layer) {
                dir.park()?;
            }
            parked.push((d.layer, d.marks, dir));
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
        for (layer, marks, mut dir) in std::mem::take(parked) {
            if !dir.is_open() {
                let c = below
                    .and_then(|b| b.dirs.iter().find(|d| d.layer == layer))
                    .ok_or(rustix::io::Errno::BADF)?;
                dir.unpark(c.fd.as_fd())?;
            }
            dirs.push(LowerDir {
                layer,
                fd: dir.into_fd()?,
                marks,
            });
        }
        *self = PathImage::Open(ImageDir { dirs });
        Ok(())
    }
}

/// Whether the xattr `name` is one of kernel overlayfs's metacopy/redirect markers.
pub(crate) fn is_kernel_indirect(name: &OsStr) -> bool {
    KERNEL_INDIRECT_XATTRS.iter().any(|k| name.as_bytes() == k.as_bytes())
}

/// The refusal of an object at `at` carrying the kernel marker `xattr`: part of it is in a
/// lower, where no offline tool can follow it.
pub(crate) fn indirect_refusal(at: &Path, xattr: &OsStr) -> LayerError {
    LayerError::invalid(
        at,
        format!(
            "has {} (kernel overlayfs metacopy/redirect keeps part of it in a lower); \
             mount with metacopy=off,redirect_dir=off or copy it up fully first",
            xattr.to_string_lossy()
        ),
    )
}

/// Refuses the upper object `dir/name` (at `at`) if kernel metacopy or redirect marks it.
pub(crate) fn refuse_kernel_indirect(at: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let names = sys::Target::Entry(dir, name)
        .list_xattrs()
        .map_err(|e| LayerError::io(at, e))?;
    match names.iter().find(|n| is_kernel_indirect(n)) {
        Some(n) => Err(indirect_refusal(at, n)),
        None => Ok(()),
    }
}
