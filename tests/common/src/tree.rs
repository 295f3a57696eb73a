//! Trees: snapshots of a view or of a raw layer to compare, names in a directory, entries and
//! markers as they are on disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::all_xattrs;

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: PathBuf },
    Other { kind: String, mode: u32, rdev: u64 },
}

/// A tree: relative path → entry, plus xattrs (`user.*` only) per path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub xattrs: BTreeMap<PathBuf, BTreeMap<OsString, Vec<u8>>>,
    /// mtimes (ns), for raw layer snapshots only.
    pub mtimes: BTreeMap<PathBuf, i128>,
}

impl Tree {
    /// Snapshot through the mount (or of any directory), no mtimes.
    pub fn read(root: &Path) -> Tree {
        let mut t = Tree::default();
        walk(root, root, &mut t, false);
        t
    }

    /// Snapshot of a raw layer directory including mtimes and all xattrs.
    pub fn read_raw(root: &Path) -> Tree {
        let mut t = Tree::default();
        walk(root, root, &mut t, true);
        t
    }
}

fn walk(root: &Path, dir: &Path, t: &mut Tree, raw: bool) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for p in names {
        let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
        let md = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        let e = if ft.is_dir() {
            Entry::Dir { mode }
        } else if ft.is_file() {
            Entry::File {
                data: std::fs::read(&p).expect("read"),
                mode,
            }
        } else if ft.is_symlink() {
            Entry::Symlink {
                target: std::fs::read_link(&p).expect("readlink"),
            }
        } else {
            let kind = if ft.is_char_device() {
                "chr"
            } else if ft.is_block_device() {
                "blk"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "sock"
            };
            Entry::Other {
                kind: kind.into(),
                mode,
                rdev: md.rdev(),
            }
        };
        if raw {
            t.mtimes.insert(
                rel.clone(),
                md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            );
        }
        let xs = list_xattrs(&p, raw);
        if !xs.is_empty() {
            t.xattrs.insert(rel.clone(), xs);
        }
        t.entries.insert(rel, e);
        if ft.is_dir() {
            walk(root, &p, t, raw);
        }
    }
}

fn list_xattrs(p: &Path, all: bool) -> BTreeMap<OsString, Vec<u8>> {
    all_xattrs(p)
        .into_iter()
        .filter(|(n, _)| all || n.starts_with("user."))
        .map(|(n, v)| (OsString::from(n), v))
        .collect()
}

/// `mknod(p)` of type `ft` with `mode` and device number `dev`.
pub fn mknod(p: &Path, ft: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, p, ft, rustix::fs::Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

/// Creates an overlay whiteout (char device 0/0) at `p`.
pub fn mknod_whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("mknod whiteout");
}

/// Whether `p` is an overlay whiteout (char device 0/0).
pub fn is_chr_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Whether nothing is at `p` (lstat fails with ENOENT).
pub fn gone(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
}

/// The content of the file `p` as UTF-8 text.
pub fn text(p: &Path) -> String {
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    String::from_utf8(data).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", p.display()))
}

/// Whether anything (even a dangling symlink or a whiteout) exists at `p`.
pub fn exists_raw(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Sorted names in the directory `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Sets atime and mtime (seconds since the epoch) of `p` without following a symlink.
pub fn set_times(p: &Path, atime: i64, mtime: i64) {
    let ts = |s| rustix::fs::Timespec { tv_sec: s, tv_nsec: 0 };
    let t = rustix::fs::Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// lstat.
pub fn lstat(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// Checks that `upper` is a valid overlay-style upper: only regular files, directories,
/// symlinks and char 0/0 whiteouts; no `.wh.` names. Returns the problems found.
pub fn upper_format_problems(upper: &Path) -> Vec<String> {
    fn go(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir upper") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("lstat upper");
            let ft = md.file_type();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".wh.")) {
                out.push(format!("OCI marker in overlay-style upper: {}", p.display()));
            }
            if ft.is_dir() {
                go(&p, out);
            } else if ft.is_file() || ft.is_symlink() || (ft.is_char_device() && md.rdev() == 0) {
            } else {
                out.push(format!(
                    "unexpected file type {:?} rdev {} at {}",
                    ft,
                    md.rdev(),
                    p.display()
                ));
            }
        }
    }
    let mut out = Vec::new();
    go(upper, &mut out);
    out
}
