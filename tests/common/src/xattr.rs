//! Extended attributes: reading, setting and listing them without following symlinks, and the
//! private ones union filesystems keep for themselves.

use std::collections::BTreeMap;
use std::path::Path;

/// `lgetxattr`: `None` when absent.
pub fn xget(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut v = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut v[..]).ok()?;
    v.truncate(n);
    Some(v)
}

/// `lgetxattr`, returning the errno on failure.
pub fn xget_err(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let mut v = vec![0u8; 65536];
    match rustix::fs::lgetxattr(p, name, &mut v[..]) {
        Ok(n) => {
            v.truncate(n);
            Ok(v)
        }
        Err(e) => Err(e.raw_os_error()),
    }
}

/// `lsetxattr`.
pub fn xset(p: &Path, name: &str, value: &[u8]) -> rustix::io::Result<()> {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
}

/// `llistxattr`, as sorted names.
pub fn xlist(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).expect("llistxattr");
    let mut v: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}

/// Prefixes of the xattrs union filesystems keep for themselves (ours, overlayfs' and
/// fuse-overlayfs'), which a comparison of user-visible xattrs leaves out.
pub const PRIVATE_XATTRS: &[&str] = &[
    "user.unionfs.",
    "trusted.unionfs.",
    "user.overlay.",
    "trusted.overlay.",
    "user.fuseoverlayfs.",
];

/// Every xattr of `p` with its value, leaving out [`PRIVATE_XATTRS`] (none where the
/// filesystem has none).
pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut x = all_xattrs(p);
    x.retain(|n, _| !PRIVATE_XATTRS.iter().any(|p| n.starts_with(p)));
    x
}

/// Every xattr of `p` with its value (none where the filesystem has none).
pub fn all_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(p, &mut buf[..]) else {
        return BTreeMap::new();
    };
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter_map(|n| xget(p, &n).map(|v| (n, v)))
        .collect()
}
