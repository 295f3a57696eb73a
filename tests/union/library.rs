//! Deterministic tests of `unionfs::Union` as a library (no FUSE, no mount), driven the way the
//! kernel would drive it (see `unionfs_model::Driver`). Each checks one rule of
//! docs/semantics.md through the view, on disk in the upper, and again after a remount.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use unionfs::{Errno, Kind};
use unionfs_model::*;

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Whether whiteout devices can be made (root); strict mode fails instead of checking less.
fn is_root() -> bool {
    unionfs_testkit::require_root("whiteout devices (mknod of a char device 0/0)")
}

/// The inode number the view reports for `path`.
fn ino(d: &mut Driver, path: &str) -> u64 {
    let (ino, _) = d.walk(p(path)).unwrap_or_else(|e| panic!("lookup {path}: errno {e}"));
    d.end_op();
    ino
}

fn read(d: &mut Driver, path: &str) -> Vec<u8> {
    let data = d
        .read_file(p(path))
        .unwrap_or_else(|e| panic!("read {path}: errno {e}"));
    d.end_op();
    data
}

fn exists(d: &mut Driver, path: &str) -> bool {
    let r = d.walk(p(path));
    d.end_op();
    match r {
        Ok(_) => true,
        Err(libc::ENOENT) => false,
        Err(e) => panic!("lookup {path}: errno {e}"),
    }
}

