//! Hostile and odd layer contents: symlinks pointing outside the layers used as path components,
//! very deep trees, names with newlines and invalid UTF-8, a 100,000-entry lower directory,
//! device nodes, and whiteout/opaque markers in odd places. The daemon never crashes (it is alive
//! and answering after each test), never writes outside the layers, and the lowers are unchanged.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

fn gone(p: &Path) -> bool {
    err_code(std::fs::symlink_metadata(p)) == Some(libc::ENOENT)
}

/// The daemon is alive and the mount answers a lookup, a readdir and a small write.
fn assert_healthy(m: &Mount) {
    assert!(daemon_alive(m), "daemon died");
    std::fs::read_dir(&m.mnt)
        .expect("readdir root")
        .for_each(|e| drop(e.expect("entry")));
    let probe = m.path("health-probe");
    std::fs::write(&probe, b"ok").expect("write probe");
    assert_eq!(std::fs::read(&probe).unwrap(), b"ok");
    std::fs::remove_file(&probe).unwrap();
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

fn mknod(p: &Path, ft: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, p, ft, rustix::fs::Mode::from_raw_mode(mode), dev).expect("mknod");
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
    let before = l.snapshot_lowers();
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
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.path("d")), ["mine", "passwd", "sub"]);
    assert_eq!(names(&m.path("r2")), ["mine", "passwd", "sub"]);
    assert!(gone(&m.path("r")) && gone(&m.path("deep")) && gone(&m.path("u")));
    assert_healthy(&m);
    drop(m);
    assert_eq!(
        Tree::read_raw(&s),
        sentinel_before,
        "something outside the layers changed"
    );
    assert_eq!(l.snapshot_lowers(), before);
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
    let before = l.snapshot_lowers();
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
    let m = remount(&l, m, &[]);
    assert_eq!(
        std::fs::read_link(m.path("up2")).unwrap(),
        Path::new("../../../../../../../../..")
    );
    assert!(gone(&m.path("rel")) && gone(&m.path("up")));
    assert_eq!(lstat(&m.path("abs")).uid(), 1);
    drop(m);
    assert_eq!(
        Tree::read_raw(&s),
        sentinel_before,
        "something outside the layers changed"
    );
    assert_eq!(l.snapshot_lowers(), before);
}

/// A lower tree 250 directories deep: read, copy up the deepest file (and the whole chain),
/// rename and delete at the bottom, build another deep chain through the view, remount.
#[test]
fn hostile_very_deep_tree() {
    const DEPTH: usize = 250;
    let l = Layers::new(1);
    let chain = vec!["d"; DEPTH].join("/");
    l.put(0, &format!("{chain}/leaf"), b"deep leaf");
    l.put(0, &format!("{chain}/other"), b"other");
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    assert_eq!(std::fs::read(m.path(&format!("{chain}/leaf"))).unwrap(), b"deep leaf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path(&format!("{chain}/leaf")))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"!"))
        .unwrap();
    std::fs::rename(m.path(&format!("{chain}/other")), m.path(&format!("{chain}/renamed"))).unwrap();
    let new_chain = vec!["n"; DEPTH].join("/");
    std::fs::create_dir_all(m.path(&format!("{chain}/{new_chain}"))).unwrap();
    std::fs::write(m.path(&format!("{chain}/{new_chain}/f")), b"new deep").unwrap();
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    assert_eq!(std::fs::read(m.path(&format!("{chain}/leaf"))).unwrap(), b"deep leaf!");
    assert_eq!(names(&m.path(&chain)), ["leaf", "n", "renamed"]);
    assert_eq!(
        std::fs::read(m.path(&format!("{chain}/{new_chain}/f"))).unwrap(),
        b"new deep"
    );
    // Rename the top of the deep lower tree (materialises all 250 levels), then remove it.
    std::fs::rename(m.path("d"), m.path("moved")).unwrap();
    assert_eq!(
        std::fs::read(m.path(&format!("moved/{}/leaf", vec!["d"; DEPTH - 1].join("/")))).unwrap(),
        b"deep leaf!"
    );
    std::fs::remove_dir_all(m.path("moved")).unwrap();
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    assert!(names(&m.mnt).is_empty());
    drop(m);
    assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new());
    assert_eq!(l.snapshot_lowers(), before);
}

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

