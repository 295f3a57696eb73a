//! A directory of one layer, as the union reads it: a directory on a filesystem (the upper, and
//! lowers given as directories), reached through an `O_PATH` fd and `*at` calls that never
//! follow a symlink; or a directory of an image layer's catalog (`crate::image`), read from
//! memory and the catalog file. Everything the union asks of a lower layer goes through here,
//! so the rest of the core does not care which kind a lower is. The upper is always a
//! filesystem directory: code that changes it takes the fd ([`LayerDir::fs_fd`]).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::Stat;
use rustix::io::Errno as RErrno;

use super::fsdir::FsDir;
use crate::format::markers::{self, DirMarks, Marker};
use crate::image::catalog::Entry;
use crate::image::layer::ImageLayer;
use crate::sys::{self, RawEntry};

/// A directory of one layer.
pub(crate) enum LayerDir {
    /// On a filesystem (its fd opened on demand, see `fsdir.rs`).
    Fs(FsDir),
    /// In an image layer's catalog.
    Image(ImageDir),
}

/// An image layer as a lower of the union: the layer, and what its objects' attributes are
/// modelled on (their device, and a real stat result whose other fields are kept).
pub(crate) struct ImageLower {
    pub layer: ImageLayer,
    /// The device number the view gives the layer's objects (see `Union`'s numbering).
    pub dev: u64,
    template: Stat,
}

impl ImageLower {
    pub fn new(layer: ImageLayer, dev: u64) -> std::io::Result<Arc<ImageLower>> {
        let template = layer.blob_stat()?;
        Ok(Arc::new(ImageLower { layer, dev, template }))
    }

    /// The root directory of the layer.
    pub fn root(self: &Arc<Self>) -> Arc<LayerDir> {
        let e = self.layer.root().clone();
        Arc::new(LayerDir::Image(ImageDir {
            lower: Arc::clone(self),
            entry: e,
        }))
    }

    /// The stat result of the catalog entry `e`, as a directory on a disk would give it.
    pub fn stat_of(&self, e: &Entry) -> Stat {
        let mut st = self.template;
        st.st_dev = self.dev;
        st.st_ino = e.ino;
        st.st_mode = e.mode;
        st.st_nlink = e.nlink.into();
        st.st_uid = e.uid;
        st.st_gid = e.gid;
        st.st_rdev = e.rdev;
        st.st_size = e.size as i64;
        st.st_blksize = 4096;
        st.st_blocks = e.size.div_ceil(512) as i64;
        st.st_mtime = e.mtime.0;
        st.st_mtime_nsec = e.mtime.1.into();
        (st.st_atime, st.st_atime_nsec) = (st.st_mtime, st.st_mtime_nsec);
        (st.st_ctime, st.st_ctime_nsec) = (st.st_mtime, st.st_mtime_nsec);
        st
    }
}

/// A directory of an image layer: its own catalog entry (which names its directory id).
pub(crate) struct ImageDir {
    pub lower: Arc<ImageLower>,
    pub entry: Entry,
}

impl ImageDir {
    fn id(&self) -> u32 {
        self.entry.dir.unwrap_or(u32::MAX)
    }

    fn err(e: impl std::fmt::Display) -> RErrno {
        tracing::warn!("{e}");
        RErrno::IO
    }

    pub fn lookup(&self, name: &OsStr) -> rustix::io::Result<Option<Entry>> {
        self.lower.layer.lookup(self.id(), name.as_bytes()).map_err(Self::err)
    }

    fn entry(&self, name: &OsStr) -> rustix::io::Result<Entry> {
        self.lookup(name)?.ok_or(RErrno::NOENT)
    }
}

/// The value of xattr `attr` among `xattrs`.
fn xattr_in(xattrs: &[crate::image::catalog::Xattr], attr: &[u8]) -> Option<Vec<u8>> {
    xattrs.iter().find(|(n, _)| &**n == attr).map(|(_, v)| v.to_vec())
}

impl LayerDir {
    /// A layer's root on a filesystem.
    pub fn fs(fd: OwnedFd) -> Arc<LayerDir> {
        Arc::new(LayerDir::Fs(FsDir::root(fd)))
    }

    /// The subdirectory `name` of `self` (on a filesystem), already open as `fd`.
    pub fn fs_child(self: &Arc<Self>, name: &OsStr, fd: OwnedFd) -> rustix::io::Result<Arc<LayerDir>> {
        FsDir::child(self, name, fd)
    }

    /// After a rename in the upper: the directory is now `name` in `parent`.
    pub fn moved(&self, parent: Arc<LayerDir>, name: &OsStr) {
        if let LayerDir::Fs(f) = self {
            f.moved(parent, name);
        }
    }

