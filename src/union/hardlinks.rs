//! Hard links of lower files: copy-up that never searches a layer for names.
//!
//! A lower file with several names is one object: the view gives every name the same inode
//! number, and a write through any name must show through all of them, after a remount too.
//! Finding a file's other names would take a walk of the whole layer, so instead (as kernel
//! overlayfs does with `index=on`) the copy of a multiply-linked file is also linked into an
//! index in the workdir, under the lower object's identity (its filesystem and inode number).
//! Every other name finds the copy there the next time it is looked up, and is linked to it in
//! the upper then. A copy-up costs one link more, whatever the size of the layer and wherever
//! the other names are (often outside the layer, where nothing is to be done).
//!
//! The index survives remounts (unlike the workdir's scratch directory). Each entry records
//! the size and modification time of the lower file it was copied from, so a lower layer that
//! was rebuilt with reused inode numbers does not pick up a stranger's copy.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use parking_lot::RwLock;
use rustix::fs::{AtFlags, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno as RErrno;

use std::sync::Arc;

use super::index::Visible;
use super::layerdir::LayerDir;
use super::node::Node;
use super::workdir::Workdir;
use super::{Union, copy_up::keep_dir_times};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::hardlink::{Key, Origin, decode_count, encode_count};
use crate::format::upper_id::UpperIdentity;
use crate::format::workdir::{INDEX_DIR, INDEX_OWNER};
use crate::format::xattrs::{INDEX_COUNT, INDEX_ORIGIN};
use crate::sys::{self, Target};

/// The index of copied-up multiply-linked lower files.
#[derive(Default)]
pub(crate) struct HardlinkIndex {
    dir: Option<Arc<OwnedFd>>,
    /// Every key with an entry: lookups of multiply-linked lower files check here first, so
    /// an empty index costs nothing.
    keys: RwLock<HashSet<Key>>,
    /// For the layer tools, the index a mount would make from the upper's copies (see
    /// [`HardlinkIndex::as_mounted`]): where each copy is in the upper, instead of `dir`.
    found: Option<Found>,
}

/// Copies found in an upper, by the lower object they were copied from.
struct Found {
    upper: Arc<OwnedFd>,
    /// Key → the copy's path in the upper (parent directory, name).
    at: std::collections::HashMap<Key, (Vec<u8>, OsString)>,
}

/// What opening an index removed (for the daemon's log and `unionfs check`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cleanup {
    /// Entries of an index made for another upper, or before indexes recorded their upper.
    pub foreign: usize,
    /// Entries whose copy has no name left in the upper.
    pub orphans: usize,
    /// Entries made again from the upper's own copies (an index new to this upper).
    pub rebuilt: usize,
}

