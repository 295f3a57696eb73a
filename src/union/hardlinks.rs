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

use parking_lot::RwLock;
use rustix::fs::{AtFlags, Mode, Stat, XattrFlags};
use rustix::io::Errno as RErrno;

use std::sync::Arc;

use super::index::Visible;
use super::node::Node;
use super::{Union, copy_up::keep_dir_times};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::sys::{self, Target};

/// The index directory, beside our scratch directory in the workdir.
const DIR: &str = "unionfs-index";
/// What an entry was copied from (see [`Origin`]).
const ORIGIN_XATTR: &str = "user.unionfs.index";
/// How many names the object has in the view: the lower file's link count at copy-up, plus
/// the names made and minus the names removed through the view since (as kernel overlayfs
/// keeps it). Names of the lower object that nobody looked up yet are not in the upper, so the
/// upper's own link count cannot say.
const COUNT_XATTR: &str = "user.unionfs.nlink";

/// A lower object's identity: its filesystem and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub fsid: u64,
    pub ino: u64,
}

impl Key {
    fn name(&self) -> OsString {
        OsString::from(format!("{:016x}-{:x}", self.fsid, self.ino))
    }

    fn parse(name: &OsStr) -> Option<Key> {
        let (fsid, ino) = name.to_str()?.split_once('-')?;
        Some(Key {
            fsid: u64::from_str_radix(fsid, 16).ok()?,
            ino: u64::from_str_radix(ino, 16).ok()?,
        })
    }
}

/// The lower file an index entry was copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Origin {
    size: i64,
    mtime: i64,
    mtime_nsec: u64,
}

impl Origin {
    fn of(st: &Stat) -> Origin {
        Origin {
            size: st.st_size,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
        }
    }

    fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    fn decode(b: &[u8]) -> Option<Origin> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(o, _)| o)
    }
}

/// The index of copied-up multiply-linked lower files.
#[derive(Default)]
pub(crate) struct HardlinkIndex {
    dir: Option<Arc<OwnedFd>>,
    /// Every key with an entry: lookups of multiply-linked lower files check here first, so
    /// an empty index costs nothing.
    keys: RwLock<HashSet<Key>>,
}

impl HardlinkIndex {
    /// Opens (creating it if needed) the index in the workdir `work_root`.
    pub fn open(work_root: BorrowedFd<'_>) -> rustix::io::Result<HardlinkIndex> {
        match rustix::fs::mkdirat(work_root, DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(RErrno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let dir = sys::open_path_dir(work_root, OsStr::new(DIR))?;
        let keys = sys::read_dir(dir.as_fd())?
            .iter()
            .filter_map(|e| Key::parse(&e.name))
            .collect();
        Ok(HardlinkIndex {
            dir: Some(Arc::new(dir)),
            keys: RwLock::new(keys),
        })
    }

    /// Whether the index has no entry (then no lookup needs to consult it).
    pub fn is_empty(&self) -> bool {
        self.keys.read().is_empty()
    }

    /// Whether the index holds a copy of the lower file `key`, whose stat is `st`.
    pub fn holds(&self, key: Key, st: &Stat) -> bool {
        let Some(dir) = &self.dir else { return false };
        if !self.keys.read().contains(&key) {
            return false;
        }
        match sys::get_xattr(dir.as_fd(), &key.name(), ORIGIN_XATTR) {
            Ok(Some(v)) => Origin::decode(&v) == Some(Origin::of(st)),
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
        let _ = t.set_xattr(OsStr::new(ORIGIN_XATTR), &Origin::of(st).encode(), XattrFlags::empty());
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
    /// index (see [`COUNT_XATTR`]).
    pub fn view_count(&self, t: &Target<'_>) -> Option<u32> {
        let v = t.get_xattr(OsStr::new(COUNT_XATTR)).ok()??;
        Some(u32::from_le_bytes(v.as_slice().try_into().ok()?))
    }

    /// The upper file `t` (if it is a copy entered in the index) got `delta` more names.
    pub fn count_names(&self, t: &Target<'_>, delta: i32) {
        if let Some(n) = self.view_count(t) {
            let _ = set_count(t, n.saturating_add_signed(delta).max(1));
        }
    }

    /// The index's copy of `key`, for xattr calls.
    pub fn entry(&self, key: Key) -> Option<(Arc<OwnedFd>, OsString)> {
        self.dir.as_ref().map(|d| (Arc::clone(d), key.name()))
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
        dir_layers: &[(usize, Arc<OwnedFd>)],
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
        let st = sys::stat_at(top.as_fd(), name).ok()?;
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

/// For the offline layer tools (`crate::layers`): the index in the workdir `work_root` as it
/// is, if there is one (nothing is created), and what it holds.
impl HardlinkIndex {
    pub(crate) fn read_only(work_root: BorrowedFd<'_>) -> rustix::io::Result<Option<HardlinkIndex>> {
        let dir = match sys::open_path_dir(work_root, OsStr::new(DIR)) {
            Ok(d) => d,
            Err(RErrno::NOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let keys = sys::read_dir(dir.as_fd())?
            .iter()
            .filter_map(|e| Key::parse(&e.name))
            .collect();
        Ok(Some(HardlinkIndex {
            dir: Some(Arc::new(dir)),
            keys: RwLock::new(keys),
        }))
    }

    /// Every key with an entry.
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.keys.read().iter().copied().collect()
    }

    /// The name of the index directory in the workdir.
    pub(crate) const DIR_NAME: &'static str = DIR;
}

fn set_count(t: &Target<'_>, n: u32) -> rustix::io::Result<()> {
    t.set_xattr(OsStr::new(COUNT_XATTR), &n.to_le_bytes(), XattrFlags::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_names() {
        let k = Key {
            fsid: 0xdead_beef_0123_4567,
            ino: 42,
        };
        assert_eq!(Key::parse(&k.name()), Some(k));
        assert_eq!(Key::parse(OsStr::new("not-a-key")), None);
        assert_eq!(Key::parse(OsStr::new("#1")), None);
    }

    #[test]
    fn origins_round_trip_and_differ_by_history() {
        let o = Origin {
            size: 10,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
        };
        assert_eq!(Origin::decode(&o.encode()), Some(o));
        let other = Origin { size: 11, ..o };
        assert_ne!(Origin::decode(&other.encode()), Some(o));
    }
}
