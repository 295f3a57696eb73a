//! Kernel overlayfs's directory redirects (`redirect_dir=on`): an upper directory renamed by the
//! kernel keeps its lower content where it was and records that place in an `overlay.redirect`
//! xattr. The value is either one name (renamed within its parent: the lower content is that
//! name in the parent's lower directories) or an absolute path from the layers' roots (renamed
//! elsewhere). A metacopy file that was renamed carries an absolute redirect to its data.
//!
//! The kernel refuses values with empty, `.` or `..` components, and a relative value with a
//! `/` in it; so do we. A value is data from a layer that may come from anywhere: it is
//! parsed here, never handed to a path-resolving call.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The redirect xattrs, in the order we read them (`user.*` with the `userxattr` option).
pub const XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// Where a redirected object's lower part is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// This name in the parent's lower directories.
    Relative(OsString),
    /// This path (its components) from the roots of the lower layers.
    Absolute(Vec<OsString>),
}

/// Why a redirect value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRedirect {
    #[error("empty redirect")]
    Empty,
    #[error("redirect has an empty path component")]
    EmptyComponent,
    #[error("redirect has a '.' or '..' component")]
    DotComponent,
    #[error("redirect has a NUL byte")]
    Nul,
}

/// Parses an `overlay.redirect` value.
pub fn parse(value: &[u8]) -> Result<Redirect, BadRedirect> {
    if value.is_empty() {
        return Err(BadRedirect::Empty);
    }
    if value.contains(&0) {
        return Err(BadRedirect::Nul);
    }
    let check = |c: &[u8]| match c {
        b"" => Err(BadRedirect::EmptyComponent),
        b"." | b".." => Err(BadRedirect::DotComponent),
        _ => Ok(OsStr::from_bytes(c).to_os_string()),
    };
    match value.strip_prefix(b"/") {
        Some(rest) => rest
            .split(|&b| b == b'/')
            .map(check)
            .collect::<Result<Vec<_>, _>>()
            .map(Redirect::Absolute),
        // A relative value names a sibling: a '/' in it makes an empty or nested component.
        None if value.contains(&b'/') => Err(BadRedirect::EmptyComponent),
        None => check(value).map(Redirect::Relative),
    }
}

/// A redirect value as it is shown in messages.
pub fn shown(value: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abs(c: &[&str]) -> Redirect {
        Redirect::Absolute(c.iter().map(OsString::from).collect())
    }

    #[test]
    fn values_the_kernel_writes_and_refuses() {
        assert_eq!(parse(b"d"), Ok(Redirect::Relative("d".into())));
        assert_eq!(parse(b"/a/b"), Ok(abs(&["a", "b"])));
        assert_eq!(parse(b"/a"), Ok(abs(&["a"])));
        assert_eq!(parse(b""), Err(BadRedirect::Empty));
        assert_eq!(parse(b"/"), Err(BadRedirect::EmptyComponent));
        assert_eq!(parse(b"/a//b"), Err(BadRedirect::EmptyComponent));
        assert_eq!(parse(b"/a/"), Err(BadRedirect::EmptyComponent));
        assert_eq!(parse(b"a/b"), Err(BadRedirect::EmptyComponent));
        assert_eq!(parse(b"../../etc"), Err(BadRedirect::EmptyComponent));
        assert_eq!(parse(b".."), Err(BadRedirect::DotComponent));
        assert_eq!(parse(b"/a/../b"), Err(BadRedirect::DotComponent));
        assert_eq!(parse(b"/a/./b"), Err(BadRedirect::DotComponent));
        assert_eq!(parse(b"/a\0b"), Err(BadRedirect::Nul));
    }
}
