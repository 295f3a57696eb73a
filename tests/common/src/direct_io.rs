//! `O_DIRECT` scenarios run through a mounted union, whoever made the mount: the mount tests'
//! `data::direct_io` runs them on mounts made by root, `rootless` as a plain user on a mount made
//! through fusermount3. Every scenario compares every byte it reads with what it expects; the layer
//! contents it starts from and ends with are pure functions of fixed seeds, so the caller (which
//! may be another process) can prepare the lower layer and check the upper afterwards.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::{AlignedBuf, Rng};

/// Sizes and offsets from one sector to several FUSE requests (the kernel splits at 1 MiB).
pub const SIZES: [usize; 6] = [512, 4096, 65536, 1 << 20, (3 << 20) + 512, 4 << 20];
pub const OFFSETS: [u64; 5] = [0, 512, 4096 * 3, (1 << 20) - 512, (4 << 20) - 4096];

/// A lower file read with direct reads only: 4 MiB and a partial block.
pub fn image_data() -> Vec<u8> {
    Rng::new(1).bytes((4 << 20) + 1234)
}

/// A lower file opened for direct writing (copied up by the open).
pub fn vm_data() -> Vec<u8> {
    Rng::new(3).bytes(2 << 20)
}

/// A lower file read through a direct descriptor opened before a copy-up, and what the copy-up
/// writes over it.
pub fn before_copy_up_data() -> (Vec<u8>, Vec<u8>) {
    (Rng::new(5).bytes(1 << 20), Rng::new(6).bytes(1 << 20))
}

/// `(offset, bytes)` of the direct writes into a new file: up to 1 MiB each, 512-byte aligned,
/// within 4 MiB.
pub fn new_file_writes() -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng::new(2);
    (0..40)
        .map(|_| {
            let size = 512 * (1 + rng.below(2048) as usize);
            let off = 512 * rng.below(8192);
            (off, rng.bytes(size))
        })
        .collect()
}

/// `(offset, bytes)` of the direct writes into the copied-up [`vm_data`] file: 4 KiB aligned,
/// some past its end.
pub fn copy_up_writes() -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng::new(4);
    (0..20)
        .map(|_| {
            let size = 4096 * (1 + rng.below(64) as usize);
            let off = 4096 * rng.below(600);
            (off, rng.bytes(size))
        })
        .collect()
}

/// `base` with `writes` applied in order (a write past the end extends it with zeros between).
pub fn apply(base: &[u8], writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut model = base.to_vec();
    for (off, chunk) in writes {
        let (off, end) = (*off as usize, *off as usize + chunk.len());
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off..end].copy_from_slice(chunk);
    }
    model
}

/// What the new file holds after [`new_file_direct_writes`].
pub fn new_file_expected() -> Vec<u8> {
    apply(&[], &new_file_writes())
}

/// What the copied-up file holds after [`copy_up_direct_writes`].
pub fn copy_up_expected() -> Vec<u8> {
    apply(&vm_data(), &copy_up_writes())
}

