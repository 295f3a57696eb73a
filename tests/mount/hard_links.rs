//! docs/semantics.md, "Hard links", through real mounts: every name of a lower file is one
//! object (one inode number, one content) before and after copy-up and a remount; the hard-link
//! index belongs to one upper, in every life-cycle of an upper and its workdir a user has (a
//! fresh or emptied upper, a reused workdir, a moved or copied upper, a new lower object with
//! the old one's identity); `unionfs check` reports a foreign index and orphans, and the layer
//! tools see what a mount of a copied upper shows.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::common::{Layers, Mount, Tree, lower_arg};
use crate::identity::ino;
use crate::one_upper::unionfs;

#[test]
fn all_hard_links_share_one_inode_number() {
    let l = Layers::new(1);
    l.put(0, "a", b"A");
    l.mkdir(0, "d");
    std::fs::hard_link(l.lower(0, "a"), l.lower(0, "d/b")).unwrap();
    std::fs::hard_link(l.lower(0, "a"), l.lower(0, "c")).unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let i = ino(&m.path("a"));
    let check = |root: &Path, content: &[u8], names: &[&str]| {
        for n in names {
            assert_eq!(ino(&root.join(n)), i, "{n} has its own inode number");
            assert_eq!(lstat(&root.join(n)).nlink(), names.len() as u64, "nlink of {n}");
            assert_eq!(std::fs::read(root.join(n)).unwrap(), content, "{n}");
        }
    };
    check(&m.mnt, b"A", &["a", "d/b", "c"]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/b"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    check(&m.mnt, b"A+", &["a", "d/b", "c"]);
    std::fs::hard_link(m.path("c"), m.path("z")).unwrap();
    sc.ending(m)
        .view(|root| check(root, b"A+", &["a", "d/b", "c", "z"]))
        .upper(|up| {
            let inos: BTreeSet<u64> = ["a", "d/b", "c", "z"].iter().map(|n| ino(&up.join(n))).collect();
            assert_eq!(inos.len(), 1, "the upper names must be links of one inode");
        })
        .end();
}

pub(crate) const ORIGINAL: &[u8] = b"original\n";

pub(crate) const CHANGED: &[u8] = b"original\njob1 change\n";

/// A lower with `f` and `g` (two names of one file, as in a hard-link farm) and a third name
/// outside the layer, as image stores and CI caches make them.
pub(crate) fn farm() -> Layers {
    let l = Layers::new(1);
    l.put(0, "f", ORIGINAL);
    std::fs::hard_link(l.lower(0, "f"), l.lower(0, "g")).expect("ln f g");
    std::fs::hard_link(l.lower(0, "f"), l.dir.path().join("outside")).expect("ln outside the layer");
    l
}

/// Mounts `lowers` under `upper` with the workdir `work` at `mnt`.
pub(crate) fn mount_at(l: &Layers, upper: &Path, work: &Path, mnt: &Path) -> Mount {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    Mount::unionfs(&l.lowers, Some((upper, work)), &[], mnt)
}

/// Appends "job1 change" through `f` (copy-up of a file with three names).
pub(crate) fn job1(m: &Mount) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("f"))
        .expect("open f for append");
    f.write_all(b"job1 change\n").expect("append");
}

pub(crate) fn read(m: &Mount, rel: &str) -> Vec<u8> {
    std::fs::read(m.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub(crate) fn fresh_dir(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).expect("rm -rf");
    }
    std::fs::create_dir(p).expect("mkdir");
}

