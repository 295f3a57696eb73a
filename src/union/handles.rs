//! Open handles: files (an fd on the object in one layer) and directories (the node a listing
//! reads), by the number the kernel passes back with each request.
//!
//! The table also knows which handles each node has open, newest last: a file whose every name
//! is gone is reached through them, and a directory being listed keeps its index in memory.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::node::Node;
use crate::error::{Errno, FsResult};

/// An open file.
pub(crate) struct OpenFile {
    pub fd: OwnedFd,
    /// The layer `fd` is in (a handle opened before a copy-up still reads the lower).
    pub layer: usize,
    /// Held so the node outlives a forget while the file is open.
    pub node: Arc<Node>,
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
