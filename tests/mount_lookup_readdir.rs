//! Lookup and readdir through a real mount (docs/semantics.md, "Lookup", "Readdir", and the markers of
//! "On-disk formats" that we read in every layer). Every test remounts and re-reads, and proves
//! the lower layers unchanged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use common::*;

const ENOENT: i32 = libc::ENOENT;

/// Listing of `dir` straight from getdents (including `.` and `..`): name -> (d_ino, d_type).
fn dents(dir: &Path) -> BTreeMap<String, (u64, rustix::fs::FileType)> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open dir");
    let mut d = rustix::fs::Dir::read_from(&fd).expect("Dir");
    let mut out = BTreeMap::new();
    while let Some(e) = d.read() {
        let e = e.expect("dirent");
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            out.insert(name.clone(), (e.ino(), e.file_type())).is_none(),
            "{name} listed twice in {}",
            dir.display()
        );
    }
    out
}

fn read(p: &Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))).expect("utf8")
}

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
        assert_eq!(read(&m.path("a")), "L0");
        assert_eq!(read(&m.path("b")), b);
        assert_eq!(read(&m.path("c")), "L2");
        assert_eq!(read(&m.path("d/x")), "L0");
        assert_eq!(read(&m.path("d/y")), "L1");
        assert_eq!(read(&m.path("d/z")), "L2");
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
    assert_eq!(read(&l.up("b")), "UP");
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
        assert_eq!(read(&m.path("f")), "file on top");
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
fn opaque_markers_of_every_format_in_a_lower() {
    #[derive(Debug, Clone, Copy)]
    enum Marker {
        Xattr(&'static str),
        OciFile,
    }
    for marker in [
        Marker::Xattr("trusted.overlay.opaque"),
        Marker::Xattr("user.overlay.opaque"),
        Marker::Xattr("user.fuseoverlayfs.opaque"),
        Marker::OciFile,
    ] {
        let l = Layers::new(3);
        l.put(0, "d/top", b"L0");
        for i in 0..20 {
            // Several entries, so the marker file is not necessarily listed first.
            l.put(0, &format!("d/t{i}"), b"t");
        }
        l.put(1, "d/top", b"L1");
        l.put(1, "d/hidden", b"L1");
        l.put(2, "d/deeper", b"L2");
        // A control directory without a marker merges as usual.
        l.put(0, "m/a", b"a");
        l.put(1, "m/b", b"b");
        match marker {
            Marker::Xattr(name) => xset(&l.lower(0, "d"), name, b"y").unwrap(),
            Marker::OciFile => l.put(0, "d/.wh..wh..opq", b""),
        }
        let before = l.snapshot_lowers();
        let mut expect: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        expect.push("top".into());
        expect.sort();
        let check = |m: &Mount, expect: &[String]| {
            assert_eq!(names(&m.path("d")), expect, "{marker:?}");
            assert_eq!(read(&m.path("d/top")), "L0", "{marker:?}");
            for hidden in ["hidden", "deeper", ".wh..wh..opq"] {
                assert_eq!(
                    err_code(std::fs::symlink_metadata(m.path("d").join(hidden))),
                    Some(ENOENT),
                    "{marker:?}: {hidden} must not be visible"
                );
            }
            let xs = xlist(&m.path("d"));
            assert!(
                xs.iter()
                    .all(|x| !x.contains("overlay") && !x.contains("fuseoverlayfs")),
                "{marker:?}: private xattrs listed: {xs:?}"
            );
            assert_eq!(names(&m.path("m")), ["a", "b"]);
        };
        let m = l.mount(&[]);
        check(&m, &expect);
        std::fs::write(m.path("d/new"), b"n").unwrap();
        expect.push("new".into());
        expect.sort();
        check(&m, &expect);
        let m = remount(&l, m, &[]);
        check(&m, &expect);
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{marker:?}");
    }
}

#[test]
fn whiteouts_of_every_format_in_a_lower() {
    let l = Layers::new(2);
    for n in [
        "chr",
        "oci",
        "dir_chr/x",
        "dir_oci/x",
        "kept",
        "xd/f_x",
        "xd/other",
        "ud/f_u",
        "ud/other",
    ] {
        l.put(1, n, b"L1");
    }
    // char device 0/0
    mknod_whiteout(&l.lower(0, "chr"));
    mknod_whiteout(&l.lower(0, "dir_chr"));
    // OCI
    l.put(0, ".wh.oci", b"");
    l.put(0, ".wh.dir_oci", b"");
    // Kernel xattr whiteouts: zero-size files carrying overlay.whiteout, in a dir marked opaque=x.
    l.put(0, "xd/f_x", b"");
    xset(&l.lower(0, "xd/f_x"), "trusted.overlay.whiteout", b"").unwrap();
    xset(&l.lower(0, "xd"), "trusted.overlay.opaque", b"x").unwrap();
    l.put(0, "ud/f_u", b"");
    xset(&l.lower(0, "ud/f_u"), "user.overlay.whiteout", b"").unwrap();
    xset(&l.lower(0, "ud"), "user.overlay.opaque", b"x").unwrap();
    let before = l.snapshot_lowers();
    let check = |m: &Mount, root: &[&str]| {
        assert_eq!(names(&m.mnt), root);
        for gone in [
            "chr",
            "oci",
            "dir_chr",
            "dir_oci",
            ".wh.oci",
            ".wh.dir_oci",
            "xd/f_x",
            "ud/f_u",
        ] {
            assert_eq!(
                err_code(std::fs::symlink_metadata(m.path(gone))),
                Some(ENOENT),
                "{gone} must be hidden"
            );
        }
        // opaque=x is not opaque: the rest of the lower directory still shows.
        assert_eq!(names(&m.path("xd")), ["other"]);
        assert_eq!(names(&m.path("ud")), ["other"]);
    };
    let m = l.mount(&[]);
    check(&m, &["kept", "ud", "xd"]);
    // Re-creating hidden names through the view.
    std::fs::write(m.path("chr"), b"new").unwrap();
    std::fs::create_dir(m.path("dir_oci")).unwrap();
    let after = ["chr", "dir_oci", "kept", "ud", "xd"];
    assert_eq!(names(&m.mnt), after);
    assert_eq!(
        names(&m.path("dir_oci")),
        Vec::<String>::new(),
        "recreated dir must not show x"
    );
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.mnt), after);
    assert_eq!(read(&m.path("chr")), "new");
    assert_eq!(names(&m.path("dir_oci")), Vec::<String>::new());
    assert_eq!(names(&m.path("xd")), ["other"]);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn oci_whiteout_hides_only_layers_below_its_own() {
    let l = Layers::new(2);
    // Same layer: the entry stays visible next to its whiteout.
    l.put(0, "same", b"L0");
    l.put(0, ".wh.same", b"");
    l.put(1, "same", b"L1");
    // Below: hidden.
    l.put(0, ".wh.below", b"");
    l.put(1, "below", b"L1");
    l.put(0, "sub/.wh.below", b"");
    l.put(1, "sub/below", b"L1");
    l.put(1, "sub/kept", b"L1");
    // A directory entry next to its own whiteout is still visible and still merges with nothing
    // below it (the whiteout ends the merge).
    l.put(0, "dd/a", b"a");
    l.put(0, ".wh.dd", b"");
    l.put(1, "dd/b", b"b");
    let before = l.snapshot_lowers();
    let check = |m: &Mount| {
        assert_eq!(names(&m.mnt), ["dd", "same", "sub"]);
        assert_eq!(read(&m.path("same")), "L0");
        assert_eq!(err_code(std::fs::symlink_metadata(m.path("below"))), Some(ENOENT));
        assert_eq!(names(&m.path("sub")), ["kept"]);
        assert_eq!(names(&m.path("dd")), ["a"]);
    };
    let m = l.mount(&[]);
    check(&m);
    let m = remount(&l, m, &[]);
    check(&m);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn private_markers_never_appear_in_readdir_lookup_or_listxattr() {
    let l = Layers::new(2);
    l.put(0, "f", b"f");
    for x in [
        "trusted.overlay.origin",
        "user.overlay.redirect",
        "user.fuseoverlayfs.origin",
        "user.unionfs.origin",
    ] {
        xset(&l.lower(0, "f"), x, b"private").unwrap();
    }
    xset(&l.lower(0, "f"), "user.visible", b"v").unwrap();
    xset(&l.lower(0, "f"), "trusted.visible", b"t").unwrap();
    l.put(0, "d/.wh.gone", b"");
    l.put(0, "d/.wh..wh..opq", b"");
    mknod_whiteout(&l.lower(0, "d/chr"));
    l.put(0, "d/kept", b"k");
    l.put(1, "d/gone", b"g");
    let before = l.snapshot_lowers();
    let check = |m: &Mount| {
        assert_eq!(names(&m.path("d")), ["kept"]);
        assert_eq!(names(&m.mnt), ["d", "f"]);
        for hidden in ["d/.wh.gone", "d/.wh..wh..opq", "d/chr", "d/gone"] {
            assert_eq!(
                err_code(std::fs::symlink_metadata(m.path(hidden))),
                Some(ENOENT),
                "{hidden}"
            );
        }
        assert_eq!(xlist(&m.path("f")), ["trusted.visible", "user.visible"]);
        for x in [
            "trusted.overlay.origin",
            "user.overlay.redirect",
            "user.fuseoverlayfs.origin",
            "user.unionfs.origin",
        ] {
            assert_eq!(xget_err(&m.path("f"), x), Err(libc::ENODATA), "{x} must read as absent");
        }
        assert!(xlist(&m.path("d")).is_empty());
    };
    let m = l.mount(&[]);
    check(&m);
    // After a copy-up, our own metadata (if any) is not listed either.
    std::fs::OpenOptions::new().append(true).open(m.path("f")).unwrap();
    std::fs::write(m.path("d/new"), b"n").unwrap();
    std::fs::remove_file(m.path("d/new")).unwrap();
    assert!(exists_raw(&l.up("f")), "open for write must copy up");
    check(&m);
    let m = remount(&l, m, &[]);
    check(&m);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

/// Every entry's d_ino equals the st_ino lookup gives, `.`/`..` included, and d_type is the
/// winning entry's type.
fn check_dents(dir: &Path, is_root: bool) -> BTreeMap<String, u64> {
    let mut inos = BTreeMap::new();
    for (name, (ino, ty)) in dents(dir) {
        if is_root && name == ".." {
            // The mount root's parent lies outside the mount.
            continue;
        }
        let p = dir.join(&name);
        let md = lstat(&p);
        assert_eq!(ino, md.ino(), "d_ino of {}", p.display());
        if name != "." && name != ".." {
            assert_eq!(
                ty,
                rustix::fs::FileType::from_raw_mode(md.mode()),
                "d_type of {}",
                p.display()
            );
            inos.insert(name, ino);
        }
    }
    inos
}

#[test]
fn d_ino_equals_st_ino_and_d_type_comes_from_the_winner() {
    let l = Layers::new(2);
    l.put(0, "file0", b"0");
    l.put(1, "file1", b"1");
    l.put(1, "copied", b"c");
    l.put(0, "merged/a", b"a");
    l.put(1, "merged/b", b"b");
    l.put(1, "merged/sub/c", b"c");
    symlink("file0", l.lower(0, "link")).unwrap();
    // Same name, different types: the top one wins.
    l.mkdir(0, "t_dir_over_file");
    l.put(1, "t_dir_over_file", b"f");
    symlink("merged", l.lower(0, "t_link_over_dir")).unwrap();
    l.mkdir(1, "t_link_over_dir");
    l.put(0, "t_file_over_link", b"f");
    symlink("x", l.lower(1, "t_file_over_link")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l.lower(1, "fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    std::fs::write(m.path("created"), b"n").unwrap();
    std::fs::write(m.path("merged/created"), b"n").unwrap();
    std::fs::OpenOptions::new().append(true).open(m.path("copied")).unwrap();
    let root = check_dents(&m.mnt, true);
    let merged = check_dents(&m.path("merged"), false);
    let sub = check_dents(&m.path("merged/sub"), false);
    assert_eq!(dents(&m.path("merged/sub"))[".."].0, lstat(&m.path("merged")).ino());
    assert_eq!(dents(&m.mnt)["t_dir_over_file"].1, rustix::fs::FileType::Directory);
    assert_eq!(dents(&m.mnt)["t_link_over_dir"].1, rustix::fs::FileType::Symlink);
    assert_eq!(dents(&m.mnt)["t_file_over_link"].1, rustix::fs::FileType::RegularFile);
    assert_eq!(dents(&m.mnt)["fifo"].1, rustix::fs::FileType::Fifo);
    let m = remount(&l, m, &[]);
    assert_eq!(check_dents(&m.mnt, true), root, "inode numbers must survive a remount");
    assert_eq!(check_dents(&m.path("merged"), false), merged);
    assert_eq!(check_dents(&m.path("merged/sub"), false), sub);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn readdir_lists_each_name_once_across_layers() {
    let l = Layers::new(3);
    for i in 0..3 {
        for j in 0..50 {
            l.put(i, &format!("d/common{j}"), format!("L{i}").as_bytes());
        }
        l.put(i, &format!("d/only{i}"), b"x");
    }
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    for j in 0..50 {
        std::fs::write(m.path(&format!("d/common{j}")), b"U").unwrap();
    }
    std::fs::write(m.path("d/only_up"), b"u").unwrap();
    let mut expect: Vec<String> = (0..50).map(|j| format!("common{j}")).collect();
    expect.extend(["only0", "only1", "only2", "only_up"].map(String::from));
    expect.sort();
    let check = |m: &Mount| {
        let d = dents(&m.path("d"));
        let listed: Vec<String> = d.keys().filter(|n| *n != "." && *n != "..").cloned().collect();
        assert_eq!(listed, expect);
        for j in 0..50 {
            assert_eq!(read(&m.path(&format!("d/common{j}"))), "U");
        }
    };
    check(&m);
    let m = remount(&l, m, &[]);
    check(&m);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

/// Number of entries of the big-directory test. docs/semantics.md promises 100k; in a debug build that takes
/// ~35 s here, so the default is 20k. `UNIONFS_BIG_DIR=100000` runs the full size.
fn big_n() -> usize {
    std::env::var("UNIONFS_BIG_DIR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn deleting_while_listing_a_big_directory_removes_every_entry_once() {
    let n = big_n();
    let l = Layers::new(2);
    l.mkdir(0, "big");
    l.mkdir(1, "big");
    // 60% in lower0, 60% in lower1: 20% of the names are in both, some whiteouts in lower0.
    let top = n * 6 / 10;
    let bottom_start = n * 4 / 10;
    for i in 0..top {
        std::fs::write(l.lower(0, &format!("big/f{i:06}")), b"").unwrap();
    }
    for i in bottom_start..n {
        std::fs::write(l.lower(1, &format!("big/f{i:06}")), b"").unwrap();
    }
    for i in 0..100 {
        std::fs::write(l.lower(1, &format!("big/hidden{i}")), b"").unwrap();
        std::fs::write(l.lower(0, &format!("big/.wh.hidden{i}")), b"").unwrap();
    }
    l.put(0, "keep", b"k");
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    for i in 0..100 {
        std::fs::write(m.path(&format!("big/up{i}")), b"").unwrap();
    }
    let mut expect: BTreeSet<String> = (0..n).map(|i| format!("f{i:06}")).collect();
    expect.extend((0..100).map(|i| format!("up{i}")));
    // Delete while reading, as `rm -rf` does.
    let mut seen = BTreeSet::new();
    for e in std::fs::read_dir(m.path("big")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(seen.insert(name.clone()), "{name} listed twice");
        std::fs::remove_file(e.path()).unwrap_or_else(|err| panic!("unlink {name}: {err}"));
    }
    let missing: Vec<_> = expect.difference(&seen).take(5).collect();
    let extra: Vec<_> = seen.difference(&expect).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "skipped {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(names(&m.path("big")), Vec::<String>::new());
    std::fs::remove_dir(m.path("big")).unwrap();
    assert_eq!(names(&m.mnt), ["keep"]);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.mnt), ["keep"]);
    assert_eq!(err_code(std::fs::symlink_metadata(m.path("big"))), Some(ENOENT));
    drop(m);
    assert!(
        is_chr_whiteout(&l.up("big")),
        "a whiteout must hide the lower directories"
    );
    assert_eq!(l.snapshot_lowers(), before);
}

#[test]
fn rm_rf_of_a_merged_tree_removes_everything() {
    let l = Layers::new(2);
    for i in 0..40 {
        for j in 0..50 {
            l.put(i % 2, &format!("tree/d{i}/f{j}"), b"x");
        }
        l.put(1, &format!("tree/d{i}/below"), b"x");
        l.put(0, &format!("tree/d{i}/sub/deep"), b"x");
    }
    l.put(1, "other", b"o");
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    std::fs::write(m.path("tree/d0/new"), b"n").unwrap();
    let out = std::process::Command::new("rm")
        .arg("-rf")
        .arg(m.path("tree"))
        .output()
        .unwrap();
    assert!(out.status.success(), "rm -rf: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names(&m.mnt), ["other"]);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.mnt), ["other"]);
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
    assert_eq!(read(&m.path("d/new")), "n");
    std::fs::rename(m.path("d/old"), m.path("d/moved")).unwrap();
    assert_eq!(err_code(std::fs::metadata(m.path("d/old"))), Some(ENOENT));
    assert_eq!(read(&m.path("d/moved")), "o");
    std::fs::remove_file(m.path("d/new")).unwrap();
    assert_eq!(err_code(std::fs::metadata(m.path("d/new"))), Some(ENOENT));
    assert_eq!(names(&m.path("d")), ["moved"]);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.path("d")), ["moved"]);
    assert_eq!(read(&m.path("d/moved")), "o");
    assert_eq!(err_code(std::fs::metadata(m.path("d/old"))), Some(ENOENT));
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}
