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

use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::{Mutex, RwLock};

use super::index::DirIndex;
use super::layerdir::LayerDir;
use crate::attr::Kind;

/// The root node's id (fixed by FUSE).
pub use crate::format::ino::ROOT;

pub(crate) struct Node {
    pub ino: u64,
    lookups: AtomicU64,
    pub state: RwLock<NodeState>,
    /// Serialises copy-up of this object. A token, not a guard of data: what it protects is on
    /// disk (the copy being built in the workdir and the rename that publishes it), and the
    /// in-memory result (`state.layer`) is read without it by every lookup, under `state`.
    pub copy_lock: Mutex<()>,
    /// Serialises namespace changes inside this directory. A token for the same reason: it
    /// orders changes to the upper directory on disk, while the directory's index and `state`
    /// stay readable by lookups and listings that must not wait for a copy-up or an fsync.
    pub ns: Mutex<()>,
    /// A copy-up published this object under a name its upper directory has not fsynced yet.
    pub name_unsynced: AtomicBool,
}

/// Where a node is and what it is. Only directories hold fds (their layer directories):
/// other objects are reached as an entry of their parent, so a walk over a huge tree does not
/// pin one fd per file. Kept small: the kernel may hold a node for every entry of a big tree.
pub(crate) struct NodeState {
    /// The directory this node was seen in, and its name there.
    pub parent: u64,
    pub name: Box<OsStr>,
    /// Other names of a hard-linked object seen through the view. Boxed twice so that the
    /// common case (none) costs one pointer.
    aliases: Option<Box<Aliases>>,
    /// Every name is gone (unlinked while open): only open handles reach it.
    pub unlinked: bool,
    pub kind: Kind,
    /// Index (into `Union::layers`) of the layer holding the visible object (at most
    /// `MAX_LOWERS` + 1, see `layer()`).
    layer: u16,
    /// The layer holding a regular file's data: `layer`, except for a metacopy file (its
    /// metadata in the upper, its data still in this lower; see `metacopy.rs`). With
    /// `DATA_ELSEWHERE` set, the data is not at the file's own name in that layer (a redirect,
    /// or a chain of metacopy files) and is looked for again when needed.
    data: u16,
    pub dir: Option<Box<DirState>>,
}

/// Names of a hard-linked object besides its primary one: (directory node, name).
type Aliases = Vec<(u64, Box<OsStr>)>;

/// A layer index in 16 bits: `MountConfig::validate` refuses more than `MAX_LOWERS` lowers.
fn layer_u16(layer: usize) -> u16 {
    u16::try_from(layer).expect("layer index within MAX_LOWERS (checked when the mount is configured)")
}

/// Marks `NodeState::data` as a layer whose data is not at the file's own name (layer numbers
/// stay far below: `MAX_LOWERS`).
const DATA_ELSEWHERE: u16 = 1 << 15;

/// How many extra names of one object we remember.
const MAX_ALIASES: usize = 16;

impl NodeState {
    pub fn new(parent: u64, name: &OsStr, kind: Kind, layer: usize, dir: Option<DirState>) -> Self {
        NodeState {
            parent,
            name: name.into(),
            aliases: None,
            unlinked: false,
            kind,
            layer: layer_u16(layer),
            data: layer_u16(layer),
            dir: dir.map(Box::new),
        }
    }

    /// Index (into `Union::layers`) of the layer holding the visible object.
    pub fn layer(&self) -> usize {
        usize::from(self.layer)
    }

    pub fn set_layer(&mut self, layer: usize) {
        self.layer = layer_u16(layer);
        self.data = self.layer;
    }

    /// A metacopy file: visible in `layer`, its data in `data`, at the same name unless
    /// `elsewhere`.
    pub fn set_metacopy(&mut self, layer: usize, data: usize, elsewhere: bool) {
        self.layer = layer_u16(layer);
        self.data = layer_u16(data) | if elsewhere { DATA_ELSEWHERE } else { 0 };
    }

    /// For a metacopy file whose data is at its own name in a lower layer: that layer.
    pub fn data_here(&self) -> Option<usize> {
        (self.is_metacopy() && self.data & DATA_ELSEWHERE == 0).then_some(usize::from(self.data))
    }

    /// Whether its data lies in another layer than its metadata.
    pub fn is_metacopy(&self) -> bool {
        self.data != self.layer
    }

    /// Other names of this object seen through the view.
    pub fn aliases(&self) -> &[(u64, Box<OsStr>)] {
        self.aliases.as_deref().map_or(&[], |v| v.as_slice())
    }

