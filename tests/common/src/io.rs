//! System calls as tests make them: errnos of failed calls, writes through shared mappings,
//! starting a program just written, and buffers aligned for `O_DIRECT`.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

/// The errno of a failed I/O result (`None` when it succeeded).
pub fn err_code<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// The errno of a failed rustix result (`None` when it succeeded).
pub fn rerr<T>(r: rustix::io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error())
}

/// Writes `data` at `off` of `f` through a shared mapping, then msync and munmap.
pub fn mmap_write(f: &std::fs::File, len: usize, off: usize, data: &[u8]) {
    mapped_write(f, len, off, data, true);
}

/// Reads and then writes `data` at the start of `f`'s first page through a shared mapping and
/// unmaps it without msync (what a process exiting after such a write does).
pub fn mmap_write_no_msync(f: &std::fs::File, data: &[u8]) {
    mapped_write(f, 4096, 0, data, false);
}

fn mapped_write(f: &std::fs::File, len: usize, off: usize, data: &[u8], msync: bool) {
    assert!(off + data.len() <= len);
    // SAFETY: we map `len` bytes of a file that is at least that long, read and write only
    // inside the mapping, and unmap it before returning; no other reference to the memory exists.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        std::hint::black_box(std::ptr::read_volatile(p as *const u8));
        std::ptr::copy_nonoverlapping(data.as_ptr(), (p as *mut u8).add(off), data.len());
        if msync {
            assert_eq!(
                libc::msync(p, len, libc::MS_SYNC),
                0,
                "msync: {}",
                std::io::Error::last_os_error()
            );
        }
        assert_eq!(libc::munmap(p, len), 0);
    }
}

/// Starts `prog ARGS`, a program just written. A sibling test's fork may still hold our
/// just-closed write fd for a moment (the classic ETXTBSY-on-exec race of threaded test
/// runners), so an ETXTBSY spawn is retried briefly.
pub fn spawn_fresh_program(prog: &Path, args: &[&str]) -> Child {
    let spawn = || Command::new(prog).args(args).spawn();
    let mut spawned = spawn();
    for _ in 0..50 {
        match &spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
                spawned = spawn();
            }
            _ => break,
        }
    }
    spawned.unwrap_or_else(|e| panic!("spawn {}: {e}", prog.display()))
}

/// A buffer whose usable part starts at a 4 KiB boundary, as `O_DIRECT` I/O on most
/// filesystems needs.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub const ALIGN: usize = 4096;

    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + Self::ALIGN];
        let start = raw.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// An aligned buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::new(data.len());
        b.as_mut().copy_from_slice(data);
        b
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}
