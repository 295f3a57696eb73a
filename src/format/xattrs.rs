//! The extended attributes that belong to union filesystems: ours, kernel overlayfs's and
//! fuse-overlayfs's. None of them shows in the view, and none can be set through it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::attr::Kind;

/// Namespaces of xattrs that belong to union implementations.
const PRIVATE_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.unionfs.",
    b"trusted.unionfs.",
];

/// Whether an xattr name is private to union filesystems (hidden, not settable).
pub fn is_private(name: &OsStr) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.as_bytes().starts_with(p))
}

/// Where we record the inode number an object had before copy-up, so it keeps it. Linux allows
/// `user.*` xattrs only on files and directories; symlinks and special files need `trusted.*`
/// (so they keep their number only when the daemon is privileged).
pub fn origin(kind: Kind) -> &'static str {
    match kind {
        Kind::File | Kind::Dir => "user.unionfs.origin",
        _ => "trusted.unionfs.origin",
    }
}

/// Both origin xattrs, for tools that read whichever an object has.
pub const ORIGINS: [&str; 2] = ["user.unionfs.origin", "trusted.unionfs.origin"];

/// On a copy in the hard-link index: the lower file it was copied from (see `hardlink.rs`).
pub const INDEX_ORIGIN: &str = "user.unionfs.index";
/// On a copy in the hard-link index: how many names the object has in the view.
pub const INDEX_COUNT: &str = "user.unionfs.nlink";
/// On an upper's root: its random id, by the daemon's privilege (see `upper_id.rs`).
pub const UPPER_ID: [&str; 2] = ["user.unionfs.upper", "trusted.unionfs.upper"];

/// Kernel overlayfs's record of where a copied-up object came from (a file handle).
pub const KERNEL_ORIGIN: [&str; 2] = ["trusted.overlay.origin", "user.overlay.origin"];

/// Kernel overlayfs keeps the immutable and append-only flags set through the view in this
/// xattr of the upper object (letters `a` and `i`), not on the object itself: an upper
/// directory that really were immutable could take no copy-up, whiteout or marker, though
/// its children's contents may still change. We do the same for directories (the daemon
/// enforces them), so the kernel reads our uppers and we read its.
pub const PROTATTR: [&str; 2] = ["trusted.overlay.protattr", "user.overlay.protattr"];

/// The protattr xattr a daemon of this privilege writes.
pub fn protattr_name(privileged: bool) -> &'static str {
    if privileged { PROTATTR[0] } else { PROTATTR[1] }
}

/// Protection flags: immutable (`i`).
pub const PROT_IMMUTABLE: u8 = 1;
/// Protection flags: append-only (`a`).
pub const PROT_APPEND: u8 = 2;

/// The protection flags a protattr value names (letters the kernel does not write are ignored).
pub fn parse_protattr(value: &[u8]) -> u8 {
    value.iter().fold(0, |p, c| match c {
        b'i' => p | PROT_IMMUTABLE,
        b'a' => p | PROT_APPEND,
        _ => p,
    })
}

/// The protattr value for `prot`, in the kernel's order.
pub fn protattr_value(prot: u8) -> Vec<u8> {
    let mut v = Vec::new();
    if prot & PROT_APPEND != 0 {
        v.push(b'a');
    }
    if prot & PROT_IMMUTABLE != 0 {
        v.push(b'i');
    }
    v
}
