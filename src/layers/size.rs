//! `unionfs size`, and the per-layer figures of `unionfs layers` (`history.rs`): disk usage as
//! `du` counts it (allocated blocks, so holes cost nothing; each inode once, however many names
//! it has). An image layer is counted as the mount's `stat` shows its objects: each file's size
//! in 512-byte blocks (what it takes unpacked, before the filesystem's own rounding). A kernel
//! overlayfs metacopy file counts as what it takes: its metadata (its size is a hole; the data is
//! the lower file's, counted with that layer).

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;

use super::stack::{Stack, WholeLayer};
use super::{Observer, Result};
use crate::format::markers;
use crate::format::markers::Marker;

/// What one layer holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerFigures {
    /// Real objects (whiteouts and opaque marker files not counted).
    pub entries: u64,
    /// Disk usage, `du -s --block-size=1` (each inode once, within `seen`).
    pub bytes: u64,
    /// Whiteouts, in any format.
    pub whiteouts: u64,
    /// Opaque directories, in any format (the layer's root included).
    pub opaque_dirs: u64,
}

/// Walks the whole layer; inodes already in `seen` add no bytes (and are added to it).
pub(crate) fn layer_figures(
    layer: &dyn WholeLayer,
    seen: &mut HashSet<(u64, u64)>,
    obs: &dyn Observer,
) -> Result<LayerFigures> {
    let mut f = LayerFigures::default();
    let root_st = layer.root_stat()?;
    if seen.insert((root_st.st_dev, root_st.st_ino)) {
        f.bytes += root_st.st_blocks as u64 * 512;
    }
    layer.walk(&mut |listing, e| {
        if obs.cancelled() {
            return Err(super::LayerError::Interrupted);
        }
        let Some(e) = e else {
            if listing.marks.opaque {
                f.opaque_dirs += 1;
            }
            return Ok(());
        };
        obs.entry();
        if seen.insert((e.st.st_dev, e.st.st_ino)) {
            f.bytes += e.st.st_blocks as u64 * 512;
        }
        match &e.kind {
            Marker::Object => f.entries += 1,
            Marker::Whiteout { .. }
                if listing.marks.opaque && e.name.as_bytes() == markers::FUSE_OVERLAYFS_OPAQUE.as_bytes() => {}
            Marker::Whiteout { .. } => f.whiteouts += 1,
            Marker::OpaqueFile => {}
        }
        Ok(())
    })?;
    Ok(f)
}

/// `docker ps -s`: the upper's size and the virtual size of the whole union.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// `du -s --block-size=1 UPPER`.
    pub upper_bytes: u64,
    /// `du -sc --block-size=1 UPPER LOWER...` (an inode shared by layers counts once).
    pub virtual_bytes: u64,
}

pub fn usage(stack: &Stack, obs: &dyn Observer) -> Result<Usage> {
    let upper = stack.upper()?;
    let mut seen = HashSet::new();
    let u = layer_figures(upper, &mut seen, obs)?.bytes;
    let mut total = u;
    for l in &stack.lowers {
        total += layer_figures(l, &mut seen, obs)?.bytes;
    }
    Ok(Usage {
        upper_bytes: u,
        virtual_bytes: total,
    })
}
