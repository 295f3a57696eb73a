//! Where a directory of one lower layer is, for the tools: on a filesystem (an `O_PATH` fd and
//! `*at` calls that never follow a symlink), or in an image layer's catalog (`crate::image`,
//! read from memory and the catalog file, no fd at all). Lookups, listings and walks of lowers
//! go through here, so an image layer is a lower like any other.
//!
//! An image layer's objects are stated exactly as the mount states them (`ImageLower::stat_of`:
//! the device `image::layer_dev` gives the layer, the catalog's inode numbers, its times), so
//! the identities a mount records (the hard-link index's keys and origins, inode numbers) mean
//! the same object here.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::Stat;

use super::listing::{self, Listing};
use super::{LayerError, Result};
use crate::format::markers::{self, DirMarks, Marker};
use crate::image::catalog::{Entry as CatEntry, Xattr};
use crate::image::layer::LayerReadError;
use crate::sys;
use crate::union::layerdir::ImageLower;

/// A directory of one lower layer.
pub(crate) enum Place {
    Fs(OwnedFd),
    Catalog(CatalogDir),
}

/// A directory of an image layer: the layer, and the directory's own catalog entry (which
/// names its directory id).
#[derive(Clone)]
pub(crate) struct CatalogDir {
    pub lower: Arc<ImageLower>,
    pub entry: CatEntry,
}

/// A catalog that cannot be read (damaged behind our back) is an I/O error of the layer.
fn catalog_err(e: LayerReadError) -> io::Error {
    io::Error::other(e)
}

impl CatalogDir {
    pub fn root(lower: &Arc<ImageLower>) -> CatalogDir {
        CatalogDir {
            lower: Arc::clone(lower),
            entry: lower.layer.root().clone(),
        }
    }

    fn id(&self) -> u32 {
        self.entry.dir.unwrap_or(u32::MAX)
    }

    fn lookup(&self, name: &OsStr) -> io::Result<Option<CatEntry>> {
        self.lower.layer.lookup(self.id(), name.as_bytes()).map_err(catalog_err)
    }

    /// The directory's entries, sorted by name.
    pub fn entries(&self) -> io::Result<Arc<Vec<CatEntry>>> {
        self.lower.layer.dir(self.id()).map_err(catalog_err)
    }

    /// The subdirectory whose catalog entry is `e`.
    pub fn child(&self, e: CatEntry) -> CatalogDir {
        CatalogDir {
            lower: Arc::clone(&self.lower),
            entry: e,
        }
    }

    pub fn marks(&self) -> io::Result<DirMarks> {
        let xattr = |x: &str| -> rustix::io::Result<_> { Ok(xattr_in(&self.entry.xattrs, x.as_bytes())) };
        let marker_file = || match self.lookup(OsStr::new(markers::OPAQUE_MARKER)) {
            Ok(found) => Ok(found.is_some()),
            Err(_) => Err(rustix::io::Errno::IO),
        };
        Ok(markers::marks_of(&xattr, &marker_file)?)
    }

    /// The listing of this directory as `Listing::read` gives a directory on a filesystem.
    pub fn listing(&self) -> io::Result<Listing> {
        let marks = self.marks()?;
        let entries = self.entries()?;
        let entries = entries
            .iter()
            .map(|e| {
                let name = OsStr::from_bytes(&e.name).to_os_string();
                let st = self.lower.stat_of(e);
                let kind = markers::classify_with(marks, &name, &st, &|| has_whiteout_xattr(e));
                listing::Entry { name, st, kind }
            })
            .collect();
        Ok(Listing { marks, entries })
    }
}

fn xattr_in(xattrs: &[Xattr], attr: &[u8]) -> Option<Vec<u8>> {
    xattrs.iter().find(|(n, _)| &**n == attr).map(|(_, v)| v.to_vec())
}

fn has_whiteout_xattr(e: &CatEntry) -> bool {
    e.xattrs.iter().any(|(n, _)| markers::is_whiteout_xattr(n))
}

