//! `check`: whiteouts. Each name's markers are looked at together: two markers for one name, a
//! marker in a form the upper's format does not write, a whiteout hiding nothing, a name both
//! present and whited out.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};

use super::repair::{has_opaque_file, remove_any, set_opaque};
use super::{Checker, UpperFormat};
use crate::format::markers::{self, Marker, WhiteoutForm};
use crate::layers::listing::{Listing, is_dir};
use crate::layers::lowers::ImageDir;
use crate::layers::{Result, join};
use crate::sys;

fn form_name(f: WhiteoutForm) -> &'static str {
    match f {
        WhiteoutForm::CharDevice => "a char-device 0/0 whiteout",
        WhiteoutForm::Oci => "an OCI .wh. whiteout",
        WhiteoutForm::Xattr => "a zero-size file with an overlay whiteout xattr",
    }
}

impl Checker<'_> {
    /// The whiteouts of the upper directory `rel`, grouped by the name they hide.
    pub(super) fn whiteouts(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        listing: &Listing,
        merge: Option<&ImageDir>,
    ) -> Result<()> {
        let mut groups: BTreeMap<OsString, Vec<(OsString, WhiteoutForm)>> = BTreeMap::new();
        for e in &listing.entries {
            if let Marker::Whiteout { target, form } = &e.kind {
                groups.entry(target.clone()).or_default().push((e.name.clone(), *form));
            }
        }
        for (target, forms) in &groups {
            self.obs.entry();
            if listing.object_names().contains(target.as_os_str()) {
                self.present_and_whited_out(rel, fd, listing, merge, target, forms)?;
                continue;
            }
            let hides = match merge {
                Some(m) => m.lookup(self.stack, rel, target, false)?.is_some(),
                None => false,
            };
            if hides {
                self.whiteout_forms(rel, fd, target, forms)?;
            } else {
                self.useless_whiteout(rel, fd, merge.is_none(), target, forms)?;
            }
        }
        Ok(())
    }

    /// `target` is an object of the upper directory and whited out there too: the whiteout only
    /// cuts the merge, which for a directory over an image directory is opacity.
    pub(super) fn present_and_whited_out(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        listing: &Listing,
        merge: Option<&ImageDir>,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let found = match merge {
            Some(m) => m.lookup(self.stack, rel, target, false)?,
            None => None,
        };
        let obj_is_dir = listing.entries.iter().any(|e| e.name == target && e.is_dir());
        let make_opaque = obj_is_dir && found.as_ref().is_some_and(|f| is_dir(&f.st));
        let format = self.format;
        let mut fix = || -> rustix::io::Result<()> {
            if make_opaque {
                let cfd = sys::open_path_dir(fd, target)?;
                set_opaque(cfd.as_fd(), format, has_opaque_file(cfd.as_fd())?)?;
            }
            for (n, _) in forms {
                remove_any(fd, n)?;
            }
            Ok(())
        };
        let msg = format!("present and whited out ({}) in the same layer", names.join(", "));
        self.problem(tpath, msg, Some(&mut fix))
    }

    /// A whiteout that hides nothing (`in_cut`: the directory hides the lowers anyway).
    pub(super) fn useless_whiteout(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        in_cut: bool,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let why = if in_cut {
            "whiteout in a directory that hides the lowers anyway (opaque or new)"
        } else {
            "whiteout hiding nothing (no lower layer shows this name)"
        };
        let mut fix = || -> rustix::io::Result<()> {
            for (n, _) in forms {
                remove_any(fd, n)?;
            }
            Ok(())
        };
        self.problem(tpath, format!("{why} ({})", names.join(", ")), Some(&mut fix))
    }

    /// A whiteout that hides something: one marker, in the upper's form.
    pub(super) fn whiteout_forms(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let canonical = match self.format {
            UpperFormat::Overlay { .. } => WhiteoutForm::CharDevice,
            UpperFormat::Oci => WhiteoutForm::Oci,
        };
        let foreign: Vec<&(OsString, WhiteoutForm)> = forms.iter().filter(|(_, f)| *f != canonical).collect();
        if foreign.is_empty() && forms.len() == 1 {
            return Ok(());
        }
        let msg = if forms.len() > 1 {
            format!("a name with {} whiteout markers ({})", forms.len(), names.join(", "))
        } else if canonical == WhiteoutForm::CharDevice && forms[0].1 == WhiteoutForm::Oci {
            format!(
                "{} in an overlay-format upper (kernel overlayfs shows it as a file)",
                form_name(forms[0].1)
            )
        } else {
            format!("{} in an {} upper", form_name(forms[0].1), self.format)
        };
        let has_canonical = forms.iter().any(|(_, f)| *f == canonical);
        let mut fix = || -> rustix::io::Result<()> {
            // Markers at the name itself go first, so the canonical one can take it.
            for (n, f) in forms {
                if *f != canonical && *f != WhiteoutForm::Oci {
                    remove_any(fd, n)?;
                }
            }
            if !has_canonical {
                match canonical {
                    WhiteoutForm::CharDevice => markers::make_device(fd, target)?,
                    _ => markers::make_oci_whiteout(fd, target)?,
                }
            }
            for (n, f) in forms {
                if *f != canonical && *f == WhiteoutForm::Oci {
                    remove_any(fd, n)?;
                }
            }
            Ok(())
        };
        self.problem(tpath, msg, Some(&mut fix))
    }
}
