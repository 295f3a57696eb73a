//! docs/semantics.md, "Bugs of other union filesystems that we must not have": one test per
//! bug, through a real mount.

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const MIB: u64 = 1 << 20;

/// Pitfall: deleted lower files reappear after remount when a directory is removed and recreated
/// at the mount root, or when an upper-only dir is renamed onto a deleted lower dir name.
#[test]
fn pitfall_deleted_lower_files_stay_deleted_after_recreate_or_rename_at_the_root() {
    let l = Layers::new(2);
    l.put(0, "etc/a", b"a");
    l.put(1, "etc/b", b"b");
    l.put(1, "etc/sub/c", b"c");
    l.put(0, "var/old", b"o");
    l.put(1, "var/cache/x", b"x");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_dir_all(m.path("etc")).unwrap();
    std::fs::create_dir(m.path("etc")).unwrap();
    std::fs::write(m.path("etc/new"), b"n").unwrap();
    std::fs::remove_dir_all(m.path("var")).unwrap();
    std::fs::create_dir(m.path("staging")).unwrap();
    std::fs::write(m.path("staging/fresh"), b"f").unwrap();
    std::fs::rename(m.path("staging"), m.path("var")).unwrap();
    let check = |root: &Path| {
        assert_eq!(names(root), ["etc", "var"]);
        assert_eq!(
            names(&root.join("etc")),
            ["new"],
            "deleted lower files reappeared in etc"
        );
        assert_eq!(
            names(&root.join("var")),
            ["fresh"],
            "deleted lower files reappeared in var"
        );
    };
    let m = sc.ending(m).view(check).remount();
    sc.ending(m)
        .view(check)
        .remount_with(&["--whiteouts=oci"])
        .after(|| {
            for d in ["etc", "var"] {
                assert_eq!(
                    xget(&l.up(d), "trusted.overlay.opaque").as_deref(),
                    Some(&b"y"[..]),
                    "{d} not opaque"
                );
            }
        })
        .end();
}

/// Pitfall: a write through one hard-link name copies up a different name; the names then
/// diverge after remount.
#[test]
fn pitfall_write_through_one_hard_link_name_reaches_every_name() {
    let l = Layers::new(1);
    l.put(0, "x/a", b"original");
    l.mkdir(0, "y");
    std::fs::hard_link(l.lower(0, "x/a"), l.lower(0, "y/b")).unwrap();
    std::fs::hard_link(l.lower(0, "x/a"), l.lower(0, "c")).unwrap();
    l.put(0, "t1", b"to be truncated");
    std::fs::hard_link(l.lower(0, "t1"), l.lower(0, "y/t2")).unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let check = |root: &Path, names: &[&str], content: &[u8]| {
        let ino = lstat(&root.join(names[0])).ino();
        for n in names {
            assert_eq!(std::fs::read(root.join(n)).unwrap(), content, "{n}");
            assert_eq!(lstat(&root.join(n)).ino(), ino, "{n}");
            assert_eq!(lstat(&root.join(n)).nlink(), names.len() as u64, "{n}");
        }
    };
    // Through the second name, in place (no truncation).
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("y/b"))
        .unwrap()
        .write_all_at(b"ORIG", 0)
        .unwrap();
    check(&m.mnt, &["x/a", "y/b", "c"], b"ORIGinal");
    // Through a name in another directory, truncating.
    std::fs::write(m.path("y/t2"), b"short").unwrap();
    check(&m.mnt, &["t1", "y/t2"], b"short");
    let m = sc
        .ending(m)
        .view(|root| {
            check(root, &["x/a", "y/b", "c"], b"ORIGinal");
            check(root, &["t1", "y/t2"], b"short");
        })
        .remount();
    // And again through the first name, now that everything is in the upper.
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("x/a"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    sc.ending(m)
        .view(|root| check(root, &["x/a", "y/b", "c"], b"ORIGinal!"))
        .after(|| {
            assert_eq!(
                lstat(&l.up("x/a")).ino(),
                lstat(&l.up("y/b")).ino(),
                "upper names diverged"
            );
            assert_eq!(
                lstat(&l.up("x/a")).ino(),
                lstat(&l.up("c")).ino(),
                "upper names diverged"
            );
        })
        .end();
}

