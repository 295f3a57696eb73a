//! The merged listing of one directory: for every name seen in any of its layers, what is
//! visible and what lies beneath. Built once per directory by reading each layer, then kept up
//! to date by every change made through the view, so that a miss costs no system call and
//! whiteout/opaque questions are answered from memory.
//!
//! Memory: an index can hold a million names, so each name is one compact entry in a B-tree
//! keyed by its listing position (about 90 bytes with the name). The position is the name's
//! hash, so a name is found by hashing it; the rare name whose position was taken when it
//! arrived sits at the next free one and is remembered in a small side table.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FileType;

use super::layerdir::LayerDir;
use crate::attr::Kind;
use crate::format::markers::{self, Marker, Stacking, WhiteoutForm};

/// The visible object of a name, as callers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visible {
    /// Layer index holding it.
    pub layer: usize,
    pub kind: Kind,
    /// Inode number in the view.
    pub ino: u64,
    /// For directories: layers whose same-named directory may merge with it (top first, starting
    /// with `layer`); lookup trims this at the first opaque one.
    pub merge: Vec<usize>,
    /// Position in listings: fixed while the name is in the index, unique within the directory,
    /// so readdir offsets stay valid however the directory changes and whichever handle (or the
    /// kernel's directory cache) continues a listing.
    pub cookie: u64,
}

impl Visible {
    /// A visible object in `layer` that merges with nothing below (new or moved objects).
    pub(crate) fn new(layer: usize, kind: Kind, ino: u64) -> Visible {
        Visible {
            layer,
            kind,
            ino,
            merge: if kind == Kind::Dir { vec![layer] } else { Vec::new() },
            // Assigned by the index.
            cookie: 0,
        }
    }
}

/// How the upper hides this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpperWhiteout {
    /// A char device 0/0 (or xattr whiteout) at the name itself.
    AtName,
    /// A `.wh.NAME` file beside it.
    Oci,
}

/// Everything the index knows about one name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot {
    pub vis: Option<Visible>,
    /// A whiteout for this name in the upper.
    pub upper_wh: Option<UpperWhiteout>,
    /// Some lower layer of this directory has an entry (or whiteout) of this name, so removing
    /// or replacing it needs a whiteout / an opaque directory.
    pub in_lower: bool,
}

const VISIBLE: u8 = 1;
const IN_LOWER: u8 = 2;
const WH_AT_NAME: u8 = 4;
const WH_OCI: u8 = 8;

/// One name, compactly.
#[derive(Debug)]
struct Entry {
    name: Box<OsStr>,
    ino: u64,
    /// Directories: the layers below `layer` that may merge (see [`Visible::merge`]).
    /// Boxed twice so that the common case (none) costs one pointer.
    #[expect(clippy::box_collection, reason = "a thin pointer: most entries have none")]
    merge_below: Option<Box<Vec<u16>>>,
    layer: u16,
    kind: Kind,
    flags: u8,
}

impl Entry {
    fn slot(&self, cookie: u64) -> Slot {
        let vis = (self.flags & VISIBLE != 0).then(|| {
            let mut merge = Vec::new();
            if self.kind == Kind::Dir {
                merge.push(usize::from(self.layer));
                merge.extend(self.merge_below.iter().flat_map(|m| m.iter().map(|&l| usize::from(l))));
            }
            Visible {
                layer: usize::from(self.layer),
                kind: self.kind,
                ino: self.ino,
                merge,
                cookie,
            }
        });
        let upper_wh = if self.flags & WH_AT_NAME != 0 {
            Some(UpperWhiteout::AtName)
        } else if self.flags & WH_OCI != 0 {
            Some(UpperWhiteout::Oci)
        } else {
            None
        };
        Slot {
            vis,
            upper_wh,
            in_lower: self.flags & IN_LOWER != 0,
        }
    }

    fn set_visible(&mut self, v: &Visible) {
        self.ino = v.ino;
        self.layer = v.layer as u16;
        self.kind = v.kind;
        self.merge_below = (v.merge.len() > 1).then(|| Box::new(v.merge[1..].iter().map(|&l| l as u16).collect()));
        self.flags = (self.flags | VISIBLE) & !(WH_AT_NAME | WH_OCI);
    }

    fn set_whiteout(&mut self, wh: Option<UpperWhiteout>) {
        self.flags &= !(VISIBLE | WH_AT_NAME | WH_OCI);
        self.flags |= match wh {
            Some(UpperWhiteout::AtName) => WH_AT_NAME,
            Some(UpperWhiteout::Oci) => WH_OCI,
            None => 0,
        };
        self.merge_below = None;
    }
}

