//! docs/semantics.md, "Rename", through real mounts: files with whiteouts at the old name,
//! `RENAME_NOREPLACE` and `RENAME_EXCHANGE`, directories of any origin (no EXDEV), and failed
//! renames that change nothing. Directories moved by copying their tree (`--redirect-dir
//! follow`, as the Podman form mounts); moves by redirect are `redirect.rs`'s.

use std::path::Path;

use crate::common::*;
use rustix::fs::RenameFlags;

const ENOENT: i32 = libc::ENOENT;

fn rename2(a: &Path, b: &Path, flags: RenameFlags) -> Option<i32> {
    rerr(rustix::fs::renameat_with(rustix::fs::CWD, a, rustix::fs::CWD, b, flags))
}

#[test]
fn rename_of_lower_files_leaves_whiteouts_at_the_old_names() {
    let l = Layers::new(2);
    l.put(1, "a", b"A");
    l.put(0, "d/x", b"X");
    l.mkdir(1, "e");
    l.put(0, "over", b"lower over");
    l.put(1, "target", b"old target");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    std::fs::rename(m.path("d/x"), m.path("e/y")).unwrap();
    std::fs::rename(m.path("over"), m.path("target")).unwrap();
    let check = |root: &Path| {
        assert!(gone(&root.join("a")) && gone(&root.join("d/x")) && gone(&root.join("over")));
        assert_eq!(text(&root.join("b")), "A");
        assert_eq!(text(&root.join("e/y")), "X");
        assert_eq!(text(&root.join("target")), "lower over");
        assert_eq!(names(root), ["b", "d", "e", "target"]);
        assert_eq!(names(&root.join("d")), Vec::<String>::new());
    };
    sc.ending(m)
        .view(check)
        .upper(|up| {
            for p in ["a", "d/x", "over"] {
                assert!(is_chr_whiteout(&up.join(p)), "{p} needs a whiteout");
            }
        })
        .end();
}

#[test]
fn rename_noreplace() {
    let l = Layers::new(1);
    l.put(0, "a", b"A");
    l.put(0, "b", b"B");
    l.put(0, "deleted", b"D");
    l.mkdir(0, "dir");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let nr = RenameFlags::NOREPLACE;
    assert_eq!(rename2(&m.path("a"), &m.path("b"), nr), Some(libc::EEXIST));
    assert_eq!(rename2(&m.path("a"), &m.path("dir"), nr), Some(libc::EEXIST));
    assert_eq!(text(&m.path("b")), "B");
    // A whiteout at the target counts as absent.
    std::fs::remove_file(m.path("deleted")).unwrap();
    assert_eq!(rename2(&m.path("a"), &m.path("deleted"), nr), None);
    assert_eq!(rename2(&m.path("b"), &m.path("fresh"), nr), None);
    assert_eq!(rename2(&m.path("dir"), &m.path("newdir"), nr), None);
    let check = |root: &Path| {
        assert_eq!(names(root), ["deleted", "fresh", "newdir"]);
        assert_eq!(text(&root.join("deleted")), "A");
        assert_eq!(text(&root.join("fresh")), "B");
    };
    sc.ending(m).view(check).end();
}

#[test]
fn rename_exchange() {
    let l = Layers::new(2);
    l.put(1, "a", b"A lower");
    l.put(0, "d/in_d", b"d");
    l.put(1, "d/in_d_below", b"d2");
    l.put(1, "c", b"C lower");
    l.put(0, "x/in_x", b"x");
    l.put(1, "y/in_y", b"y");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::write(m.path("b"), b"B upper").unwrap();
    let ex = RenameFlags::EXCHANGE;
    assert_eq!(rename2(&m.path("a"), &m.path("b"), ex), None);
    assert_eq!(rename2(&m.path("d"), &m.path("c"), ex), None);
    assert_eq!(rename2(&m.path("x"), &m.path("y"), ex), None);
    assert_eq!(rename2(&m.path("a"), &m.path("missing"), ex), Some(ENOENT));
    let check = |root: &Path| {
        assert_eq!(text(&root.join("a")), "B upper");
        assert_eq!(text(&root.join("b")), "A lower");
        assert_eq!(text(&root.join("d")), "C lower");
        assert_eq!(names(&root.join("c")), ["in_d", "in_d_below"]);
        assert_eq!(names(&root.join("x")), ["in_y"]);
        assert_eq!(names(&root.join("y")), ["in_x"]);
        assert_eq!(names(root), ["a", "b", "c", "d", "x", "y"]);
    };
    sc.ending(m).view(check).end();
}