pub fn open_direct(p: &Path, flags: OFlags) -> OwnedFd {
    rustix::fs::open(p, flags | OFlags::DIRECT | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", p.display()))
}

/// Reads `len` bytes at `off` through an aligned buffer; returns what the reads gave, up to EOF.
pub fn pread_direct(fd: &OwnedFd, off: u64, len: usize) -> Vec<u8> {
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

pub fn pwrite_direct(fd: &OwnedFd, off: u64, data: &[u8]) {
    let buf = AlignedBuf::from_slice(data);
    let n = rustix::io::pwrite(fd, buf.as_ref(), off)
        .unwrap_or_else(|e| panic!("O_DIRECT pwrite of {} bytes at {off}: {e}", data.len()));
    assert_eq!(n, data.len(), "short O_DIRECT write at {off}");
}

fn expect_range(data: &[u8], off: u64, len: usize) -> &[u8] {
    let s = (off as usize).min(data.len());
    &data[s..(s + len).min(data.len())]
}

/// Direct reads of `file` (a lower file holding `data`), opened read-only so nothing is copied
/// up: every size of [`SIZES`] at every offset of [`OFFSETS`], the partial block at the end,
/// then a buffered read of the whole file.
pub fn lower_direct_reads(file: &Path, data: &[u8], label: &str) {
    let fd = open_direct(file, OFlags::RDONLY);
    for size in SIZES {
        for off in OFFSETS {
            let got = pread_direct(&fd, off, size);
            assert!(
                got == expect_range(data, off, size),
                "{label}: O_DIRECT read of {size} bytes at {off} returned {} bytes that differ from the lower file",
                got.len()
            );
        }
    }
    // The tail: a read that starts in the last partial block ends at EOF, not before.
    let last = (data.len() / 4096 * 4096) as u64;
    let tail = pread_direct(&fd, last, 4096);
    assert_eq!(tail, &data[last as usize..], "{label}: tail read");
    drop(fd);
    // Buffered and direct readers agree.
    assert!(
        std::fs::read(file).expect("buffered read") == data,
        "{label}: buffered read"
    );
}

/// Creates `file` with `O_DIRECT` and writes [`new_file_writes`] into it, reading each write
/// back directly, then the whole file (direct and buffered).
pub fn new_file_direct_writes(file: &Path, label: &str) {
    let fd = open_direct(file, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL);
    for (off, chunk) in new_file_writes() {
        pwrite_direct(&fd, off, &chunk);
        let back = pread_direct(&fd, off, chunk.len());
        assert!(back == chunk, "{label}: O_DIRECT read-back at {off} differs");
    }
    let model = new_file_expected();
    let all = pread_direct(&fd, 0, model.len());
    assert!(all == model, "{label}: O_DIRECT read of the whole file differs");
    drop(fd);
    assert!(
        std::fs::read(file).expect("buffered read") == model,
        "{label}: buffered read differs"
    );
}

/// Opens `file` (a lower file holding [`vm_data`]) for direct writing, which copies it up,
/// writes [`copy_up_writes`] and reads the whole file back directly.
pub fn copy_up_direct_writes(file: &Path, label: &str) {
    let fd = open_direct(file, OFlags::RDWR);
    for (off, chunk) in copy_up_writes() {
        pwrite_direct(&fd, off, &chunk);
    }
    let model = copy_up_expected();
    assert!(pread_direct(&fd, 0, model.len()) == model, "{label}: direct read-back");
}

/// A direct descriptor opened on `file` (a lower file holding the first of
/// [`before_copy_up_data`]) before another descriptor copies it up and rewrites it with the
/// second: the old descriptor keeps reading the lower data (as documented), new ones read the
/// new data.
pub fn direct_reader_across_copy_up(file: &Path, label: &str) {
    let (old, new) = before_copy_up_data();
    let reader = open_direct(file, OFlags::RDONLY);
    assert!(
        pread_direct(&reader, 0, old.len()) == old,
        "{label}: before the copy-up"
    );
    let writer = open_direct(file, OFlags::WRONLY);
    pwrite_direct(&writer, 0, &new);
    drop(writer);
    assert!(pread_direct(&reader, 0, old.len()) == old, "{label}: old descriptor");
    let fresh = open_direct(file, OFlags::RDONLY);
    assert!(
        pread_direct(&fresh, 0, new.len()) == new,
        "{label}: new direct descriptor"
    );
    drop(fresh);
    assert!(
        std::fs::read(file).expect("read by a new buffered reader") == new,
        "{label}: new buffered reader"
    );
}

/// Buffered content in the page cache must not hide a later direct write of `file` (created).
pub fn direct_and_buffered_coherent(file: &Path, label: &str) {
    std::fs::write(file, vec![1u8; 1 << 20]).expect("buffered write");
    assert_eq!(std::fs::read(file).expect("buffered read")[4096], 1);
    let fd = open_direct(file, OFlags::WRONLY);
    pwrite_direct(&fd, 4096, &[2u8; 4096]);
    drop(fd);
    let back = std::fs::read(file).expect("buffered read");
    assert_eq!(
        &back[4096..8192],
        &[2u8; 4096][..],
        "{label}: buffered reader after a direct write"
    );
    assert_eq!(back[0], 1);
    assert_eq!(back[8192], 1);
}