/// The index of one directory.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    /// Every name by listing position; readdir serves the live directory from here.
    entries: BTreeMap<u64, Entry>,
    /// Names not at the position their hash gives (it was taken when they arrived).
    displaced: HashMap<Box<OsStr>, u64>,
    visible: usize,
    /// Which build of this directory's index this is (see `index_cache.rs`).
    pub generation: u64,
    /// Used since the index cache last looked (see `index_cache.rs`).
    used: AtomicBool,
}

/// Listing positions 1 and 2 are "." and "..".
pub(crate) const FIRST_COOKIE: u64 = 3;
/// Positions use the low `COOKIE_BITS` of a readdir offset; the bits above tell listings apart
/// (see `Union::readdir_chunk`). Offsets are signed 64-bit in the kernel.
pub(crate) const COOKIE_BITS: u32 = 40;
const LAST_COOKIE: u64 = (1 << COOKIE_BITS) - 1;

/// The listing position a name hashes to (like ext4's htree order). The hasher has fixed keys,
/// so positions are the same in every run.
fn home(name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    FIRST_COOKIE + h.finish() % (LAST_COOKIE - FIRST_COOKIE)
}

impl DirIndex {
    /// Notes a use (for the index cache).
    pub fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether it was used since the last call.
    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    /// Where `name` is, if it is in the index.
    fn find(&self, name: &OsStr) -> Option<u64> {
        let h = home(name);
        match self.entries.get(&h) {
            Some(e) if &*e.name == name => Some(h),
            _ => self.displaced.get(name).copied(),
        }
    }

    /// Adds `name` (not in the index yet) at a free position and returns that.
    fn insert(&mut self, name: &OsStr, e: Entry) -> u64 {
        let mut c = home(name);
        if self.entries.contains_key(&c) {
            while self.entries.contains_key(&c) {
                c = if c >= LAST_COOKIE { FIRST_COOKIE } else { c + 1 };
            }
            self.displaced.insert(name.into(), c);
        }
        self.entries.insert(c, e);
        c
    }

    fn remove(&mut self, name: &OsStr, at: u64) {
        if let Some(e) = self.entries.remove(&at) {
            if e.flags & VISIBLE != 0 {
                self.visible -= 1;
            }
        }
        self.displaced.remove(name);
    }

    /// What the index says of `name` (an empty slot: nothing anywhere).
    pub fn get(&self, name: &OsStr) -> Slot {
        self.find(name)
            .and_then(|c| self.entries.get(&c).map(|e| e.slot(c)))
            .unwrap_or_default()
    }

    /// Number of names (visible or hidden) in the index.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether any name is visible.
    pub fn any_visible(&self) -> bool {
        self.visible > 0
    }

    /// The visible names and their kinds.
    pub fn visible_names(&self) -> Vec<(OsString, Kind)> {
        self.entries
            .values()
            .filter(|e| e.flags & VISIBLE != 0)
            .map(|e| (e.name.to_os_string(), e.kind))
            .collect()
    }

    /// The visible object of `name` now lives in `layer` (it was copied up there).
    pub fn moved_up(&mut self, name: &OsStr, layer: usize) {
        if let Some(e) = self.find(name).and_then(|c| self.entries.get_mut(&c)) {
            if e.flags & VISIBLE != 0 && usize::from(e.layer) != layer {
                if e.kind == Kind::Dir {
                    let mut below = vec![e.layer];
                    below.extend(e.merge_below.iter().flat_map(|m| m.iter().copied()));
                    e.merge_below = Some(Box::new(below));
                }
                e.layer = layer as u16;
            }
        }
    }

    /// Makes `name` show `v` (no longer whited out in the upper). A name keeps its listing
    /// position while it is in the index; a new one gets the position its name hashes to, so a
    /// name deleted and made again does not show twice in one listing.
    pub fn show(&mut self, name: &OsStr, v: Visible) {
        let at = match self.find(name) {
            Some(c) => c,
            None => {
                let e = Entry {
                    name: name.into(),
                    ino: 0,
                    merge_below: None,
                    layer: 0,
                    kind: v.kind,
                    flags: 0,
                };
                self.insert(name, e)
            }
        };
        if let Some(e) = self.entries.get_mut(&at) {
            if e.flags & VISIBLE == 0 {
                self.visible += 1;
            }
            e.set_visible(&v);
        }
    }

