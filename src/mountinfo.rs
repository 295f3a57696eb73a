//! The mount table of this process (/proc/self/mountinfo), read without touching the mounts it
//! lists: a stale or hung FUSE mount fails or blocks `stat`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number of the mounted filesystem (`major:minor`).
    pub dev: (u32, u32),
    pub mountpoint: PathBuf,
    /// `fuse`, `fuse.unionfs`, `overlay`, ...
    pub fstype: String,
    /// The filesystem's own options (`upperdir=...,workdir=...` for kernel overlayfs), escaped.
    pub super_options: String,
}

impl MountEntry {
    /// One line of mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE ...`.
    fn parse(line: &str) -> Option<MountEntry> {
        let mut f = line.split(' ');
        let dev = f.nth(2)?;
        let (maj, min) = dev.split_once(':')?;
        let mountpoint = f.nth(1)?;
        let mut tail = line.split(" - ").nth(1)?.split(' ');
        let fstype = tail.next()?;
        let super_options = tail.nth(1).unwrap_or_default();
        Some(MountEntry {
            dev: (maj.parse().ok()?, min.parse().ok()?),
            mountpoint: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
            fstype: fstype.to_string(),
            super_options: super_options.to_string(),
        })
    }

    /// The paths given to the filesystem options `keys` (`upperdir`, ...), unescaped.
    pub fn options_named(&self, keys: &[&str]) -> Vec<PathBuf> {
        self.super_options
            .split(',')
            .filter_map(|o| o.split_once('='))
            .filter(|(k, _)| keys.contains(k))
            .map(|(_, v)| PathBuf::from(OsString::from_vec(unescape(v))))
            .collect()
    }

    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// Every mount, in the table's order (later mounts over earlier ones); empty if the table
/// cannot be read.
pub fn table() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(MountEntry::parse).collect()
}

/// The topmost mount at `p` (a canonical path), if any.
pub fn topmost_at(p: &Path) -> Option<MountEntry> {
    table()
        .into_iter()
        .rfind(|e| e.mountpoint.as_os_str().as_bytes() == p.as_os_str().as_bytes())
}

/// Undoes the octal escapes of mountinfo (`\040` for a space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape("/a\\040b\\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape("/a\\04"), b"/a\\04".to_vec());
    }

    #[test]
    fn parses_a_line_with_optional_tags() {
        let l = "36 35 0:41 / /mnt/my\\040union rw,nosuid shared:1 master:2 - fuse.unionfs unionfs rw,user_id=0";
        assert_eq!(
            MountEntry::parse(l),
            Some(MountEntry {
                dev: (0, 41),
                mountpoint: "/mnt/my union".into(),
                fstype: "fuse.unionfs".into(),
                super_options: "rw,user_id=0".into(),
            })
        );
        assert!(MountEntry::parse(l).is_some_and(|e| e.is_fuse()));
        assert_eq!(MountEntry::parse("garbage"), None);
    }

    #[test]
    fn finds_the_directories_of_a_kernel_overlay() {
        let l = "40 35 0:50 / /m rw - overlay overlay rw,lowerdir=/l,upperdir=/u\\054x,workdir=/w";
        let e = MountEntry::parse(l).expect("parses");
        assert_eq!(
            e.options_named(&["upperdir", "workdir"]),
            vec![PathBuf::from("/u,x"), PathBuf::from("/w")]
        );
    }
}
