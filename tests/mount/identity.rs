//! docs/semantics.md, "Identity", through real mounts: `st_ino` unique, equal to `d_ino`,
//! unchanged by copy-up and by a directory rename, stable across remounts (also when the layers
//! span filesystems), never reused while a file is open; one `st_dev` for the whole mount.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use crate::common::*;

/// relative path -> st_ino of everything under `root` (root included as "."), checking on the
/// way that d_ino equals st_ino and that every object has the root's st_dev. (st_dev itself is
/// chosen by the kernel per FUSE mount, so it is only compared within one mount.)
fn walk_ids(root: &Path) -> BTreeMap<PathBuf, u64> {
    fn go(root: &Path, dir: &Path, dev: u64, out: &mut BTreeMap<PathBuf, u64>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = lstat(&p);
            assert_eq!(e.ino(), md.ino(), "d_ino != st_ino for {}", p.display());
            assert_eq!(md.dev(), dev, "st_dev of {} differs from the mount root's", p.display());
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), md.ino());
            if md.is_dir() {
                go(root, &p, dev, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let md = lstat(root);
    out.insert(PathBuf::from("."), md.ino());
    go(root, root, md.dev(), &mut out);
    out
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

pub(crate) fn ino(p: &Path) -> u64 {
    lstat(p).ino()
}

#[test]
fn st_ino_is_kept_by_copy_up_and_across_remounts() {
    let l = Layers::new(2);
    l.put(0, "f", b"f");
    l.put(1, "d/g", b"g");
    l.put(0, "d/h", b"h");
    symlink("f", l.lower(0, "s")).unwrap();
    mkfifo(&l.lower(1, "p"));
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::write(m.path("n"), b"new").unwrap();
    std::fs::create_dir(m.path("nd")).unwrap();
    let ids = walk_ids(&m.mnt);
    // Copy everything up.
    std::fs::set_permissions(m.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    xset(&m.path("d"), "user.x", b"1").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/g"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    std::os::unix::fs::lchown(m.path("s"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(m.path("p"), std::fs::Permissions::from_mode(0o600)).unwrap();
    for p in ["f", "d", "d/g", "s", "p"] {
        assert!(exists_raw(&l.up(p)), "{p} must be copied up");
    }
    assert_eq!(walk_ids(&m.mnt), ids, "copy-up changed inode numbers");
    let same_ids = |root: &Path| assert_eq!(walk_ids(root), ids, "inode numbers changed across a remount");
    let m = sc.ending(m).view(same_ids).remount();
    sc.ending(m).view(same_ids).end();
}

#[test]
fn st_ino_is_unique_and_st_dev_is_shared() {
    let l = Layers::new(3);
    for i in 0..3 {
        for j in 0..30 {
            l.put(i, &format!("l{i}/f{j}"), b"x");
            l.put(i, &format!("merged/l{i}_{j}"), b"x");
        }
        l.put(i, "shadowed", format!("{i}").as_bytes());
    }
    symlink("shadowed", l.lower(2, "link")).unwrap();
    mkfifo(&l.lower(1, "fifo"));
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    for j in 0..30 {
        std::fs::write(m.path(&format!("merged/up{j}")), b"u").unwrap();
    }
    let check = |root: &Path| {
        let ids = walk_ids(root);
        let inos: BTreeSet<u64> = ids.values().copied().collect();
        assert_eq!(inos.len(), ids.len(), "inode numbers are not unique");
        ids
    };
    let ids = check(&m.mnt);
    sc.ending(m).view(|root| assert_eq!(check(root), ids)).end();
}

#[test]
fn identity_when_layers_span_filesystems() {
    // lower1 on tmpfs, the rest on the tempdir's filesystem: raw inode numbers may collide.
    let l = Layers::new(1);
    let shm = tempfile::Builder::new()
        .prefix("unionfs-test-shm")
        .tempdir_in("/dev/shm")
        .unwrap();
    let shm_lower = shm.path().to_path_buf();
    for j in 0..50 {
        l.put(0, &format!("top{j}"), b"t");
        std::fs::create_dir_all(shm_lower.join("sub")).unwrap();
        std::fs::write(shm_lower.join(format!("bottom{j}")), b"b").unwrap();
        std::fs::write(shm_lower.join(format!("sub/s{j}")), b"s").unwrap();
    }
    std::fs::write(shm_lower.join("copied"), b"c").unwrap();
    std::fs::hard_link(shm_lower.join("copied"), shm_lower.join("sub/copied_link")).unwrap();
    let before = (l.snapshot_lowers(), Tree::read_raw(&shm_lower));
    let lowers = [l.lowers[0].clone(), shm_lower.clone()];
    let mount = || Mount::unionfs(&lowers, Some((&l.upper, &l.work)), &[], &l.mnt);
    let m = mount();
    let check = |m: &Mount| {
        let ids = walk_ids(&m.mnt);
        let mut seen: BTreeMap<u64, &PathBuf> = BTreeMap::new();
        for (p, i) in &ids {
            if let Some(other) = seen.insert(*i, p) {
                let links = [other.as_path(), p.as_path()];
                assert!(
                    links.contains(&Path::new("copied")) && links.contains(&Path::new("sub/copied_link")),
                    "{} and {} share inode {i}",
                    other.display(),
                    p.display()
                );
            }
        }
        ids
    };
    let ids = check(&m);
    assert_eq!(ino(&m.path("copied")), ino(&m.path("sub/copied_link")));
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("copied"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(check(&m), ids, "copy-up across filesystems changed inode numbers");
    assert_eq!(std::fs::read(m.path("sub/copied_link")).unwrap(), b"c+");
    assert_eq!(m.unmount(), Some(0));
    let m = mount();
    assert_eq!(check(&m), ids, "inode numbers changed across remount");
    assert_eq!(std::fs::read(m.path("sub/copied_link")).unwrap(), b"c+");
    drop(m);
    assert_eq!((l.snapshot_lowers(), Tree::read_raw(&shm_lower)), before);
}

#[test]
fn inode_numbers_survive_a_directory_rename() {
    let l = Layers::new(2);
    l.put(0, "d/x", b"x");
    l.put(1, "d/sub/y", b"y");
    l.put(0, "d/sub/z", b"z");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let ids: Vec<u64> = ["d", "d/x", "d/sub", "d/sub/y", "d/sub/z"]
        .iter()
        .map(|p| ino(&m.path(p)))
        .collect();
    std::fs::rename(m.path("d"), m.path("e")).unwrap();
    let paths = ["e", "e/x", "e/sub", "e/sub/y", "e/sub/z"];
    let now: Vec<u64> = paths.iter().map(|p| ino(&m.path(p))).collect();
    assert_eq!(now, ids, "rename changed inode numbers");
    sc.ending(m)
        .view(|root| {
            let now: Vec<u64> = paths.iter().map(|p| ino(&root.join(p))).collect();
            assert_eq!(now, ids, "inode numbers changed across remount after rename");
        })
        .end();
}

#[test]
fn an_open_deleted_file_keeps_its_identity_while_new_files_appear() {
    let l = Layers::new(1);
    l.put(0, "lowerfile", b"lower!");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::write(m.path("victim"), b"12345").unwrap();
    let held = std::fs::File::open(m.path("victim")).unwrap();
    let held_lower = std::fs::File::open(m.path("lowerfile")).unwrap();
    let vi = held.metadata().unwrap().ino();
    let li = held_lower.metadata().unwrap().ino();
    std::fs::remove_file(m.path("victim")).unwrap();
    std::fs::remove_file(m.path("lowerfile")).unwrap();
    for j in 0..100 {
        let p = m.path(&format!("new{j}"));
        std::fs::write(&p, vec![b'n'; j]).unwrap();
        let md = lstat(&p);
        assert!(
            md.ino() != vi && md.ino() != li,
            "new{j} reuses the inode number of an open file"
        );
        assert_eq!(md.len(), j as u64);
    }
    let md = held.metadata().unwrap();
    assert_eq!((md.ino(), md.len(), md.nlink()), (vi, 5, 0));
    assert_eq!(held_lower.metadata().unwrap().len(), 6);
    drop(held);
    drop(held_lower);
    sc.ending(m).view(|root| assert_eq!(names(root).len(), 100)).end();
}