/// Names a directory lists, without `.` and `..`.
fn list(d: &mut Driver, path: &str) -> Vec<String> {
    let (dir, _) = d.walk(p(path)).unwrap_or_else(|e| panic!("lookup {path}: errno {e}"));
    let fh = d.u().opendir(dir).expect("opendir");
    let entries = d.u().readdir(fh, 0).expect("readdir");
    d.u().release(fh);
    d.end_op();
    let mut names: Vec<String> = entries
        .iter()
        .skip(2)
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn opaque_xattr(dir: &Path) -> Option<Vec<u8>> {
    OPAQUE_XATTRS.iter().find_map(|x| get_xattr_path(dir, x))
}

#[test]
fn copy_up_keeps_ino() {
    let fx = Fixture::new(&[(layer(&[("d", dir()), ("d/f", file(b"lower"))]), Encoding::Oci)]);
    let mut d = fx.mount();
    let before = ino(&mut d, "d/f");
    assert_eq!(d.write_file(p("d/f"), 0, b"UPPER"), Ok(()));
    d.end_op();
    assert_eq!(ino(&mut d, "d/f"), before, "copy-up changed the inode number");
    assert_eq!(read(&mut d, "d/f"), b"UPPER");
    assert_eq!(fs::read(fx.upper.join("d/f")).expect("upper copy"), b"UPPER");
    assert_eq!(
        fs::read(fx.lowers[0].join("d/f")).expect("lower"),
        b"lower",
        "the lower changed"
    );
    d.remount();
    assert_eq!(ino(&mut d, "d/f"), before, "inode number changed across remount");
    assert_eq!(read(&mut d, "d/f"), b"UPPER");
}

#[test]
fn unlink_of_lower_file_leaves_whiteout() {
    let fx = Fixture::new(&[(layer(&[("a", file(b"x")), ("b", file(b"y"))]), Encoding::Oci)]);
    let mut d = fx.mount();
    assert_eq!(d.unlink(p("a")), Ok(()));
    d.end_op();
    assert!(!exists(&mut d, "a"));
    let md = fs::symlink_metadata(fx.upper.join("a"));
    if is_root() {
        // docs/semantics.md: overlay style writes a char device 0/0 (mknod works for root).
        let md = md.expect("whiteout in the upper");
        assert!(
            md.file_type().is_char_device() && md.rdev() == 0,
            "not a 0/0 char device: {md:?}"
        );
    } else {
        // mknod may be refused: then the OCI form.
        let oci = fs::symlink_metadata(fx.upper.join(".wh.a"));
        assert!(
            md.is_ok() || oci.is_ok_and(|m| m.len() == 0),
            "no whiteout for a in the upper"
        );
    }
    d.remount();
    assert!(!exists(&mut d, "a"), "a came back after remount");
    assert_eq!(list(&mut d, ""), ["b"]);
}

/// docs/semantics.md: a directory created where a lower has that name is opaque, including at the root,
/// so the lower's old children stay hidden after a remount.
#[test]
fn mkdir_over_deleted_lower_dir_is_opaque() {
    for parent in ["", "top/"] {
        let l = layer(&[
            ("top", dir()),
            ("top/d", dir()),
            ("top/d/x", file(b"old")),
            ("d", dir()),
            ("d/x", file(b"old")),
        ]);
        let fx = Fixture::new(&[(l, Encoding::Oci)]);
        let mut d = fx.mount();
        let dir_path = format!("{parent}d");
        let child = format!("{parent}d/x");
        assert_eq!(d.rmdir(p(&dir_path)), Err(libc::ENOTEMPTY));
        d.end_op();
        assert_eq!(d.unlink(p(&child)), Ok(()));
        d.end_op();
        assert_eq!(d.rmdir(p(&dir_path)), Ok(()));
        d.end_op();
        assert_eq!(d.mkdir(p(&dir_path), 0o755), Ok(()));
        d.end_op();
        assert_eq!(
            opaque_xattr(&fx.upper.join(&dir_path)).as_deref(),
            Some(&b"y"[..]),
            "{dir_path} not opaque"
        );
        assert!(list(&mut d, &dir_path).is_empty());
        d.remount();
        assert!(list(&mut d, &dir_path).is_empty(), "{child} is back after remount");
        assert!(!exists(&mut d, &child));
    }
}

/// docs/semantics.md: every directory can be renamed (no EXDEV), as if `mv` copied the tree.
#[test]
fn rename_of_merged_lower_dir_survives_remount() {
    let top = layer(&[("d", dir()), ("d/a", file(b"a0")), ("d/.wh.gone", file(b""))]);
    let bottom = layer(&[
        ("d", dir()),
        ("d/b", file(b"b1")),
        ("d/gone", file(b"hidden")),
        ("d/sub", dir()),
        ("d/sub/c", symlink("../a")),
    ]);
    let fx = Fixture::new(&[(top, Encoding::Oci), (bottom, Encoding::Oci)]);
    let mut d = fx.mount();
    let sub_ino = ino(&mut d, "d/sub");
    assert_eq!(d.rename(p("d"), p("e"), 0), Ok(()));
    d.end_op();
    let check = |d: &mut Driver| {
        assert!(!exists(d, "d"), "the old name is visible");
        assert_eq!(list(d, "e"), ["a", "b", "sub"]);
        assert_eq!(list(d, "e/sub"), ["c"]);
        assert_eq!(read(d, "e/a"), b"a0");
        assert_eq!(read(d, "e/b"), b"b1");
        let (link, kind) = d.walk(p("e/sub/c")).expect("e/sub/c");
        assert_eq!(kind, Kind::Symlink);
        assert_eq!(d.u().readlink(link).expect("readlink"), b"../a");
        d.end_op();
        assert_eq!(ino(d, "e/sub"), sub_ino, "the moved directory changed inode number");
    };
    check(&mut d);
    d.remount();
    check(&mut d);
    // The old name is free, and nothing of the lowers shows through a new directory there.
    assert_eq!(d.mkdir(p("d"), 0o755), Ok(()));
    d.end_op();
    assert!(list(&mut d, "d").is_empty());
    d.remount();
    assert!(list(&mut d, "d").is_empty());
}

/// docs/semantics.md: a name starting with `.wh.` would read as a whiteout after a remount.
#[test]
fn whiteout_names_are_refused() {
    let fx = Fixture::new(&[(layer(&[("f", file(b"x"))]), Encoding::Oci)]);
    let mut d = fx.mount();
    let name = p(".wh.foo");
    assert_eq!(d.create_file(name, 0o644, b""), Err(libc::EINVAL));
    d.end_op();
    assert_eq!(d.mkdir(name, 0o755), Err(libc::EINVAL));
    d.end_op();
    assert_eq!(d.symlink(name, b"f"), Err(libc::EINVAL));
    d.end_op();
    assert_eq!(d.link(p("f"), name), Err(libc::EINVAL));
    d.end_op();
    assert_eq!(d.rename(p("f"), name, 0), Err(libc::EINVAL));
    d.end_op();
    assert_eq!(d.rename(p("f"), p(".wh..wh..opq"), 0), Err(libc::EINVAL));
    d.end_op();
    assert!(!fx.upper.join(".wh.foo").exists());
    assert_eq!(list(&mut d, ""), ["f"]);
}

/// docs/semantics.md: a 100 MiB sparse file with 1 MiB of data takes 1 MiB in the upper after copy-up.
#[test]
fn sparse_lower_file_stays_sparse_on_copy_up() {
    const MIB: u64 = 1 << 20;
    let fx = Fixture::new(&[(layer(&[]), Encoding::Oci)]);
    let big = fx.lowers[0].join("big");
    let data: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    {
        let f = fs::File::create(&big).expect("create sparse file");
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 50 * MIB).expect("write data");
        f.set_len(100 * MIB).expect("extend");
    }
    assert!(allocated_bytes(&big) <= 2 * MIB, "this filesystem does not keep holes");
    let mut d = fx.mount();
    assert_eq!(d.write_file(p("big"), 0, b"!"), Ok(()));
    d.end_op();
    let up = fx.upper.join("big");
    assert_eq!(fs::metadata(&up).expect("copied up").len(), 100 * MIB);
    let used = allocated_bytes(&up);
    // The data, the one written block, and some slack for filesystem metadata.
    assert!(
        used <= MIB + 256 * 1024,
        "copy-up allocated {used} bytes for 1 MiB of data"
    );
    let (ino, _) = d.walk(p("big")).expect("lookup");
    let fh = d.u().open(ino, libc::O_RDONLY).expect("open");
    let mut buf = vec![0u8; MIB as usize];
    assert_eq!(d.u().read(fh, 50 * MIB, &mut buf), Ok(MIB as usize));
    assert!(buf == data, "data moved or changed in the copy");
    let mut head = [0u8; 4];
    assert_eq!(d.u().read(fh, 0, &mut head), Ok(4));
    assert_eq!(head, [b'!', 0, 0, 0]);
    d.u().release(fh);
}