    fn set_aliases(&mut self, v: Vec<(u64, Box<OsStr>)>) {
        self.aliases = (!v.is_empty()).then(|| Box::new(v));
    }

    fn take_aliases(&mut self) -> Vec<(u64, Box<OsStr>)> {
        self.aliases.take().map(|b| *b).unwrap_or_default()
    }

    fn has_alias(&self, parent: u64, name: &OsStr) -> bool {
        self.aliases().iter().any(|(p, n)| *p == parent && &**n == name)
    }

    fn is(&self, parent: u64, name: &OsStr) -> bool {
        self.parent == parent && &*self.name == name
    }

    /// Records that `parent/name` shows this object.
    pub fn seen_as(&mut self, parent: u64, name: &OsStr) {
        if self.is(parent, name) && !self.unlinked {
            return;
        }
        if self.unlinked || self.kind == Kind::Dir {
            self.parent = parent;
            self.name = name.into();
            self.unlinked = false;
        } else if !self.has_alias(parent, name) && self.aliases().len() < MAX_ALIASES {
            let mut v = self.take_aliases();
            v.push((parent, name.into()));
            self.set_aliases(v);
        }
    }

    /// Takes one alias out (the last), if there is one.
    fn pop_alias(&mut self) -> Option<(u64, Box<OsStr>)> {
        let mut v = self.take_aliases();
        let last = v.pop();
        self.set_aliases(v);
        last
    }

    /// `parent/name` no longer shows this object.
    pub fn name_gone(&mut self, parent: u64, name: &OsStr) {
        if self.is(parent, name) {
            match self.pop_alias() {
                Some((p, n)) => {
                    self.parent = p;
                    self.name = n;
                }
                None => self.unlinked = true,
            }
        } else if self.has_alias(parent, name) {
            let mut v = self.take_aliases();
            v.retain(|(p, n)| !(*p == parent && &**n == name));
            self.set_aliases(v);
        }
    }

    /// The name `from` of this object became `to`.
    pub fn renamed(&mut self, from: (u64, &OsStr), to: (u64, &OsStr)) {
        if let Some(a) = self
            .aliases
            .as_deref_mut()
            .and_then(|v| v.iter_mut().find(|(p, n)| *p == from.0 && &**n == from.1))
        {
            *a = (to.0, to.1.into());
        } else {
            self.parent = to.0;
            self.name = to.1.into();
            self.unlinked = false;
        }
    }

    /// Makes the first alias in a live directory (`live(dir)`) the primary name; returns it.
    pub fn promote_alias(&mut self, live: impl Fn(u64) -> bool) -> Option<(u64, OsString)> {
        let v = self.aliases.as_deref_mut()?;
        let i = v.iter().position(|(p, _)| live(*p))?;
        let (p, n) = std::mem::replace(&mut v[i], (self.parent, self.name.clone()));
        self.parent = p;
        self.name = n;
        Some((self.parent, self.name.to_os_string()))
    }

    /// The fd of a directory node's top layer.
    pub fn dir_fd(&self) -> Option<Arc<LayerDir>> {
        self.dir
            .as_ref()
            .and_then(|d| d.layers.first())
            .map(|(_, fd)| Arc::clone(fd))
    }
}

/// What a directory node knows about its layers.
pub(crate) struct DirState {
    /// The layer directories merged into this one, top first, with their layer indexes.
    pub layers: Vec<(usize, Arc<LayerDir>)>,
    /// The merged listing, built on first use and kept in step with every change we make.
    pub index: Option<DirIndex>,
    /// With `revalidate`: the lower directories' change stamps when the index was built.
    pub lower_stamps: Vec<(i64, u64)>,
}

impl DirState {
    pub fn new(layers: Vec<(usize, Arc<LayerDir>)>) -> DirState {
        DirState {
            layers,
            index: None,
            lower_stamps: Vec::new(),
        }
    }

    /// Drops the index (the layers changed); the next use builds it again. Names keep their
    /// listing positions (their hashes), so a listing in progress goes on where it was.
    pub fn reset_index(&mut self) {
        self.index = None;
    }
}

impl Node {
    pub fn new(ino: u64, state: NodeState) -> Self {
        Node {
            ino,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            copy_lock: Mutex::new(()),
            ns: Mutex::new(()),
            name_unsynced: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
pub(crate) struct NodeTable {
    map: DashMap<u64, Arc<Node>>,
    removals: AtomicU64,
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
                self.maybe_shrink();
            }
        }
    }

