//! `O_DIRECT` through a real mount: reads of lower files (read-only opens, so nothing is copied
//! up), reads and writes of upper files, writes that copy a lower file up, and a copy-up while a
//! direct descriptor is open; with FUSE passthrough (as root) and without it (the data path of
//! every rootless mount). Every byte is compared with what was written.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;

use common::*;
use rustix::fs::{Mode, OFlags};

/// The two data paths: passthrough of upper files (root default) and the daemon for everything.
const MODES: [&[&str]; 2] = [&[], &["--no-passthrough"]];

fn open_direct(p: &Path, flags: OFlags) -> OwnedFd {
    rustix::fs::open(p, flags | OFlags::DIRECT | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", p.display()))
}

/// Reads `len` bytes at `off` through an aligned buffer; returns what the reads gave, up to EOF.
fn pread_direct(fd: &OwnedFd, off: u64, len: usize) -> Vec<u8> {
    let mut buf = AlignedBuf::new(len);
    let mut done = 0;
    while done < len {
        let n = rustix::io::pread(fd, &mut buf.as_mut()[done..], off + done as u64)
            .unwrap_or_else(|e| panic!("O_DIRECT pread of {len} bytes at {off}: {e}"));
        if n == 0 {
            break;
        }
        done += n;
        // A direct read past the last full block ends short: the next read starts unaligned.
        if done % 512 != 0 {
            break;
        }
    }
    buf.as_ref()[..done].to_vec()
}

fn pwrite_direct(fd: &OwnedFd, off: u64, data: &[u8]) {
    let buf = AlignedBuf::from_slice(data);
    let n = rustix::io::pwrite(fd, buf.as_ref(), off)
        .unwrap_or_else(|e| panic!("O_DIRECT pwrite of {} bytes at {off}: {e}", data.len()));
    assert_eq!(n, data.len(), "short O_DIRECT write at {off}");
}

fn expect_range(data: &[u8], off: u64, len: usize) -> &[u8] {
    let s = (off as usize).min(data.len());
    &data[s..(s + len).min(data.len())]
}

/// Sizes and offsets from one sector to several FUSE requests (the kernel splits at 1 MiB).
const SIZES: [usize; 6] = [512, 4096, 65536, 1 << 20, (3 << 20) + 512, 4 << 20];
const OFFSETS: [u64; 5] = [0, 512, 4096 * 3, (1 << 20) - 512, (4 << 20) - 4096];

#[test]
fn direct_reads_of_a_lower_file_return_its_bytes() {
    for mode in MODES {
        let l = Layers::new(1);
        let data = Rng::new(1).bytes((4 << 20) + 1234);
        l.put(0, "db/image.raw", &data);
        let before = l.snapshot_lowers();
        let m = l.mount(mode);
        let fd = open_direct(&m.path("db/image.raw"), OFlags::RDONLY);
        for size in SIZES {
            for off in OFFSETS {
                let got = pread_direct(&fd, off, size);
                assert!(
                    got == expect_range(&data, off, size),
                    "{mode:?}: O_DIRECT read of {size} bytes at {off} returned {} bytes that differ from the lower file",
                    got.len()
                );
            }
        }
        // The tail: a read that starts in the last partial block ends at EOF, not before.
        let tail = pread_direct(&fd, 4 << 20, 4096);
        assert_eq!(tail, &data[4 << 20..], "{mode:?}: tail read");
        // Buffered and direct readers agree.
        assert!(
            std::fs::read(m.path("db/image.raw")).unwrap() == data,
            "{mode:?}: buffered read"
        );
        drop(fd);
        assert!(
            !exists_raw(&l.up("db")),
            "{mode:?}: a read-only open copied something up"
        );
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: lower changed");
    }
}

#[test]
fn direct_writes_and_reads_of_a_new_file_keep_every_byte() {
    for mode in MODES {
        let l = Layers::new(1);
        let m = l.mount(mode);
        let p = m.path("new.img");
        let fd = open_direct(&p, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL);
        let mut rng = Rng::new(2);
        let mut model = vec![0u8; 0];
        for _ in 0..40 {
            let size = 512 * (1 + rng.below(2048) as usize); // up to 1 MiB
            let off = 512 * rng.below(8192); // within 4 MiB
            let chunk = rng.bytes(size);
            pwrite_direct(&fd, off, &chunk);
            let end = off as usize + size;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&chunk);
            let back = pread_direct(&fd, off, size);
            assert!(back == chunk, "{mode:?}: O_DIRECT read-back at {off} differs");
        }
        let all = pread_direct(&fd, 0, model.len());
        assert!(all == model, "{mode:?}: O_DIRECT read of the whole file differs");
        drop(fd);
        assert!(std::fs::read(&p).unwrap() == model, "{mode:?}: buffered read differs");
        let m = remount(&l, m, mode);
        assert!(
            std::fs::read(m.path("new.img")).unwrap() == model,
            "{mode:?}: after remount"
        );
        assert!(std::fs::read(l.up("new.img")).unwrap() == model, "{mode:?}: upper file");
    }
}