    /// `name` no longer shows anything; `wh` is the whiteout the upper now holds for it.
    pub fn hide(&mut self, name: &OsStr, wh: Option<UpperWhiteout>) {
        let Some(at) = self.find(name) else { return };
        let Some(e) = self.entries.get_mut(&at) else { return };
        if e.flags & VISIBLE != 0 {
            self.visible -= 1;
        }
        e.set_whiteout(wh);
        if wh.is_none() && e.flags & IN_LOWER == 0 {
            self.remove(name, at);
        }
    }

    /// Visible entries after listing position `after`, in order, at most `max` of them.
    pub fn listing(&self, after: u64, max: usize) -> impl Iterator<Item = (&OsStr, Visible)> {
        self.entries
            .range(after.saturating_add(1)..)
            .filter(|(_, e)| e.flags & VISIBLE != 0)
            .filter_map(|(&c, e)| e.slot(c).vis.map(|v| (&*e.name, v)))
            .take(max)
    }
}

/// A name while the index is being built.
#[derive(Default)]
struct Building {
    stack: Stacking,
    /// The shown object's kind and view number.
    shown: Option<(Kind, u64)>,
    upper_wh: Option<UpperWhiteout>,
    in_lower: bool,
}

/// Builds the index of a directory merged from `layers` (top first). `upper` is the upper's
/// layer index, if there is one. `ino_of(layer, dir, name, kind, raw_ino)` gives the view inode
/// number.
pub(crate) fn build(
    layers: &[(usize, Arc<LayerDir>)],
    upper: Option<usize>,
    ino_of: &dyn Fn(usize, &LayerDir, &OsString, Kind, u64) -> u64,
) -> rustix::io::Result<DirIndex> {
    let mut map: HashMap<OsString, Building> = HashMap::new();
    for (layer, fd) in layers {
        let opaque = merge_layer(&mut map, *layer, fd, Some(*layer) == upper, ino_of)?;
        if opaque {
            break;
        }
    }
    let mut idx = DirIndex::default();
    for (name, b) in map {
        let mut flags = 0;
        if b.in_lower {
            flags |= IN_LOWER;
        }
        match b.upper_wh {
            Some(UpperWhiteout::AtName) => flags |= WH_AT_NAME,
            Some(UpperWhiteout::Oci) => flags |= WH_OCI,
            None => {}
        }
        let visible = b.stack.shown.is_some();
        let layer = b.stack.shown.unwrap_or(0);
        let (kind, ino) = b.shown.unwrap_or((Kind::File, 0));
        let below: Vec<u16> = b.stack.merged.iter().map(|&l| l as u16).collect();
        if visible {
            flags |= VISIBLE;
            idx.visible += 1;
        }
        let e = Entry {
            name: name.as_os_str().into(),
            ino,
            merge_below: (!below.is_empty()).then(|| Box::new(below)),
            layer: layer as u16,
            kind,
            flags,
        };
        idx.insert(&name, e);
    }
    Ok(idx)
}

/// Merges one layer's directory `fd` into `map` (the layers above it are in already) by the
/// stacking rules of `format::markers`; returns whether the directory is opaque there (the
/// layers below do not count). Lower directories that may merge are all recorded: whether one
/// is opaque is looked at when it is looked up (`merged_layers`), not for every name here.
fn merge_layer(
    map: &mut HashMap<OsString, Building>,
    layer: usize,
    dir: &LayerDir,
    is_upper: bool,
    ino_of: &dyn Fn(usize, &LayerDir, &OsString, Kind, u64) -> u64,
) -> rustix::io::Result<bool> {
    let marks = dir.marks()?;
    let mut objects: Vec<(OsString, Kind, u64)> = Vec::new();
    let mut whs: HashMap<OsString, UpperWhiteout> = HashMap::new();
    for e in dir.read_dir()? {
        let (marker, ft) = match markers::classify_name(&e.name) {
            Some(m) => (m, e.dtype),
            None if markers::needs_stat(e.dtype, marks) => {
                let Some(st) = dir.stat_at_opt(&e.name)? else {
                    continue;
                };
                (dir.classify(marks, &e.name, &st), FileType::from_raw_mode(st.st_mode))
            }
            None => (Marker::Object, e.dtype),
        };
        match marker {
            Marker::OpaqueFile => {}
            Marker::Whiteout { target, form } => {
                let how = if form == WhiteoutForm::Oci {
                    UpperWhiteout::Oci
                } else {
                    UpperWhiteout::AtName
                };
                whs.insert(target, how);
            }
            Marker::Object => objects.push((e.name, Kind::from_file_type(ft), e.ino)),
        }
    }
    for (name, kind, raw) in objects {
        let wh = whs.remove(&name);
        // Only the object the view will show needs its view number (an xattr read for the
        // upper's copies).
        let shows = map
            .get(&name)
            .is_none_or(|b| b.stack.shown.is_none() && !b.stack.finished());
        let ino = if shows { ino_of(layer, dir, &name, kind, raw) } else { 0 };
        let slot = map.entry(name).or_default();
        stack_layer(slot, layer, is_upper, Some(kind), wh);
        if shows {
            slot.shown = Some((kind, ino));
        }
    }
    for (name, how) in whs {
        let slot = map.entry(name).or_default();
        stack_layer(slot, layer, is_upper, None, Some(how));
    }
    Ok(marks.opaque)
}

