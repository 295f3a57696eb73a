//! A full upper: the upper and workdir live on an 8 MiB tmpfs mounted by the test. Writes and
//! copy-ups fail with ENOSPC; a failed copy-up leaves the lower version visible and nothing
//! half-written behind (no partial file at the final name in the upper, workdir scratch empty);
//! the daemon keeps serving, and small operations succeed again once space is freed.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::common::*;

const MIB: usize = 1 << 20;

/// Layers whose upper and workdir are on a fresh 8 MiB tmpfs. Drop order: mount, tmpfs, layers.
fn small_upper(n_lowers: usize) -> (Layers, TmpfsGuard) {
    let mut l = Layers::new(n_lowers);
    let small = l.dir.path().join("small");
    let t = TmpfsGuard::mount(&small, "8m");
    l.upper = small.join("upper");
    l.work = small.join("work");
    std::fs::create_dir(&l.upper).unwrap();
    std::fs::create_dir(&l.work).unwrap();
    (l, t)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// Writes through the view into `rel` until the upper is full; returns the errno seen.
fn fill(m: &Mount, rel: &str) -> i32 {
    let mut f = std::fs::File::create(m.path(rel)).expect("create filler");
    let chunk = vec![0x5au8; 256 * 1024];
    for _ in 0..1000 {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            return e.raw_os_error().unwrap_or(-1);
        }
    }
    panic!("wrote 250 MiB into an 8 MiB upper without an error");
}

/// Waits (up to 10 s) until the upper has 1 MiB free again after files were deleted through the
/// view: a file's last close reaches the daemon as an asynchronous RELEASE, and until the daemon
/// closes its own descriptor the deleted file keeps its blocks.
fn wait_for_space(l: &Layers) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = rustix::fs::statvfs(&l.upper).expect("statvfs upper");
        if st.f_bavail * st.f_bsize >= MIB as u64 || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn assert_serving(m: &Mount, what: &str) {
    assert!(daemon_alive(m), "{what}: daemon died");
    std::fs::write(m.path("small-ok"), b"still serving").unwrap_or_else(|e| panic!("{what}: small write: {e}"));
    assert_eq!(std::fs::read(m.path("small-ok")).unwrap(), b"still serving");
    std::fs::remove_file(m.path("small-ok")).unwrap();
}

/// Copy-up of a lower file larger than the whole upper fails with ENOSPC; the lower version stays
/// visible, nothing is left at the final name or in the workdir, and the daemon keeps serving.
#[test]
fn enospc_copy_up_of_too_big_file_leaves_lower_visible_and_nothing_behind() {
    let (l, _t) = small_upper(1);
    let big = pattern(12 * MIB, 1);
    l.put(0, "dir/big", &big);
    l.put(0, "dir/small", b"small lower file");
    let sc = Scenario::new(&l);
    // Every copy-up copies the data (a chmod copies metadata only otherwise: see below).
    let m = l.mount(&["--metacopy", "off"]);
    let r = std::fs::OpenOptions::new().append(true).open(m.path("dir/big"));
    assert_eq!(err_code(r), Some(libc::ENOSPC), "copy-up of 12 MiB into an 8 MiB upper");
    assert!(!exists_raw(&l.up("dir/big")), "partial copy-up left at the final name");
    assert!(
        workdir_leftovers(&l.work).is_empty(),
        "workdir: {:?}",
        workdir_leftovers(&l.work)
    );
    assert_eq!(
        std::fs::read(m.path("dir/big")).unwrap(),
        big,
        "lower version not visible"
    );
    // Also through truncate and chmod.
    let r = std::fs::OpenOptions::new().write(true).open(m.path("dir/big"));
    assert_eq!(err_code(r), Some(libc::ENOSPC));
    let r = std::fs::set_permissions(m.path("dir/big"), std::fs::Permissions::from_mode(0o600));
    assert_eq!(err_code(r), Some(libc::ENOSPC));
    assert_eq!(lstat(&m.path("dir/big")).mode() & 0o7777, 0o644);
    assert!(!exists_raw(&l.up("dir/big")));
    assert!(
        workdir_leftovers(&l.work).is_empty(),
        "workdir: {:?}",
        workdir_leftovers(&l.work)
    );
    assert_serving(&m, "after failed copy-up");
    // Small copy-ups still work.
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("dir/small"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    assert_eq!(std::fs::read(m.path("dir/small")).unwrap(), b"small lower file+");
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("dir/big")).unwrap(), big);
            assert_eq!(std::fs::read(root.join("dir/small")).unwrap(), b"small lower file+");
            assert!(workdir_leftovers(&l.work).is_empty());
        })
        .end();
}