/// Pitfall: sparse files filled out to their full size on copy-up; xattrs lost on copy-up.
#[test]
fn pitfall_copy_up_keeps_holes_and_xattrs() {
    let l = Layers::new(1);
    let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8 + 1).collect();
    {
        let f = std::fs::File::create(l.lower(0, "disk.img")).unwrap();
        f.set_len(64 * MIB).unwrap();
        for off in [0, 20 * MIB, 64 * MIB - chunk.len() as u64] {
            f.write_all_at(&chunk, off).unwrap();
        }
    }
    let long = vec![b'v'; 2000];
    xset(&l.lower(0, "disk.img"), "user.a", b"A").unwrap();
    xset(&l.lower(0, "disk.img"), "user.long", &long).unwrap();
    xset(&l.lower(0, "disk.img"), "trusted.t", b"T").unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("disk.img"))
        .unwrap()
        .write_all_at(b"W", 30 * MIB)
        .unwrap();
    let allocated = lstat(&l.up("disk.img")).blocks() * 512;
    assert!(
        allocated <= MIB,
        "copy-up filled holes: {allocated} bytes allocated for ~200 KiB of data"
    );
    assert_eq!(lstat(&l.up("disk.img")).len(), 64 * MIB);
    for (x, v) in [
        ("user.a", &b"A"[..]),
        ("user.long", &long[..]),
        ("trusted.t", &b"T"[..]),
    ] {
        assert!(
            xget(&l.up("disk.img"), x).as_deref() == Some(v),
            "{x} lost in the upper copy"
        );
    }
    let check = |root: &Path| {
        let f = std::fs::File::open(root.join("disk.img")).unwrap();
        let mut b = vec![0u8; chunk.len()];
        for off in [0, 20 * MIB, 64 * MIB - chunk.len() as u64] {
            f.read_exact_at(&mut b, off).unwrap();
            assert!(b == chunk, "data at {off} differs");
        }
        let mut one = [0u8; 1];
        f.read_exact_at(&mut one, 30 * MIB).unwrap();
        assert_eq!(&one, b"W");
        assert_eq!(xlist(&root.join("disk.img")), ["trusted.t", "user.a", "user.long"]);
        for (x, v) in [
            ("user.a", &b"A"[..]),
            ("user.long", &long[..]),
            ("trusted.t", &b"T"[..]),
        ] {
            assert!(
                xget(&root.join("disk.img"), x).as_deref() == Some(v),
                "{x} reads wrong through the view"
            );
        }
    };
    sc.ending(m).view(check).end();
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                break;
            }
            nb += n;
        }
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

/// Pitfall: copy-up done in place, so a crash leaves a truncated file at the final name.
/// The daemon is killed (SIGKILL) while the copy sits in the workdir; tried again (at most five
/// times) until a kill lands inside the copy-up, which must happen at least once.
#[test]
fn pitfall_a_crash_during_copy_up_never_leaves_a_partial_file() {
    let l = Layers::new(1);
    {
        let mut f = std::fs::File::create(l.lower(0, "d/big")).unwrap_or_else(|_| {
            std::fs::create_dir_all(l.lower(0, "d")).unwrap();
            std::fs::File::create(l.lower(0, "d/big")).unwrap()
        });
        let block: Vec<u8> = (0..MIB as usize).map(|i| (i % 251) as u8 + 1).collect();
        for i in 0..128u8 {
            let mut b = block.clone();
            b[0] = i;
            f.write_all(&b).unwrap();
        }
    }
    l.put(0, "d/small", b"small");
    let before = l.snapshot_lowers();
    let mut attempts = 0;
    while !kill_during_copy_up(&l) {
        attempts += 1;
        assert!(
            attempts < 5,
            "in {attempts} attempts no kill landed inside the copy-up (nothing left in the workdir's scratch directory)"
        );
        // The copy was published before the kill (if it started): start again from the lower.
        if exists_raw(&l.up("d/big")) {
            std::fs::remove_file(l.up("d/big")).unwrap();
        }
    }
    assert_eq!(l.snapshot_lowers(), before);
}

