//! Where an object is, for system calls: a directory by its own fd, anything else as an entry
//! of its parent's layer directory, a file whose names are all gone through an open handle.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::OFlags;

use super::Union;
use super::handles::OpenFile;
use super::handles::{FileSource, ImageFile};
use super::layerdir::LayerDir;
use super::node::Node;
use crate::error::{Errno, FsResult};
use crate::sys;

/// Where an object is, for system calls.
pub(crate) enum Loc {
    /// A directory on a filesystem, by its own fd.
    Dir(Arc<OwnedFd>),
    /// Any other object on a filesystem, as the entry `name` of its directory's fd.
    Entry(Arc<OwnedFd>, OsString),
    /// An object of an image layer (read from its catalog; nothing to change).
    Image(ImageFile),
    /// An unlinked file, through an open handle.
    Open(Arc<OpenFile>),
}

/// How system calls reach a located object: as an entry of a directory, or by its own fd.
enum Way<'a> {
    Entry(BorrowedFd<'a>, &'a OsStr),
    Fd(BorrowedFd<'a>),
}

impl Loc {
    /// The directory `dir` itself.
    fn dir(dir: &LayerDir) -> rustix::io::Result<Loc> {
        Ok(match dir {
            LayerDir::Fs(f) => Loc::Dir(f.fd()?),
            LayerDir::Image(d) => Loc::Image(ImageFile {
                lower: Arc::clone(&d.lower),
                entry: d.entry.clone(),
            }),
        })
    }

    /// The entry `name` of `dir`.
    pub(super) fn entry(dir: &LayerDir, name: OsString) -> rustix::io::Result<Loc> {
        Ok(match dir {
            LayerDir::Fs(f) => Loc::Entry(f.fd()?, name),
            LayerDir::Image(d) => Loc::Image(ImageFile {
                lower: Arc::clone(&d.lower),
                entry: d.lookup(&name)?.ok_or(rustix::io::Errno::NOENT)?,
            }),
        })
    }

