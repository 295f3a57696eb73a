//! docs/semantics.md, "Lookup", through real mounts: top down, the first hit wins, a
//! non-directory ends the merge (a symlink to a directory is not followed), and results follow
//! every change made through the view at once. Hostile layers (`hostile_*`): a lower symlink to
//! a directory outside the layers is never followed by the daemon, and symlinks pointing outside
//! resolve through the view like any symlink; the daemon serves on, the lowers are unchanged.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

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
    let sc = Scenario::new(&l);
    let check = |root: &Path, b: &str| {
        assert_eq!(text(&root.join("a")), "L0");
        assert_eq!(text(&root.join("b")), b);
        assert_eq!(text(&root.join("c")), "L2");
        assert_eq!(text(&root.join("d/x")), "L0");
        assert_eq!(text(&root.join("d/y")), "L1");
        assert_eq!(text(&root.join("d/z")), "L2");
        assert_eq!(names(&root.join("d")), ["x", "y", "z"]);
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("nope"))), Some(ENOENT));
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("d/nope"))), Some(ENOENT));
    };
    let m = l.mount(&[]);
    check(&m.mnt, "L1");
    assert_eq!(names(&m.mnt), ["a", "b", "c", "d"]);
    // The upper becomes the top layer for what is written.
    std::fs::write(m.path("b"), b"UP").unwrap();
    sc.ending(m)
        .view(|root| {
            check(root, "UP");
            assert_eq!(names(root), ["a", "b", "c", "d"]);
        })
        .after(|| {
            assert_eq!(text(&l.up("b")), "UP");
            assert!(!exists_raw(&l.up("a")), "reads must not copy up");
        })
        .end();
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
    let sc = Scenario::new(&l);
    let check = |root: &Path, d: &[&str]| {
        assert_eq!(names(&root.join("d")), d);
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("d/y"))), Some(ENOENT));
        assert!(lstat(&root.join("f")).is_file());
        assert_eq!(text(&root.join("f")), "file on top");
        assert_eq!(names(&root.join("s")), d);
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("s/secret"))), Some(ENOENT));
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("s/w"))), Some(ENOENT));
    };
    let m = l.mount(&[]);
    check(&m.mnt, &["x"]);
    // Copy-up of the merged directory must not widen the merge.
    std::fs::write(m.path("d/new"), b"n").unwrap();
    std::fs::write(m.path("s/new"), b"n").unwrap();
    sc.ending(m).view(|root| check(root, &["new", "x"])).end();
}

#[test]
fn lookup_results_follow_changes_made_through_the_view() {
    let l = Layers::new(1);
    l.put(0, "d/old", b"o");
    let sc = Scenario::new(&l);
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
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("d")), ["moved"]);
            assert_eq!(text(&root.join("d/moved")), "o");
            assert_eq!(err_code(std::fs::metadata(root.join("d/old"))), Some(ENOENT));
        })
        .end();
}

/// A sentinel directory outside the layers that symlinks in the layers point to.
fn sentinel(l: &Layers) -> PathBuf {
    let s = l.dir.path().join("sentinel");
    std::fs::create_dir_all(s.join("sub")).unwrap();
    std::fs::write(s.join("passwd"), b"root:x:0:0").unwrap();
    std::fs::write(s.join("secret"), b"secret").unwrap();
    std::fs::write(s.join("sub/inner"), b"inner").unwrap();
    s
}

