//! `check`: opaque markers. A directory is marked opaque one way, the upper's.

use std::os::fd::BorrowedFd;
use std::path::Path;

use super::repair::set_opaque;
use super::{Checker, UpperFormat};
use crate::format::markers::{self, Marker};
use crate::layers::listing::Listing;
use crate::layers::{LayerError, Result};

impl Checker<'_> {
    /// Opaque markers of the directory `fd`: one, in the upper's form.
    pub(super) fn opaque_forms(&mut self, here: &Path, fd: BorrowedFd<'_>, listing: &Listing) -> Result<()> {
        let xs = markers::opaque_xattrs_set(fd).map_err(|e| LayerError::io(here, e))?;
        let file = listing.entries.iter().any(|e| e.kind == Marker::OpaqueFile);
        let mut forms: Vec<String> = xs.iter().map(|x| format!("{x}=y")).collect();
        if file {
            forms.push(markers::OPAQUE_MARKER.to_string());
        }
        if forms.is_empty() {
            return Ok(());
        }
        let canonical = match self.format {
            UpperFormat::Overlay { opaque_xattr } => format!("{opaque_xattr}=y"),
            UpperFormat::Oci => markers::OPAQUE_MARKER.to_string(),
        };
        if forms.len() == 1 && forms[0] == canonical {
            return Ok(());
        }
        let msg = if forms.len() > 1 {
            format!("opaque directory with {} markers ({})", forms.len(), forms.join(", "))
        } else if file {
            format!(
                "opaque marker {} in an overlay-format upper (kernel overlayfs shows it as a file)",
                markers::OPAQUE_MARKER
            )
        } else {
            format!("opaque marker {} in an {} upper", forms[0], self.format)
        };
        let format = self.format;
        let mut fix = || set_opaque(fd, format, file);
        self.problem(here.to_path_buf(), msg, Some(&mut fix))
    }
}