#[test]
fn rename_of_a_lower_directory_is_allowed_and_survives_remount() {
    let l = Layers::new(1);
    l.put(0, "d/x", b"x");
    l.put(0, "d/sub/y", b"y");
    l.put(0, "d/sub/deeper/z", b"z");
    std::os::unix::fs::symlink("x", l.lower(0, "d/link")).unwrap();
    xset(&l.lower(0, "d/sub"), "user.tag", b"t").unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&["--redirect-dir", "follow"]);
    let tree_before = Tree::read(&m.path("d"));
    std::fs::rename(m.path("d"), m.path("e")).unwrap();
    let check = |root: &Path| {
        assert!(gone(&root.join("d")));
        assert_eq!(Tree::read(&root.join("e")), tree_before);
        assert_eq!(names(root), ["e"]);
    };
    let m = sc
        .ending(m)
        .view(check)
        .upper(|up| {
            assert!(is_chr_whiteout(&up.join("d")), "the old name needs a whiteout");
            assert_eq!(
                xget(&up.join("e/sub"), "user.tag").as_deref(),
                Some(&b"t"[..]),
                "xattrs move with the tree"
            );
        })
        .remount();
    // Changes inside the moved tree stick.
    std::fs::write(m.path("e/sub/new"), b"n").unwrap();
    std::fs::remove_file(m.path("e/x")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("e")), ["link", "sub"]);
            assert_eq!(names(&root.join("e/sub")), ["deeper", "new", "y"]);
            assert!(gone(&root.join("d")));
        })
        .end();
}

#[test]
fn rename_of_a_merged_directory_is_allowed_and_survives_remount() {
    let l = Layers::new(2);
    l.put(0, "d/a", b"a0");
    l.put(1, "d/a", b"a1");
    l.put(1, "d/b", b"b1");
    l.put(1, "d/gone", b"g");
    l.put(0, "d/sub/c", b"c0");
    l.put(1, "d/sub/e", b"e1");
    l.put(1, "e/stale", b"lower e");
    let sc = Scenario::new(&l);
    let m = l.mount(&["--redirect-dir", "follow"]);
    std::fs::write(m.path("d/new"), b"n").unwrap();
    std::fs::remove_file(m.path("d/gone")).unwrap();
    // Target name exists as a lower directory: delete it first (rename onto it needs it empty).
    std::fs::remove_dir_all(m.path("e")).unwrap();
    let tree_before = Tree::read(&m.path("d"));
    std::fs::rename(m.path("d"), m.path("e")).unwrap();
    let check = |root: &Path| {
        assert!(gone(&root.join("d")));
        assert_eq!(Tree::read(&root.join("e")), tree_before);
        assert_eq!(names(&root.join("e")), ["a", "b", "new", "sub"]);
        assert_eq!(text(&root.join("e/a")), "a0");
        assert_eq!(names(&root.join("e/sub")), ["c", "e"]);
    };
    sc.ending(m)
        .view(check)
        .upper(|up| {
            assert_eq!(
                xget(&up.join("e"), "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..]),
                "target opaque"
            );
            assert!(is_chr_whiteout(&up.join("d")), "the old name needs a whiteout");
        })
        .end();
}

#[test]
fn rename_of_a_directory_onto_an_empty_lower_directory() {
    let l = Layers::new(2);
    l.put(0, "src/f", b"f");
    l.mkdir(1, "dst");
    l.put(1, "full/x", b"x");
    l.put(0, "src2/g", b"g");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::rename(m.path("src"), m.path("dst")).unwrap();
    assert_eq!(
        err_code(std::fs::rename(m.path("src2"), m.path("full"))),
        Some(libc::ENOTEMPTY)
    );
    let check = |root: &Path| {
        assert_eq!(names(root), ["dst", "full", "src2"]);
        assert_eq!(names(&root.join("dst")), ["f"]);
        assert_eq!(names(&root.join("full")), ["x"]);
        assert_eq!(names(&root.join("src2")), ["g"]);
    };
    sc.ending(m).view(check).end();
}

#[test]
fn upper_directory_renamed_onto_a_deleted_lower_directory_name() {
    let l = Layers::new(1);
    l.put(0, "old/stale1", b"s");
    l.put(0, "old/sub/stale2", b"s");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_dir_all(m.path("old")).unwrap();
    std::fs::create_dir(m.path("new")).unwrap();
    std::fs::write(m.path("new/x"), b"x").unwrap();
    std::fs::rename(m.path("new"), m.path("old")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["old"]);
            assert_eq!(names(&root.join("old")), ["x"], "deleted lower entries came back");
        })
        .upper(|up| {
            assert_eq!(
                xget(&up.join("old"), "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..])
            )
        })
        .end();
}

#[test]
fn rename_errors_change_nothing() {
    let l = Layers::new(2);
    l.put(0, "dir/sub/x", b"x");
    l.put(1, "file", b"f");
    l.put(1, "nonempty/child", b"c");
    l.mkdir(0, "dir2");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let tree = Tree::read(&m.mnt);
    let e = |a: &str, b: &str| err_code(std::fs::rename(m.path(a), m.path(b)));
    assert_eq!(e("dir", "file"), Some(libc::ENOTDIR));
    assert_eq!(e("file", "dir2"), Some(libc::EISDIR));
    assert_eq!(e("dir", "dir/sub/inside"), Some(libc::EINVAL));
    assert_eq!(e("dir2", "nonempty"), Some(libc::ENOTEMPTY));
    assert_eq!(e("missing", "x"), Some(ENOENT));
    sc.ending(m).view(|root| assert_eq!(Tree::read(root), tree)).end();
}