#[test]
fn a_fresh_upper_with_the_old_default_workdir_shows_only_the_lowers() {
    let l = farm();
    // The reproduction: the default workdir, `.unionfs-work.<upper>` beside the upper.
    let default_args = |l: &Layers| {
        let args: Vec<std::ffi::OsString> = vec![
            "mount".into(),
            "--foreground".into(),
            "--lower".into(),
            lower_arg(&l.lowers),
            "--upper".into(),
            l.upper.clone().into(),
            l.mnt.clone().into(),
        ];
        args
    };
    let m = Mount::start(&default_args(&l), &l.mnt);
    job1(&m);
    assert_eq!(read(&m, "g"), CHANGED, "both names show the change while mounted");
    assert_eq!(m.unmount(), Some(0));
    fresh_dir(&l.upper);
    let m = Mount::start(&default_args(&l), &l.mnt);
    assert_eq!(read(&m, "f"), ORIGINAL, "a fresh upper shows the old upper's write");
    assert_eq!(read(&m, "g"), ORIGINAL);
    assert_eq!(m.unmount(), Some(0));
    let work = l.dir.path().join(".unionfs-work.upper");
    assert_eq!(
        Tree::read_raw(&l.upper).entries.len(),
        0,
        "nothing was copied into the fresh upper"
    );
    assert!(work.join("unionfs-index").is_dir());
}

#[test]
fn an_upper_emptied_in_place_drops_the_index_entries_of_its_copies() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    // `rm -rf upper/*`: the upper's root (and its identity) stays, its files are gone.
    for e in std::fs::read_dir(&l.upper).expect("ls upper") {
        let p = e.expect("entry").path();
        std::fs::remove_file(&p).expect("rm");
    }
    let m = l.mount(&[]);
    assert_eq!(
        read(&m, "g"),
        ORIGINAL,
        "a name not in the upper shows a copy no upper name has"
    );
    assert_eq!(read(&m, "f"), ORIGINAL);
    assert_eq!(m.unmount(), Some(0));
}

/// Index entries whose copy has no name left in the upper (its names were deleted through
/// the view, or behind the union's back).
fn index_entries(l: &Layers) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(l.work.join("unionfs-index"))
        .expect("index dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "owner")
        .collect()
}

