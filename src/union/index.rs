//! The merged listing of one directory: for every name seen in any of its layers, what is
//! visible and what lies beneath. Built once per directory node by reading each layer, then kept
//! up to date by every change made through the view, so that a miss costs no system call and
//! whiteout/opaque questions are answered from memory.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::FileType;

use super::whiteout;
use crate::attr::Kind;
use crate::sys;

/// The visible object of a name.
#[derive(Debug, Clone)]
pub(crate) struct Visible {
    /// Layer index holding it.
    pub layer: usize,
    pub kind: Kind,
    /// Inode number in the view.
    pub ino: u64,
    /// For directories: layers whose same-named directory may merge with it (top first, starting
    /// with `layer`); lookup trims this at the first opaque one.
    pub merge: Vec<usize>,
    /// Position in listings: fixed while the name stays visible, unique within the directory,
    /// so readdir offsets stay valid however the directory changes and whichever handle (or
    /// the kernel's directory cache) continues a listing.
    pub cookie: u64,
    /// Building only: lower entries can still join the merge.
    pub(crate) merging: bool,
}

/// How the upper hides this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpperWhiteout {
    /// A char device 0/0 (or xattr whiteout) at the name itself.
    AtName,
    /// A `.wh.NAME` file beside it.
    Oci,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Slot {
    pub vis: Option<Visible>,
    /// A whiteout for this name in the upper.
    pub upper_wh: Option<UpperWhiteout>,
    /// Some lower layer of this directory has an entry (or whiteout) of this name, so removing
    /// or replacing it needs a whiteout / an opaque directory.
    pub in_lower: bool,
    /// Building only: a whiteout above hides lower entries of this name.
    hidden: bool,
}

/// The index of one directory: its slots plus the next listing position to hand out.
#[derive(Debug, Default)]
pub(crate) struct DirIndex {
    map: HashMap<OsString, Slot>,
    /// Visible names by listing position: readdir serves the live directory from here.
    order: BTreeMap<u64, OsString>,
    next_cookie: u64,
    /// Only a reminder of where listing positions continue: must be rebuilt before use.
    stale: bool,
}

/// Listing positions 1 and 2 are "." and "..".
pub(crate) const FIRST_COOKIE: u64 = 3;
/// Positions use the low `COOKIE_BITS` of a readdir offset; the bits above tell listings apart
/// (see `Union::readdir_chunk`). Offsets are signed 64-bit in the kernel.
pub(crate) const COOKIE_BITS: u32 = 40;
const LAST_COOKIE: u64 = (1 << COOKIE_BITS) - 1;

/// The listing position of `name`: its hash (like ext4's htree order), moved to the next free
/// position on a collision.
fn alloc_cookie(order: &BTreeMap<u64, OsString>, name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let mut c = FIRST_COOKIE + h.finish() % (LAST_COOKIE - FIRST_COOKIE);
    while order.contains_key(&c) {
        c = if c >= LAST_COOKIE { FIRST_COOKIE } else { c + 1 };
    }
    c
}

