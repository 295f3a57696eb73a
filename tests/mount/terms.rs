//! docs/semantics.md, "Terms", through real mounts: reads fall through the upper to the lowers
//! and writes land in the upper (a first check: lookup, copy-up, whiteout, remount); without an
//! upper the union is read-only; lower layers are never written, not even their access times.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::common::{Layers, Tree};

#[test]
fn lookup_copy_up_whiteout_and_remount() {
    let l = Layers::new(2);
    l.put(0, "a", b"top");
    l.put(1, "a", b"bottom");
    l.put(1, "d/x", b"x");
    l.put(1, "gone", b"bye");
    let (sc, m) = Scenario::mount(&l, &[]);
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"top");
    std::fs::write(m.path("a"), b"changed").unwrap();
    std::fs::remove_file(m.path("gone")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("a")).unwrap(), b"changed");
            assert!(!root.join("gone").exists());
            assert_eq!(std::fs::read(root.join("d/x")).unwrap(), b"x");
        })
        .end();
    let _ = Tree::read(&l.upper);
}

/// Mounts the given lowers (top first) without an upper: a read-only union.
pub(crate) fn mount_ro(lowers: &[&Path], mnt: &Path) -> Mount {
    let lowers: Vec<PathBuf> = lowers.iter().map(|p| p.to_path_buf()).collect();
    Mount::unionfs(&lowers, None, &[], mnt)
}

#[test]
fn a_union_without_upper_is_read_only() {
    let l = Layers::new(2);
    l.put(0, "a", b"A");
    l.put(1, "d/b", b"B");
    let before = l.snapshot_lowers();
    let m = mount_ro(&[&l.lowers[0], &l.lowers[1]], &l.mnt);
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"A");
    assert_eq!(names(&m.path("d")), ["b"]);
    let erofs = Some(libc::EROFS);
    assert_eq!(
        err_code(std::fs::OpenOptions::new().append(true).open(m.path("a"))),
        erofs
    );
    assert_eq!(err_code(std::fs::write(m.path("new"), b"n")), erofs);
    assert_eq!(err_code(std::fs::create_dir(m.path("nd"))), erofs);
    assert_eq!(err_code(std::fs::remove_file(m.path("a"))), erofs);
    assert_eq!(err_code(std::fs::rename(m.path("a"), m.path("z"))), erofs);
    assert_eq!(rerr(xset(&m.path("a"), "user.x", b"1")), erofs);
    assert_eq!(m.unmount(), Some(0));
    let m = mount_ro(&[&l.lowers[0], &l.lowers[1]], &l.mnt);
    assert_eq!(names(&m.mnt), ["a", "d"]);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn lowers_are_not_touched_not_even_their_atime() {
    let l = Layers::new(2);
    l.put(0, "d/f", &[b'x'; 10000]);
    l.put(1, "d/g", b"g");
    l.put(1, "e/h", b"h");
    symlink("d/f", l.lower(0, "link")).unwrap();
    xset(&l.lower(0, "d/f"), "user.x", b"1").unwrap();
    // Symlinks are left out: readlink(2) always updates the link's atime, the daemon cannot avoid
    // that one.
    let paths = [
        (0, "d/f"),
        (0, "d"),
        (1, "d"),
        (1, "d/g"),
        (1, "e"),
        (1, "e/h"),
        (0, ""),
        (1, ""),
    ];
    // atime older than mtime: relatime would update it on any access.
    let age = || {
        for (i, p) in paths {
            set_times(&l.lower(i, p), 1_000_000_000, 1_100_000_000);
        }
    };
    age();
    // The snapshot reads the layers (and so moves their atimes): take it first.
    let sc = Scenario::new(&l);
    age();
    let atimes = || -> Vec<(i64, i64)> {
        paths
            .iter()
            .map(|(i, p)| {
                let md = lstat(&l.lower(*i, p));
                (md.atime(), md.atime_nsec())
            })
            .collect()
    };
    let a0 = atimes();
    let m = l.mount(&[]);
    // Reads of every kind, then writes that copy up.
    let _ = Tree::read(&m.mnt);
    std::fs::read(m.path("d/f")).unwrap();
    std::fs::read(m.path("link")).unwrap();
    xlist(&m.path("d/f"));
    xget(&m.path("d/f"), "user.x");
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/f"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    std::fs::write(m.path("e/new"), b"n").unwrap();
    std::fs::remove_file(m.path("d/g")).unwrap();
    assert_eq!(atimes(), a0, "lower atimes changed while mounted");
    // The ending reads the whole view again after the remount (Tree::read).
    sc.ending(m)
        .view(|root| assert_eq!(names(&root.join("d")), ["f"]))
        .after(|| assert_eq!(atimes(), a0, "lower atimes changed"))
        .end();
}
