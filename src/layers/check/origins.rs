//! `check`: what objects carry. Our origin xattrs (the inode number an object had in a lower,
//! which it keeps in the view) must be well formed and name a lower object; kernel overlayfs's
//! metacopy files are checked in `indirect.rs`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::Checker;
use super::repair::remove_xattr;
use crate::attr::Kind;
use crate::format::markers::Marker;
use crate::layers::listing::Listing;
use crate::layers::lowers::ImageDir;
use crate::layers::stack::WholeLayer;
use crate::layers::{LayerError, Result, join};
use crate::sys;

/// An origin xattr that names no lower object at its own path (a renamed copy, or a number no
/// lower has): one walk of the lowers at the end tells which.
pub(super) struct UnresolvedOrigin {
    /// The object, for messages.
    at: PathBuf,
    /// Its directory, relative to the upper's root (reopened for a repair).
    dir: Vec<u8>,
    name: OsString,
    xattr: &'static str,
    /// The inode number it names.
    ino: u64,
}

impl Checker<'_> {
    /// The objects of the upper directory `rel`: origins and metacopy files (whose data is in
    /// `lower`, the lower part the view merges here).
    pub(super) fn objects(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        listing: &Listing,
        old: Option<&ImageDir>,
        lower: Option<&ImageDir>,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        for e in &listing.entries {
            if e.kind != Marker::Object {
                continue;
            }
            self.obs.entry();
            let path = join(rel, &e.name);
            let at = upper.at(&path);
            let t = sys::Target::Entry(fd, &e.name);
            let xs = t.list_xattrs().map_err(|err| LayerError::io(&at, err))?;
            let kind = Kind::from_mode(e.st.st_mode);
            if kind == Kind::File
                && xs
                    .iter()
                    .any(|x| crate::format::metacopy::is_metacopy_xattr(x.as_bytes()))
            {
                self.metacopy(rel, fd, e, lower)?;
            }
            let ox = crate::format::xattrs::origin(kind);
            if xs.iter().any(|x| x.as_bytes() == ox.as_bytes()) {
                self.origin(rel, fd, &e.name, ox, old)?;
            }
        }
        Ok(())
    }

    /// An origin xattr `ox` on the entry `name` of `dir` (upper directory `rel`).
    pub(super) fn origin(
        &mut self,
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &OsStr,
        ox: &'static str,
        old: Option<&ImageDir>,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        let at = upper.at(&join(rel, name));
        let Some(v) = sys::get_xattr(dir, name, ox).map_err(|e| LayerError::io(&at, e))? else {
            return Ok(());
        };
        let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) else {
            let mut fix = || remove_xattr(dir, name, ox);
            return self.problem(
                at,
                format!("malformed origin xattr {ox} ({} bytes, not 8)", v.len()),
                Some(&mut fix),
            );
        };
        let value = u64::from_le_bytes(b);
        if let Some(o) = old {
            if let Some(f) = o.lookup(self.stack, rel, name, false)? {
                let layer = o.dirs[f.pos].layer;
                if self.view_ino(layer, f.st.st_ino) == value {
                    return Ok(());
                }
            }
        }
        self.unresolved_origins.push(UnresolvedOrigin {
            at,
            dir: rel.to_vec(),
            name: name.to_os_string(),
            xattr: ox,
            ino: value,
        });
        Ok(())
    }

    /// The inode number the mount shows for raw number `raw` of lower `layer`.
    pub(super) fn view_ino(&self, layer: usize, raw: u64) -> u64 {
        self.numbering.view(layer + 1, raw)
    }

    /// Origins not matching their own path (a renamed copy): one walk of the lowers tells
    /// whether any lower object has that number.
    pub(super) fn origins_pointing_nowhere(&mut self) -> Result<()> {
        if self.unresolved_origins.is_empty() {
            return Ok(());
        }
        let mut known: HashSet<u64> = HashSet::new();
        for (i, l) in self.stack.lowers.iter().enumerate() {
            known.insert(self.view_ino(i, l.root_stat()?.st_ino));
            let mut raws = Vec::new();
            l.walk(&mut |_, e| {
                if let Some(e) = e {
                    raws.push(e.st.st_ino);
                }
                Ok(())
            })?;
            for r in raws {
                known.insert(self.view_ino(i, r));
            }
        }
        let upper = self.stack.upper()?;
        for o in std::mem::take(&mut self.unresolved_origins) {
            if known.contains(&o.ino) {
                continue;
            }
            let dfd =
                sys::open_dir_beneath(upper.fd(), OsStr::from_bytes(&o.dir)).map_err(|e| LayerError::io(&o.at, e))?;
            let mut fix = || remove_xattr(dfd.as_fd(), &o.name, o.xattr);
            let msg = format!(
                "origin xattr {} names inode {}, which no lower layer has",
                o.xattr, o.ino
            );
            self.problem(o.at, msg, Some(&mut fix))?;
        }
        Ok(())
    }
}