/// One attempt of [`pitfall_a_crash_during_copy_up_never_leaves_a_partial_file`]: an append
/// copies `d/big` up, the daemon is killed as soon as the copy shows in the workdir, and the
/// view after a remount is checked. Whether the kill landed inside the copy-up (the daemon died
/// with the copy still in the scratch directory).
fn kill_during_copy_up(l: &Layers) -> bool {
    let m = l.mount(&[]);
    let pid = m.pid().unwrap();
    let work = l.work.join("unionfs");
    let p = m.path("d/big");
    let writer = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .and_then(|mut f| f.write_all(b"appended"))
    });
    // Kill as soon as the file's copy shows in the workdir (a directory there is the copy-up of
    // the parent `d`, which comes first and is over at once).
    let copy_in_scratch = || {
        std::fs::read_dir(&work).is_ok_and(|r| {
            r.filter_map(Result::ok)
                .any(|e| e.file_type().is_ok_and(|t| t.is_file()))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !writer.is_finished() && !copy_in_scratch() {}
    // Only the daemon this test started.
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = writer.join().unwrap();
    drop(m);
    // The daemon is dead; the next mount empties the scratch directory.
    let landed = !names(&work).is_empty();
    eprintln!("killed with the copy in the workdir: {landed}");
    // At the final name in the upper: nothing, or a complete copy (with or without the append).
    if let Ok(md) = std::fs::symlink_metadata(l.up("d/big")) {
        assert!(
            md.len() == 128 * MIB || md.len() == 128 * MIB + 8,
            "partial copy at the final name: {} bytes",
            md.len()
        );
    }
    let m = l.mount(&[]);
    assert_eq!(
        names(&work),
        Vec::<String>::new(),
        "the workdir must be emptied at mount"
    );
    let len = lstat(&m.path("d/big")).len();
    if len == 128 * MIB {
        assert!(
            same_content(&m.path("d/big"), &l.lower(0, "d/big")),
            "content differs from the lower"
        );
    } else {
        assert_eq!(len, 128 * MIB + 8, "the view shows a partial file");
    }
    assert_eq!(std::fs::read(m.path("d/small")).unwrap(), b"small");
    let m = remount(l, m, &[]);
    assert!(lstat(&m.path("d/big")).len() >= 128 * MIB);
    drop(m);
    landed
}

/// Pitfall: files named `.wh.X` created through the view, then vanishing after remount (and
/// hiding `X`).
#[test]
fn pitfall_dot_wh_names_cannot_be_created_so_nothing_vanishes() {
    for style in [&[][..], &["--whiteouts=oci"][..]] {
        let l = Layers::new(1);
        l.put(0, "X", b"x");
        l.put(0, "d/Y", b"y");
        let sc = Scenario::new(&l);
        let m = l.mount(style);
        assert_eq!(err_code(std::fs::write(m.path(".wh.X"), b"")), Some(libc::EINVAL));
        assert_eq!(err_code(std::fs::write(m.path("d/.wh.Y"), b"")), Some(libc::EINVAL));
        assert_eq!(
            err_code(std::fs::write(m.path(".wh..wh..opq"), b"")),
            Some(libc::EINVAL)
        );
        assert_eq!(err_code(std::fs::create_dir(m.path("d/.wh.dir"))), Some(libc::EINVAL));
        std::fs::write(m.path("tmp"), b"t").unwrap();
        assert_eq!(
            err_code(std::fs::rename(m.path("tmp"), m.path(".wh.X"))),
            Some(libc::EINVAL)
        );
        let check = |root: &Path| {
            assert_eq!(names(root), ["X", "d", "tmp"], "{style:?}");
            assert_eq!(names(&root.join("d")), ["Y"]);
            assert_eq!(std::fs::read(root.join("X")).unwrap(), b"x");
        };
        sc.ending(m)
            .view(check)
            .remount_with(style)
            .named(format!("{style:?}"))
            .end();
    }
}

/// Pitfall: a directory renamed after being recreated over a deleted lower directory leaves the
/// lower one visible again at the old name.
#[test]
fn pitfall_renaming_a_recreated_directory_does_not_uncover_the_lower_one() {
    let l = Layers::new(2);
    l.put(0, "d/x", b"x");
    l.put(1, "d/y", b"y");
    l.put(0, "p/q/z", b"z");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    for (dir, to) in [("d", "e"), ("p/q", "p/r")] {
        std::fs::remove_dir_all(m.path(dir)).unwrap();
        std::fs::create_dir(m.path(dir)).unwrap();
        std::fs::write(m.path(&format!("{dir}/new")), b"n").unwrap();
        std::fs::rename(m.path(dir), m.path(to)).unwrap();
    }
    let check = |root: &Path| {
        assert!(gone(&root.join("d")), "the lower d is visible again");
        assert!(gone(&root.join("p/q")), "the lower p/q is visible again");
        assert_eq!(names(&root.join("e")), ["new"]);
        assert_eq!(names(&root.join("p/r")), ["new"]);
        assert_eq!(names(root), ["e", "p"]);
    };
    sc.ending(m)
        .view(check)
        .after(|| assert!(is_chr_whiteout(&l.up("d")) && is_chr_whiteout(&l.up("p/q"))))
        .end();
}

/// Pitfall: whole-tree write locks held during opendir/readdir, so one big `ls` stalls every
/// other operation. Small operations elsewhere in the tree must keep completing while `ls -l`
/// lists a big directory on a fresh mount (first listing builds the directory's index).
#[test]
fn pitfall_a_big_listing_does_not_stall_other_operations() {
    let l = Layers::new(2);
    l.mkdir(0, "big");
    l.mkdir(1, "big");
    for i in 0..15_000 {
        std::fs::write(l.lower(i % 2, &format!("big/entry{i:05}")), b"").unwrap();
    }
    l.put(0, "work/seed", b"s");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let done = Arc::new(AtomicBool::new(false));
    let big = m.path("big");
    let d2 = Arc::clone(&done);
    let lister = std::thread::spawn(move || {
        let t = Instant::now();
        let mut runs = 0;
        // Keep listing for a while (the first run also builds the index).
        while runs < 3 || t.elapsed() < Duration::from_secs(2) {
            let out = std::process::Command::new("ls").arg("-l").arg(&big).output().unwrap();
            assert!(out.status.success());
            assert!(out.stdout.iter().filter(|b| **b == b'\n').count() > 15_000);
            runs += 1;
        }
        d2.store(true, Ordering::SeqCst);
        t.elapsed()
    });
    let mut ops = 0u32;
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let t = Instant::now();
        let p = m.path(&format!("work/f{ops}"));
        std::fs::write(&p, b"data").unwrap();
        lstat(&p);
        std::fs::rename(&p, m.path("work/renamed")).unwrap();
        std::fs::remove_file(m.path("work/renamed")).unwrap();
        std::fs::read(m.path("work/seed")).unwrap();
        worst = worst.max(t.elapsed());
        ops += 1;
    }
    let listing = lister.join().unwrap();
    let during = start.elapsed();
    eprintln!("listing {listing:?}, {ops} rounds of small ops meanwhile, worst round {worst:?}");
    assert!(
        ops >= 20,
        "only {ops} small operations completed during {during:?} of listing"
    );
    assert!(
        worst < listing / 2 && worst < Duration::from_secs(2),
        "a small operation waited {worst:?} while listing took {listing:?}"
    );
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("work")), ["seed"]);
            assert_eq!(names(&root.join("big")).len(), 15_000);
        })
        .end();
}