/// Writes to a new file fail with ENOSPC once the upper is full; after deleting the filler the
/// daemon still serves and a copy-up that failed for lack of space now succeeds.
#[test]
fn enospc_writes_fail_then_space_freed_and_copy_up_succeeds() {
    let (l, _t) = small_upper(1);
    let mid = pattern(2 * MIB, 9);
    l.put(0, "mid", &mid);
    let sc = Scenario::new(&l);
    let m = l.mount(&["--metacopy", "off"]);
    assert_eq!(fill(&m, "filler"), libc::ENOSPC, "write to a full upper");
    assert!(daemon_alive(&m));
    // A 2 MiB copy-up cannot fit now.
    let r = std::fs::OpenOptions::new().append(true).open(m.path("mid"));
    assert_eq!(err_code(r), Some(libc::ENOSPC), "copy-up into a full upper");
    let r = std::fs::set_permissions(m.path("mid"), std::fs::Permissions::from_mode(0o640));
    assert_eq!(err_code(r), Some(libc::ENOSPC), "chmod copy-up into a full upper");
    assert!(!exists_raw(&l.up("mid")), "partial copy-up left at the final name");
    assert!(
        workdir_leftovers(&l.work).is_empty(),
        "workdir: {:?}",
        workdir_leftovers(&l.work)
    );
    assert_eq!(std::fs::read(m.path("mid")).unwrap(), mid);
    assert_eq!(lstat(&m.path("mid")).mode() & 0o7777, 0o644);
    // Free the space.
    std::fs::remove_file(m.path("filler")).unwrap();
    wait_for_space(&l);
    assert_serving(&m, "after freeing space");
    std::fs::set_permissions(m.path("mid"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("mid"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    let mut want = mid.clone();
    want.extend_from_slice(b"tail");
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("mid")).unwrap(), want);
            assert_eq!(lstat(&root.join("mid")).mode() & 0o7777, 0o640);
            assert!(!exists_raw(&root.join("filler")));
        })
        .end();
}

/// Renaming a lower directory tree bigger than the upper fails; the source stays complete, the
/// target does not appear, and nothing is left in the upper or the workdir.
#[test]
fn enospc_directory_rename_materialisation_fails_cleanly() {
    let (l, _t) = small_upper(1);
    for i in 0..12 {
        l.put(0, &format!("tree/sub{}/f{i}", i % 3), &pattern(MIB, i as u8));
    }
    let sc = Scenario::new(&l);
    // Materialised (the Podman form's default): by redirect the rename copies nothing.
    let m = l.mount(&["--redirect-dir", "follow"]);
    let want = Tree::read(&m.path("tree"));
    let r = std::fs::rename(m.path("tree"), m.path("moved"));
    assert_eq!(
        err_code(r),
        Some(libc::ENOSPC),
        "rename of a 12 MiB lower tree into an 8 MiB upper"
    );
    assert!(!exists_raw(&m.path("moved")), "target visible after a failed rename");
    assert_eq!(Tree::read(&m.path("tree")), want, "source damaged by a failed rename");
    assert!(!exists_raw(&l.up("moved")), "partial tree left in the upper");
    // Materialisation copies up object by object, each atomically: complete copies may stay
    // behind, but never a partial one.
    for (p, e) in Tree::read(&l.upper).entries {
        if let Entry::File { data, .. } = e {
            assert_eq!(
                data,
                std::fs::read(l.lowers[0].join(&p)).unwrap(),
                "partial copy at {}",
                p.display()
            );
        }
    }
    assert!(
        workdir_leftovers(&l.work).is_empty(),
        "workdir: {:?}",
        workdir_leftovers(&l.work)
    );
    assert!(daemon_alive(&m));
    let m = sc
        .ending(m)
        .view(|root| {
            assert_eq!(Tree::read(&root.join("tree")), want);
            assert!(!exists_raw(&root.join("moved")));
        })
        .remount();
    // The complete copies left behind may fill the upper; removing the tree frees them.
    std::fs::remove_dir_all(m.path("tree")).unwrap();
    assert_serving(&m, "after failed rename and rm -rf");
    sc.ending(m).view(|root| assert!(!exists_raw(&root.join("tree")))).end();
}

