//! How whiteouts and opaque directories look on disk, and what a name in a layer directory is.
//!
//! Read in every layer: a character device 0/0, `.wh.NAME` (OCI), a zero-size file carrying an
//! `overlay.whiteout` xattr (only inside a directory marked `overlay.opaque=x`, as the kernel
//! reads them); opaque as `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y` or a `.wh..wh..opq` entry. Written in the upper: overlay
//! format by default, OCI files when asked or when mknod is refused.
//!
//! [`Stacking`] is the rule by which a name's entries in a directory's layers, top down, make
//! what the view shows; the union's merged listings and the layer tools' lookups both follow it.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Stat};

use crate::sys;

/// Prefix of OCI whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// A whiteout device of this name is part of the opaque marker fuse-overlayfs writes (beside the
/// xattr and `.wh..wh..opq`), not a whiteout of anything a user made.
pub const FUSE_OVERLAYFS_OPAQUE: &str = ".wh..opq";

/// The opaque xattr a privileged daemon writes (and kernel overlayfs reads by default).
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// The opaque xattr an unprivileged daemon writes (kernel overlayfs's `userxattr`).
pub const USER_OPAQUE: &str = "user.overlay.opaque";
/// Every opaque xattr we read, in the order we read them.
const OPAQUE_XATTRS: [&str; 3] = [TRUSTED_OPAQUE, USER_OPAQUE, "user.fuseoverlayfs.opaque"];
/// The overlay-format opaque xattrs (the ones an upper's format is told by).
pub const OVERLAY_OPAQUE_XATTRS: [&str; 2] = [TRUSTED_OPAQUE, USER_OPAQUE];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

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

/// Whether `name` is the OCI opaque marker.
pub fn is_opaque_marker(name: &OsStr) -> bool {
    name.as_bytes() == OPAQUE_MARKER.as_bytes()
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
    let xattr = |x: &str| match sys::get_xattr_fd(dir, OsStr::new(x)) {
        Ok(v) => Ok(v),
        Err(rustix::io::Errno::ACCESS) | Err(rustix::io::Errno::PERM) => Ok(None),
        Err(e) => Err(e),
    };
    let marker_file = || match sys::stat_at_opt(dir, OsStr::new(OPAQUE_MARKER)) {
        Ok(found) => Ok(found.is_some()),
        Err(rustix::io::Errno::ACCESS) => Ok(false),
        Err(e) => Err(e),
    };
    marks_of(&xattr, &marker_file)
}

/// How a directory is marked, given how to read its xattrs and whether it holds the OCI
/// opaque marker file (for layers that are not directories on a filesystem).
pub fn marks_of(
    xattr: &dyn Fn(&str) -> rustix::io::Result<Option<Vec<u8>>>,
    marker_file: &dyn Fn() -> rustix::io::Result<bool>,
) -> rustix::io::Result<DirMarks> {
    let mut m = DirMarks::default();
    for x in OPAQUE_XATTRS {
        match xattr(x)?.as_deref() {
            Some(b"y") => m.opaque = true,
            Some(b"x") => m.xattr_whiteouts = true,
            _ => {}
        }
    }
    if !m.opaque {
        m.opaque = marker_file()?;
    }
    Ok(m)
}

/// Which whiteout encoding an entry of a layer directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhiteoutForm {
    /// Character device 0/0 at the name (kernel overlayfs, fuse-overlayfs, ours).
    CharDevice,
    /// An OCI `.wh.NAME` entry beside the name.
    Oci,
    /// A zero-size file with an `overlay.whiteout` xattr (inside an `opaque=x` directory).
    Xattr,
}

/// What an entry of a layer directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// A real object of the layer.
    Object,
    /// A whiteout hiding `target` in the layers below (for `.wh.X`, `X`; else the name itself).
    Whiteout { target: OsString, form: WhiteoutForm },
    /// The OCI opaque marker file (its directory's marks say it, see [`dir_marks`]).
    OpaqueFile,
}

/// What the entry `name` of a layer directory is, from its name alone where that decides it:
/// OCI markers are known by name, everything else needs [`classify`].
pub fn classify_name(name: &OsStr) -> Option<Marker> {
    if is_opaque_marker(name) {
        return Some(Marker::OpaqueFile);
    }
    oci_target(name).map(|t| Marker::Whiteout {
        target: t.to_os_string(),
        form: WhiteoutForm::Oci,
    })
}

/// Whether an entry of type `dtype` (from a directory listing) in a directory marked `marks`
/// must be stat'ed to tell a whiteout from an object.
pub fn needs_stat(dtype: FileType, marks: DirMarks) -> bool {
    dtype == FileType::Unknown
        || dtype == FileType::CharacterDevice
        || (marks.xattr_whiteouts && dtype == FileType::RegularFile)
}

/// What the entry `name` of the layer directory `dir` (marked `marks`, `lstat` result `st`) is.
pub fn classify(dir: BorrowedFd<'_>, marks: DirMarks, name: &OsStr, st: &Stat) -> Marker {
    classify_with(marks, name, st, &|| {
        WHITEOUT_XATTRS
            .iter()
            .any(|x| matches!(sys::get_xattr(dir, name, x), Ok(Some(_))))
    })
}

