//! A directory of one layer, as the union reads it: a directory on a filesystem (the upper, and
//! lowers given as directories), reached through an `O_PATH` fd and `*at` calls that never
//! follow a symlink; or a directory of an image layer's catalog (`crate::image`), read from
//! memory and the catalog file. Everything the union asks of a lower layer goes through here,
//! so the rest of the core does not care which kind a lower is. The upper is always a
//! filesystem directory: code that changes it takes the fd ([`LayerDir::fs_fd`]).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::Stat;
use rustix::io::Errno as RErrno;

use crate::format::markers::{self, DirMarks, Marker};
use crate::sys::{self, RawEntry};

/// A directory of one layer.
pub(crate) enum LayerDir {
    /// On a filesystem, by its `O_PATH` fd.
    Fs(Arc<OwnedFd>),
}

impl LayerDir {
    pub fn fs(fd: OwnedFd) -> Arc<LayerDir> {
        Arc::new(LayerDir::Fs(Arc::new(fd)))
    }

    /// The fd of a directory on a filesystem (every upper directory is one); none for an image
    /// layer's directory, which has nothing to change.
    pub fn fs_fd(&self) -> Option<Arc<OwnedFd>> {
        match self {
            LayerDir::Fs(fd) => Some(Arc::clone(fd)),
        }
    }

    /// The directory's own attributes.
    pub fn stat(&self) -> rustix::io::Result<Stat> {
        match self {
            LayerDir::Fs(fd) => rustix::fs::fstat(&**fd),
        }
    }

    /// How the directory is marked (opaque, holding xattr whiteouts).
    pub fn marks(&self) -> rustix::io::Result<DirMarks> {
        match self {
            LayerDir::Fs(fd) => markers::dir_marks(fd.as_fd()),
        }
    }

    /// Every entry, minus `.` and `..`.
    pub fn read_dir(&self) -> rustix::io::Result<Vec<RawEntry>> {
        match self {
            LayerDir::Fs(fd) => sys::read_dir(fd.as_fd()),
        }
    }

    /// The entry `name`, never following a symlink; ENOENT if there is none.
    pub fn stat_at(&self, name: &OsStr) -> rustix::io::Result<Stat> {
        match self {
            LayerDir::Fs(fd) => sys::stat_at(fd.as_fd(), name),
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
            LayerDir::Fs(fd) => markers::classify(fd.as_fd(), marks, name, st),
        }
    }

    /// The subdirectory `name`, refusing symlinks.
    pub fn open_dir(&self, name: &OsStr) -> rustix::io::Result<Arc<LayerDir>> {
        match self {
            LayerDir::Fs(fd) => Ok(LayerDir::fs(sys::open_path_dir(fd.as_fd(), name)?)),
        }
    }

    /// The target of the symlink `name`.
    pub fn readlink(&self, name: &OsStr) -> rustix::io::Result<Vec<u8>> {
        match self {
            LayerDir::Fs(fd) => Ok(rustix::fs::readlinkat(&**fd, name, Vec::new())?.into_bytes()),
        }
    }

    /// An xattr of the entry `name`.
    pub fn get_xattr(&self, name: &OsStr, attr: &str) -> rustix::io::Result<Option<Vec<u8>>> {
        match self {
            LayerDir::Fs(fd) => sys::get_xattr(fd.as_fd(), name, attr),
        }
    }

    /// For system calls on a filesystem directory; EROFS for an image layer's.
    pub fn borrow_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            LayerDir::Fs(fd) => Some(fd.as_fd()),
        }
    }
}
