//! The one place that knows how whiteouts and opaque markers look on disk.
//!
//! Read in every layer: char device 0/0, `.wh.NAME` (OCI), a zero-size file carrying an
//! `overlay.whiteout` xattr (only inside a directory marked `overlay.opaque=x`, as the kernel
//! does); opaque as `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y` or a `.wh..wh..opq` entry.
//! Written in the upper: overlay format by default, OCI files when asked or when mknod is refused.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};

use crate::attr::Kind;
use crate::sys;

/// Prefix of OCI whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// A whiteout device of this name is part of the opaque marker fuse-overlayfs writes (beside the
/// xattr and `.wh..wh..opq`), not a whiteout of anything a user made.
pub const FUSE_OVERLAYFS_OPAQUE: &str = ".wh..opq";

const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Namespaces of xattrs that belong to union implementations and never show in the view.
const PRIVATE_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.unionfs.",
    b"trusted.unionfs.",
];

/// Where we record the inode number an object had before copy-up, so it keeps it. Linux allows
/// `user.*` xattrs only on files and directories; symlinks and special files need `trusted.*`
/// (so they keep their number only when the daemon is privileged).
pub fn origin_xattr(kind: Kind) -> &'static str {
    match kind {
        Kind::File | Kind::Dir => "user.unionfs.origin",
        _ => "trusted.unionfs.origin",
    }
}

/// Whether an xattr name is private to union filesystems (hidden, not settable).
pub fn is_private_xattr(name: &OsStr) -> bool {
    PRIVATE_XATTR_PREFIXES.iter().any(|p| name.as_bytes().starts_with(p))
}

/// If `name` is an OCI whiteout `.wh.X` (but not the opaque marker), the hidden name `X`.
pub fn oci_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    b.strip_prefix(WH_PREFIX)
        .filter(|t| !t.is_empty())
        .map(OsStr::from_bytes)
}

/// `.wh.X` for `X`.
pub fn oci_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from(OsStr::from_bytes(&v))
}

/// Whether a name may not be created through the view: after a remount it would read as a
/// whiteout or opaque marker.
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// Whether a stat result is an overlay char-device whiteout.
pub fn is_chr_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// How a directory is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirMarks {
    /// Lower layers' entries of this directory are hidden.
    pub opaque: bool,
    /// Kernel overlayfs `opaque=x`: not opaque, but may hold xattr whiteouts.
    pub xattr_whiteouts: bool,
}

/// Reads the opaque markers of the directory behind the `O_PATH` fd `dir`. A marker we may
/// not read (an unprivileged daemon and another user's directory, which it may not search
/// either) counts as absent: the directory itself is shown as the plain filesystem shows it,
/// and what a hidden marker could hide stays out of reach, because listing or looking up
/// anything inside reads this same directory and fails there. A layer that fails to answer
/// otherwise is an error, never a guess that could show what a marker hides.
pub fn dir_marks(dir: BorrowedFd<'_>) -> rustix::io::Result<DirMarks> {
    let mut m = DirMarks::default();
    for x in OPAQUE_XATTRS {
        match sys::get_xattr_fd(dir, OsStr::new(x)) {
            Ok(Some(v)) => match v.as_slice() {
                b"y" => m.opaque = true,
                b"x" => m.xattr_whiteouts = true,
                _ => {}
            },
            Ok(None) | Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    if !m.opaque {
        match sys::stat_at_opt(dir, OsStr::new(OPAQUE_MARKER)) {
            Ok(found) => m.opaque = found.is_some(),
            Err(rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(m)
}

/// Whether the zero-size regular file `name` in `dir` carries an overlay whiteout xattr.
pub fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
        && st.st_size == 0
        && WHITEOUT_XATTRS
            .iter()
            .any(|x| matches!(sys::get_xattr(dir, name, x), Ok(Some(_))))
}

/// Whether we may use `trusted.*` xattrs on the upper (decided once per mount).
pub fn opaque_xattr_name(privileged: bool) -> &'static str {
    if privileged {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    }
}

/// Marks the directory behind `dir` opaque, in the style of the mount. `oci` writes the
/// `.wh..wh..opq` file; otherwise the `overlay.opaque` xattr (falling back to the file if the
/// filesystem refuses xattrs).
pub fn mark_opaque(dir: BorrowedFd<'_>, oci: bool, privileged: bool) -> rustix::io::Result<()> {
    if !oci {
        let t = sys::Target::Fd(dir);
        let name = OsStr::new(opaque_xattr_name(privileged));
        match t.set_xattr(name, b"y", rustix::fs::XattrFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::PERM) if privileged => {
                if t.set_xattr(OsStr::new("user.overlay.opaque"), b"y", rustix::fs::XattrFlags::empty())
                    .is_ok()
                {
                    return Ok(());
                }
            }
            Err(_) => {}
        }
    }
    let fd = rustix::fs::openat(
        dir,
        OPAQUE_MARKER,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o000),
    )?;
    drop(fd);
    Ok(())
}

/// Makes a whiteout device (character device 0/0) at `dir/name`.
pub(crate) fn make_device(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, rustix::fs::Mode::empty(), 0)
}

