//! docs/semantics.md, "Unlink, rmdir, and creating over a deleted name", through real mounts:
//! whiteouts only where a lower has the name, `rmdir` refused while any layer shows a child,
//! directories made over a deleted name opaque (with no whiteouts inside where nothing lies
//! below), and open files whose names are all gone working until closed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, symlink};
use std::path::Path;

use crate::common::*;
use crate::formats::opaque_xattr;

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout_device() {
    let l = Layers::new(2);
    l.put(1, "f", b"f");
    l.put(0, "d/g", b"g");
    l.put(1, "d/h", b"h");
    l.put(0, "both", b"0");
    l.put(1, "both", b"1");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    for p in ["f", "d/g", "both"] {
        std::fs::remove_file(m.path(p)).unwrap();
        assert!(gone(&m.path(p)), "{p}");
    }
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["d"]);
            assert_eq!(names(&root.join("d")), ["h"]);
            for p in ["f", "d/g", "both"] {
                assert!(gone(&root.join(p)), "{p} came back after remount");
            }
        })
        .upper(|up| {
            for p in ["f", "d/g", "both"] {
                assert!(
                    is_chr_whiteout(&up.join(p)),
                    "{p}: the upper must hold a char 0/0 whiteout"
                );
            }
        })
        .end();
}

#[test]
fn unlink_of_an_upper_only_file_leaves_nothing() {
    let l = Layers::new(1);
    l.put(0, "d/keep", b"k");
    l.put(0, "again", b"lower");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::write(m.path("n"), b"n").unwrap();
    std::fs::write(m.path("d/n"), b"n").unwrap();
    std::fs::remove_file(m.path("n")).unwrap();
    std::fs::remove_file(m.path("d/n")).unwrap();
    assert!(!exists_raw(&l.up("n")), "no whiteout where nothing lies below");
    assert!(!exists_raw(&l.up("d/n")));
    // Deleted, re-created, deleted again: the lower one must stay hidden.
    std::fs::remove_file(m.path("again")).unwrap();
    std::fs::write(m.path("again"), b"upper").unwrap();
    assert!(lstat(&l.up("again")).is_file());
    assert_eq!(std::fs::read(m.path("again")).unwrap(), b"upper");
    std::fs::remove_file(m.path("again")).unwrap();
    assert!(is_chr_whiteout(&l.up("again")));
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["d"]);
            assert_eq!(names(&root.join("d")), ["keep"]);
        })
        .end();
}

#[test]
fn a_file_created_over_a_deleted_name_replaces_the_whiteout() {
    let l = Layers::new(2);
    l.put(1, "f", b"lower");
    l.put(1, "g", b"lower");
    mknod_whiteout(&l.lower(0, "hidden"));
    l.put(1, "hidden", b"lower");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_file(m.path("f")).unwrap();
    std::fs::write(m.path("f"), b"new f").unwrap();
    std::fs::remove_file(m.path("g")).unwrap();
    symlink("target", m.path("g")).unwrap();
    std::fs::write(m.path("hidden"), b"new hidden").unwrap();
    let check = |root: &Path| {
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"new f");
        assert_eq!(std::fs::read_link(root.join("g")).unwrap(), Path::new("target"));
        assert_eq!(std::fs::read(root.join("hidden")).unwrap(), b"new hidden");
    };
    sc.ending(m)
        .view(check)
        .upper(|up| {
            assert!(lstat(&up.join("f")).is_file());
            assert!(lstat(&up.join("g")).file_type().is_symlink());
        })
        .end();
}

#[test]
fn rmdir_is_refused_while_any_layer_shows_a_child() {
    let l = Layers::new(2);
    l.mkdir(1, "empty_lower");
    l.put(1, "full/x", b"x");
    l.put(0, "merged/a", b"a");
    l.put(1, "merged/b", b"b");
    l.put(1, "merged/sub/c", b"c");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_dir(m.path("empty_lower")).unwrap();
    assert!(gone(&m.path("empty_lower")));
    assert!(is_chr_whiteout(&l.up("empty_lower")));
    assert_eq!(err_code(std::fs::remove_dir(m.path("full"))), Some(libc::ENOTEMPTY));
    assert_eq!(err_code(std::fs::remove_dir(m.path("merged"))), Some(libc::ENOTEMPTY));
    std::fs::remove_file(m.path("merged/a")).unwrap();
    // b is only in the lower layer below: still not empty.
    assert_eq!(err_code(std::fs::remove_dir(m.path("merged"))), Some(libc::ENOTEMPTY));
    std::fs::remove_file(m.path("merged/b")).unwrap();
    assert_eq!(err_code(std::fs::remove_dir(m.path("merged"))), Some(libc::ENOTEMPTY));
    std::fs::remove_file(m.path("merged/sub/c")).unwrap();
    std::fs::remove_dir(m.path("merged/sub")).unwrap();
    assert_eq!(names(&m.path("merged")), Vec::<String>::new());
    std::fs::remove_dir(m.path("merged")).unwrap();
    // The upper copy of `merged` (holding whiteouts) is gone, replaced by one whiteout.
    assert!(
        is_chr_whiteout(&l.up("merged")),
        "whiteouts left in the upper dir must go with it"
    );
    // A directory only in the upper, with nothing below: plain rmdir.
    std::fs::create_dir(m.path("fresh")).unwrap();
    std::fs::write(m.path("fresh/x"), b"x").unwrap();
    assert_eq!(err_code(std::fs::remove_dir(m.path("fresh"))), Some(libc::ENOTEMPTY));
    std::fs::remove_file(m.path("fresh/x")).unwrap();
    std::fs::remove_dir(m.path("fresh")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["full"]);
            assert_eq!(names(&root.join("full")), ["x"]);
        })
        .upper(|up| assert!(!exists_raw(&up.join("fresh"))))
        .end();
}

