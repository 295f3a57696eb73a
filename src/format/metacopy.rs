//! Kernel overlayfs's metadata-only copy-up (`metacopy=on`): a chown, chmod, utimes or xattr
//! change of a lower file copies up only its metadata. The upper file carries an
//! `overlay.metacopy` xattr and the lower file's size as a hole; its data stays in the lower
//! file at the same path, or at the absolute `overlay.redirect` path the file carries when it
//! was renamed (see `redirect.rs`). Newer kernels put an fs-verity digest in the value; any
//! value, empty or not, marks a metacopy file.

/// The metacopy xattrs, in the order we read them (`user.*` with the `userxattr` option).
pub const XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];

/// Whether `xattr` (an xattr name) marks a metacopy file.
pub fn is_metacopy_xattr(xattr: &[u8]) -> bool {
    XATTRS.iter().any(|x| x.as_bytes() == xattr)
}

/// The metacopy xattr a daemon of this privilege writes (the kernel's `userxattr` form when
/// unprivileged: a plain user cannot set `trusted.*`).
pub fn name(privileged: bool) -> &'static str {
    if privileged { XATTRS[0] } else { XATTRS[1] }
}