    /// The fd of a directory on a filesystem (every upper directory is one); none for an image
    /// layer's directory, which has nothing to change.
    pub fn fs_fd(&self) -> Option<Arc<OwnedFd>> {
        match self {
            LayerDir::Fs(f) => match f.fd() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!("a layer directory could not be opened again: {e}");
                    None
                }
            },
            LayerDir::Image(_) => None,
        }
    }

    /// The directory's own attributes.
    pub fn stat(&self) -> rustix::io::Result<Stat> {
        match self {
            LayerDir::Fs(f) => rustix::fs::fstat(&*f.fd()?),
            LayerDir::Image(d) => Ok(d.lower.stat_of(&d.entry)),
        }
    }

    /// How the directory is marked (opaque, holding xattr whiteouts).
    pub fn marks(&self) -> rustix::io::Result<DirMarks> {
        match self {
            LayerDir::Fs(f) => markers::dir_marks(f.fd()?.as_fd()),
            LayerDir::Image(d) => markers::marks_of(&|x| Ok(xattr_in(&d.entry.xattrs, x.as_bytes())), &|| {
                Ok(d.lookup(OsStr::new(markers::OPAQUE_MARKER))?.is_some())
            }),
        }
    }

    /// The raw value of the directory's redirect xattr (`format::redirect`), if it has one.
    /// Only directories on a filesystem have one: an image layer's directory is never the
    /// renamed upper of an overlay. Unreadable counts as absent, as for opaque markers.
    pub fn redirect(&self) -> rustix::io::Result<Option<Vec<u8>>> {
        let LayerDir::Fs(f) = self else { return Ok(None) };
        let fd = f.fd()?;
        for x in crate::format::redirect::XATTRS {
            match sys::get_xattr_fd(fd.as_fd(), OsStr::new(x)) {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) | Err(RErrno::ACCESS) | Err(RErrno::PERM) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Every entry, minus `.` and `..`.
    pub fn read_dir(&self) -> rustix::io::Result<Vec<RawEntry>> {
        match self {
            LayerDir::Fs(f) => sys::read_dir(f.fd()?.as_fd()),
            LayerDir::Image(d) => {
                sys::count_dir_read();
                let entries = d.lower.layer.dir(d.id()).map_err(ImageDir::err)?;
                Ok(entries
                    .iter()
                    .map(|e| RawEntry {
                        name: OsStr::from_bytes(&e.name).to_os_string(),
                        ino: e.ino,
                        dtype: rustix::fs::FileType::from_raw_mode(e.mode),
                    })
                    .collect())
            }
        }
    }

    /// The entry `name`, never following a symlink; ENOENT if there is none.
    pub fn stat_at(&self, name: &OsStr) -> rustix::io::Result<Stat> {
        match self {
            LayerDir::Fs(f) => sys::stat_at(f.fd()?.as_fd(), name),
            LayerDir::Image(d) => Ok(d.lower.stat_of(&d.entry(name)?)),
        }
    }

    /// The entry `name`, if there is one.
    pub fn stat_at_opt(&self, name: &OsStr) -> rustix::io::Result<Option<Stat>> {
        match self.stat_at(name) {
            Ok(st) => Ok(Some(st)),
            Err(RErrno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What the entry `name` (with stat `st`) of this directory, marked `marks`, is.
    pub fn classify(&self, marks: DirMarks, name: &OsStr, st: &Stat) -> Marker {
        match self {
            LayerDir::Fs(f) => match f.fd() {
                Ok(fd) => markers::classify(fd.as_fd(), marks, name, st),
                Err(_) => markers::classify_with(marks, name, st, &|| false),
            },
            LayerDir::Image(d) => markers::classify_with(marks, name, st, &|| {
                d.lookup(name)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.xattrs.iter().any(|(n, _)| markers::is_whiteout_xattr(n)))
            }),
        }
    }

    /// The subdirectory `name`, refusing symlinks.
    pub fn open_dir(self: &Arc<Self>, name: &OsStr) -> rustix::io::Result<Arc<LayerDir>> {
        match &**self {
            LayerDir::Fs(f) => {
                let fd = sys::open_path_dir(f.fd()?.as_fd(), name)?;
                self.fs_child(name, fd)
            }
            LayerDir::Image(d) => {
                let e = d.entry(name)?;
                if e.dir.is_none() {
                    return Err(RErrno::NOTDIR);
                }
                Ok(Arc::new(LayerDir::Image(ImageDir {
                    lower: Arc::clone(&d.lower),
                    entry: e,
                })))
            }
        }
    }

    /// An xattr of the entry `name`.
    pub fn get_xattr(&self, name: &OsStr, attr: &str) -> rustix::io::Result<Option<Vec<u8>>> {
        match self {
            LayerDir::Fs(f) => sys::get_xattr(f.fd()?.as_fd(), name, attr),
            LayerDir::Image(d) => Ok(xattr_in(&d.entry(name)?.xattrs, attr.as_bytes())),
        }
    }
}