/// A lower symlink to a directory outside the layers, shadowed by a directory of the same name in
/// a higher layer: the daemon must not follow the lower symlink when it resolves layer paths, so
/// nothing from the outside directory shows up and operations under that name never touch it.
#[test]
fn hostile_symlinks_below_directories_are_never_followed_by_the_daemon() {
    let l = Layers::new(2);
    let s = sentinel(&l);
    // lower0 (top): real directories; lower1: symlinks with the same names pointing outside.
    l.put(0, "d/mine", b"mine");
    l.put(0, "r/mine", b"mine");
    std::os::unix::fs::symlink(&s, l.lower(1, "d")).unwrap();
    std::os::unix::fs::symlink("../sentinel", l.lower(1, "r")).unwrap();
    // Deeper: an intermediate component in the lower layer is a symlink.
    l.put(0, "deep/x/file", b"x");
    l.mkdir(1, "deep");
    std::os::unix::fs::symlink("../../sentinel", l.lower(1, "deep/x")).unwrap();
    // An upper symlink over a lower directory.
    l.put(1, "u/lowerfile", b"lower");
    std::os::unix::fs::symlink(&s, l.up("u")).unwrap();
    let sc = Scenario::new(&l);
    let sentinel_before = Tree::read_raw(&s);
    let m = l.mount(&[]);

    for d in ["d", "r", "deep/x"] {
        assert!(lstat(&m.path(d)).is_dir(), "{d} is a directory in the view");
        for n in ["passwd", "secret", "sub", "sub/inner"] {
            assert!(
                gone(&m.path(&format!("{d}/{n}"))),
                "{d}/{n}: the daemon followed a lower symlink"
            );
        }
        assert_eq!(
            err_code(std::fs::remove_file(m.path(&format!("{d}/passwd")))),
            Some(libc::ENOENT)
        );
        assert_eq!(
            err_code(std::fs::remove_dir_all(m.path(&format!("{d}/sub")))),
            Some(libc::ENOENT)
        );
        // Creating and writing under it lands in the upper.
        std::fs::write(m.path(&format!("{d}/passwd")), b"view").unwrap();
        std::fs::write(m.path(&format!("{d}/secret")), b"view").unwrap();
        std::fs::create_dir(m.path(&format!("{d}/sub"))).unwrap();
        std::fs::write(m.path(&format!("{d}/sub/inner")), b"view").unwrap();
        assert_eq!(std::fs::read(l.up(&format!("{d}/passwd"))).unwrap(), b"view");
        std::fs::remove_file(m.path(&format!("{d}/secret"))).unwrap();
    }
    assert_eq!(names(&m.path("d")), ["mine", "passwd", "sub"]);
    assert_eq!(names(&m.path("deep/x")), ["file", "passwd", "sub"]);
    // Copy-up (chmod), rename, whiteouts, rmdir of the whole thing.
    std::fs::set_permissions(m.path("d/mine"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(m.path("r"), m.path("r2")).unwrap();
    assert_eq!(names(&m.path("r2")), ["mine", "passwd", "sub"]);
    std::fs::remove_dir_all(m.path("deep")).unwrap();
    // The upper symlink over a lower dir is a symlink in the view; removing it removes the link.
    assert!(lstat(&m.path("u")).file_type().is_symlink());
    assert_eq!(std::fs::read_link(m.path("u")).unwrap(), s);
    std::fs::remove_file(m.path("u")).unwrap();
    assert!(gone(&m.path("u")));
    assert_healthy(&m);
    let m = sc
        .ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("d")), ["mine", "passwd", "sub"]);
            assert_eq!(names(&root.join("r2")), ["mine", "passwd", "sub"]);
            assert!(gone(&root.join("r")) && gone(&root.join("deep")) && gone(&root.join("u")));
        })
        .remount();
    assert_healthy(&m);
    sc.finish(m);
    assert_eq!(
        Tree::read_raw(&s),
        sentinel_before,
        "something outside the layers changed"
    );
}

/// Symlinks pointing outside, used through the view, resolve like ordinary symlinks in the view
/// (the kernel follows them from the mount), and readlink returns the stored target unchanged.
#[test]
fn hostile_outside_symlinks_resolve_like_normal_symlinks_in_the_view() {
    let l = Layers::new(1);
    let s = sentinel(&l);
    std::os::unix::fs::symlink(&s, l.lower(0, "abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../..", l.lower(0, "up")).unwrap();
    std::os::unix::fs::symlink("../sentinel/passwd", l.lower(0, "rel")).unwrap();
    l.mkdir(0, "a/b");
    std::os::unix::fs::symlink("../../abs/sub", l.lower(0, "a/b/chain")).unwrap();
    let sc = Scenario::new(&l);
    let sentinel_before = Tree::read_raw(&s);
    let m = l.mount(&[]);
    assert_eq!(std::fs::read_link(m.path("abs")).unwrap(), s);
    assert_eq!(
        std::fs::read_link(m.path("up")).unwrap(),
        Path::new("../../../../../../../../..")
    );
    // Resolved by the kernel in the view: mnt/../sentinel is the sentinel (mnt and the sentinel are
    // siblings), mnt/up is "/".
    assert_eq!(std::fs::read(m.path("rel")).unwrap(), b"root:x:0:0");
    assert_eq!(std::fs::read(m.path("abs/passwd")).unwrap(), b"root:x:0:0");
    assert_eq!(std::fs::read(m.path("a/b/chain/inner")).unwrap(), b"inner");
    assert_eq!(
        std::fs::metadata(m.path("up")).unwrap().ino(),
        std::fs::metadata("/").unwrap().ino()
    );
    // Copy-up of the links themselves (lchown) keeps them links with the same target.
    rustix::fs::chownat(
        rustix::fs::CWD,
        m.path("abs"),
        Some(rustix::process::Uid::from_raw(1)),
        None,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert_eq!(std::fs::read_link(l.up("abs")).unwrap(), s);
    std::fs::rename(m.path("up"), m.path("up2")).unwrap();
    std::fs::remove_file(m.path("rel")).unwrap();
    assert_eq!(std::fs::read(s.join("passwd")).unwrap(), b"root:x:0:0");
    assert_healthy(&m);
    sc.ending(m)
        .view(|root| {
            assert_eq!(
                std::fs::read_link(root.join("up2")).unwrap(),
                Path::new("../../../../../../../../..")
            );
            assert!(gone(&root.join("rel")) && gone(&root.join("up")));
            assert_eq!(lstat(&root.join("abs")).uid(), 1);
        })
        .after(|| {
            assert_eq!(
                Tree::read_raw(&s),
                sentinel_before,
                "something outside the layers changed"
            );
        })
        .end();
}
