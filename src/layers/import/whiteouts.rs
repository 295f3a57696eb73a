//! `import`: whiteouts and opaque markers. They are noted as the archive names them and made at
//! the end, in the mount's format: a name the same layer has is not whited out (a whiteout only
//! hides the layers below), and a directory's whiteout there makes it opaque instead.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use super::tree::Tree;
use super::{Importer, Made};
use crate::format::markers;
use crate::layers::Result;

impl Importer<'_> {
    /// A whiteout or opaque marker: noted, made at the end (see [`Importer::finish`]).
    pub(super) fn marker_entry(&mut self, raw: &[u8], ty: EntryType, parent: &[u8], name: &[u8]) -> Result<()> {
        if ty == EntryType::Directory {
            return Err(self.refuse(raw, "a whiteout marker that is a directory"));
        }
        self.parent_dir(raw, parent)?;
        let dir = self.at.id();
        if name == markers::OPAQUE_MARKER.as_bytes() {
            self.opaques.push((parent.to_vec(), dir));
        } else {
            let target = &name[markers::WH_PREFIX.len()..];
            if target.is_empty() {
                return Err(self.refuse(raw, "a whiteout for an empty name"));
            }
            self.whiteouts.push((dir, target.to_vec()));
        }
        let id = self.tree.add(dir, name);
        let node = self.tree.node_mut(id);
        node.made = Some(Made::Marker);
        node.explicit = true;
        Ok(())
    }

    /// Markers, then directory metadata (each directory after everything below it, so that
    /// a directory made unsearchable cannot stop what is below it from getting its own).
    pub(super) fn finish(&mut self) -> Result<()> {
        self.make_whiteouts()?;
        let mut opaques = std::mem::take(&mut self.opaques);
        opaques.sort();
        opaques.dedup();
        for (d, id) in opaques {
            self.at.go_to(&self.tree, id).map_err(|e| self.fail(&d, e))?;
            let fd = self.at.fd().map_err(|e| self.fail(&d, e))?;
            markers::mark_opaque(fd, false, self.privileged).map_err(|e| self.fail(&d, e))?;
            self.summary.opaque_dirs += 1;
        }
        self.dir_metadata()
    }

    /// The whiteouts noted, in archive order.
    fn make_whiteouts(&mut self) -> Result<()> {
        for (parent, target) in std::mem::take(&mut self.whiteouts) {
            // The path, for messages only (it costs a deep directory its depth).
            let path = |tree: &Tree| {
                let mut p = tree.path(parent);
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&target);
                p
            };
            self.at
                .go_to(&self.tree, parent)
                .map_err(|e| self.fail(&path(&self.tree), e))?;
            let n = OsStr::from_bytes(&target);
            let hidden = self.tree.child(parent, &target);
            match hidden.map(|c| (c, self.tree.node(c).made)) {
                // The same layer has the name: a whiteout only hides the layers below, which for a
                // directory is opacity and for anything else is what replacing it does anyway.
                Some((c, Some(Made::Dir | Made::ImplicitDir))) => {
                    self.opaques.push((path(&self.tree), c));
                    continue;
                }
                Some((_, Some(_))) => continue,
                Some((_, None)) | None => {}
            }
            let pfd = self.at.fd().map_err(|e| self.fail(&path(&self.tree), e))?;
            match markers::make_device(pfd, n) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM | rustix::io::Errno::OPNOTSUPP) => {
                    markers::make_oci_whiteout(pfd, n).map_err(|e| self.fail(&path(&self.tree), e))?
                }
                Err(e) => return Err(self.fail(&path(&self.tree), e)),
            }
            self.summary.whiteouts += 1;
        }
        Ok(())
    }
}
