//! Inode numbers of the view (`format::ino` decides them): a layer object's own number, or,
//! for an upper object made by copy-up, the number of the object it was copied from.

use std::ffi::OsStr;

use super::Union;
use super::layerdir::LayerDir;
use crate::attr::Kind;

impl Union {
    /// The view inode number of an object with raw number `raw` in `layer`.
    pub(super) fn tag_ino(&self, layer: usize, raw: u64) -> u64 {
        self.numbering.view(layer, raw)
    }

    /// The view inode number of the entry `name` of `dir` in `layer`, whose raw number is `raw`.
    /// Upper objects made by copy-up carry their origin's number in an xattr.
    pub(super) fn ino_of(&self, layer: usize, dir: &LayerDir, name: &OsStr, kind: Kind, raw: u64) -> u64 {
        if Some(layer) == self.upper {
            if let Ok(Some(v)) = dir.get_xattr(name, crate::format::xattrs::origin(kind)) {
                if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                    return u64::from_le_bytes(b);
                }
            }
        }
        self.tag_ino(layer, raw)
    }
}