    /// How system calls reach it; EROFS for an object of an image layer, which has no fd.
    fn way(&self) -> rustix::io::Result<Way<'_>> {
        Ok(match self {
            Loc::Entry(dir, name) => Way::Entry(dir.as_fd(), name),
            Loc::Dir(dir) => Way::Fd(dir.as_fd()),
            Loc::Image(_) => return Err(rustix::io::Errno::ROFS),
            Loc::Open(f) => Way::Fd(f.fd().map_err(|_| rustix::io::Errno::ROFS)?.as_fd()),
        })
    }

    pub fn stat(&self) -> rustix::io::Result<rustix::fs::Stat> {
        match self {
            Loc::Entry(dir, name) => sys::stat_at(dir.as_fd(), name),
            Loc::Dir(dir) => rustix::fs::fstat(&**dir),
            Loc::Image(f) => Ok(f.lower.stat_of(&f.entry)),
            Loc::Open(f) => f.stat(),
        }
    }

    /// How xattr calls reach it on a filesystem.
    pub fn target(&self) -> rustix::io::Result<sys::Target<'_>> {
        Ok(match self.way()? {
            Way::Entry(dir, name) => sys::Target::Entry(dir, name),
            Way::Fd(fd) => sys::Target::Fd(fd),
        })
    }

    /// `(dirfd, path, flags)` for `*at` calls that must act on the object itself, never on a
    /// symlink's target.
    pub fn at(&self) -> rustix::io::Result<(BorrowedFd<'_>, OsString, rustix::fs::AtFlags)> {
        use std::os::unix::ffi::OsStringExt;
        Ok(match self.way()? {
            Way::Entry(dir, name) => (dir, name.to_os_string(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            Way::Fd(fd) => (
                rustix::fs::CWD,
                OsString::from_vec(sys::fd_path(fd).into_bytes()),
                rustix::fs::AtFlags::empty(),
            ),
        })
    }

    /// Opens it for I/O.
    pub fn open(&self, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        match self.way()? {
            Way::Entry(dir, name) => sys::open_at(dir, name, flags),
            Way::Fd(fd) => sys::reopen(fd, flags),
        }
    }

    /// The object of an image layer this is, if it is one (in a directory of an image layer,
    /// or a file of one open through a handle).
    pub fn image_file(&self) -> Option<&ImageFile> {
        match self {
            Loc::Image(f) => Some(f),
            Loc::Open(f) => match &f.source {
                FileSource::Image(i) => Some(i),
                FileSource::Fd(_) => None,
            },
            Loc::Dir(_) | Loc::Entry(..) => None,
        }
    }

    /// The value of the xattr `name`; ENODATA if it has none.
    pub fn read_xattr(&self, name: &OsStr) -> rustix::io::Result<Vec<u8>> {
        match self.image_file() {
            Some(f) => f
                .entry
                .xattrs
                .iter()
                .find(|(n, _)| **n == *name.as_bytes())
                .map(|(_, v)| v.to_vec())
                .ok_or(rustix::io::Errno::NODATA),
            None => self.target()?.read_xattr(name),
        }
    }

    /// The names of its xattrs.
    pub fn list_xattrs(&self) -> rustix::io::Result<Vec<OsString>> {
        match self.image_file() {
            Some(f) => Ok(f
                .entry
                .xattrs
                .iter()
                .map(|(n, _)| OsStr::from_bytes(n).to_os_string())
                .collect()),
            None => self.target()?.list_xattrs(),
        }
    }

    /// The target of a symlink.
    pub fn readlink(&self) -> rustix::io::Result<Vec<u8>> {
        match self {
            Loc::Entry(dir, name) => Ok(rustix::fs::readlinkat(&**dir, name, Vec::new())?.into_bytes()),
            Loc::Image(f) => f
                .entry
                .target
                .as_ref()
                .map(|t| t.to_vec())
                .ok_or(rustix::io::Errno::INVAL),
            _ => Err(rustix::io::Errno::INVAL),
        }
    }
}

impl Union {
    /// A name of `node` in a directory the table still holds (the kernel may have forgotten
    /// the directory of the name we saw first, while it still holds another hard link's).
    pub(crate) fn live_name(&self, node: &Node) -> Option<(u64, OsString)> {
        {
            let s = node.state.read();
            if s.unlinked {
                return None;
            }
            if s.parent == node.ino || self.nodes.get(s.parent).is_some() {
                return Some((s.parent, s.name.to_os_string()));
            }
        }
        node.state.write().promote_alias(|p| self.nodes.get(p).is_some())
    }
    /// Where `node`'s visible object is. A file whose names are all gone is reached through
    /// the open handle `fh`, if given.
    pub(crate) fn locate(&self, node: &Node, fh: Option<u64>) -> FsResult<Loc> {
        let (layer, dir_fd) = {
            let s = node.state.read();
            (s.layer(), s.dir_fd())
        };
        if let Some(dir) = dir_fd {
            return Ok(Loc::dir(&dir)?);
        }
        if let Some((parent, name)) = self.live_name(node) {
            if let Some(dfd) = self
                .nodes
                .get(parent)
                .and_then(|p| self.dir_layers(&p).ok())
                .and_then(|l| layer_fd(&l, layer))
            {
                return Ok(Loc::entry(&dfd, name)?);
            }
        }
        let open = match fh {
            Some(fh) => self.handles.file(fh).ok(),
            None => self.handles.files_of(node.ino).into_iter().next(),
        };
        open.map(Loc::Open).ok_or(Errno::ENOENT)
    }
}

pub(crate) fn layer_fd(layers: &[(usize, Arc<LayerDir>)], layer: usize) -> Option<Arc<LayerDir>> {
    layers.iter().find(|(l, _)| *l == layer).map(|(_, fd)| Arc::clone(fd))
}