/// docs/semantics.md: xattrs survive copy-up (minus private ones, which never show).
#[test]
fn xattrs_survive_copy_up() {
    let fx = Fixture::new(&[(layer(&[("d", dir()), ("d/f", file(b"x"))]), Encoding::Oci)]);
    for (path, name, value) in [
        ("d", "user.x", "dir"),
        ("d/f", "user.x", "one"),
        ("d/f", "user.y", "two"),
    ] {
        rustix::fs::lsetxattr(
            fx.lowers[0].join(path),
            name,
            value.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .expect("set lower xattr");
    }
    let mut d = fx.mount();
    // A chmod copies up the file and, first, its directory.
    assert_eq!(d.chmod(p("d/f"), 0o600), Ok(()));
    d.end_op();
    let check = |d: &mut Driver| {
        for (path, name, value) in [
            ("d", "user.x", "dir"),
            ("d/f", "user.x", "one"),
            ("d/f", "user.y", "two"),
        ] {
            let (ino, _) = d.walk(p(path)).expect("lookup");
            let v = d.u().getxattr(ino, OsStr::new(name));
            assert_eq!(v.as_deref(), Ok(value.as_bytes()), "{path} {name}");
            let names = d.u().listxattr(ino).expect("listxattr");
            assert!(
                names
                    .iter()
                    .all(|n| !n.to_string_lossy().contains("overlay.") && !n.to_string_lossy().contains("unionfs.")),
                "private xattrs listed: {names:?}"
            );
            d.end_op();
        }
    };
    check(&mut d);
    assert_eq!(
        get_xattr_path(&fx.upper.join("d/f"), "user.y").as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(
        get_xattr_path(&fx.upper.join("d"), "user.x").as_deref(),
        Some(&b"dir"[..])
    );
    d.remount();
    check(&mut d);
}

/// docs/semantics.md: a write through one name of a lower hard-linked file lands on the object; every name
/// shows it, shares one inode number, and stays linked after a remount.
#[test]
fn lower_hard_links_stay_one_object() {
    let l = layer(&[
        ("a", file(b"old")),
        ("sub", dir()),
        ("sub/b", Node::HardLink { to: "a".into() }),
    ]);
    let fx = Fixture::new(&[(l, Encoding::Oci)]);
    let mut d = fx.mount();
    let before = ino(&mut d, "a");
    assert_eq!(ino(&mut d, "sub/b"), before, "hard links differ in inode number");
    assert_eq!(d.write_file(p("sub/b"), 0, b"NEW"), Ok(()));
    d.end_op();
    let check = |d: &mut Driver| {
        assert_eq!(read(d, "a"), b"NEW");
        assert_eq!(read(d, "sub/b"), b"NEW");
        assert_eq!(ino(d, "a"), before);
        assert_eq!(ino(d, "sub/b"), before);
    };
    check(&mut d);
    d.remount();
    check(&mut d);
    let (a, b) = (
        fs::metadata(fx.upper.join("a")).expect("a"),
        fs::metadata(fx.upper.join("sub/b")).expect("b"),
    );
    assert_eq!(a.ino(), b.ino(), "the names are not one inode in the upper");
    // Both names, plus the hard-link index's entry for the copy (no name in the view).
    assert_eq!(a.nlink(), 3);
    let (ia, _) = d.walk(p("a")).expect("lookup a");
    assert_eq!(
        d.u().getattr(ia).map(|at| at.nlink),
        Ok(2),
        "the view counts its own names"
    );
    // And they keep diverging never: a second write through the other name.
    assert_eq!(d.write_file(p("a"), 3, b"!"), Ok(()));
    d.end_op();
    d.remount();
    assert_eq!(read(&mut d, "sub/b"), b"NEW!");
}

/// docs/semantics.md: `--lower` alone gives a read-only union: every change is EROFS, reading works.
#[test]
fn union_without_upper_is_read_only() {
    let fx = Fixture::new(&[(layer(&[("d", dir()), ("d/f", file(b"x"))]), Encoding::Oci)]);
    let before = fx.snapshot_lowers(Atimes::FilesAndDirs);
    let cfg = unionfs::MountConfig::new(fx.lowers.clone(), None);
    let mut d = Driver::new(&cfg);
    assert_eq!(read(&mut d, "d/f"), b"x");
    let erofs = Err(libc::EROFS);
    assert_eq!(d.create_file(p("d/g"), 0o644, b""), erofs);
    d.end_op();
    assert_eq!(d.mkdir(p("e"), 0o755), erofs);
    d.end_op();
    assert_eq!(d.write_file(p("d/f"), 0, b"y"), erofs);
    d.end_op();
    assert_eq!(d.truncate(p("d/f"), 0), erofs);
    d.end_op();
    assert_eq!(d.chmod(p("d/f"), 0o600), erofs);
    d.end_op();
    assert_eq!(d.set_xattr(p("d/f"), b"v"), erofs);
    d.end_op();
    assert_eq!(d.unlink(p("d/f")), erofs);
    d.end_op();
    assert_eq!(d.rmdir(p("d")), erofs);
    d.end_op();
    assert_eq!(d.rename(p("d"), p("e"), 0), erofs);
    d.end_op();
    assert_eq!(d.symlink(p("s"), b"d"), erofs);
    d.end_op();
    assert_eq!(d.link(p("d/f"), p("h")), erofs);
    d.end_op();
    assert_eq!(list(&mut d, "d"), ["f"]);
    drop(d);
    let diff = diff_snapshots(&before[0], &fx.snapshot_lowers(Atimes::FilesAndDirs)[0]);
    assert!(diff.is_empty(), "the lower changed:\n{}", diff.join("\n"));
}

/// docs/semantics.md: the workdir is emptied at mount (leftovers of a crash are never reused) and never
/// shows in the view.
#[test]
fn workdir_is_emptied_at_mount() {
    let fx = Fixture::new(&[(layer(&[("a", file(b"x"))]), Encoding::Oci)]);
    drop(fx.mount());
    let ours = fx.work.join("unionfs");
    fs::create_dir_all(ours.join("#7/deep")).expect("leftover dir");
    fs::write(ours.join("#8"), b"half a copy-up").expect("leftover file");
    let mut d = fx.mount();
    assert!(
        fx.workdir_leftovers().is_empty(),
        "leftovers survived the mount: {:?}",
        fx.workdir_leftovers()
    );
    assert_eq!(list(&mut d, ""), ["a"]);
}

/// The mtime the view reports for `path`.
fn mtime(d: &mut Driver, path: &str) -> std::time::SystemTime {
    let (ino, _) = d.walk(p(path)).unwrap_or_else(|e| panic!("lookup {path}: errno {e}"));
    let t = d.u().getattr(ino).expect("getattr").mtime;
    d.end_op();
    t
}

// ---- bugs found while writing these tests, since fixed (c27b473, d65b3f1): regressions -------

/// `Union::getxattr` must return the whole value (the FUSE adapter answers size queries from
/// it). It once returned nothing: rustix 1.x `getxattr` answers 0 for an empty buffer instead
/// of querying the size, so through the mount every xattr read back empty.
#[test]
fn getxattr_size_query_returns_size() {
    let fx = Fixture::new(&[(
        layer(&[(
            "f",
            Node::File {
                data: vec![],
                mode: 0o644,
                xattr: Some(b"12345".to_vec()),
            },
        )]),
        Encoding::Oci,
    )]);
    let mut d = fx.mount();
    let (ino, _) = d.walk(p("f")).expect("lookup");
    assert_eq!(
        d.u().getxattr(ino, OsStr::new("user.x")).map(|v| v.len()),
        Ok(5),
        "size of a 5-byte xattr"
    );
    assert_eq!(d.u().getxattr(ino, OsStr::new("user.nope")), Err(Errno::ENODATA));
}

/// docs/semantics.md: lowers are never modified, "not even their atime". Listing a lower directory
/// (`sys::read_dir`, used to build the merged index) opened it without `O_NOATIME`, so with
/// relatime the first listing moved the atime of every lower directory the view read.
#[test]
fn listing_leaves_lower_dir_atime_alone() {
    let fx = Fixture::new(&[(layer(&[("d", dir()), ("d/f", file(b"x"))]), Encoding::Oci)]);
    let before = fx.snapshot_lowers(Atimes::FilesAndDirs);
    let mut d = fx.mount();
    assert_eq!(list(&mut d, "d"), ["f"]);
    drop(d);
    let diff = diff_snapshots(&before[0], &fx.snapshot_lowers(Atimes::FilesAndDirs)[0]);
    assert!(diff.is_empty(), "listing changed the lower:\n{}", diff.join("\n"));
}

/// Copy-up copies the parent chain "with times" (docs/semantics.md, copy-up step 1), but publishing the
/// child into the fresh upper directory moved that directory's mtime to now: a chmod of
/// `d/e/f` changed the mtime the view reports for `d/e`. Overlayfs restores the parent's times
/// after copy-up (`ovl_set_timestamps`), so `ls -l` of the parent does not change.
#[test]
fn copy_up_keeps_parent_dir_mtime() {
    let fx = Fixture::new(&[(
        layer(&[("d", dir()), ("d/e", dir()), ("d/e/f", file(b"x"))]),
        Encoding::Oci,
    )]);
    let mut d = fx.mount();
    let (d_before, e_before) = (mtime(&mut d, "d"), mtime(&mut d, "d/e"));
    assert_eq!(d.chmod(p("d/e/f"), 0o600), Ok(()));
    d.end_op();
    assert_eq!(mtime(&mut d, "d/e"), e_before, "mtime of the parent changed");
    assert_eq!(mtime(&mut d, "d"), d_before, "mtime of the grandparent changed");
}

/// Copying up a lower file with two names links the other name into its (copied-up)
/// directory (`link_sibling`), which moved that directory's mtime although nothing in `b`
/// changed in the view.
#[test]
fn copy_up_of_hard_link_keeps_sibling_dir_mtime() {
    let l = layer(&[
        ("a", dir()),
        ("a/x", file(b"1")),
        ("b", dir()),
        ("b/y", Node::HardLink { to: "a/x".into() }),
    ]);
    let fx = Fixture::new(&[(l, Encoding::Oci)]);
    let mut d = fx.mount();
    let before = mtime(&mut d, "b");
    assert_eq!(d.chmod(p("a/x"), 0o600), Ok(()));
    d.end_op();
    assert_eq!(
        mtime(&mut d, "b"),
        before,
        "mtime of the other name's directory changed"
    );
}

/// Renaming a lower directory must look like `mv` (docs/semantics.md), which keeps the directory's mtime.
/// With OCI markers, `make_opaque` created `.wh..wh..opq` inside the copied-up directory
/// (and in either style removed whiteouts from it), so the moved directory showed a new mtime.
#[test]
fn rename_of_lower_dir_keeps_its_mtime() {
    let l = layer(&[("d", dir()), ("d/x", file(b"1"))]);
    let mut fx = Fixture::new(&[(l, Encoding::Oci)]);
    fx.style = unionfs::WhiteoutStyle::Oci;
    let mut d = Driver::new(&fx.config());
    let before = mtime(&mut d, "d");
    assert_eq!(d.rename(p("d"), p("e"), 0), Ok(()));
    d.end_op();
    assert_eq!(mtime(&mut d, "e"), before, "the moved directory has a new mtime");
}

// ---- hard links whose first name the kernel forgot ------------------------------------------------

/// A hard-linked file remembers the first name it was looked up by as its place and any later
/// ones as aliases (`NodeState::seen_as`, src/union/node.rs). Once the kernel has forgotten the
/// first name and its directory (dentry eviction: the child first, then the directory), the
/// object is still held through its other name, but copy-up looks for the forgotten directory
/// (`copy_up_with`: `self.node(parent)` → ESTALE) and so does `locate` (→ ENOENT), instead of
/// falling back to a live alias.
#[test]
fn hard_link_works_after_its_first_name_is_forgotten() {
    let l = layer(&[
        ("a", dir()),
        ("a/f", file(b"x")),
        ("c", dir()),
        ("c/f", Node::HardLink { to: "a/f".into() }),
    ]);
    let fx = Fixture::new(&[(l, Encoding::Oci)]);
    let d = fx.mount();
    let u = d.u();
    let a = u.lookup(unionfs::ROOT, OsStr::new("a")).expect("a").ino;
    let x = u.lookup(a, OsStr::new("f")).expect("a/f").ino;
    let c = u.lookup(unionfs::ROOT, OsStr::new("c")).expect("c").ino;
    assert_eq!(u.lookup(c, OsStr::new("f")).expect("c/f").ino, x);
    // The kernel evicts a/f, then a; c and c/f stay cached.
    u.forget(x, 1);
    u.forget(a, 1);
    let fh = u.open(x, libc::O_RDONLY);
    assert!(fh.is_ok(), "open for reading through c/f: {fh:?}");
    u.release(fh.unwrap_or_default());
    let set = unionfs::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(
        u.setattr(&d.ctx, x, &set, None).map(|a| a.perm),
        Ok(0o600),
        "chmod through c/f"
    );
}

/// Every listing started from the beginning hands out offsets of its own (the kernel's directory
/// cache must never take one listing's reply as the continuation of another), and any of them
/// resumes at the same name through any handle.
#[test]
fn two_listings_never_share_offsets_but_resume_each_other() {
    let names = ["a", "b", "c", "d", "e"];
    let entries: Vec<_> = names.iter().map(|n| (*n, file(n.as_bytes()))).collect();
    let fx = Fixture::new(&[(layer(&entries), Encoding::Oci)]);
    let mut d = fx.mount();
    let (dir, _) = d.walk(p("")).expect("root");
    let (h1, h2) = (
        d.u().opendir(dir).expect("opendir"),
        d.u().opendir(dir).expect("opendir"),
    );
    let first = d.u().readdir(h1, 0).expect("readdir");
    let second = d.u().readdir(h2, 0).expect("readdir");
    assert_eq!(first.len(), names.len() + 2);
    let offsets = |l: &[unionfs::DirEntry]| l.iter().map(|e| e.offset).collect::<Vec<_>>();
    let shared: Vec<_> = offsets(&first)
        .into_iter()
        .filter(|o| offsets(&second).contains(o))
        .collect();
    assert!(shared.is_empty(), "two listings handed out the same offsets {shared:?}");
    // Resuming from the first listing's fourth offset through the second handle gives the rest.
    let rest = d.u().readdir(h2, first[3].offset).expect("readdir");
    let got: Vec<_> = rest.iter().map(|e| e.name.clone()).collect();
    let want: Vec<_> = first[4..].iter().map(|e| e.name.clone()).collect();
    assert_eq!(got, want);
    d.u().release(h1);
    d.u().release(h2);
    d.end_op();
}

/// docs/semantics.md, "Directory renames": a directory moved by a redirect keeps the lower
/// directories it merged and its index, so listing it at its new name reads no layer directory
/// again; the upper holds the directory alone; a new union finds it all through the redirect.
#[test]
fn a_redirected_directory_keeps_its_layers_and_index_across_the_rename() {
    let l0 = layer(&[("a", dir()), ("a/x", file(b"x")), ("a/s", dir()), ("a/s/y", file(b"y"))]);
    let l1 = layer(&[("a", dir()), ("a/z", file(b"z"))]);
    let fx = Fixture::new(&[(l0, Encoding::Oci), (l1, Encoding::Oci)]);
    let mut d = fx.mount();
    // The node stays held (as the kernel holds a dentry) through the rename.
    let (a, _) = d.walk(p("a")).expect("lookup a");
    let count = |d: &Driver| {
        let fh = d.u().opendir(a).expect("opendir a");
        let n = d.u().readdir(fh, 0).expect("readdir").len();
        d.u().release(fh);
        n
    };
    assert_eq!(count(&d), 2 + 3, ". .. s x z");
    let moved = d
        .u()
        .rename(unionfs::ROOT, OsStr::new("a"), unionfs::ROOT, OsStr::new("b"), 0);
    assert_eq!(moved, Ok(()));
    // This thread's count: other tests of this process list directories meanwhile.
    let reads = unionfs::dir_reads_on_this_thread();
    assert_eq!(count(&d), 2 + 3, ". .. s x z");
    assert_eq!(
        unionfs::dir_reads_on_this_thread(),
        reads,
        "the moved directory read its layers again"
    );
    d.end_op();
    assert_eq!(list(&mut d, "b"), ["s", "x", "z"]);
    let upper: Vec<_> = fs::read_dir(fx.upper.join("b")).expect("upper b").collect();
    assert!(upper.is_empty(), "the tree was copied: {upper:?}");
    d.remount();
    assert_eq!(list(&mut d, "b"), ["s", "x", "z"]);
    assert_eq!(read(&mut d, "b/s/y"), b"y");
    assert!(!exists(&mut d, "a"));
}
