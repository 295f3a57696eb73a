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

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, Stat};

use super::layerdir::LayerDir;
use super::locate::layer_fd;
use super::node::Node;
use super::{Loc, Union};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::markers::{self, Marker};
use crate::format::metacopy::{self, XATTRS as METACOPY};
use crate::format::redirect::{self, Redirect};
use crate::sys::Target;

/// Whether the entry `name` of `dir` carries the metacopy marker.
fn is_marked(dir: &LayerDir, name: &OsStr) -> FsResult<bool> {
    for x in METACOPY {
        if dir.get_xattr(name, x)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The redirect the entry `name` of `dir` carries, if any; a value the kernel would refuse is
/// an error.
fn redirect_of(dir: &LayerDir, name: &OsStr) -> Result<Option<Redirect>, String> {
    for x in redirect::XATTRS {
        if let Some(v) = dir.get_xattr(name, x).map_err(|e| e.to_string())? {
            return redirect::parse(&v)
                .map(Some)
                .map_err(|e| format!("{e}: {}", redirect::shown(&v)));
        }
    }
    Ok(None)
}

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

    /// For the upper regular file `name` of a directory merged from `layers` (`top` the upper's
    /// directory, `st` the file's attributes): the lower layer holding its data if it is a
    /// metacopy file (and whether the data is at another name there), else `None`. EIO if it
    /// is one and no lower has its data (a lower changed under the upper).
    pub(super) fn metacopy_data(
        &self,
        layers: &[(usize, Arc<LayerDir>)],
        top: &LayerDir,
        name: &OsStr,
        st: &Stat,
    ) -> FsResult<Option<(usize, bool)>> {
        if st.st_size == 0 || !is_marked(top, name)? {
            return Ok(None);
        }
        if !self.config.metacopy {
            // An upper one does not trust: a crafted metacopy file would show a lower file's
            // data under the upper's owner and mode. Refused as kernel overlayfs refuses it.
            tracing::warn!("refusing to follow the metacopy file {name:?} (mounted with metacopy off)");
            return Err(Errno::EPERM);
        }
        let (layer, dir, leaf) = self.data_at(layers, top, name)?;
        let here = leaf == name && layer_fd(layers, layer).is_some_and(|d| Arc::ptr_eq(&d, &dir));
        Ok(Some((layer, !here)))
    }

    /// Where the data of the metacopy file `name` (an entry of `top`, the upper directory of a
    /// directory merged from `layers`) is: its layer, that layer's directory, and its name there.
    /// The same path in the lowers, or where the file's redirect says (kernel overlayfs records
    /// one when it renames a metacopy file): resolved inside the lower layers only, a component
    /// at a time without following symlinks, to a regular file.
    fn data_at(
        &self,
        layers: &[(usize, Arc<LayerDir>)],
        top: &LayerDir,
        name: &OsStr,
    ) -> FsResult<(usize, Arc<LayerDir>, OsString)> {
        let fail = |why: &str| {
            tracing::warn!("metacopy file {name:?}: {why}");
            Errno::EIO
        };
        let (path, leaf) = match redirect_of(top, name).map_err(|e| fail(&e))? {
            None => (None, name.to_os_string()),
            Some(Redirect::Relative(n)) => (None, n),
            Some(Redirect::Absolute(mut p)) => {
                let leaf = p.pop().ok_or_else(|| fail("empty redirect"))?;
                (Some(p), leaf)
            }
        };
        let lowers: Vec<(usize, Arc<LayerDir>)> = match &path {
            None => layers.iter().filter(|(l, _)| Some(*l) != self.upper).cloned().collect(),
            Some(p) => self.lower_dirs_at(p),
        };
        for (l, d) in lowers {
            match d.stat_at_opt(&leaf)? {
                // An OCI whiteout hides the name below its layer as the other forms do.
                None if d.stat_at_opt(&markers::oci_name(&leaf))?.is_some() => break,
                None => continue,
                // An xattr whiteout is a zero-size regular file: never data.
                Some(lst) if matches!(d.classify(d.marks()?, &leaf, &lst), Marker::Whiteout { .. }) => break,
                // A lower that was itself an upper may hold a metacopy file: its data is
                // further down, as the kernel finds it.
                Some(lst) if Kind::from_mode(lst.st_mode) == Kind::File => {
                    if is_marked(&d, &leaf)? {
                        continue;
                    }
                    return Ok((l, d, leaf));
                }
                // A whiteout or another kind of object hides whatever lies below.
                Some(_) => break,
            }
        }
        Err(fail("no lower layer has its data (a lower changed under the upper)"))
    }

    /// The directories at `path` (components from the layer roots) in the lower layers that
    /// have one, top first.
    fn lower_dirs_at(&self, path: &[OsString]) -> Vec<(usize, Arc<LayerDir>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate().filter(|(i, _)| Some(*i) != self.upper) {
            let mut d = Arc::clone(&layer.root);
            let mut found = true;
            for c in path {
                match d.open_dir(c) {
                    Ok(sub) => d = sub,
                    Err(_) => {
                        found = false;
                        break;
                    }
                }
            }
            if found {
                out.push((i, d));
            }
        }
        out
    }

    /// Where the data of `node` is (with its layer): the lower file of a metacopy file, else
    /// the object itself.
    pub(super) fn locate_data(&self, node: &Node) -> FsResult<(Loc, usize)> {
        let (metacopy, here, layer) = {
            let s = node.state.read();
            (s.is_metacopy(), s.data_here(), s.layer())
        };
        if !metacopy {
            return Ok((self.locate(node, None)?, layer));
        }
        let (parent, name) = self.live_name(node).ok_or(Errno::ENOENT)?;
        let layers = self.dir_layers(&*self.node(parent)?)?;
        if let Some((l, dir)) = here.and_then(|l| Some((l, layer_fd(&layers, l)?))) {
            return Ok((Loc::entry(&dir, name)?, l));
        }
        let top = layer_fd(&layers, layer).ok_or(Errno::EIO)?;
        let (data, dir, leaf) = self.data_at(&layers, &top, &name)?;
        Ok((Loc::entry(&dir, leaf)?, data))
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
        let before = upper.stat()?;
        let out = open_to_fill(&upper, before.st_mode)?;
        if empty {
            rustix::fs::ftruncate(&out, 0)?;
        } else {
            let st = src.stat()?;
            let copied = super::copy_up::copy_file_data(&src, &st, &out).and_then(|()| {
                if !self.config.volatile {
                    rustix::fs::fsync(&out)?;
                }
                Ok(())
            });
            if let Err(e) = copied {
                // Still a metacopy file (read from the lower): give back what a half-done fill
                // took (a full upper), keeping the size.
                let _ =
                    rustix::fs::ftruncate(&out, 0).and_then(|()| rustix::fs::ftruncate(&out, before.st_size as u64));
                return Err(e);
            }
        }
        let t = Target::Open(out.as_fd());
        // Only the names it has: an unprivileged daemon may not even ask to remove `trusted.*`.
        // Before the mode goes back: removing a `user.*` xattr needs write permission.
        for x in METACOPY {
            if t.get_xattr(OsStr::new(x))?.is_some() {
                t.remove_xattr(OsStr::new(x))?;
            }
        }
        // Writing is not a change the view made: the file keeps its times and its mode (a
        // write by an unprivileged daemon clears set-ID bits; a read-only file was opened).
        rustix::fs::futimens(&out, &super::copy_up::stat_times(&before))?;
        if rustix::fs::fstat(&out)?.st_mode != before.st_mode {
            rustix::fs::fchmod(&out, Mode::from_raw_mode(before.st_mode & 0o7777))?;
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

/// Opens the upper file of a metacopy file for writing its data in. A file its owner may not
/// write (mode 0400) refuses an unprivileged daemon, which owns it: it is made writable for the
/// time of the fill (the caller puts the mode back).
fn open_to_fill(upper: &Loc, mode: u32) -> FsResult<std::os::fd::OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    match upper.open(flags) {
        Err(rustix::io::Errno::ACCESS) if mode & 0o200 == 0 => {
            let (dir, entry, _) = upper.at()?;
            rustix::fs::chmodat(
                dir,
                &entry,
                Mode::from_raw_mode((mode | 0o200) & 0o7777),
                rustix::fs::AtFlags::empty(),
            )?;
            Ok(upper.open(flags)?)
        }
        r => Ok(r?),
    }
}