#[test]
fn a_direct_write_open_of_a_lower_file_copies_it_up_and_writes_there() {
    for mode in MODES {
        let l = Layers::new(1);
        let data = Rng::new(3).bytes(2 << 20);
        l.put(0, "vm.img", &data);
        let before = l.snapshot_lowers();
        let m = l.mount(mode);
        let fd = open_direct(&m.path("vm.img"), OFlags::RDWR);
        let mut model = data.clone();
        let mut rng = Rng::new(4);
        for _ in 0..20 {
            let size = 4096 * (1 + rng.below(64) as usize);
            let off = 4096 * rng.below(600);
            let chunk = rng.bytes(size);
            pwrite_direct(&fd, off, &chunk);
            let end = off as usize + size;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&chunk);
        }
        assert!(pread_direct(&fd, 0, model.len()) == model, "{mode:?}: direct read-back");
        drop(fd);
        assert!(std::fs::read(l.up("vm.img")).unwrap() == model, "{mode:?}: upper copy");
        drop(m);
        assert_eq!(l.snapshot_lowers(), before, "{mode:?}: the lower file was written");
    }
}

#[test]
fn a_direct_reader_opened_before_a_copy_up_keeps_reading_the_lower_data() {
    for mode in MODES {
        let l = Layers::new(1);
        let old = Rng::new(5).bytes(1 << 20);
        let new = Rng::new(6).bytes(1 << 20);
        l.put(0, "data", &old);
        let m = l.mount(mode);
        let reader = open_direct(&m.path("data"), OFlags::RDONLY);
        assert!(pread_direct(&reader, 0, 1 << 20) == old, "{mode:?}: before the copy-up");
        // Copy-up through another descriptor, then rewrite everything.
        let writer = open_direct(&m.path("data"), OFlags::WRONLY);
        pwrite_direct(&writer, 0, &new);
        drop(writer);
        // As documented: a descriptor opened before the copy-up keeps the lower content.
        assert!(pread_direct(&reader, 0, 1 << 20) == old, "{mode:?}: old descriptor");
        let fresh = open_direct(&m.path("data"), OFlags::RDONLY);
        assert!(
            pread_direct(&fresh, 0, 1 << 20) == new,
            "{mode:?}: new direct descriptor"
        );
        drop(fresh);
        assert!(
            std::fs::read(m.path("data")).unwrap() == new,
            "{mode:?}: new buffered reader"
        );
        drop(reader);
        assert!(
            std::fs::read(l.lower(0, "data")).unwrap() == old,
            "{mode:?}: lower changed"
        );
    }
}

#[test]
fn direct_and_buffered_opens_of_one_file_stay_coherent() {
    for mode in MODES {
        let l = Layers::new(1);
        let m = l.mount(mode);
        let p = m.path("mixed");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        // Buffered content is in the page cache; a direct write must not be hidden by it.
        assert_eq!(std::fs::read(&p).unwrap()[4096], 1);
        let fd = open_direct(&p, OFlags::WRONLY);
        pwrite_direct(&fd, 4096, &[2u8; 4096]);
        drop(fd);
        let back = std::fs::read(&p).unwrap();
        assert_eq!(
            &back[4096..8192],
            &[2u8; 4096][..],
            "{mode:?}: buffered reader after a direct write"
        );
        assert_eq!(back[0], 1);
        assert_eq!(back[8192], 1);
    }
}