#[test]
fn directory_recreated_over_a_deleted_name_is_opaque() {
    let l = Layers::new(2);
    l.put(0, "p/d/a", b"a");
    l.put(1, "p/d/b", b"b");
    l.put(1, "p/d/sub/c", b"c");
    l.put(1, "p/file", b"was a file");
    mknod_whiteout(&l.lower(0, "p/wh"));
    l.put(1, "p/wh/hidden", b"h");
    l.put(0, "p/.wh.oci", b"");
    l.put(1, "p/oci/hidden", b"h");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_dir_all(m.path("p/d")).unwrap();
    std::fs::create_dir(m.path("p/d")).unwrap();
    std::fs::remove_file(m.path("p/file")).unwrap();
    std::fs::create_dir(m.path("p/file")).unwrap();
    // Names hidden by a whiteout in a lower layer.
    std::fs::create_dir(m.path("p/wh")).unwrap();
    std::fs::create_dir(m.path("p/oci")).unwrap();
    let check = |root: &Path| {
        for d in ["p/d", "p/file", "p/wh", "p/oci"] {
            assert_eq!(names(&root.join(d)), Vec::<String>::new(), "{d} must be empty");
        }
    };
    let m = sc
        .ending(m)
        .view(check)
        .upper(|up| {
            for d in ["p/d", "p/file", "p/wh", "p/oci"] {
                assert_eq!(
                    opaque_xattr(&up.join(d)).as_deref(),
                    Some(&b"y"[..]),
                    "{d} must be marked opaque"
                );
                assert_eq!(
                    names(&up.join(d)),
                    Vec::<String>::new(),
                    "{d}: no whiteouts in an opaque dir"
                );
            }
        })
        .remount();
    // Files added after the remount still only show what was added.
    std::fs::write(m.path("p/d/new"), b"n").unwrap();
    sc.ending(m)
        .view(|root| assert_eq!(names(&root.join("p/d")), ["new"]))
        .end();
}

#[test]
fn no_whiteouts_inside_an_opaque_directory_with_nothing_below() {
    let l = Layers::new(1);
    l.put(0, "d/x", b"x");
    l.put(0, "d/y", b"y");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_dir_all(m.path("d")).unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    // The same names as the deleted lower entries: nothing below the opaque dir to hide.
    std::fs::write(m.path("d/x"), b"new").unwrap();
    std::fs::create_dir(m.path("d/y")).unwrap();
    std::fs::remove_file(m.path("d/x")).unwrap();
    std::fs::remove_dir(m.path("d/y")).unwrap();
    assert_eq!(
        names(&l.up("d")),
        Vec::<String>::new(),
        "no whiteouts expected in the opaque dir"
    );
    // A brand-new directory: same.
    std::fs::create_dir(m.path("n")).unwrap();
    std::fs::write(m.path("n/z"), b"z").unwrap();
    std::fs::remove_file(m.path("n/z")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("d")), Vec::<String>::new());
            assert_eq!(names(&root.join("n")), Vec::<String>::new());
        })
        .upper(|up| assert_eq!(names(&up.join("n")), Vec::<String>::new()))
        .end();
}

#[test]
fn open_handles_to_deleted_files_keep_working() {
    let l = Layers::new(1);
    l.put(0, "rw", b"lower rw");
    l.put(0, "ro", b"lower ro");
    l.put(0, "replaced", b"old content");
    l.put(0, "other", b"new content");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let mut rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("rw"))
        .unwrap();
    let mut ro = std::fs::File::open(m.path("ro")).unwrap();
    let mut rep = std::fs::File::open(m.path("replaced")).unwrap();
    std::fs::write(m.path("up"), b"upper file").unwrap();
    let mut up = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("up"))
        .unwrap();
    std::fs::remove_file(m.path("rw")).unwrap();
    std::fs::remove_file(m.path("ro")).unwrap();
    std::fs::remove_file(m.path("up")).unwrap();
    std::fs::rename(m.path("other"), m.path("replaced")).unwrap();
    assert_eq!(names(&m.mnt), ["replaced"]);
    let read_all = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(read_all(&mut ro), "lower ro");
    assert_eq!(read_all(&mut rep), "old content");
    rw.seek(SeekFrom::End(0)).unwrap();
    rw.write_all(b" + more").unwrap();
    assert_eq!(read_all(&mut rw), "lower rw + more");
    up.write_all_at(b"UPPER", 0).unwrap();
    assert_eq!(read_all(&mut up), "UPPER file");
    assert_eq!(rw.metadata().unwrap().len(), 15);
    assert_eq!(up.metadata().unwrap().nlink(), 0);
    rw.set_len(5).unwrap();
    assert_eq!(read_all(&mut rw), "lower");
    drop((rw, ro, rep, up));
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["replaced"]);
            assert_eq!(std::fs::read(root.join("replaced")).unwrap(), b"new content");
        })
        .end();
}
