//! Metadata-only copy-up (kernel overlayfs's `metacopy=on`, same format).
//!
//! A change of a lower regular file's metadata (owner, mode, times, xattrs) copies up an upper
//! file that carries the new metadata, the lower's size as a hole, and the metacopy xattr
//! (`format::metacopy`); its data is still the lower file at the same path. Reads are
//! served from that lower file until something needs the data in the upper (an open for
//! writing, a truncate to a non-zero size, a link or rename of the file): then the data is
//! written into the upper file in place and the marker removed last. Until the marker is gone,
//! every reader (this daemon after a crash, kernel overlayfs) takes the data from the lower, so
//! a half-filled upper is never seen; once it is gone, the upper holds every byte.
//!
//! Kept to files with one link: a multiply-linked lower file is copied whole, into the
//! hard-link index, so that all its names share one upper copy (`hardlinks.rs`).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, Stat};

use super::layerdir::LayerDir;
use super::locate::layer_fd;
use super::node::Node;
use super::{Loc, Union};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::metacopy::{self, XATTRS as METACOPY};
use crate::sys::Target;

impl Union {
    /// Whether a metadata change of the object `st` (in layer `layer`) copies up its metadata
    /// only.
    pub(super) fn wants_metacopy(&self, kind: Kind, st: &Stat) -> bool {
        self.config.metacopy && kind == Kind::File && st.st_nlink == 1 && st.st_size > 0
    }

    /// Marks the copy being built (`to`, of `size` bytes) as metadata only.
    pub(super) fn mark_metacopy(&self, to: &Target<'_>, out: &impl AsFd, size: u64) -> FsResult<()> {
        rustix::fs::ftruncate(out, size)?;
        to.set_xattr(
            OsStr::new(metacopy::name(self.process.privileged)),
            b"",
            rustix::fs::XattrFlags::empty(),
        )?;
        Ok(())
    }

    /// For the upper regular file `name` of a directory merged from `layers` (`st` its
    /// attributes): the lower layer holding its data if it is a metacopy file, else `None`.
    /// EIO if it is one and no lower has its data (a lower changed under the upper).
    pub(super) fn metacopy_data(
        &self,
        layers: &[(usize, Arc<LayerDir>)],
        top: &LayerDir,
        name: &OsStr,
        st: &Stat,
    ) -> FsResult<Option<usize>> {
        // Its block count cannot tell: an xattr block (ext4) counts in it. Only copies of lower
        // files get here, one xattr read each.
        if st.st_size == 0 {
            return Ok(None);
        }
        let mut marked = false;
        for x in METACOPY {
            if top.get_xattr(name, x)?.is_some() {
                marked = true;
                break;
            }
        }
        if !marked {
            return Ok(None);
        }
        for (l, d) in layers.iter().filter(|(l, _)| Some(*l) != self.upper) {
            match d.stat_at_opt(name)? {
                None => continue,
                Some(lst) if Kind::from_mode(lst.st_mode) == Kind::File => return Ok(Some(*l)),
                // A whiteout or another kind of object hides whatever lies below.
                Some(_) => break,
            }
        }
        tracing::warn!(
            "metacopy file {:?} has no data in any lower layer (a lower changed under the upper)",
            name
        );
        Err(Errno::EIO)
    }

    /// Where the data of `node` is: the lower file of a metacopy file, else the object itself.
    pub(super) fn locate_data(&self, node: &Node) -> FsResult<(Loc, usize)> {
        let data = {
            let s = node.state.read();
            if !s.is_metacopy() { None } else { Some(s.data_layer()) }
        };
        let Some(data) = data else {
            let layer = node.state.read().layer();
            return Ok((self.locate(node, None)?, layer));
        };
        let (parent, name) = self.live_name(node).ok_or(Errno::ENOENT)?;
        let dir = self.node(parent)?;
        let ld = layer_fd(&self.dir_layers(&dir)?, data).ok_or(Errno::EIO)?;
        Ok((Loc::entry(&ld, name)?, data))
    }

    /// A metacopy file's blocks are its lower data's (as kernel overlayfs reports them): `du`
    /// of the view does not change with a chown.
    pub(super) fn count_lower_blocks(&self, node: &Node, a: &mut crate::attr::Attr) {
        if node.state.read().is_metacopy() {
            if let Ok(st) = self.locate_data(node).and_then(|(loc, _)| Ok(loc.stat()?)) {
                a.blocks = st.st_blocks as u64;
            }
        }
    }

    /// Writes the data of the metacopy file `node` into its upper file and removes the marker,
    /// or, with `empty` (the caller truncates to zero next), only removes the marker after
    /// truncating. Nothing to do for other files.
    pub(super) fn fill_data(&self, node: &Arc<Node>, empty: bool) -> FsResult<()> {
        if !node.state.read().is_metacopy() {
            return Ok(());
        }
        let _g = node.copy_lock.lock();
        if !node.state.read().is_metacopy() {
            return Ok(());
        }
        let (src, _) = self.locate_data(node)?;
        let upper = self.locate(node, None)?;
        let out = upper.open(OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW)?;
        let before = rustix::fs::fstat(&out)?;
        if empty {
            rustix::fs::ftruncate(&out, 0)?;
        } else {
            let st = src.stat()?;
            super::copy_up::copy_file_data(&src, &st, &out)?;
            if !self.config.volatile {
                rustix::fs::fsync(&out)?;
            }
        }
        // Writing is not a change the view made: the file keeps its times and its set-ID bits
        // (which a write by an unprivileged daemon clears).
        rustix::fs::futimens(&out, &super::copy_up::stat_times(&before))?;
        if rustix::fs::fstat(&out)?.st_mode != before.st_mode {
            rustix::fs::fchmod(&out, Mode::from_raw_mode(before.st_mode & 0o7777))?;
        }
        let t = Target::Open(out.as_fd());
        // Only the names it has: an unprivileged daemon may not even ask to remove `trusted.*`.
        for x in METACOPY {
            if t.get_xattr(OsStr::new(x))?.is_some() {
                t.remove_xattr(OsStr::new(x))?;
            }
        }
        if !self.config.volatile {
            rustix::fs::fsync(&out)?;
        }
        let mut s = node.state.write();
        let layer = s.layer();
        s.set_layer(layer);
        Ok(())
    }
}