#[test]
fn a_copy_whose_upper_names_are_all_deleted_leaves_the_index_at_the_next_mount() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    std::fs::remove_file(m.path("f")).expect("rm f");
    // While mounted, `g` is still a name of the object that was written (as with kernel
    // overlayfs's index): looking it up links it to the copy in the upper.
    assert_eq!(read(&m, "g"), CHANGED);
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(index_entries(&l).len(), 1, "g holds the copy in the upper");
    let m = l.mount(&[]);
    assert_eq!(read(&m, "g"), CHANGED);
    std::fs::remove_file(m.path("g")).expect("rm g");
    assert_eq!(m.unmount(), Some(0));
    // No upper name is left: the next mount removes the entry before any lookup.
    let m = l.mount(&[]);
    assert!(index_entries(&l).is_empty(), "left: {:?}", index_entries(&l));
    assert!(!m.path("f").exists() && !m.path("g").exists());
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_workdir_reused_for_another_upper_never_shows_the_first_uppers_data() {
    let l = farm();
    let (u2, mnt2) = (l.dir.path().join("upper2"), l.dir.path().join("mnt2"));
    std::fs::create_dir(&u2).expect("mkdir upper2");
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    let m2 = mount_at(&l, &u2, &l.work, &mnt2);
    assert_eq!(read(&m2, "f"), ORIGINAL);
    assert_eq!(read(&m2, "g"), ORIGINAL);
    assert_eq!(m2.unmount(), Some(0));
    assert_eq!(Tree::read_raw(&u2).entries.len(), 0);
    // The first upper still has its own copy at the name it was written through.
    let m = l.mount(&[]);
    assert_eq!(read(&m, "f"), CHANGED);
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn an_upper_moved_keeps_its_index_and_a_copy_of_it_gets_its_own() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    // Moved (renamed): the same upper, so `g` (never looked up) still shows the change.
    let moved = l.dir.path().join("moved");
    std::fs::rename(&l.upper, &moved).expect("mv upper");
    let m = mount_at(&l, &moved, &l.work, &l.mnt);
    assert_eq!(read(&m, "f"), CHANGED);
    assert_eq!(m.unmount(), Some(0));
    // A copy made with its xattrs (cp -a carries the upper's id), mounted with the original's
    // workdir: the index holds links to the original's inodes and must not be used.
    let copy = l.dir.path().join("copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&moved)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success());
    let m = mount_at(&l, &copy, &l.work, &l.mnt);
    // The copy's index is made again from the copy's own files: g, never looked up, shows
    // the copy's copy of f, and writing through it changes the copy only.
    assert_eq!(read(&m, "g"), CHANGED);
    std::fs::write(m.path("g"), b"written through the copy\n").expect("write g");
    assert_eq!(read(&m, "f"), b"written through the copy\n");
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(std::fs::read(moved.join("f")).expect("original's f"), CHANGED);
    assert_eq!(
        std::fs::read(copy.join("f")).expect("copy's f"),
        b"written through the copy\n"
    );
    // The original with a fresh workdir: the same, from its own files.
    let m = mount_at(&l, &moved, &l.dir.path().join("fresh-work"), &l.mnt);
    assert_eq!(read(&m, "g"), CHANGED);
    assert_eq!(read(&m, "f"), CHANGED);
    assert_eq!(m.unmount(), Some(0));
}

/// A new image version unpacked where the old one was gets the freed inode numbers back (ext4
/// hands them out again at once), and reproducible images give files fixed mtimes: to the index
/// that is the same inode number, size and mtime for another file. Rewriting the lower file in
/// place is that situation made deterministic.
#[test]
fn a_lower_object_with_the_copied_ones_inode_number_size_and_mtime_shows_its_own_data() {
    let l = farm();
    let f = l.lower(0, "f");
    let before = std::fs::metadata(&f).expect("stat");
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    std::fs::write(&f, b"newfile!\n").expect("the new version");
    std::fs::File::options()
        .write(true)
        .open(&f)
        .and_then(|h| h.set_modified(before.modified().expect("mtime")))
        .expect("set mtime");
    let after = std::fs::metadata(&f).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.ino(), after.size(), after.mtime_nsec()),
        (before.ino(), before.size(), before.mtime_nsec())
    );
    let m = l.mount(&[]);
    assert_eq!(read(&m, "g"), b"newfile!\n", "g must not show the copy of another file");
    assert_eq!(read(&m, "f"), CHANGED, "f's own copy is in the upper");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn check_reports_a_foreign_index_and_orphans_and_repair_removes_them() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    let lowers = lower_arg(&l.lowers);
    let check = |upper: &Path, repair: bool| {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "check".as_ref(),
            "--lower".as_ref(),
            &lowers,
            "--upper".as_ref(),
            upper.as_os_str(),
            "--workdir".as_ref(),
            l.work.as_os_str(),
        ];
        if repair {
            a.push("--repair".as_ref());
        }
        unionfs(&a)
    };
    assert!(check(&l.upper, false).status.success(), "the upper's own index is fine");
    // The workdir with another upper: foreign.
    let u2 = l.dir.path().join("u2");
    std::fs::create_dir(&u2).expect("mkdir");
    let out = check(&u2, false);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("another upper"), "{report}");
    assert_eq!(check(&l.upper, false).status.code(), Some(0), "check changes nothing");
    // Its own upper, emptied in place: the entry is an orphan.
    std::fs::remove_file(l.up("f")).expect("rm upper f");
    let out = check(&l.upper, false);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("no name left in the upper"), "{report}");
    let out = check(&l.upper, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(check(&l.upper, false).status.success());
}

#[test]
fn the_layer_tools_see_what_a_mount_of_a_copied_upper_shows() {
    let l = farm();
    let m = l.mount(&[]);
    job1(&m);
    assert_eq!(m.unmount(), Some(0));
    let copy = l.dir.path().join("copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&l.upper)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success());
    let lowers = lower_arg(&l.lowers);
    // No workdir of its own yet: the tools read the index a mount would make from the copy.
    let out = unionfs(&[
        "diff".as_ref(),
        "--lower".as_ref(),
        &lowers,
        "--upper".as_ref(),
        copy.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "C /f\nC /g\n");
    let mnt = l.dir.path().join("mnt-copy");
    std::fs::create_dir(&mnt).expect("mkdir");
    let args: Vec<std::ffi::OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        lowers.clone(),
        "--upper".into(),
        copy.clone().into(),
        mnt.clone().into(),
    ];
    let m = Mount::start(&args, &mnt);
    assert_eq!(read(&m, "g"), CHANGED);
    assert_eq!(m.unmount(), Some(0));
}