    /// After the kernel forgot most nodes, gives the table's spare capacity back (a map sized
    /// for a million nodes keeps its buckets otherwise). Checked every few thousand removals.
    fn maybe_shrink(&self) {
        const EVERY: u64 = 4096;
        if self.removals.fetch_add(1, Ordering::Relaxed) % EVERY != EVERY - 1 {
            return;
        }
        if self.map.capacity() > 8 * EVERY as usize && self.map.len() * 8 < self.map.capacity() {
            self.map.shrink_to_fit();
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

    /// Runs `f` on every node (shard by shard; `f` must not touch the table).
    pub fn for_each(&self, mut f: impl FnMut(&Node)) {
        for r in self.map.iter() {
            f(r.value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel may hold a node for every entry of a huge tree (memory per cached entry is a
    /// goal of the project): a node with its `Arc` counts must fit the allocator's 96-byte class.
    #[test]
    fn a_node_fits_96_bytes_with_its_arc_counts() {
        let size = std::mem::size_of::<Node>() + 2 * std::mem::size_of::<usize>();
        assert!(size <= 96, "Node + Arc counts: {size} bytes");
    }

    fn file(parent: u64, name: &str) -> NodeState {
        NodeState::new(parent, OsStr::new(name), Kind::File, 1, None)
    }

    fn names(s: &NodeState) -> Vec<(u64, String)> {
        let mut v = vec![(s.parent, s.name.to_string_lossy().into_owned())];
        v.extend(s.aliases().iter().map(|(p, n)| (*p, n.to_string_lossy().into_owned())));
        v
    }

    #[test]
    fn a_file_remembers_every_name_it_was_seen_under_once() {
        let mut s = file(1, "a");
        s.seen_as(1, OsStr::new("b"));
        s.seen_as(2, OsStr::new("a"));
        s.seen_as(1, OsStr::new("b"));
        s.seen_as(1, OsStr::new("a"));
        assert_eq!(names(&s), [(1, "a".into()), (1, "b".into()), (2, "a".into())]);
        for i in 0..2 * MAX_ALIASES {
            s.seen_as(3, OsStr::new(&format!("n{i}")));
        }
        assert_eq!(s.aliases().len(), MAX_ALIASES, "at most MAX_ALIASES extra names");
    }

    #[test]
    fn a_directory_has_one_name_the_last_it_was_seen_under() {
        let mut s = NodeState::new(1, OsStr::new("d"), Kind::Dir, 0, None);
        s.seen_as(2, OsStr::new("e"));
        assert_eq!(names(&s), [(2, "e".into())]);
    }

    #[test]
    fn removing_the_primary_name_promotes_an_alias_and_the_last_name_unlinks() {
        let mut s = file(1, "a");
        s.seen_as(1, OsStr::new("b"));
        s.name_gone(1, OsStr::new("a"));
        assert_eq!(names(&s), [(1, "b".into())]);
        assert!(!s.unlinked);
        s.name_gone(1, OsStr::new("x"));
        assert!(!s.unlinked, "a name it never had changes nothing");
        s.name_gone(1, OsStr::new("b"));
        assert!(s.unlinked);
        // Seen again (linked back in by a hard link): it has a name again.
        s.seen_as(4, OsStr::new("c"));
        assert_eq!(names(&s), [(4, "c".into())]);
        assert!(!s.unlinked);
    }

    #[test]
    fn a_rename_moves_the_name_it_names_primary_or_alias() {
        let mut s = file(1, "a");
        s.seen_as(1, OsStr::new("b"));
        s.renamed((1, OsStr::new("b")), (2, OsStr::new("c")));
        assert_eq!(names(&s), [(1, "a".into()), (2, "c".into())]);
        s.renamed((1, OsStr::new("a")), (3, OsStr::new("d")));
        assert_eq!(names(&s), [(3, "d".into()), (2, "c".into())]);
    }

    #[test]
    fn promote_alias_picks_the_first_name_in_a_live_directory() {
        let mut s = file(1, "a");
        s.seen_as(2, OsStr::new("b"));
        s.seen_as(3, OsStr::new("c"));
        assert_eq!(s.promote_alias(|d| d == 3), Some((3, "c".into())));
        assert_eq!(names(&s), [(3, "c".into()), (2, "b".into()), (1, "a".into())]);
        assert_eq!(s.promote_alias(|_| false), None);
    }
}