impl HardlinkIndex {
    /// Opens (creating it if needed) the index in the workdir `work` for the upper whose root is
    /// `upper_root`. An index made for another upper is emptied first, and entries whose copy
    /// has no name left in the upper are removed (see `index_owner.rs`), before any lookup can
    /// link them into the view. `privileged`: where the upper's id is written.
    pub fn open(
        work: &Workdir,
        upper_root: BorrowedFd<'_>,
        privileged: bool,
    ) -> rustix::io::Result<(HardlinkIndex, Cleanup)> {
        match rustix::fs::mkdirat(work.root(), INDEX_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(RErrno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let dir = sys::open_path_dir(work.root(), OsStr::new(INDEX_DIR))?;
        let upper = UpperIdentity::establish(upper_root, privileged)?;
        let recorded = read_owner(dir.as_fd())?;
        let mut cleanup = Cleanup::default();
        let mut keys = entry_keys(dir.as_fd())?;
        if !recorded.as_ref().is_some_and(|r| r.owns(&upper)) {
            cleanup.foreign = keys.len();
            sys::remove_tree_contents(dir.as_fd())?;
            keys.clear();
            cleanup.rebuilt = rebuild(upper_root, dir.as_fd(), &mut keys)?;
        }
        for key in orphans(dir.as_fd(), &keys)? {
            rustix::fs::unlinkat(&dir, key.name(), AtFlags::empty())?;
            keys.remove(&key);
            cleanup.orphans += 1;
        }
        if recorded.as_ref() != Some(&upper) {
            write_owner(work, dir.as_fd(), &upper)?;
        }
        let index = HardlinkIndex {
            dir: Some(Arc::new(dir)),
            keys: RwLock::new(keys),
            found: None,
        };
        Ok((index, cleanup))
    }

    /// Whether the index has no entry (then no lookup needs to consult it).
    pub fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }

    /// Whether the index holds a copy of the lower file `key`, whose stat is `st`.
    pub fn holds(&self, key: Key, st: &Stat) -> bool {
        if !self.keys.read().contains(&key) {
            return false;
        }
        let Some((dir, name)) = self.entry(key) else {
            return false;
        };
        match sys::get_xattr(dir.as_fd(), &name, INDEX_ORIGIN) {
            Ok(Some(v)) => Origin::decode(&v) == Some(Origin::of(key, st)),
            // Written where xattrs are not supported: trust the identity alone.
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Enters the finished copy `work/tmp` of the lower file `key`, whose stat is `st`, before
    /// it is published.
    pub fn record(&self, work: BorrowedFd<'_>, tmp: &OsStr, key: Key, st: &Stat) -> rustix::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        // Best effort: without them the entry is trusted by identity alone and the view counts
        // the names in the upper.
        let t = Target::Entry(work, tmp);
        let _ = t.set_xattr(
            OsStr::new(INDEX_ORIGIN),
            &Origin::of(key, st).encode(),
            XattrFlags::empty(),
        );
        let _ = set_count(&t, st.st_nlink as u32);
        let name = key.name();
        match rustix::fs::linkat(work, tmp, dir, &name, AtFlags::empty()) {
            // An entry from an earlier copy whose names are all gone: this copy replaces it.
            Err(RErrno::EXIST) => {
                rustix::fs::unlinkat(dir, &name, AtFlags::empty())?;
                rustix::fs::linkat(work, tmp, dir, &name, AtFlags::empty())?;
            }
            r => r?,
        }
        self.keys.write().insert(key);
        Ok(())
    }

    /// The number of names in the view of the upper file `t`, if it is a copy entered in the
    /// index (see [`INDEX_COUNT`]).
    pub fn view_count(&self, t: &Target<'_>) -> Option<u32> {
        decode_count(&t.get_xattr(OsStr::new(INDEX_COUNT)).ok()??)
    }

    /// The upper file `t` (if it is a copy entered in the index) got `delta` more names.
    pub fn count_names(&self, t: &Target<'_>, delta: i32) {
        if let Some(n) = self.view_count(t) {
            let _ = set_count(t, n.saturating_add_signed(delta).max(1));
        }
    }

    /// Where the index's copy of `key` is: a directory and a name in it.
    pub fn entry(&self, key: Key) -> Option<(Arc<OwnedFd>, OsString)> {
        if let Some(f) = &self.found {
            let (parent, name) = f.at.get(&key)?;
            let dir = sys::open_dir_beneath(f.upper.as_fd(), OsStr::from_bytes(parent)).ok()?;
            return Some((Arc::new(dir), name.clone()));
        }
        self.dir.as_ref().map(|d| (Arc::clone(d), key.name()))
    }

    /// Links the index itself holds to each copy (1; none where it is only read off the upper).
    pub fn own_links(&self) -> u64 {
        u64::from(self.found.is_none())
    }

    /// Takes back an entry whose copy was not published after all.
    pub fn forget(&self, key: Key) {
        if let Some(dir) = &self.dir {
            let _ = rustix::fs::unlinkat(dir, key.name(), AtFlags::empty());
        }
        self.keys.write().remove(&key);
    }

    /// Links the copy of `key` to `dir/name`.
    pub fn link_to(&self, key: Key, dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
        let Some(index) = &self.dir else {
            return Err(RErrno::NOENT);
        };
        rustix::fs::linkat(index, key.name(), dir, name, AtFlags::empty())
    }
}

impl Union {
    /// Links the other names of `node` that the kernel has looked up (so it shows them, and
    /// counts them in the link count) to its fresh copy `copy_dir/copy_name`. Names nobody
    /// looked up yet join when they are (through the hard-link index).
    pub(crate) fn link_known_names(&self, node: &Node, copy_dir: &Arc<OwnedFd>, copy_name: &OsStr) {
        let known: Vec<(u64, Box<OsStr>)> = node.state.read().aliases().to_vec();
        for (parent, name) in known {
            if let Some(dir) = self.nodes.get(parent) {
                let _ = self.link_up(&dir, &name, node.ino, |pdir| {
                    rustix::fs::linkat(&**copy_dir, copy_name, pdir, &*name, AtFlags::empty())
                });
            }
        }
    }

    /// The identity of the lower object behind `st` in `layer` (see `hardlinks.rs`).
    pub(crate) fn hardlink_key(&self, layer: usize, st: &Stat) -> Key {
        Key {
            fsid: self.layers[layer].fsid,
            ino: st.st_ino,
        }
    }

    /// Makes the name `dir/name`, which shows object `ino` from a lower layer, show its upper
    /// copy: copies the directory up and lets `link(upper_dir)` create the name there.
    pub(crate) fn link_up(
        &self,
        dir: &Arc<Node>,
        name: &OsStr,
        ino: u64,
        link: impl FnOnce(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> FsResult<()> {
        let upper = self.upper_index()?;
        self.copy_up(dir)?;
        let pdir = self.upper_dir_fd(dir).ok_or(Errno::EIO)?;
        let _ns = dir.ns.lock();
        // Only a name that still shows this very object from a lower layer.
        let vis = self.slot(dir, name)?.vis;
        if !vis.is_some_and(|v| v.ino == ino && v.layer != upper) {
            return Ok(());
        }
        // Giving an existing object another name is not a change of the directory.
        keep_dir_times(pdir.as_fd(), || link(pdir.as_fd()))?;
        self.with_index(dir, |idx| idx.moved_up(name, upper))?;
        Ok(())
    }

    /// Where the view's count of names of the object shown at `dir/name` (as `vis`) is kept, if
    /// it is a copy in the index; `upper_dir` is the directory's upper fd.
    pub(crate) fn counted_at(
        &self,
        dir_layers: &[(usize, Arc<LayerDir>)],
        upper_dir: &Arc<OwnedFd>,
        name: &OsStr,
        vis: &Visible,
    ) -> Option<(Arc<OwnedFd>, OsString)> {
        if vis.kind != Kind::File || self.hardlinks.is_empty() {
            return None;
        }
        if Some(vis.layer) == self.upper {
            return Some((Arc::clone(upper_dir), name.to_os_string()));
        }
        let top = super::layer_fd(dir_layers, vis.layer)?;
        let st = top.stat_at(name).ok()?;
        let key = self.hardlink_key(vis.layer, &st);
        (st.st_nlink > 1 && self.hardlinks.holds(key, &st)).then(|| self.hardlinks.entry(key))?
    }

    /// The object whose count is kept at `at` (see [`Union::counted_at`]) got `delta` names.
    pub(crate) fn count_names(&self, at: Option<(Arc<OwnedFd>, OsString)>, delta: i32) {
        if let Some((dir, name)) = at {
            self.hardlinks.count_names(&Target::Entry(dir.as_fd(), &name), delta);
        }
    }
}

/// An index as the offline layer tools (`crate::layers`) find it: nothing is created or removed.
pub(crate) enum IndexState {
    /// No index in the workdir.
    None,
    /// An index made for another upper (or before indexes recorded theirs), with its entry
    /// count: a mount of this upper removes it before using the workdir.
    Foreign(usize),
    /// The upper's own index (without the orphans, which a mount removes), and the orphans.
    Owned(HardlinkIndex, Vec<Key>),
}

impl HardlinkIndex {
    /// The index in the workdir `work_root` as a mount of the upper whose root is
    /// `upper_root` would find it.
    pub(crate) fn inspect(work_root: BorrowedFd<'_>, upper_root: BorrowedFd<'_>) -> rustix::io::Result<IndexState> {
        let dir = match sys::open_path_dir(work_root, OsStr::new(INDEX_DIR)) {
            Ok(d) => d,
            Err(RErrno::NOENT) => return Ok(IndexState::None),
            Err(e) => return Err(e),
        };
        let mut keys = entry_keys(dir.as_fd())?;
        let upper = UpperIdentity::read(upper_root)?;
        if !read_owner(dir.as_fd())?.is_some_and(|r| r.owns(&upper)) {
            return Ok(match keys.len() {
                0 => IndexState::None,
                n => IndexState::Foreign(n),
            });
        }
        let orphans = orphans(dir.as_fd(), &keys)?;
        for k in &orphans {
            keys.remove(k);
        }
        let index = HardlinkIndex {
            dir: Some(Arc::new(dir)),
            keys: RwLock::new(keys),
            found: None,
        };
        Ok(IndexState::Owned(index, orphans))
    }

    /// The index a mount of the upper `upper_root` with the workdir `work_root` (none: a new
    /// one) would use: the workdir's own, or, where it has none for this upper, the one the
    /// mount would make again from the upper's copies (read off the upper, nothing written).
    pub(crate) fn as_mounted(
        work_root: Option<BorrowedFd<'_>>,
        upper_root: BorrowedFd<'_>,
    ) -> rustix::io::Result<HardlinkIndex> {
        if let Some(w) = work_root {
            if let IndexState::Owned(index, _) = HardlinkIndex::inspect(w, upper_root)? {
                return Ok(index);
            }
        }
        let mut at = std::collections::HashMap::new();
        copies_in(upper_root, &mut |key, parent, name| {
            at.entry(key).or_insert_with(|| (parent.to_vec(), name.to_os_string()));
        })?;
        let keys = at.keys().copied().collect();
        let upper = rustix::io::fcntl_dupfd_cloexec(upper_root, 0)?;
        Ok(HardlinkIndex {
            dir: None,
            keys: RwLock::new(keys),
            found: Some(Found {
                upper: Arc::new(upper),
                at,
            }),
        })
    }

    /// Every key with an entry.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.keys.read().iter().copied().collect()
    }

    /// Removes the entry of `key` (for `check --repair`).
    pub(crate) fn remove_entry(work_root: BorrowedFd<'_>, key: Key) -> rustix::io::Result<()> {
        let dir = sys::open_path_dir(work_root, OsStr::new(INDEX_DIR))?;
        rustix::fs::unlinkat(&dir, key.name(), AtFlags::empty())
    }

    /// Empties the index (for `check --repair` of a foreign index).
    pub(crate) fn remove_all(work_root: BorrowedFd<'_>) -> rustix::io::Result<()> {
        let dir = sys::open_path_dir(work_root, OsStr::new(INDEX_DIR))?;
        sys::remove_tree_contents(dir.as_fd())
    }

    /// The name of the key's entry, for messages.
    pub(crate) fn entry_name(key: Key) -> OsString {
        key.name()
    }
}

/// Enters in the index `dir` every copy the upper holds (each carries the origin record of the
/// lower file it was copied from): an upper met with a new or foreign workdir (a copy of the
/// upper, a reset workdir) gets back the index that lets its other lower names show the copy.
/// A walk of the upper, once per upper and workdir; a lookup still checks each entry against
/// the lower file it names before using it.
fn rebuild(upper_root: BorrowedFd<'_>, dir: BorrowedFd<'_>, keys: &mut HashSet<Key>) -> rustix::io::Result<usize> {
    let mut n = 0;
    let mut err = None;
    copies_in(upper_root, &mut |key, parent, name| {
        if err.is_some() || keys.contains(&key) {
            return;
        }
        let r = sys::open_dir_beneath(upper_root, OsStr::from_bytes(parent))
            .and_then(|d| rustix::fs::linkat(&d, name, dir, key.name(), AtFlags::empty()));
        match r {
            Ok(()) => {
                keys.insert(key);
                n += 1;
            }
            Err(RErrno::EXIST) => {}
            Err(e) => err = Some(e),
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// Calls `f(key, parent, name)` for every copy of a lower file the upper `upper_root` holds
/// (regular files carrying an origin record), with its parent directory's path in the upper.
fn copies_in(upper_root: BorrowedFd<'_>, f: &mut dyn FnMut(Key, &[u8], &OsStr)) -> rustix::io::Result<()> {
    sys::for_each_file(upper_root, &mut |d, parent, e| {
        if e.dtype != rustix::fs::FileType::RegularFile {
            return Ok(());
        }
        if let Ok(Some(v)) = sys::get_xattr(d, &e.name, INDEX_ORIGIN) {
            if let Some(o) = Origin::decode(&v) {
                let key = Key {
                    fsid: o.fsid,
                    ino: o.ino,
                };
                f(key, parent, &e.name);
            }
        }
        Ok(())
    })
}

/// The keys of the index directory `dir`'s entries.
fn entry_keys(dir: BorrowedFd<'_>) -> rustix::io::Result<HashSet<Key>> {
    Ok(sys::read_dir(dir)?.iter().filter_map(|e| Key::parse(&e.name)).collect())
}

/// The entries of `keys` whose copy has no name left in the upper (the index's own link is its
/// only one).
fn orphans(dir: BorrowedFd<'_>, keys: &HashSet<Key>) -> rustix::io::Result<Vec<Key>> {
    let mut out = Vec::new();
    for &k in keys {
        match sys::stat_at_opt(dir, &k.name())? {
            Some(st) if st.st_nlink > 1 => {}
            Some(_) => out.push(k),
            None => {}
        }
    }
    Ok(out)
}

/// The upper the index in `dir` was made for, if it says.
fn read_owner(dir: BorrowedFd<'_>) -> rustix::io::Result<Option<UpperIdentity>> {
    let fd = match sys::open_at(dir, OsStr::new(INDEX_OWNER), OFlags::RDONLY) {
        Ok(fd) => fd,
        Err(RErrno::NOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut buf)
        .map_err(|e| e.raw_os_error().map_or(RErrno::IO, RErrno::from_raw_os_error))?;
    Ok(UpperIdentity::decode(&buf))
}

/// Records `upper` as the index's owner: written in the workdir's scratch directory, synced,
/// then renamed into place, so a crash leaves the old record or the new one.
fn write_owner(work: &Workdir, dir: BorrowedFd<'_>, upper: &UpperIdentity) -> rustix::io::Result<()> {
    let tmp = work.tmp_name();
    let fd = rustix::fs::openat(
        work.scratch(),
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let bytes = upper.encode();
    let mut done = 0;
    while done < bytes.len() {
        done += rustix::io::write(&fd, &bytes[done..])?;
    }
    rustix::fs::fsync(&fd)?;
    rustix::fs::renameat(work.scratch(), &tmp, dir, INDEX_OWNER)
}

fn set_count(t: &Target<'_>, n: u32) -> rustix::io::Result<()> {
    t.set_xattr(OsStr::new(INDEX_COUNT), &encode_count(n), XattrFlags::empty())
}