/// Names with newlines, tabs and invalid UTF-8 (0xff), from the lowers and through the view:
/// list, stat, read, rename, delete (whiteout), remount.
#[test]
fn hostile_names_with_newlines_and_invalid_utf8() {
    let l = Layers::new(2);
    let weird: Vec<OsString> = vec![
        os(b"new\nline"),
        os(b"bad\xff\xfe"),
        os(b"\xff"),
        os(b"tab\tand space "),
        os(b"\n"),
    ];
    for (i, n) in weird.iter().enumerate() {
        let dir = l.lower(i % 2, "w");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(n), n.as_bytes()).unwrap();
    }
    std::fs::create_dir_all(l.lower(1, "w").join(os(b"dir\n\xff"))).unwrap();
    std::fs::write(l.lower(1, "w").join(os(b"dir\n\xff")).join(os(b"in\xff")), b"in").unwrap();
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    let w = m.path("w");
    let list = |w: &Path| -> Vec<OsString> {
        let mut v: Vec<OsString> = std::fs::read_dir(w).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let mut want: Vec<OsString> = weird.clone();
    want.push(os(b"dir\n\xff"));
    want.sort();
    assert_eq!(list(&w), want);
    for n in &weird {
        assert_eq!(std::fs::read(w.join(n)).unwrap(), n.as_bytes(), "{n:?}");
    }
    // Through the view: create, rename, delete (whiteouts for lower names).
    std::fs::write(w.join(os(b"made\nhere\xff")), b"made").unwrap();
    std::fs::rename(w.join(os(b"new\nline")), w.join(os(b"renamed\n\xff"))).unwrap();
    std::fs::remove_file(w.join(os(b"\xff"))).unwrap();
    std::fs::rename(w.join(os(b"dir\n\xff")), w.join(os(b"dir2\xff"))).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(w.join(os(b"bad\xff\xfe")))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    let check = |m: &Mount| {
        let w = m.path("w");
        let mut want = vec![
            os(b"bad\xff\xfe"),
            os(b"tab\tand space "),
            os(b"\n"),
            os(b"made\nhere\xff"),
            os(b"renamed\n\xff"),
            os(b"dir2\xff"),
        ];
        want.sort();
        assert_eq!(list(&w), want);
        for n in &want {
            lstat(&w.join(n));
        }
        assert_eq!(std::fs::read(w.join(os(b"renamed\n\xff"))).unwrap(), b"new\nline");
        assert_eq!(std::fs::read(w.join(os(b"bad\xff\xfe"))).unwrap(), b"bad\xff\xfe+");
        assert_eq!(
            std::fs::read(w.join(os(b"dir2\xff")).join(os(b"in\xff"))).unwrap(),
            b"in"
        );
        assert!(gone(&w.join(os(b"\xff"))) && gone(&w.join(os(b"new\nline"))));
    };
    check(&m);
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    check(&m);
    let m = remount(&l, m, &["--whiteouts=oci"]);
    check(&m);
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

/// A 100,000-entry lower directory: the listing has every name exactly once, lookups work, and a
/// change in it survives a remount.
#[test]
fn hostile_hundred_thousand_entry_lower_directory() {
    const N: usize = 100_000;
    let l = Layers::new(1);
    let dir = l.lower(0, "big");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..N {
        std::fs::File::create(dir.join(format!("entry-{i:06}"))).unwrap();
    }
    std::fs::write(dir.join("entry-000007"), b"seven").unwrap();
    let t0 = Instant::now();
    let m = l.mount(&[]);
    let count = |m: &Mount| {
        let mut seen = std::collections::HashSet::with_capacity(N);
        for e in std::fs::read_dir(m.path("big")).unwrap() {
            let n = e.unwrap().file_name();
            assert!(seen.insert(n.clone()), "{n:?} listed twice");
        }
        seen
    };
    let seen = count(&m);
    assert_eq!(seen.len(), N);
    for i in (0..N).step_by(997) {
        assert!(lstat(&m.path(&format!("big/entry-{i:06}"))).is_file());
    }
    assert_eq!(std::fs::read(m.path("big/entry-000007")).unwrap(), b"seven");
    assert!(gone(&m.path("big/entry-100000")));
    std::fs::remove_file(m.path("big/entry-000001")).unwrap();
    std::fs::write(m.path("big/extra"), b"x").unwrap();
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    let seen = count(&m);
    assert_eq!(seen.len(), N);
    assert!(seen.contains(OsStr::new("extra")) && !seen.contains(OsStr::new("entry-000001")));
    assert_healthy(&m);
    drop(m);
    eprintln!("100k directory: {:?} through the mount", t0.elapsed());
}

/// Character and block device nodes in a lower: visible with their numbers, usable (a null-like
/// char device), copied up as themselves by chmod.
#[test]
fn hostile_device_nodes_in_a_lower() {
    let l = Layers::new(1);
    let null_dev = rustix::fs::makedev(1, 3);
    let loop_dev = rustix::fs::makedev(7, 200);
    mknod(
        &l.lower(0, "null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        null_dev,
    );
    mknod(&l.lower(0, "blk"), rustix::fs::FileType::BlockDevice, 0o600, loop_dev);
    l.mkdir(0, "sub");
    mknod(
        &l.lower(0, "sub/chr"),
        rustix::fs::FileType::CharacterDevice,
        0o640,
        rustix::fs::makedev(4, 64),
    );
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    let md = lstat(&m.path("null"));
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), null_dev);
    let md = lstat(&m.path("blk"));
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), loop_dev);
    // Usable as the device (the mount has `dev` as root).
    assert_eq!(std::fs::read(m.path("null")).unwrap(), b"");
    std::fs::write(m.path("null"), b"discarded").unwrap();
    // Copy-up by chmod.
    for (n, dev) in [("null", null_dev), ("blk", loop_dev)] {
        std::fs::set_permissions(m.path(n), std::fs::Permissions::from_mode(0o604)).unwrap();
        let up = lstat(&l.up(n));
        assert_eq!(up.rdev(), dev, "{n}: copied up with another device number");
        assert_eq!(up.mode() & 0o7777, 0o604);
    }
    assert!(lstat(&l.up("blk")).file_type().is_block_device());
    assert!(lstat(&l.up("null")).file_type().is_char_device());
    std::fs::rename(m.path("sub/chr"), m.path("chr2")).unwrap();
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    let md = lstat(&m.path("chr2"));
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), rustix::fs::makedev(4, 64));
    assert_eq!(lstat(&m.path("blk")).mode() & 0o7777, 0o604);
    assert!(names(&m.path("sub")).is_empty());
    drop(m);
    assert_eq!(l.snapshot_lowers(), before);
}