// ---- Helpers for the offline layer tools (`crate::layers`); the core does not use them. ----

/// Which whiteout encoding an entry of a layer directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WhiteoutForm {
    /// Character device 0/0 at the name (kernel overlayfs, fuse-overlayfs, ours).
    CharDevice,
    /// An OCI `.wh.NAME` entry beside the name.
    Oci,
    /// A zero-size file with an `overlay.whiteout` xattr (inside an `opaque=x` directory).
    Xattr,
}

/// The opaque xattrs set to `y` on the directory behind `dir`, in the order of
/// [`dir_marks`]; a marker we may not read counts as absent, as there.
pub(crate) fn opaque_xattrs_set(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for x in OPAQUE_XATTRS {
        match sys::get_xattr_fd(dir, OsStr::new(x)) {
            Ok(Some(v)) if v.as_slice() == b"y" => out.push(x),
            Ok(_) | Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Classifies the entry `name` of a layer directory whose marks are `marks` and whose `lstat`
/// is `st`: `Some((hidden name, form))` when it is a whiteout, as the merged index reads it
/// (`.wh.X` hides `X`; the opaque marker is not a whiteout).
pub(crate) fn classify_whiteout(
    dir: BorrowedFd<'_>,
    marks: DirMarks,
    name: &OsStr,
    st: &Stat,
) -> Option<(OsString, WhiteoutForm)> {
    if let Some(t) = oci_target(name) {
        return Some((t.to_os_string(), WhiteoutForm::Oci));
    }
    if name.as_bytes() == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    if is_chr_whiteout(st) {
        return Some((name.to_os_string(), WhiteoutForm::CharDevice));
    }
    if marks.xattr_whiteouts && is_xattr_whiteout(dir, name, st) {
        return Some((name.to_os_string(), WhiteoutForm::Xattr));
    }
    None
}

/// Creates an empty OCI whiteout `.wh.NAME` in `dir`.
pub(crate) fn make_oci_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        oci_name(name).as_os_str(),
        rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o000),
    )?;
    drop(fd);
    Ok(())
}

/// Removes every opaque xattr from the directory behind `dir` except `keep`.
pub(crate) fn remove_opaque_xattrs_except(dir: BorrowedFd<'_>, keep: Option<&str>) -> rustix::io::Result<()> {
    let t = sys::Target::Fd(dir);
    for x in OPAQUE_XATTRS {
        if Some(x) == keep {
            continue;
        }
        match t.remove_xattr(OsStr::new(x)) {
            Ok(()) | Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Kernel overlayfs features that keep part of an object's meaning outside the upper (data in
/// a lower: metacopy; the source directory in a lower: redirect). Offline tools cannot follow
/// them.
pub(crate) const KERNEL_INDIRECT_XATTRS: [&str; 4] = [
    "trusted.overlay.metacopy",
    "trusted.overlay.redirect",
    "user.overlay.metacopy",
    "user.overlay.redirect",
];
