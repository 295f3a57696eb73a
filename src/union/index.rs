//! The merged listing of one directory: for every name seen in any of its layers, what is
//! visible and what lies beneath. Built once per directory node by reading each layer, then kept
//! up to date by every change made through the view, so that a miss costs no system call and
//! whiteout/opaque questions are answered from memory.

use std::collections::HashMap;
use std::ffi::OsString;
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

pub(crate) type DirIndex = HashMap<OsString, Slot>;

/// Builds the index of a directory merged from `layers` (top first). `upper` is the upper's
/// layer index, if there is one. `ino_of(layer, dir, name, kind, raw_ino)` gives the view inode number.
pub(crate) fn build(
    layers: &[(usize, Arc<OwnedFd>)],
    upper: Option<usize>,
    ino_of: &dyn Fn(usize, &OwnedFd, &OsString, Kind, u64) -> u64,
) -> rustix::io::Result<DirIndex> {
    let mut map: DirIndex = HashMap::new();
    for (layer, fd) in layers {
        let layer = *layer;
        let is_upper = Some(layer) == upper;
        let dir = fd.as_fd();
        let marks = whiteout::dir_marks(dir);
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
    Ok(map)
}

impl Visible {
    pub(crate) fn with_merge(layer: usize, kind: Kind, ino: u64, merge: Vec<usize>) -> Visible {
        Visible {
            layer,
            kind,
            ino,
            merge,
            merging: false,
        }
    }
}
