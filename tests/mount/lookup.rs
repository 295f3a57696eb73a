//! docs/semantics.md, "Lookup", through real mounts: top down, the first hit wins, a
//! non-directory ends the merge (a symlink to a directory is not followed), and results follow
//! every change made through the view at once.

use std::os::unix::fs::symlink;

use crate::common::*;

const ENOENT: i32 = libc::ENOENT;

#[test]
fn lookup_is_top_down_and_first_hit_wins() {
    let l = Layers::new(3);
    for (i, c) in ["L0", "L1", "L2"].iter().enumerate() {
        l.put(i, "a", c.as_bytes());
        l.put(i, "d/x", c.as_bytes());
    }
    l.put(1, "b", b"L1");
    l.put(2, "b", b"L2");
    l.put(2, "c", b"L2");
    l.put(1, "d/y", b"L1");
    l.put(2, "d/y", b"L2");
    l.put(2, "d/z", b"L2");
    let before = l.snapshot_lowers();
    let check = |m: &Mount, b: &str| {
        assert_eq!(text(&m.path("a")), "L0");
        assert_eq!(text(&m.path("b")), b);
        assert_eq!(text(&m.path("c")), "L2");
        assert_eq!(text(&m.path("d/x")), "L0");
        assert_eq!(text(&m.path("d/y")), "L1");
        assert_eq!(text(&m.path("d/z")), "L2");
        assert_eq!(names(&m.path("d")), ["x", "y", "z"]);
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("nope"))), Some(ENOENT));
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("d/nope"))), Some(ENOENT));
    };
    let m = l.mount(&[]);
    check(&m, "L1");
    assert_eq!(names(&m.mnt), ["a", "b", "c", "d"]);
    // The upper becomes the top layer for what is written.
    std::fs::write(m.path("b"), b"UP").unwrap();
    check(&m, "UP");
    let m = remount(&l, m, &[]);
    check(&m, "UP");
    assert_eq!(names(&m.mnt), ["a", "b", "c", "d"]);
    drop(m);
    assert_eq!(text(&l.up("b")), "UP");
    assert!(!exists_raw(&l.up("a")), "reads must not copy up");
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn lower_non_directory_below_a_directory_ends_the_merge() {
    let l = Layers::new(3);
    l.put(0, "d/x", b"x");
    l.put(1, "d", b"a file in the middle");
    l.put(2, "d/y", b"y");
    // A non-directory on top is the answer, whatever lies below.
    l.put(0, "f", b"file on top");
    l.put(1, "f/z", b"z");
    // A symlink to a directory below a directory is not a directory: not merged, not followed.
    let outside = l.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    l.put(0, "s/x", b"x");
    symlink(&outside, l.lower(1, "s")).unwrap();
    l.put(2, "s/w", b"w");
    let before = l.snapshot_lowers();
    let check = |m: &Mount, d: &[&str]| {
        assert_eq!(names(&m.path("d")), d);
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("d/y"))), Some(ENOENT));
        assert!(lstat(&m.path("f")).is_file());
        assert_eq!(text(&m.path("f")), "file on top");
        assert_eq!(names(&m.path("s")), d);
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("s/secret"))), Some(ENOENT));
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("s/w"))), Some(ENOENT));
    };
    let m = l.mount(&[]);
    check(&m, &["x"]);
    // Copy-up of the merged directory must not widen the merge.
    std::fs::write(m.path("d/new"), b"n").unwrap();
    std::fs::write(m.path("s/new"), b"n").unwrap();
    check(&m, &["new", "x"]);
    let m = remount(&l, m, &[]);
    check(&m, &["new", "x"]);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn lookup_results_follow_changes_made_through_the_view() {
    let l = Layers::new(1);
    l.put(0, "d/old", b"o");
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    // Negative results first, then changes: each must be seen at once.
    assert_eq!(err_code(std::fs::metadata(m.path("d/new"))), Some(ENOENT));
    assert_eq!(err_code(std::fs::metadata(m.path("d/moved"))), Some(ENOENT));
    std::fs::write(m.path("d/new"), b"n").unwrap();
    assert_eq!(text(&m.path("d/new")), "n");
    std::fs::rename(m.path("d/old"), m.path("d/moved")).unwrap();
    assert_eq!(err_code(std::fs::metadata(m.path("d/old"))), Some(ENOENT));
    assert_eq!(text(&m.path("d/moved")), "o");
    std::fs::remove_file(m.path("d/new")).unwrap();
    assert_eq!(err_code(std::fs::metadata(m.path("d/new"))), Some(ENOENT));
    assert_eq!(names(&m.path("d")), ["moved"]);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.path("d")), ["moved"]);
    assert_eq!(text(&m.path("d/moved")), "o");
    assert_eq!(err_code(std::fs::metadata(m.path("d/old"))), Some(ENOENT));
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}
