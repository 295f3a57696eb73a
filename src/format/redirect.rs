//! Kernel overlayfs's directory redirects (`redirect_dir=on`): an upper directory renamed while
//! it still merged lower directories keeps its lower content where it was and records that
//! place in an `overlay.redirect` xattr (`trusted.overlay.redirect`; `user.overlay.redirect`
//! for an unprivileged daemon, as the kernel reads with `userxattr`). The value is either one
//! name (renamed within its parent: the lower content is that name in the parent's lower
//! directories) or an absolute path from the layers' roots (renamed elsewhere). A metacopy file
//! that was renamed carries an absolute redirect to its data.
//!
//! The kernel refuses values with empty, `.` or `..` components, and a relative value with a
//! `/` in it; so do we, and values longer than a path or components longer than a name. A
//! value is data from a layer that may come from anywhere: it is parsed here, never handed to a
//! path-resolving call. The union writes values ([`relative`], [`absolute`]) and follows them
//! one component at a time below a layer's root, never following a symlink
//! (`union/redirect.rs`); the layer tools read them (`layers/indirect.rs`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// The redirect xattr a privileged daemon writes (and kernel overlayfs reads by default).
pub const TRUSTED_REDIRECT: &str = "trusted.overlay.redirect";
/// The redirect xattr of an unprivileged daemon (kernel overlayfs's `userxattr`).
pub const USER_REDIRECT: &str = "user.overlay.redirect";
/// The redirect xattrs, in the order we read them (`user.*` with the `userxattr` option).
pub const XATTRS: [&str; 2] = [TRUSTED_REDIRECT, USER_REDIRECT];

/// The longest value we read: a path (PATH_MAX). Longer is a damaged or hostile upper.
pub const MAX_READ: usize = 4096;
/// The longest value we write; a move whose redirect would be longer copies the tree instead.
/// Kernel overlayfs's own limit (`redirect_max`) is 256 by default, but it reads any length.
pub const MAX_WRITE: usize = 2048;
/// The longest name a component may be (NAME_MAX).
const MAX_NAME: usize = 255;

/// The redirect xattr a daemon of this privilege writes.
pub fn xattr_name(privileged: bool) -> &'static str {
    if privileged { TRUSTED_REDIRECT } else { USER_REDIRECT }
}

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
    #[error("redirect of {0} bytes (at most {MAX_READ})")]
    TooLong(usize),
    #[error("redirect has a component longer than {MAX_NAME} bytes")]
    LongComponent,
}

/// Parses an `overlay.redirect` value.
pub fn parse(value: &[u8]) -> Result<Redirect, BadRedirect> {
    if value.is_empty() {
        return Err(BadRedirect::Empty);
    }
    if value.len() > MAX_READ {
        return Err(BadRedirect::TooLong(value.len()));
    }
    if value.contains(&0) {
        return Err(BadRedirect::Nul);
    }
    let check = |c: &[u8]| match c {
        b"" => Err(BadRedirect::EmptyComponent),
        b"." | b".." => Err(BadRedirect::DotComponent),
        _ if c.len() > MAX_NAME => Err(BadRedirect::LongComponent),
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

/// The value that reads as `r`.
pub fn value(r: &Redirect) -> Vec<u8> {
    match r {
        Redirect::Relative(n) => n.as_bytes().to_vec(),
        Redirect::Absolute(c) => {
            let mut v = Vec::new();
            for n in c {
                v.push(b'/');
                v.extend_from_slice(n.as_bytes());
            }
            v
        }
    }
}

/// The value of a relative redirect to the sibling `name`.
pub fn relative(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// An absolute redirect from the pieces met walking up from a directory to the root:
/// `pieces_bottom_up[0]` is the directory's own piece, then its parent's, and so on. A piece is
/// a name (or a directory's relative redirect, which stands for its name in lower terms) or,
/// for the last one only, an absolute redirect that the walk stopped at. `None` if the result
/// would be longer than [`MAX_WRITE`] or not a valid value.
pub fn absolute(pieces_bottom_up: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut pieces = pieces_bottom_up.iter().rev().peekable();
    if let Some(first) = pieces.peek() {
        if first.starts_with(b"/") {
            out.extend_from_slice(first);
            pieces.next();
        }
    }
    for p in pieces {
        out.push(b'/');
        out.extend_from_slice(p);
        if out.len() > MAX_WRITE {
            return None;
        }
    }
    (out.len() <= MAX_WRITE && matches!(parse(&out), Ok(Redirect::Absolute(_)))).then_some(out)
}

/// The path a lower lookup walks after meeting `r` on the directory reached by `path` (from its
/// parent's lower directories when `from_root` is false, then `path` is one name; from the
/// layer roots when it is true): a relative redirect replaces the last component, an absolute
/// one the whole path.
pub fn apply(r: &Redirect, path: &mut Vec<OsString>, from_root: &mut bool) {
    match r {
        Redirect::Relative(n) => {
            path.pop();
            path.push(n.clone());
        }
        Redirect::Absolute(c) => {
            *path = c.clone();
            *from_root = true;
        }
    }
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

    #[test]
    fn parses_what_the_kernel_writes() {
        assert_eq!(parse(b"a"), Ok(Redirect::Relative("a".into())));
        assert_eq!(parse(b"/a/b c/d"), Ok(abs(&["a", "b c", "d"])));
        assert_eq!(
            parse(b"/\xff"),
            Ok(Redirect::Absolute(vec![OsStr::from_bytes(b"\xff").into()]))
        );
        for v in [&b"a"[..], b"/a/b c/d"] {
            assert_eq!(parse(v).map(|r| value(&r)).as_deref(), Ok(v));
        }
    }

    #[test]
    fn refuses_what_could_leave_a_layer_or_is_damaged() {
        for bad in [
            &b""[..],
            b"/",
            b"//a",
            b"/a//b",
            b"/a/",
            b"..",
            b".",
            b"/a/../b",
            b"/./a",
            b"a/b",
            b"a\0b",
            b"/a\0",
        ] {
            assert!(parse(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&[b'a'; 256]), Err(BadRedirect::LongComponent));
        let long: Vec<u8> = std::iter::repeat_n(&b"/abc"[..], 1100).flatten().copied().collect();
        assert_eq!(parse(&long), Err(BadRedirect::TooLong(4400)));
    }

    #[test]
    fn builds_absolute_values_up_to_the_first_absolute_piece() {
        assert_eq!(absolute(&[b"c", b"b", b"a"]).as_deref(), Some(&b"/a/b/c"[..]));
        assert_eq!(absolute(&[b"c", b"/x/y"]).as_deref(), Some(&b"/x/y/c"[..]));
        assert_eq!(absolute(&[b"/x"]).as_deref(), Some(&b"/x"[..]));
        assert_eq!(absolute(&[b"..", b"a"]), None);
        let deep: Vec<&[u8]> = vec![&b"abcdefgh"[..]; 400];
        assert_eq!(absolute(&deep), None, "longer than MAX_WRITE");
    }

    #[test]
    fn apply_replaces_the_last_component_or_the_path() {
        let (mut p, mut root) = (vec![OsString::from("a"), "b".into()], true);
        apply(&Redirect::Relative("c".into()), &mut p, &mut root);
        assert_eq!(p, [OsString::from("a"), "c".into()]);
        let (mut p, mut root) = (vec![OsString::from("a")], false);
        apply(&abs(&["x", "y"]), &mut p, &mut root);
        assert_eq!((p, root), (vec![OsString::from("x"), "y".into()], true));
    }
}
