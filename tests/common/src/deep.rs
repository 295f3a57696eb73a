//! Trees deeper than any path can name (a 100,000-deep path is far longer than PATH_MAX): made,
//! walked and checked one name at a time from the last directory, holding two fds at most.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::TmpfsGuard;

/// How deep the deep tests go.
pub const DEPTH: usize = 100_000;

/// A scratch directory with a tmpfs in it. Making and removing 100,000 directories there takes
/// a second (minutes on a disk with `discard`), and unmounting removes them at once: the
/// recursive removal of `TempDir`'s drop could not (std's `remove_dir_all` recurses and holds
/// an fd per level).
pub struct Scratch {
    // Dropped in this order: the tmpfs first, with every tree in it, then its mountpoint.
    _fs: TmpfsGuard,
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(size: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-deep")
            .tempdir()
            .expect("tempdir");
        let fs = TmpfsGuard::mount(&dir.path().join("fs"), size);
        Scratch { _fs: fs, dir }
    }

    /// `rel` on the tmpfs, made as a directory.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join("fs").join(rel);
        std::fs::create_dir_all(&p).expect("mkdir on the tmpfs");
        p
    }

    /// `rel` on the tmpfs (not made).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("fs").join(rel)
    }

    /// `rel` beside the tmpfs (a mountpoint for the union), made as a directory.
    pub fn beside(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn open_root(root: &Path) -> OwnedFd {
    rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .unwrap_or_else(|e| panic!("open {}: {e}", root.display()))
}

/// The name of level `level` of a chain starting with `first` (level 1).
fn level_name(first: &str, level: usize) -> &str {
    if level == 1 { first } else { "d" }
}

/// Makes `first/d/d/…/d`, `depth` directories, below `root` with relative `mkdirat`; `at(level,
/// dir)` runs in each one made (level 1 is `first`), to put files there.
pub fn make_chain(root: &Path, first: &str, depth: usize, mut at: impl FnMut(usize, BorrowedFd<'_>)) {
    let mut dir = open_root(root);
    for level in 1..=depth {
        let name = level_name(first, level);
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)).expect("mkdirat");
        dir = open_dir_at(dir.as_fd(), name).expect("open the new directory");
        at(level, dir.as_fd());
    }
}

/// The directory `levels` levels down `first/d/…` below `root`; the error says at which level
/// it stopped (1 is `first`).
pub fn walk_down(root: &Path, first: &str, levels: usize) -> Result<OwnedFd, (usize, Errno)> {
    let mut dir = open_root(root);
    for level in 1..=levels {
        dir = open_dir_at(dir.as_fd(), level_name(first, level)).map_err(|e| (level, e))?;
    }
    Ok(dir)
}

/// Walks `first/d/…` below `root` and checks that level `l` holds exactly `names(l)` (sorted)
/// and the bottom (level `depth`) nothing more; returns the bottom directory.
pub fn check_chain(root: &Path, first: &str, depth: usize, names: impl Fn(usize) -> Vec<&'static str>) -> OwnedFd {
    let mut dir = open_root(root);
    for level in 1..=depth {
        dir = open_dir_at(dir.as_fd(), level_name(first, level))
            .unwrap_or_else(|e| panic!("level {level} of {}: {e}", root.display()));
        let mut want = names(level);
        if level < depth {
            want.push("d");
        }
        want.sort_unstable();
        assert_eq!(names_at(dir.as_fd()), want, "level {level} of {}", root.display());
    }
    dir
}

/// The names in the directory `dir`, sorted.
pub fn names_at(dir: BorrowedFd<'_>) -> Vec<String> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open for listing");
    let mut d = rustix::fs::Dir::read_from(&fd).expect("listing");
    let mut v = Vec::new();
    while let Some(e) = d.read() {
        let n = e.expect("entry").file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            v.push(n);
        }
    }
    v.sort();
    v
}

/// Writes `data` as the new file `name` of `dir`.
pub fn put_at(dir: BorrowedFd<'_>, name: &str, data: &[u8]) {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .expect("create");
    assert_eq!(rustix::io::write(&fd, data).expect("write"), data.len());
}

/// The content of the file `name` of `dir`.
pub fn read_at(dir: BorrowedFd<'_>, name: &str) -> String {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).expect("open to read");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = rustix::io::read(&fd, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).expect("utf-8")
}

/// Sets the modification (and access) time of the entry `name` of `dir`.
pub fn set_mtime_at(dir: BorrowedFd<'_>, name: &str, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(dir, name, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// Runs `unionfs ARGS` as a layer tool would be run by a user with a small open-file limit
/// (64) and a small stack (256 KiB): a walk that holds an fd per level, or recurses per level,
/// fails here at once.
pub fn tool(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("prlimit")
        .args(["--nofile=64", "--stack=262144", "--"])
        .arg(crate::bin())
        .args(args)
        .output()
        .expect("run prlimit unionfs")
}