impl Place {
    /// The fd of a directory on a filesystem.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Place::Fs(fd) => Some(fd.as_fd()),
            Place::Catalog(_) => None,
        }
    }

    /// How the directory is marked (opaque, holding xattr whiteouts).
    pub fn marks(&self) -> io::Result<DirMarks> {
        match self {
            Place::Fs(fd) => Ok(markers::dir_marks(fd.as_fd())?),
            Place::Catalog(c) => c.marks(),
        }
    }

    /// The entry `name`, never following a symlink.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        match self {
            Place::Fs(fd) => Ok(sys::stat_at_opt(fd.as_fd(), name)?),
            Place::Catalog(c) => Ok(c.lookup(name)?.map(|e| c.lower.stat_of(&e))),
        }
    }

    /// What the entry `name` (with stat `st`) of this directory, marked `marks`, is.
    pub fn classify(&self, marks: DirMarks, name: &OsStr, st: &Stat) -> Marker {
        match self {
            Place::Fs(fd) => markers::classify(fd.as_fd(), marks, name, st),
            Place::Catalog(c) => markers::classify_with(marks, name, st, &|| {
                c.lookup(name).ok().flatten().is_some_and(|e| has_whiteout_xattr(&e))
            }),
        }
    }

    /// The subdirectory `name`, refusing symlinks.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Place> {
        match self {
            Place::Fs(fd) => Ok(Place::Fs(sys::open_path_dir(fd.as_fd(), name)?)),
            Place::Catalog(c) => {
                let e = c.lookup(name)?.ok_or(rustix::io::Errno::NOENT)?;
                if e.dir.is_none() {
                    return Err(rustix::io::Errno::NOTDIR.into());
                }
                Ok(Place::Catalog(c.child(e)))
            }
        }
    }

    /// The xattr `attr` of the entry `name`.
    pub fn get_xattr(&self, name: &OsStr, attr: &str) -> io::Result<Option<Vec<u8>>> {
        match self {
            Place::Fs(fd) => Ok(sys::get_xattr(fd.as_fd(), name, attr)?),
            Place::Catalog(c) => {
                let e = c.lookup(name)?.ok_or(rustix::io::Errno::NOENT)?;
                Ok(xattr_in(&e.xattrs, attr.as_bytes()))
            }
        }
    }

    /// Every xattr of the entry `name`, by name.
    pub fn xattrs(&self, name: &OsStr) -> io::Result<Vec<(OsString, Vec<u8>)>> {
        match self {
            Place::Fs(fd) => {
                let t = sys::Target::Entry(fd.as_fd(), name);
                let mut out = Vec::new();
                for n in t.list_xattrs()? {
                    if let Some(v) = t.get_xattr(&n)? {
                        out.push((n, v));
                    }
                }
                Ok(out)
            }
            Place::Catalog(c) => {
                let e = c.lookup(name)?.ok_or(rustix::io::Errno::NOENT)?;
                Ok(e.xattrs
                    .iter()
                    .map(|(n, v)| (OsStr::from_bytes(n).to_os_string(), v.to_vec()))
                    .collect())
            }
        }
    }

    /// The directory's entries, classified; `at` names it in errors.
    pub fn listing(&self, at: &Path) -> Result<Listing> {
        match self {
            Place::Fs(fd) => Listing::read(fd.as_fd(), at),
            Place::Catalog(c) => c.listing().map_err(|e| LayerError::io(at, e)),
        }
    }
}

/// What [`walk_catalog`] calls: once per directory with its listing and no entry, then once
/// per entry of it.
pub(crate) type CatalogWalkFn<'f> = dyn FnMut(&Listing, Option<&listing::Entry>) -> Result<()> + 'f;

/// Every entry of an image layer, depth first in name order, like `listing::walk_all` for a
/// directory on a filesystem. The path is a stack on the heap (a layer may be of any depth);
/// a catalog needs no fds.
pub(crate) fn walk_catalog(root: CatalogDir, at: &Path, f: &mut CatalogWalkFn<'_>) -> Result<()> {
    /// A directory on the walk's path: its listing, its catalog entries (the same order), and
    /// the next entry to visit.
    struct Level {
        dir: CatalogDir,
        listing: Listing,
        raw: Arc<Vec<CatEntry>>,
        next: usize,
    }
    fn enter(dir: CatalogDir, at: &Path, f: &mut CatalogWalkFn<'_>) -> Result<Level> {
        let listing = dir.listing().map_err(|e| LayerError::io(at, e))?;
        f(&listing, None)?;
        let raw = dir.entries().map_err(|e| LayerError::io(at, e))?;
        Ok(Level {
            dir,
            listing,
            raw,
            next: 0,
        })
    }
    let mut path = vec![enter(root, at, f)?];
    while let Some(top) = path.last_mut() {
        let i = top.next;
        let Some(e) = top.listing.entries.get(i) else {
            path.pop();
            continue;
        };
        top.next += 1;
        f(&top.listing, Some(e))?;
        let Some(cat) = top.raw.get(i).filter(|c| e.is_dir() && c.dir.is_some()) else {
            continue;
        };
        let sub = top.dir.child(cat.clone());
        path.push(enter(sub, at, f)?);
    }
    Ok(())
}
