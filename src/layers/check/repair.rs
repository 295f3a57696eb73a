//! `check --repair`: the changes repairs make, each keeping what the view shows.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use super::UpperFormat;
use crate::format::markers;
use crate::layers::listing::is_dir;
use crate::sys;

pub(super) fn has_opaque_file(fd: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    Ok(sys::stat_at_opt(fd, OsStr::new(markers::OPAQUE_MARKER))?.is_some())
}

/// Marks the directory `fd` opaque in the canonical form of `format` only.
pub(super) fn set_opaque(fd: BorrowedFd<'_>, format: UpperFormat, file: bool) -> rustix::io::Result<()> {
    match format {
        UpperFormat::Overlay { opaque_xattr } => {
            sys::Target::Fd(fd).set_xattr(OsStr::new(opaque_xattr), b"y", rustix::fs::XattrFlags::empty())?;
            markers::remove_opaque_xattrs_except(fd, Some(opaque_xattr))?;
            if file {
                rustix::fs::unlinkat(fd, markers::OPAQUE_MARKER, rustix::fs::AtFlags::empty())?;
            }
        }
        UpperFormat::Oci => {
            if !file {
                markers::mark_opaque(fd, true, false)?;
            }
            markers::remove_opaque_xattrs_except(fd, None)?;
        }
    }
    Ok(())
}

pub(super) fn remove_xattr(dir: BorrowedFd<'_>, name: &OsStr, x: &str) -> rustix::io::Result<()> {
    match sys::Target::Entry(dir, name).remove_xattr(OsStr::new(x)) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the entry `name` of `dir`, a whole tree if it is a directory.
pub(super) fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    sys::remove_entry(dir, name, is_dir(&sys::stat_at(dir, name)?))
}
