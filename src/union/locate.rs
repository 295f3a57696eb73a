//! Where an object is, for system calls: a directory by its own fd, anything else as an entry
//! of its parent's layer directory, a file whose names are all gone through an open handle.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::Union;
use super::handles::OpenFile;
use super::layerdir::LayerDir;
use super::node::Node;
use crate::error::{Errno, FsResult};
use crate::sys;

/// Where an object is, for system calls.
pub(crate) enum Loc {
    /// A directory, by its own layer directory.
    Dir(Arc<LayerDir>),
    /// Any other object, as the entry `name` of a directory (in the object's layer).
    Entry(Arc<LayerDir>, OsString),
    /// An unlinked file, through an open handle.
    Open(Arc<OpenFile>),
}

/// How system calls reach a located object: as an entry of a directory, or by its own fd.
enum Way<'a> {
    Entry(BorrowedFd<'a>, &'a OsStr),
    Fd(BorrowedFd<'a>),
}

impl Loc {
    /// How system calls reach it; EROFS for an object of an image layer, which has no fd.
    fn way(&self) -> rustix::io::Result<Way<'_>> {
        Ok(match self {
            Loc::Entry(dir, name) => Way::Entry(dir.borrow_fd().ok_or(rustix::io::Errno::ROFS)?, name),
            Loc::Dir(dir) => Way::Fd(dir.borrow_fd().ok_or(rustix::io::Errno::ROFS)?),
            Loc::Open(f) => Way::Fd(f.fd.as_fd()),
        })
    }

    pub fn stat(&self) -> rustix::io::Result<rustix::fs::Stat> {
        match self {
            Loc::Entry(dir, name) => dir.stat_at(name),
            Loc::Dir(dir) => dir.stat(),
            Loc::Open(f) => rustix::fs::fstat(&f.fd),
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

    /// The target of a symlink.
    pub fn readlink(&self) -> rustix::io::Result<Vec<u8>> {
        match self {
            Loc::Entry(dir, name) => dir.readlink(name),
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
        if let Some(fd) = dir_fd {
            return Ok(Loc::Dir(fd));
        }
        if let Some((parent, name)) = self.live_name(node) {
            if let Some(dfd) = self
                .nodes
                .get(parent)
                .and_then(|p| self.dir_layers(&p).ok())
                .and_then(|l| layer_fd(&l, layer))
            {
                return Ok(Loc::Entry(dfd, name));
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