/// What an entry is, given how to tell whether it carries an overlay whiteout xattr (for
/// layers that are not directories on a filesystem).
pub fn classify_with(marks: DirMarks, name: &OsStr, st: &Stat, has_whiteout_xattr: &dyn Fn() -> bool) -> Marker {
    if let Some(m) = classify_name(name) {
        return m;
    }
    if is_chr_whiteout(st) {
        return Marker::Whiteout {
            target: name.to_os_string(),
            form: WhiteoutForm::CharDevice,
        };
    }
    let zero_size_file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size == 0;
    if marks.xattr_whiteouts && zero_size_file && has_whiteout_xattr() {
        return Marker::Whiteout {
            target: name.to_os_string(),
            form: WhiteoutForm::Xattr,
        };
    }
    Marker::Object
}

/// Whether `name` is one of the xattrs that make a zero-size file an overlay whiteout.
pub fn is_whiteout_xattr(name: &[u8]) -> bool {
    WHITEOUT_XATTRS.iter().any(|x| x.as_bytes() == name)
}

/// How a name's entries in a directory's layers, top down, make what the view shows: the first
/// object wins; a whiteout hides the name in the layers below its own (an object of the same
/// layer stays visible); a directory merges with the directories of the same name below it
/// until one of them is opaque, or a layer has a non-directory or a whiteout there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stacking {
    /// The layer position whose object the view shows.
    pub shown: Option<usize>,
    /// Further layer positions whose directories merge into it (top first).
    pub merged: Vec<usize>,
    merging: bool,
    done: bool,
}

impl Stacking {
    /// Layer `pos` (top first) has `object` at the name (whether it is a directory, and an
    /// opaque one), and/or a `whiteout` of it. Returns whether lower layers still matter.
    pub fn layer(&mut self, pos: usize, object: Option<(bool, bool)>, whiteout: bool) -> bool {
        if self.done {
            return false;
        }
        if let Some((dir, opaque)) = object {
            match self.shown {
                None => {
                    self.shown = Some(pos);
                    self.merging = dir && !opaque;
                }
                Some(_) if self.merging && dir => {
                    self.merged.push(pos);
                    self.merging = !opaque;
                }
                Some(_) => self.merging = false,
            }
            self.done = !self.merging;
        }
        if whiteout {
            self.done = true;
        }
        !self.done
    }

    /// Whether the name is hidden from every layer below those seen.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Whether a directory of the name further down would still merge into what shows.
    pub fn merging(&self) -> bool {
        self.merging && !self.done
    }
}

/// The opaque xattr a daemon of this privilege writes.
pub fn opaque_xattr_name(privileged: bool) -> &'static str {
    if privileged { TRUSTED_OPAQUE } else { USER_OPAQUE }
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
                if t.set_xattr(OsStr::new(USER_OPAQUE), b"y", rustix::fs::XattrFlags::empty())
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
pub fn make_device(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, rustix::fs::Mode::empty(), 0)
}

/// Creates an empty OCI whiteout `.wh.NAME` in `dir`.
pub fn make_oci_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
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

/// The opaque xattrs set to `y` on the directory behind `dir`, in the order of
/// [`dir_marks`]; a marker we may not read counts as absent, as there.
pub fn opaque_xattrs_set(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<&'static str>> {
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

/// Removes every opaque xattr from the directory behind `dir` except `keep`.
pub fn remove_opaque_xattrs_except(dir: BorrowedFd<'_>, keep: Option<&str>) -> rustix::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each layer: an object (is a directory, is opaque) and/or a whiteout.
    fn stack(layers: &[(Option<(bool, bool)>, bool)]) -> Stacking {
        let mut s = Stacking::default();
        for (i, &(o, wh)) in layers.iter().enumerate() {
            if !s.layer(i, o, wh) {
                break;
            }
        }
        s
    }

    #[test]
    fn the_stacking_rules() {
        let d = Some((true, false));
        let od = Some((true, true));
        let f = Some((false, false));
        let s = stack(&[(d, false), (None, false), (d, false), (od, false), (d, false)]);
        assert_eq!(
            (s.shown, s.merged.as_slice()),
            (Some(0), &[2, 3][..]),
            "merge stops after an opaque one"
        );
        let s = stack(&[(d, false), (f, false), (d, false)]);
        assert_eq!(
            (s.shown, s.merged.as_slice()),
            (Some(0), &[][..]),
            "a file below ends the merge"
        );
        let s = stack(&[(None, true), (f, false)]);
        assert_eq!(s.shown, None, "a whiteout hides below");
        let s = stack(&[(f, true), (f, false)]);
        assert_eq!(s.shown, Some(0), "an object beside a whiteout in its own layer stays");
        let s = stack(&[(d, true), (d, false)]);
        assert!(
            s.merged.is_empty() && s.finished(),
            "a whiteout beside a directory ends its merge"
        );
        let s = stack(&[(od, false), (d, false)]);
        assert!(s.merged.is_empty(), "an opaque directory merges nothing");
        assert_eq!(oci_target(OsStr::new(".wh.x")), Some(OsStr::new("x")));
        assert_eq!(oci_target(OsStr::new(OPAQUE_MARKER)), None);
        assert_eq!(classify_name(OsStr::new(OPAQUE_MARKER)), Some(Marker::OpaqueFile));
    }
}
