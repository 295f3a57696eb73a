//! docs/semantics.md, "Data": a write through a shared mapping moves the file's mtime and ctime,
//! as on kernel overlayfs over identical layers, in each of our data paths (write-through:
//! when the page is written back), also when the writer is another process that exits.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::as_user::*;
use crate::common::*;
use crate::reference::*;

/// mtime and ctime (ns) of `p`, asked for alone, as `stat -c '%y %z'` does (a statx that also
/// asks for the atime would refresh everything after a read).
fn mc_times(p: &Path) -> (i128, i128) {
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        p,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MTIME | StatxFlags::CTIME,
    )
    .expect("statx");
    let ns = |t: rustix::fs::StatxTimestamp| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    (ns(st.stx_mtime), ns(st.stx_ctime))
}

/// Writes a file through `mnt`, then through a shared mapping (fd closed first, no msync),
/// with `stat`s before that the kernel may cache. Returns whether mtime and ctime had moved
/// while the page was still mapped, and after it was unmapped.
fn mapped_write_times(mnt: &Path) -> (bool, bool) {
    let p = mnt.join("mapped");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // An old mtime set through the mount, then a fresh ctime to compare against.
    set_times(&p, 1_000_000_000, 1_000_000_000);
    let before = mc_times(&p);
    std::thread::sleep(Duration::from_millis(50));
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let len = 4096;
    // SAFETY: as in `crate::common::mmap_write_no_msync`; the fd is closed right after mapping (the mapping
    // keeps the file), the page is read and written inside the mapping only.
    let moved = unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        drop(f);
        std::hint::black_box(std::ptr::read_volatile(ptr as *const u8));
        std::ptr::copy_nonoverlapping(b"HELLO".as_ptr(), ptr as *mut u8, 5);
        let during = mc_times(&p);
        assert_eq!(libc::munmap(ptr, len), 0);
        during.0 > before.0 && during.1 > before.1
    };
    let after = mc_times(&p);
    assert_eq!(&std::fs::read(&p).unwrap()[..5], b"HELLO");
    (moved, after.0 > before.0 && after.1 > before.1)
}

#[test]
fn writes_through_a_shared_mapping_update_mtime_and_ctime() {
    let k = layers(|_| {});
    let kernel = {
        let _ko = kernel_overlay(&k, "");
        mapped_write_times(&k.mnt)
    };
    assert_eq!(kernel, (true, true), "kernel overlayfs: times move at the write fault");
    for (label, args) in MODES {
        let l = layers(|_| {});
        let m = l.mount(args);
        let (during, after) = mapped_write_times(&m.mnt);
        assert!(after, "{label}: mtime/ctime after the mapped write");
        if label != "write-through" {
            // With passthrough the backing file's times move at the fault, and we let no
            // attributes be cached; with the writeback cache the kernel keeps the times itself.
            assert!(during, "{label}: mtime/ctime while the page is mapped");
        }
        // Write-through, the kernel's FUSE layer learns of the write when it writes the page
        // back (at munmap): see the README.
    }
}

#[test]
fn mapped_write_by_another_process_that_exits() {
    // The issue's own sequence: a 4 KiB file, fsync, two seconds; another process maps it,
    // reads and writes the page through the mapping and exits without msync; stat (asked, and
    // cached, before) must show the new times. On kernel overlayfs over identical layers and on
    // every mode of ours, all mounted at once so that one wait serves them all.
    let user = user(USER_A);
    let k = layers(|_| {});
    let _ko = kernel_overlay(&k, "");
    let ours: Vec<(&str, Mount, Layers)> = MODES
        .iter()
        .map(|(label, args)| {
            let l = layers(|_| {});
            (*label, l.mount(args), l)
        })
        .collect();
    let mut files = vec![("kernel overlayfs", k.mnt.join("f"))];
    files.extend(ours.iter().map(|(label, m, _)| (*label, m.path("f"))));
    let before: Vec<(i128, i128)> = files
        .iter()
        .map(|(_, p)| {
            std::fs::write(p, [b'a'; 4096]).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o666)).unwrap();
            std::fs::File::open(p).unwrap().sync_all().unwrap();
            mc_times(p)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    for (_, p) in &files {
        act_ok(user, "mmap-write", p, Path::new(""));
    }
    for ((label, p), before) in files.iter().zip(&before) {
        let after = mc_times(p);
        // The times of the write (file times come from the coarse clock: a tick of slack).
        let recent = |t: i128| t > before.0.max(before.1) && t >= start - 20_000_000;
        assert!(
            recent(after.0) && recent(after.1),
            "{label}: mtime/ctime {before:?} -> {after:?}, the write began at {start}"
        );
        assert_eq!(&std::fs::read(p).unwrap()[..2], b"ma", "{label}: the mapped write");
    }
}