impl std::ops::Deref for DirIndex {
    type Target = HashMap<OsString, Slot>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for DirIndex {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl DirIndex {
    pub fn placeholder(next_cookie: u64) -> DirIndex {
        DirIndex {
            map: HashMap::new(),
            order: BTreeMap::new(),
            next_cookie,
            stale: true,
        }
    }

    pub fn next_cookie(&self) -> u64 {
        self.next_cookie
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Makes `name` show `v` (no longer whited out in the upper). A name that was already
    /// visible keeps its listing position; a newly visible one gets the position its name
    /// hashes to, so a name deleted and made again does not show twice in one listing.
    pub fn show(&mut self, name: &OsStr, mut v: Visible) {
        let s = self.map.entry(name.to_os_string()).or_default();
        v.cookie = match &s.vis {
            Some(old) => old.cookie,
            None => {
                let c = alloc_cookie(&self.order, name);
                self.order.insert(c, name.to_os_string());
                c
            }
        };
        s.vis = Some(v);
        s.upper_wh = None;
    }

    /// `name` no longer shows anything; `wh` is the whiteout the upper now holds for it.
    pub fn hide(&mut self, name: &OsStr, wh: Option<UpperWhiteout>) {
        let Some(s) = self.map.get_mut(name) else { return };
        if let Some(v) = s.vis.take() {
            self.order.remove(&v.cookie);
        }
        s.upper_wh = wh;
        if wh.is_none() && !s.in_lower {
            self.map.remove(name);
        }
    }

    /// Visible entries after listing position `after`, in order, at most `max` of them.
    pub fn listing(&self, after: u64, max: usize) -> impl Iterator<Item = (&OsString, &Visible)> {
        self.order
            .range(after.saturating_add(1)..)
            .filter_map(|(_, n)| self.map.get(n).and_then(|s| s.vis.as_ref()).map(|v| (n, v)))
            .take(max)
    }
}

/// Builds the index of a directory merged from `layers` (top first). `upper` is the upper's
/// layer index, if there is one. `ino_of(layer, dir, name, kind, raw_ino)` gives the view inode number.
pub(crate) fn build(
    layers: &[(usize, Arc<OwnedFd>)],
    upper: Option<usize>,
    first_cookie: u64,
    ino_of: &dyn Fn(usize, &OwnedFd, &OsString, Kind, u64) -> u64,
) -> rustix::io::Result<DirIndex> {
    let mut map: HashMap<OsString, Slot> = HashMap::new();
    let next_cookie = first_cookie.max(FIRST_COOKIE);
    for (layer, fd) in layers {
        let layer = *layer;
        let is_upper = Some(layer) == upper;
        let dir = fd.as_fd();
        let marks = whiteout::dir_marks(dir)?;
        let mut whs: Vec<(OsString, UpperWhiteout)> = Vec::new();
        for e in sys::read_dir(dir)? {
            if e.name.as_encoded_bytes() == whiteout::OPAQUE_MARKER.as_bytes() {
                continue;
            }
            if let Some(t) = whiteout::oci_target(&e.name) {
                whs.push((t.to_os_string(), UpperWhiteout::Oci));
                continue;
            }
            let mut ft = e.dtype;
            if ft == FileType::Unknown
                || ft == FileType::CharacterDevice
                || (marks.xattr_whiteouts && ft == FileType::RegularFile)
            {
                let Some(st) = sys::stat_at_opt(dir, &e.name)? else {
                    continue;
                };
                ft = FileType::from_raw_mode(st.st_mode);
                if whiteout::is_chr_whiteout(&st)
                    || (marks.xattr_whiteouts && whiteout::is_xattr_whiteout(dir, &e.name, &st))
                {
                    whs.push((e.name, UpperWhiteout::AtName));
                    continue;
                }
            }
            let kind = Kind::from_file_type(ft);
            let needs_ino = map.get(&e.name).is_none_or(|s| s.vis.is_none() && !s.hidden);
            let ino = if needs_ino {
                ino_of(layer, fd, &e.name, kind, e.ino)
            } else {
                0
            };
            let slot = map.entry(e.name).or_default();
            if !is_upper {
                slot.in_lower = true;
            }
            if slot.hidden {
                continue;
            }
            match &mut slot.vis {
                None => {
                    let is_dir = kind == Kind::Dir;
                    slot.vis = Some(Visible {
                        layer,
                        kind,
                        ino,
                        merge: if is_dir { vec![layer] } else { Vec::new() },
                        merging: is_dir,
                        cookie: 0,
                    });
                }
                Some(v) if v.merging && kind == Kind::Dir => v.merge.push(layer),
                // A lower non-directory below a directory ends the merge.
                Some(v) => v.merging = false,
            }
        }
        // Whiteouts after real entries: a `.wh.X` hides `X` only in layers below its own.
        for (name, how) in whs {
            let slot = map.entry(name).or_default();
            if is_upper {
                slot.upper_wh = Some(how);
            } else {
                slot.in_lower = true;
            }
            match &mut slot.vis {
                Some(v) => v.merging = false,
                None => slot.hidden = true,
            }
        }
        if marks.opaque {
            break;
        }
    }
    let mut order = BTreeMap::new();
    for (n, s) in map.iter_mut() {
        if let Some(v) = s.vis.as_mut() {
            v.cookie = alloc_cookie(&order, n);
            order.insert(v.cookie, n.clone());
        }
    }
    Ok(DirIndex {
        map,
        order,
        next_cookie,
        stale: false,
    })
}

impl Visible {
    pub(crate) fn with_merge(layer: usize, kind: Kind, ino: u64, merge: Vec<usize>) -> Visible {
        Visible {
            layer,
            kind,
            ino,
            merge,
            // Assigned by `DirIndex::show`.
            cookie: 0,
            merging: false,
        }
    }
}