/// Creating files and directories in a full upper fails cleanly (ENOSPC or a short write), never
/// crashes the daemon; after freeing space, creates work and the view survives a remount.
#[test]
fn enospc_many_small_creates_and_mkdirs_then_recover() {
    let (l, _t) = small_upper(1);
    l.put(0, "lowerdir/keep", b"keep");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    assert_eq!(fill(&m, "filler"), libc::ENOSPC);
    let mut errors = 0;
    for i in 0..50 {
        // Inside a lower-only directory: needs a parent copy-up too.
        let r = std::fs::write(m.path(&format!("lowerdir/n{i}")), vec![b'x'; 64 * 1024]);
        if let Err(e) = r {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "create n{i}: {e}");
            errors += 1;
        }
    }
    assert!(errors > 0, "no ENOSPC while creating 3 MiB in a full upper");
    assert!(daemon_alive(&m));
    assert_eq!(std::fs::read(m.path("lowerdir/keep")).unwrap(), b"keep");
    std::fs::remove_file(m.path("filler")).unwrap();
    for i in 0..50 {
        let _ = std::fs::remove_file(m.path(&format!("lowerdir/n{i}")));
    }
    wait_for_space(&l);
    assert_serving(&m, "after freeing space");
    std::fs::create_dir(m.path("lowerdir/newdir")).unwrap();
    std::fs::write(m.path("lowerdir/newdir/f"), b"f").unwrap();
    assert!(workdir_leftovers(&l.work).is_empty());
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("lowerdir")), ["keep", "newdir"]);
            assert_eq!(std::fs::read(root.join("lowerdir/newdir/f")).unwrap(), b"f");
        })
        .end();
}

/// With metadata-only copy-up a chmod needs no room for the data; the data's copy, when a write
/// needs it, fails with ENOSPC and leaves the file as it was (its data still read from the lower,
/// the space the half copy took given back), and succeeds once there is room.
#[test]
fn enospc_a_chmod_fits_a_full_upper_and_a_failed_fill_changes_nothing() {
    let (l, _t) = small_upper(1);
    let big = pattern(4 * MIB, 3);
    l.put(0, "big", &big);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::set_permissions(m.path("big"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(fill(&m, "filler"), libc::ENOSPC, "write to a full upper");
    let r = std::fs::OpenOptions::new().append(true).open(m.path("big"));
    assert_eq!(err_code(r), Some(libc::ENOSPC), "the data's copy into a full upper");
    assert_eq!(std::fs::read(m.path("big")).unwrap(), big);
    assert_eq!(lstat(&m.path("big")).mode() & 0o7777, 0o600);
    assert!(lstat(&l.up("big")).blocks() < 64, "the failed fill kept its blocks");
    std::fs::remove_file(m.path("filler")).unwrap();
    wait_for_space(&l);
    assert_serving(&m, "after a failed fill");
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("big"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    let mut want = big.clone();
    want.extend_from_slice(b"tail");
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("big")).unwrap(), want);
            assert_eq!(lstat(&root.join("big")).mode() & 0o7777, 0o600);
        })
        .end();
}