/// Layer `layer` has an object of `kind` and/or a whiteout (`wh`) at the name of `slot`.
fn stack_layer(slot: &mut Building, layer: usize, is_upper: bool, kind: Option<Kind>, wh: Option<UpperWhiteout>) {
    if is_upper {
        slot.upper_wh = slot.upper_wh.or(wh);
    } else {
        slot.in_lower = true;
    }
    slot.stack
        .layer(layer, kind.map(|k| (k == Kind::Dir, false)), wh.is_some());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vis(ino: u64) -> Visible {
        Visible::new(0, Kind::File, ino)
    }

    /// An index holds one entry per name of a directory, for every directory in the index
    /// cache: an entry stays at 40 bytes (48 with its key in the map).
    #[test]
    fn an_entry_stays_at_40_bytes() {
        assert!(std::mem::size_of::<Entry>() <= 40, "{}", std::mem::size_of::<Entry>());
    }

    #[test]
    fn names_keep_their_position_and_listings_follow_it() {
        let mut idx = DirIndex::default();
        for i in 0..1000u64 {
            idx.show(OsStr::new(&format!("n{i}")), vis(i + 10));
        }
        let all: Vec<(OsString, u64)> = idx.listing(0, usize::MAX).map(|(n, v)| (n.into(), v.cookie)).collect();
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0].1 < w[1].1), "listing in position order");
        // Continuing from any position gives exactly the rest.
        let mid = all[400].1;
        assert_eq!(idx.listing(mid, usize::MAX).count(), 599);
        // A name that goes and comes back keeps its position.
        let before = idx.get(OsStr::new("n7")).vis.map(|v| v.cookie);
        idx.hide(OsStr::new("n7"), Some(UpperWhiteout::AtName));
        assert!(idx.get(OsStr::new("n7")).vis.is_none());
        assert_eq!(idx.get(OsStr::new("n7")).upper_wh, Some(UpperWhiteout::AtName));
        idx.show(OsStr::new("n7"), vis(99));
        assert_eq!(idx.get(OsStr::new("n7")).vis.map(|v| v.cookie), before);
        assert!(idx.any_visible());
    }

    #[test]
    fn a_taken_position_sends_the_newcomer_to_the_next_free_one() {
        let mut idx = DirIndex::default();
        let a = OsStr::new("a");
        let home_a = home(a);
        // Occupy a's position with another name, as a hash collision would.
        let squatter = Entry {
            name: OsStr::new("squatter").into(),
            ino: 1,
            merge_below: None,
            layer: 0,
            kind: Kind::File,
            flags: VISIBLE,
        };
        idx.entries.insert(home_a, squatter);
        idx.visible += 1;
        idx.show(a, vis(2));
        let slot = idx.get(a);
        assert_eq!(slot.vis.as_ref().map(|v| v.ino), Some(2));
        assert_ne!(slot.vis.map(|v| v.cookie), Some(home_a));
        // Removing the squatter leaves the newcomer findable.
        idx.entries.remove(&home_a);
        idx.visible -= 1;
        assert_eq!(idx.get(a).vis.map(|v| v.ino), Some(2));
        idx.hide(a, None);
        assert!(idx.get(a).vis.is_none());
        assert_eq!(idx.len(), 0);
        assert!(idx.displaced.is_empty());
    }

    #[test]
    fn copy_up_of_a_directory_keeps_its_merge_below() {
        let mut idx = DirIndex::default();
        let d = OsStr::new("d");
        let mut v = Visible::new(2, Kind::Dir, 5);
        v.merge = vec![2, 3];
        idx.show(d, v);
        idx.moved_up(d, 0);
        assert_eq!(idx.get(d).vis.map(|v| (v.layer, v.merge)), Some((0, vec![0, 2, 3])));
    }
}
