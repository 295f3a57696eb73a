//! `check`: kernel overlayfs's redirected directories and metacopy files (see
//! `layers/indirect.rs`). A redirect must be a value the kernel accepts and lead to a lower
//! directory; a metacopy file's data must be a lower regular file of its size.
//!
//! Repair drops a redirect that leads nowhere or may not be followed: the directory then shows
//! its upper content only (marked opaque where the image has a directory at its path, which
//! would otherwise show through). A metacopy file without its data cannot be repaired: the
//! data is gone, and repair leaves the file as it is.

use std::os::fd::BorrowedFd;

use super::Checker;
use super::repair::{remove_xattr, set_opaque};
use crate::format::redirect;
use crate::layers::indirect::{self, Data, Resolved};
use crate::layers::listing::Entry;
use crate::layers::lowers::ImageDir;
use crate::layers::{Result, join};

impl Checker<'_> {
    /// The redirect of the upper directory `e` of `fd` (the directory `rel`, whose lower part
    /// is `parent`; `old` is what the image has at its path). None: it has no redirect the view
    /// follows. Some(target): the lower part it gives the directory (None: nothing; reported).
    pub(super) fn redirect(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        e: &Entry,
        parent: Option<&ImageDir>,
        old_is_dir: bool,
    ) -> Result<Option<Option<ImageDir>>> {
        let upper = self.stack.upper()?;
        let at = upper.at(&join(rel, &e.name));
        let get = indirect::upper_xattr(fd, &e.name);
        let Some(value) = indirect::raw_redirect(&get, &at)? else {
            return Ok(None);
        };
        let shown = redirect::shown(&value);
        let problem = match redirect::parse(&value) {
            Err(why) => format!("kernel overlayfs redirect {shown} is hostile ({why})"),
            Ok(to) => match indirect::upper_target(self.stack, parent, rel, &to)? {
                Resolved::Dir(d) => return Ok(Some(Some(d))),
                Resolved::Nothing(why) => format!("kernel overlayfs redirect {shown} points nowhere ({why})"),
                Resolved::Hostile(why) => format!("kernel overlayfs redirect {shown} is hostile ({why})"),
            },
        };
        let format = self.format;
        let name = e.name.clone();
        let mut fix = || -> rustix::io::Result<()> {
            if old_is_dir {
                let dir = crate::sys::open_path_dir(fd, &name)?;
                set_opaque(std::os::fd::AsFd::as_fd(&dir), format, false)?;
            }
            for x in redirect::XATTRS {
                remove_xattr(fd, &name, x)?;
            }
            Ok(())
        };
        let what = if old_is_dir {
            "; repair drops it and marks the directory opaque: it shows its upper content only"
        } else {
            "; repair drops it: the directory shows its upper content only"
        };
        self.problem(at, format!("{problem}{what}"), Some(&mut fix))?;
        Ok(Some(None))
    }

    /// The metacopy file `e` of `fd` (the directory `rel`, whose lower part is `lower`): its
    /// data must be a lower regular file of its size.
    pub(super) fn metacopy(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        e: &Entry,
        lower: Option<&ImageDir>,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        let at = upper.at(&join(rel, &e.name));
        let get = indirect::upper_xattr(fd, &e.name);
        if !indirect::is_metacopy(&get, &at)? {
            return Ok(());
        }
        let r = match indirect::redirect_at(&get, &at) {
            Ok(r) => r,
            Err(err) => {
                self.report(at, format!("kernel overlayfs metacopy file: {err}"), false);
                return Ok(());
            }
        };
        let lost = "; its data is lost and repair cannot make it up (restore the lower file, or replace this one)";
        match indirect::metacopy_data(self.stack, lower, rel, &e.name, r.as_ref(), &at) {
            Ok(Data::File(_, st)) if st.st_size != e.st.st_size => self.report(
                at.clone(),
                format!(
                    "kernel overlayfs metacopy file of {} bytes whose lower data has {} bytes{lost}",
                    e.st.st_size, st.st_size
                ),
                false,
            ),
            Ok(Data::File(..)) => {}
            Ok(Data::Missing(why)) => self.report(
                at.clone(),
                format!("kernel overlayfs metacopy file without its data ({why}){lost}"),
                false,
            ),
            Err(err) => self.report(
                at.clone(),
                format!("kernel overlayfs metacopy file: {err}{lost}"),
                false,
            ),
        }
        Ok(())
    }
}
