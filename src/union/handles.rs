//! Open handles: files (an fd on the object in one layer) and directories (the node a listing
//! reads), by the number the kernel passes back with each request.
//!
//! The table also knows which handles each node has open, newest last: a file whose every name
//! is gone is reached through them, and a directory being listed keeps its index in memory.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::layerdir::ImageLower;
use super::node::Node;
use crate::error::{Errno, FsResult};
use crate::image::cache::LastPiece;
use crate::image::catalog::Entry;

/// What an open file reads: an fd on a layer's filesystem, or a file of an image layer.
pub(crate) enum FileSource {
    Fd(OwnedFd),
    Image(ImageFile),
}

/// A regular file of an image layer, open for reading.
#[derive(Clone)]
pub(crate) struct ImageFile {
    pub lower: Arc<ImageLower>,
    pub entry: Entry,
}

/// An open file.
pub(crate) struct OpenFile {
    pub source: FileSource,
    /// The layer `fd` is in (a handle opened before a copy-up still reads the lower).
    pub layer: usize,
    /// Held so the node outlives a forget while the file is open.
    pub node: Arc<Node>,
    /// The piece of an image file read last (reads smaller than a piece come in a row).
    pub last_piece: LastPiece,
}

impl OpenFile {
    /// Its fd; EBADF for a file of an image layer, which is only ever read.
    pub fn fd(&self) -> FsResult<&OwnedFd> {
        match &self.source {
            FileSource::Fd(fd) => Ok(fd),
            FileSource::Image(_) => Err(Errno::EBADF),
        }
    }

    /// Its attributes now.
    pub fn stat(&self) -> rustix::io::Result<rustix::fs::Stat> {
        match &self.source {
            FileSource::Fd(fd) => rustix::fs::fstat(fd),
            FileSource::Image(f) => Ok(f.lower.stat_of(&f.entry)),
        }
    }

    /// Reads into `buf` at `off`, to a full buffer or the end of the file.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> FsResult<usize> {
        match &self.source {
            FileSource::Fd(fd) => {
                let mut done = 0;
                while done < buf.len() {
                    let n = rustix::io::pread(fd, &mut buf[done..], off + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
            FileSource::Image(f) => {
                let mut done = 0;
                while done < buf.len() {
                    let n = f
                        .lower
                        .layer
                        .read_with(&f.entry, off + done as u64, &mut buf[done..], &self.last_piece)
                        .map_err(|e| {
                            let name = String::from_utf8_lossy(&f.entry.name);
                            tracing::warn!(ino = self.node.ino, "reading {name} at {}: {e}", off + done as u64);
                            Errno::EIO
                        })?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
        }
    }
}

#[derive(Clone)]
enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<Node>),
}

impl Handle {
    fn ino(&self) -> u64 {
        match self {
            Handle::File(f) => f.node.ino,
            Handle::Dir(n) => n.ino,
        }
    }
}

pub(crate) struct HandleTable {
    map: DashMap<u64, Handle>,
    by_node: DashMap<u64, Vec<u64>>,
    next: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            map: DashMap::new(),
            by_node: DashMap::new(),
            next: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    fn add(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.by_node.entry(h.ino()).or_default().push(fh);
        self.map.insert(fh, h);
        fh
    }

    pub fn open_file(&self, f: OpenFile) -> u64 {
        self.add(Handle::File(Arc::new(f)))
    }

    pub fn open_dir(&self, node: Arc<Node>) -> u64 {
        self.add(Handle::Dir(node))
    }

    /// The open file `fh`: EBADF if there is none, EISDIR for a directory handle.
    pub fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        match self.map.get(&fh).map(|h| h.value().clone()) {
            Some(Handle::File(f)) => Ok(f),
            Some(Handle::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// The directory of handle `fh`: EBADF if there is none, ENOTDIR for a file handle.
    pub fn dir(&self, fh: u64) -> FsResult<Arc<Node>> {
        match self.map.get(&fh).map(|h| h.value().clone()) {
            Some(Handle::Dir(n)) => Ok(n),
            Some(Handle::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::EBADF),
        }
    }

    /// The open files of node `ino`, newest first.
    pub fn files_of(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        let fhs = self.by_node.get(&ino).map(|v| v.value().clone()).unwrap_or_default();
        fhs.iter().rev().filter_map(|fh| self.file(*fh).ok()).collect()
    }

    /// Whether node `ino` has any handle open.
    pub fn is_open(&self, ino: u64) -> bool {
        self.by_node.contains_key(&ino)
    }

    /// Closes `fh`.
    pub fn release(&self, fh: u64) {
        let Some((_, h)) = self.map.remove(&fh) else { return };
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.by_node.entry(h.ino()) {
            e.get_mut().retain(|f| *f != fh);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}
