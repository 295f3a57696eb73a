//! The node table: one `Node` per object the kernel knows, keyed by its inode number.
//!
//! Invariants:
//! - A node's id is the `st_ino` the view reports (FUSE uses one number for both). All hard
//!   links of an object share one node; copy-up does not change the number.
//! - `lookups` counts the kernel's references. Lookup and forget update it under the table's
//!   shard lock (`DashMap::entry`), so a forget racing a lookup cannot drop a node the kernel
//!   still holds.
//! - Lock order: a node's `ns` (namespace) mutex before any `state` lock; two `ns` mutexes in
//!   ascending id order; a `state` lock is never held across a call that takes another node's
//!   lock.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};

use super::index::DirIndex;
use crate::attr::Kind;

/// The root node's id (fixed by FUSE).
pub const ROOT: u64 = 1;

pub(crate) struct Node {
    pub ino: u64,
    lookups: AtomicU64,
    pub state: RwLock<NodeState>,
    /// Serialises copy-up of this object.
    pub copy_lock: Mutex<()>,
    /// Serialises namespace changes inside this directory.
    pub ns: Mutex<()>,
}

pub(crate) struct NodeState {
    /// The directory this node was last seen in, and its name there.
    pub parent: u64,
    pub name: OsString,
    pub kind: Kind,
    /// Index (into `Union::layers`) of the layer holding the visible object.
    pub layer: usize,
    /// `O_PATH` handle on the visible object.
    pub fd: Arc<OwnedFd>,
    pub dir: Option<DirState>,
}

/// What a directory node knows about its layers.
pub(crate) struct DirState {
    /// The layer directories merged into this one, top first: (layer index, `O_PATH` fd).
    pub layers: Vec<(usize, Arc<OwnedFd>)>,
    /// The merged listing, built on first use and kept in step with every change we make.
    pub index: Option<DirIndex>,
}

impl Node {
    pub fn new(ino: u64, state: NodeState) -> Self {
        Node {
            ino,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            ns: Mutex::new(()),
        }
    }
}

#[derive(Default)]
pub(crate) struct NodeTable {
    map: DashMap<u64, Arc<Node>>,
}

impl NodeTable {
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.map.get(&ino).map(|r| Arc::clone(r.value()))
    }

    /// Inserts `make()` unless a node with that id exists, then adds `lookups` references.
    /// Returns the node in the table and whether it was created.
    pub fn get_or_insert(&self, ino: u64, lookups: u64, make: impl FnOnce() -> Node) -> (Arc<Node>, bool) {
        match self.map.entry(ino) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(lookups, Ordering::Relaxed);
                (Arc::clone(e.get()), false)
            }
            Entry::Vacant(v) => {
                let n = Arc::new(make());
                n.lookups.store(lookups, Ordering::Relaxed);
                v.insert(Arc::clone(&n));
                (n, true)
            }
        }
    }

    /// Drops `n` kernel references; the node leaves the table at zero.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Entry::Occupied(e) = self.map.entry(ino) {
            let prev = e
                .get()
                .lookups
                .fetch_sub(n.min(e.get().lookups.load(Ordering::Relaxed)), Ordering::Relaxed);
            if prev <= n {
                e.remove();
            }
        }
    }

    /// Removes a node nobody references (used after internal walks created it).
    pub fn prune(&self, ino: u64) {
        if ino == ROOT {
            return;
        }
        if let Entry::Occupied(e) = self.map.entry(ino) {
            if e.get().lookups.load(Ordering::Relaxed) == 0 {
                e.remove();
            }
        }
    }

    pub fn lookups(&self, ino: u64) -> u64 {
        self.map
            .get(&ino)
            .map(|n| n.lookups.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}