/// Whiteout and opaque markers in odd places: `.wh..wh..opq` at a layer root, a `.wh.` file whose
/// target exists nowhere, a char 0/0 whiteout hiding nothing in the top lower, an opaque xattr on
/// a regular file, a nested `.wh..wh..opq` inside an opaque directory.
#[test]
fn hostile_markers_in_odd_places() {
    let l = Layers::new(3);
    // Root of lower1 is opaque (OCI marker): lower2's root entries are hidden.
    std::fs::write(l.lower(1, ".wh..wh..opq"), b"").unwrap();
    l.put(1, "from1", b"1");
    l.put(2, "from2", b"2");
    l.put(2, "o/x", b"hidden by opaque o");
    l.put(2, "o/sub/y", b"hidden by opaque o");
    // .wh. file whose target exists nowhere; char 0/0 whiteout hiding nothing in the top lower.
    std::fs::write(l.lower(0, ".wh.ghost"), b"").unwrap();
    mknod_whiteout(&l.lower(0, "nothing"));
    // Opaque xattr on a regular file.
    l.put(0, "plainfile", b"plain");
    xset(&l.lower(0, "plainfile"), "trusted.overlay.opaque", b"y").unwrap();
    // Opaque dir with a nested opaque marker; lower1 has entries under both.
    l.put(0, "o/mine", b"mine");
    l.put(0, "o/sub/mine2", b"mine2");
    xset(&l.lower(0, "o"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(l.lower(0, "o/sub/.wh..wh..opq"), b"").unwrap();
    l.put(1, "o/hidden1", b"hidden");
    l.put(1, "o/sub/hidden2", b"hidden");
    let before = l.snapshot_lowers();
    let m = l.mount(&[]);
    let check = |m: &Mount| {
        assert_eq!(names(&m.mnt), ["from1", "o", "plainfile"], "root view");
        assert!(gone(&m.path("from2")), "lower2 visible through an opaque lower1 root");
        assert!(gone(&m.path("ghost")) && gone(&m.path("nothing")) && gone(&m.path(".wh.ghost")));
        assert!(gone(&m.path(".wh..wh..opq")));
        assert_eq!(std::fs::read(m.path("plainfile")).unwrap(), b"plain");
        assert!(
            !xlist(&m.path("plainfile")).iter().any(|x| x.contains("overlay")),
            "private xattr visible"
        );
        assert_eq!(names(&m.path("o")), ["mine", "sub"]);
        assert_eq!(names(&m.path("o/sub")), ["mine2"]);
    };
    check(&m);
    // Create over the ghost names, use the odd file, copy up in the opaque dirs.
    std::fs::write(m.path("ghost"), b"g").unwrap();
    std::fs::write(m.path("nothing"), b"n").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("plainfile"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    std::fs::write(m.path("o/sub/new"), b"new").unwrap();
    std::fs::remove_file(m.path("o/sub/mine2")).unwrap();
    assert_eq!(names(&m.path("o/sub")), ["new"]);
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.mnt), ["from1", "ghost", "nothing", "o", "plainfile"]);
    assert_eq!(std::fs::read(m.path("ghost")).unwrap(), b"g");
    assert_eq!(std::fs::read(m.path("nothing")).unwrap(), b"n");
    assert_eq!(std::fs::read(m.path("plainfile")).unwrap(), b"plain+");
    assert_eq!(names(&m.path("o/sub")), ["new"]);
    assert_eq!(names(&m.path("o")), ["mine", "sub"]);
    std::fs::remove_file(m.path("ghost")).unwrap();
    std::fs::remove_dir_all(m.path("o")).unwrap();
    assert_healthy(&m);
    let m = remount(&l, m, &[]);
    assert_eq!(names(&m.mnt), ["from1", "nothing", "plainfile"]);
    drop(m);
    assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new());
    assert_eq!(l.snapshot_lowers(), before);
}
