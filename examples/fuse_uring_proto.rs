//! An experiment, not part of the daemon (issue 9, item 4): a minimal FUSE server that carries
//! its requests over io_uring (`FUSE_OVER_IO_URING`, Linux 6.14+), and the same server over the
//! classic `/dev/fuse` read/write loop, to measure what one round trip costs on each path.
//!
//! ```text
//! fuse_uring_proto serve [--depth N] [--ring plain|coop|defer] [--pin queue|other|none]
//!                        [--force-uring] MOUNTPOINT
//! fuse_uring_proto serve --classic [--cpu N | --per-cpu-readers] MOUNTPOINT
//! fuse_uring_proto bench --op getxattr|stat [--calls N] [--name XATTR] PATH
//! ```
//!
//! `serve` (as root) opens `/dev/fuse`, mounts `fuse.uringproto` on MOUNTPOINT itself with
//! mount(2), answers `FUSE_INIT` over `/dev/fuse` (asking for `FUSE_OVER_IO_URING` unless
//! `--classic`), then registers, on each possible CPU's queue, `--depth` entries (128-byte
//! `IORING_OP_URING_CMD` SQEs, `FUSE_IO_URING_CMD_REGISTER`) from one thread per queue pinned to
//! its CPU. Once every queue has its entries the kernel sends requests through the ring; each is
//! answered with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (the reply and the wait for the next request
//! in one `io_uring_enter`). FORGET and INTERRUPT stay on `/dev/fuse`, which is still read. It
//! prints `READY` once serving and runs until the mount goes away, then prints on stderr how many
//! requests came through `/dev/fuse` and through each queue.
//!
//! The tree: the root directory (inode 1) holding `file` (inode 2), both with the extended
//! attribute `user.proto`. It answers LOOKUP, GETATTR and GETXATTR, anything else ENOSYS.
//! Attributes are valid for 0 s, so every stat reaches the server; names for an hour, so a stat
//! of `file` costs one GETATTR and no LOOKUP.
//!
//! `bench` is the client: a tight loop of `--calls` getxattr or stat calls on PATH; it prints
//! microseconds per call. `benches/uring_roundtrip.sh` runs both modes and a unionfs mount.
//!
//! `unsafe` is confined to this example (the crate forbids it in `src/`): the ring entries'
//! buffers the kernel writes behind our back, pushing SQEs, and setting the SQE's `len`.
//!
//! The kernel side: `Documentation/filesystems/fuse-io-uring.rst`, `fs/fuse/dev_uring.c` and
//! `include/uapi/linux/fuse.h` (`fuse_uring_req_header`, `fuse_uring_cmd_req`).

// As in the crate: no function over 80 lines (clippy.toml).
#![deny(clippy::too_many_lines)]

use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::io::Errno;

/// The part of the FUSE kernel ABI this prototype speaks (`include/uapi/linux/fuse.h`).
mod abi {
    pub const MAJOR: u32 = 7;
    /// The newest minor version whose `fuse_init_out` this prototype writes.
    pub const MAX_MINOR: u32 = 45;

    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const GETXATTR: u32 = 22;
    pub const INIT: u32 = 26;
    pub const INTERRUPT: u32 = 36;
    pub const BATCH_FORGET: u32 = 42;

    /// `FUSE_INIT_EXT`: `flags2` in INIT is meaningful.
    pub const INIT_EXT: u32 = 1 << 30;
    /// `FUSE_OVER_IO_URING` is bit 41 of the 64-bit INIT flags: bit 9 of `flags2`.
    pub const OVER_IO_URING_FLAGS2: u32 = 1 << (41 - 32);

    /// `struct fuse_in_header` and `struct fuse_out_header`.
    pub const IN_HEADER: usize = 40;
    pub const OUT_HEADER: usize = 16;
    /// `struct fuse_attr`, `fuse_entry_out`, `fuse_attr_out`, `fuse_init_out`.
    pub const ATTR: usize = 88;
    pub const ENTRY_OUT: usize = 40 + ATTR;
    pub const ATTR_OUT: usize = 16 + ATTR;
    pub const INIT_OUT: usize = 64;

    /// `struct fuse_uring_req_header`: `in_out` (the in or out header) at 0, `op_in` (the
    /// opcode's fixed argument) at 128, `fuse_uring_ent_in_out` at 256.
    pub const RING_HEADERS: usize = 288;
    pub const RING_OP_IN: usize = 128;
    pub const RING_COMMIT_ID: usize = 256 + 8;
    pub const RING_PAYLOAD_SZ: usize = 256 + 16;

    /// `enum fuse_uring_cmd`, the SQE's `cmd_op`.
    pub const CMD_REGISTER: u32 = 1;
    pub const CMD_COMMIT_AND_FETCH: u32 = 2;

    /// The size of an opcode's fixed argument, which the ring puts in `op_in` and `/dev/fuse`
    /// right after the in header (what follows it is the ring's payload).
    pub fn op_header_len(opcode: u32) -> usize {
        match opcode {
            GETATTR => 16,
            GETXATTR | FORGET | INTERRUPT | BATCH_FORGET => 8,
            INIT => 64,
            _ => 0,
        }
    }

    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }
    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    /// What a request's `fuse_in_header` says that this prototype uses.
    pub struct InHeader {
        pub opcode: u32,
        pub unique: u64,
        pub nodeid: u64,
    }

    impl InHeader {
        pub fn parse(b: &[u8]) -> Self {
            Self {
                opcode: u32_at(b, 4),
                unique: u64_at(b, 8),
                nodeid: u64_at(b, 16),
            }
        }
    }

    /// A `fuse_out_header`: `errno` 0 for success.
    pub fn put_out_header(b: &mut [u8], body_len: usize, errno: i32, unique: u64) {
        put_u32(b, 0, (OUT_HEADER + body_len) as u32);
        put_u32(b, 4, (-errno) as u32);
        put_u64(b, 8, unique);
    }
}

/// The filesystem: a root directory holding one file, both with one extended attribute.
mod tinyfs {
    use super::abi::{self, ATTR, ATTR_OUT, ENTRY_OUT, put_u32, put_u64, u32_at};

    pub const ROOT: u64 = 1;
    pub const FILE: u64 = 2;
    const FILE_NAME: &[u8] = b"file";
    const XATTR_NAME: &[u8] = b"user.proto";
    const XATTR_VALUE: &[u8] = b"round-trip";
    const FILE_SIZE: u64 = 4096;
    /// Names stay cached for an hour; attributes not at all (every stat reaches us).
    const ENTRY_VALID_SECS: u64 = 3600;

    /// Answers LOOKUP, GETATTR and GETXATTR, writing the reply's body (after the out header)
    /// into `out`: its length, or the errno to answer.
    pub fn answer(opcode: u32, nodeid: u64, op_in: &[u8], payload: &[u8], out: &mut [u8]) -> Result<usize, i32> {
        match opcode {
            abi::LOOKUP => lookup(nodeid, name(payload), out),
            abi::GETATTR => {
                out[..16].fill(0); // attr_valid 0 s 0 ns
                put_attr(&mut out[16..ATTR_OUT], existing(nodeid)?);
                Ok(ATTR_OUT)
            }
            abi::GETXATTR => getxattr(nodeid, u32_at(op_in, 0) as usize, name(payload), out),
            _ => Err(libc::ENOSYS),
        }
    }

    fn existing(nodeid: u64) -> Result<u64, i32> {
        match nodeid {
            ROOT | FILE => Ok(nodeid),
            _ => Err(libc::ENOENT),
        }
    }

    /// A name argument: the bytes before its NUL.
    fn name(payload: &[u8]) -> &[u8] {
        payload.split(|&b| b == 0).next().unwrap_or_default()
    }

    fn lookup(parent: u64, name: &[u8], out: &mut [u8]) -> Result<usize, i32> {
        if parent != ROOT || name != FILE_NAME {
            return Err(libc::ENOENT);
        }
        out[..40].fill(0);
        put_u64(out, 0, FILE);
        put_u64(out, 16, ENTRY_VALID_SECS);
        put_attr(&mut out[40..ENTRY_OUT], FILE);
        Ok(ENTRY_OUT)
    }

    fn getxattr(nodeid: u64, size: usize, name: &[u8], out: &mut [u8]) -> Result<usize, i32> {
        existing(nodeid)?;
        if name != XATTR_NAME {
            return Err(libc::ENODATA);
        }
        if size == 0 {
            // fuse_getxattr_out: the value's size.
            put_u32(out, 0, XATTR_VALUE.len() as u32);
            put_u32(out, 4, 0);
            return Ok(8);
        }
        if size < XATTR_VALUE.len() {
            return Err(libc::ERANGE);
        }
        out[..XATTR_VALUE.len()].copy_from_slice(XATTR_VALUE);
        Ok(XATTR_VALUE.len())
    }

    /// A `struct fuse_attr`.
    fn put_attr(b: &mut [u8], ino: u64) {
        b[..ATTR].fill(0);
        let (mode, nlink, size) = match ino {
            ROOT => (libc::S_IFDIR | 0o755, 2, 0),
            _ => (libc::S_IFREG | 0o644, 1, FILE_SIZE),
        };
        put_u64(b, 0, ino);
        put_u64(b, 8, size);
        put_u64(b, 16, size.div_ceil(512));
        put_u32(b, 60, mode);
        put_u32(b, 64, nlink);
        put_u32(b, 80, 4096); // blksize
    }
}

/// Counters, printed when the server stops: which path carried the requests.
struct Stats {
    dev: AtomicU64,
    /// What the per-thread counters count: ring queues or /dev/fuse readers.
    label: &'static str,
    threads: Vec<AtomicU64>,
    by_op: [AtomicU64; 4],
}

impl Stats {
    fn new(label: &'static str, threads: usize) -> Self {
        Self {
            dev: AtomicU64::new(0),
            label,
            threads: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            by_op: Default::default(),
        }
    }

    fn count_op(&self, opcode: u32) {
        let i = match opcode {
            abi::LOOKUP => 0,
            abi::GETATTR => 1,
            abi::GETXATTR => 2,
            _ => 3,
        };
        self.by_op[i].fetch_add(1, Relaxed);
    }

    fn report(&self) -> String {
        let q: Vec<String> = self
            .threads
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i}:{}", n.load(Relaxed)))
            .collect();
        let [l, ga, gx, o] = &self.by_op;
        format!(
            "served: via /dev/fuse {}, by {} [{}]; lookup={} getattr={} getxattr={} other={}",
            self.dev.load(Relaxed),
            self.label,
            q.join(" "),
            l.load(Relaxed),
            ga.load(Relaxed),
            gx.load(Relaxed),
            o.load(Relaxed)
        )
    }
}

/// Room for the largest request `/dev/fuse` may hand us: a 128 KiB write and its headers.
const MAX_WRITE: u32 = 128 * 1024;
const DEV_BUF: usize = MAX_WRITE as usize + 64 * 1024;
/// Each ring entry's payload buffer: the kernel wants at least max(8 KiB, max_write, max_pages *
/// page size); max_pages stays at its default of 32 pages (we do not negotiate FUSE_MAX_PAGES).
const RING_PAYLOAD: usize = MAX_WRITE as usize;

// ---------------------------------------------------------------------------------------------
// The classic path: read(2) a request from /dev/fuse, write(2) the reply.

/// Serves `/dev/fuse` until the connection goes away (ENODEV: unmounted). In `--classic` mode
/// that is every request; with the ring live, only FORGET and INTERRUPT (and anything the kernel
/// does not carry over the ring) come here.
fn serve_dev(fuse: &OwnedFd, buf: &mut [u8], stats: &Stats, reader: Option<usize>) -> Result<(), String> {
    let mut out = vec![0u8; DEV_BUF];
    loop {
        let n = match rustix::io::read(fuse, &mut *buf) {
            Ok(n) => n,
            Err(Errno::INTR | Errno::NOENT | Errno::AGAIN) => continue,
            Err(Errno::NODEV) => return Ok(()),
            Err(e) => return Err(format!("read /dev/fuse: {e}")),
        };
        stats.dev.fetch_add(1, Relaxed);
        if let Some(r) = reader {
            stats.threads[r].fetch_add(1, Relaxed);
        }
        let h = abi::InHeader::parse(&buf[..n]);
        if matches!(h.opcode, abi::FORGET | abi::BATCH_FORGET | abi::INTERRUPT) {
            continue; // no reply; nothing to forget, nothing left to interrupt
        }
        let args = &buf[abi::IN_HEADER..n];
        let split = abi::op_header_len(h.opcode).min(args.len());
        stats.count_op(h.opcode);
        let result = tinyfs::answer(
            h.opcode,
            h.nodeid,
            &args[..split],
            &args[split..],
            &mut out[abi::OUT_HEADER..],
        );
        let (errno, len) = result.map_or_else(|e| (e, 0), |n| (0, n));
        abi::put_out_header(&mut out, len, errno, h.unique);
        match rustix::io::write(fuse, &out[..abi::OUT_HEADER + len]) {
            Ok(_) | Err(Errno::NOENT) => {} // NOENT: the request was interrupted meanwhile
            Err(Errno::NODEV) => return Ok(()),
            Err(e) => return Err(format!("write /dev/fuse: {e}")),
        }
    }
}

/// Reads FUSE_INIT from `/dev/fuse` and answers it, asking for io_uring on that transport (if
/// offered, or forced). Returns whether the kernel offered `FUSE_OVER_IO_URING` (it does only
/// with `enable_uring` on).
fn answer_init(fuse: &OwnedFd, buf: &mut [u8], transport: Transport) -> Result<bool, String> {
    let n = rustix::io::read(fuse, &mut *buf).map_err(|e| format!("read FUSE_INIT: {e}"))?;
    let h = abi::InHeader::parse(&buf[..n]);
    if h.opcode != abi::INIT {
        return Err(format!("expected FUSE_INIT, got opcode {}", h.opcode));
    }
    let args = &buf[abi::IN_HEADER..n];
    let (major, minor, readahead, flags) = (
        abi::u32_at(args, 0),
        abi::u32_at(args, 4),
        abi::u32_at(args, 8),
        abi::u32_at(args, 12),
    );
    let flags2 = if flags & abi::INIT_EXT != 0 && args.len() >= 20 {
        abi::u32_at(args, 16)
    } else {
        0
    };
    if major != abi::MAJOR {
        return Err(format!("kernel speaks FUSE {major}.{minor}, not {}.x", abi::MAJOR));
    }
    let offered = flags2 & abi::OVER_IO_URING_FLAGS2 != 0;
    eprintln!(
        "FUSE_INIT: kernel 7.{minor}, flags {flags:#x}, flags2 {flags2:#x}, FUSE_OVER_IO_URING offered: {offered}"
    );
    let mut out = [0u8; abi::OUT_HEADER + abi::INIT_OUT];
    let o = &mut out[abi::OUT_HEADER..];
    abi::put_u32(o, 0, abi::MAJOR);
    abi::put_u32(o, 4, minor.min(abi::MAX_MINOR));
    abi::put_u32(o, 8, readahead);
    abi::put_u32(o, 12, flags & abi::INIT_EXT);
    abi::put_u16(o, 16, 16); // max_background
    abi::put_u16(o, 18, 12); // congestion_threshold
    abi::put_u32(o, 20, MAX_WRITE);
    abi::put_u32(o, 24, 1); // time_gran
    if let Transport::Uring(ring) = transport
        && (offered || ring.force)
    {
        abi::put_u32(o, 32, abi::OVER_IO_URING_FLAGS2);
    }
    abi::put_out_header(&mut out, abi::INIT_OUT, 0, h.unique);
    rustix::io::write(fuse, &out).map_err(|e| format!("write FUSE_INIT reply: {e}"))?;
    Ok(offered)
}

// ---------------------------------------------------------------------------------------------
// The io_uring path.

/// Which CPU a queue's thread runs on.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Pin {
    /// The queue's own CPU (the one whose requests it gets), as libfuse does.
    Queue,
    /// Another CPU: the next one.
    Other,
    /// Wherever the scheduler puts it.
    None,
}

/// How the queues' rings are set up (the io_uring flags that decide where and when the kernel
/// runs the task work that hands a request to the queue thread).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum RingMode {
    /// IORING_SETUP_SQE128 only.
    Plain,
    /// ... + COOP_TASKRUN | TASKRUN_FLAG.
    Coop,
    /// ... + SINGLE_ISSUER | DEFER_TASKRUN.
    Defer,
}

/// A buffer the kernel reads and writes behind our back while its entry is with the kernel
/// (between the entry's SQE and its CQE). Never freed: the kernel may hold it until the
/// connection is gone, and the process ends soon after.
#[derive(Clone, Copy)]
struct KernelBuf {
    ptr: *mut u8,
    len: usize,
}

impl KernelBuf {
    fn new(len: usize) -> Self {
        let b: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
        Self {
            ptr: b.as_mut_ptr(),
            len,
        }
    }

    /// # Safety
    /// The buffer's entry must be ours (its CQE came back and its next SQE is not submitted),
    /// and no other slice of it may be alive.
    unsafe fn slice<'a>(self) -> &'a mut [u8] {
        // SAFETY: `ptr` points to `len` leaked (never freed) initialised bytes; the caller
        // guarantees nobody else, the kernel included, touches them meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// One ring entry: the request header buffer (`fuse_uring_req_header`) and the payload buffer,
/// and the two iovecs the REGISTER command points at.
struct RingEnt {
    headers: KernelBuf,
    payload: KernelBuf,
    iov: &'static [libc::iovec; 2],
}

impl RingEnt {
    fn new() -> Self {
        let headers = KernelBuf::new(abi::RING_HEADERS);
        let payload = KernelBuf::new(RING_PAYLOAD);
        let iov = Box::leak(Box::new([
            libc::iovec {
                iov_base: headers.ptr.cast(),
                iov_len: headers.len,
            },
            libc::iovec {
                iov_base: payload.ptr.cast(),
                iov_len: payload.len,
            },
        ]));
        Self { headers, payload, iov }
    }
}

/// One queue: its ring, its entries, and a scratch buffer for replies.
struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    ents: Vec<RingEnt>,
    scratch: Vec<u8>,
}

impl Queue {
    fn new(qid: u16, fuse: &OwnedFd, depth: u32, mode: RingMode) -> Result<Self, String> {
        let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
        b.setup_cqsize(depth * 2);
        match mode {
            RingMode::Plain => {}
            RingMode::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingMode::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        let ring = b
            .build(depth)
            .map_err(|e| format!("queue {qid}: io_uring_setup: {e}"))?;
        ring.submitter()
            .register_files(&[fuse.as_raw_fd()])
            .map_err(|e| format!("queue {qid}: register /dev/fuse with the ring: {e}"))?;
        let ents = (0..depth).map(|_| RingEnt::new()).collect();
        Ok(Self {
            qid,
            ring,
            ents,
            scratch: vec![0u8; RING_PAYLOAD],
        })
    }

    /// The 128-byte SQE for `cmd_op` on entry `idx`: `fuse_uring_cmd_req` (flags, commit_id,
    /// qid) in the command area; for REGISTER, `addr`/`len` point at the entry's two iovecs.
    fn sqe(&self, cmd_op: u32, idx: usize, commit_id: u64) -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        abi::put_u64(&mut cmd, 8, commit_id);
        abi::put_u16(&mut cmd, 16, self.qid);
        let mut op = opcode::UringCmd80::new(types::Fixed(0), cmd_op).cmd(cmd);
        if cmd_op == abi::CMD_REGISTER {
            op = op.addr(Some(self.ents[idx].iov.as_ptr() as u64));
        }
        let sqe = op.build().user_data(idx as u64);
        if cmd_op == abi::CMD_REGISTER {
            with_sqe_len(sqe, 2)
        } else {
            sqe
        }
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> Result<(), String> {
        // SAFETY: what the SQE points at (the entry's iovecs and the buffers they describe) is
        // leaked, so it outlives the command.
        unsafe { self.ring.submission().push(sqe) }.map_err(|_| format!("queue {}: submission queue full", self.qid))
    }

    /// Registers every entry. A REGISTER runs inline in io_uring_enter: a refusal is already
    /// in the completion queue when `submit` returns; an accepted one completes only when a
    /// request arrives.
    fn register(&mut self) -> Result<(), String> {
        for idx in 0..self.ents.len() {
            let sqe = self.sqe(abi::CMD_REGISTER, idx, 0);
            self.push(&sqe)?;
        }
        self.ring
            .submit()
            .map_err(|e| format!("queue {}: io_uring_enter: {e}", self.qid))?;
        if let Some(c) = self.ring.completion().find(|c| c.result() < 0) {
            let e = Errno::from_raw_os_error(-c.result());
            return Err(format!(
                "queue {}: FUSE_IO_URING_CMD_REGISTER: the kernel answered {} ({e})",
                self.qid,
                c.result()
            ));
        }
        Ok(())
    }

    /// Answers requests until the connection is torn down (ENOTCONN on the entries).
    fn run(&mut self, stats: &Stats) -> Result<(), String> {
        let mut done: Vec<(usize, i32)> = Vec::with_capacity(self.ents.len());
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(format!("queue {}: io_uring_enter: {e}", self.qid)),
            }
            done.clear();
            done.extend(self.ring.completion().map(|c| (c.user_data() as usize, c.result())));
            for &(idx, res) in &done {
                if res == -libc::ENOTCONN {
                    return Ok(()); // unmounted: the kernel tears the entries down
                }
                if res < 0 {
                    let e = Errno::from_raw_os_error(-res);
                    return Err(format!(
                        "queue {}: entry {idx}: the kernel answered {res} ({e})",
                        self.qid
                    ));
                }
                stats.threads[usize::from(self.qid)].fetch_add(1, Relaxed);
                let commit_id = self.serve(idx, stats);
                let sqe = self.sqe(abi::CMD_COMMIT_AND_FETCH, idx, commit_id);
                self.push(&sqe)?;
            }
        }
    }

    /// Answers the request in entry `idx` in place; returns the commit id for its reply.
    fn serve(&mut self, idx: usize, stats: &Stats) -> u64 {
        let ent = &self.ents[idx];
        // SAFETY: the entry's CQE came back and its next SQE is not yet pushed, so the kernel
        // is done with both buffers; they are distinct allocations and no other slice of them
        // is alive.
        let (headers, payload) = unsafe { (ent.headers.slice(), ent.payload.slice()) };
        let h = abi::InHeader::parse(headers);
        let commit_id = abi::u64_at(headers, abi::RING_COMMIT_ID);
        let in_len = (abi::u32_at(headers, abi::RING_PAYLOAD_SZ) as usize).min(payload.len());
        let op_in = &headers[abi::RING_OP_IN..abi::RING_OP_IN + 128];
        stats.count_op(h.opcode);
        // The reply goes through `scratch`, as it overwrites the payload it is read from.
        let result = tinyfs::answer(h.opcode, h.nodeid, op_in, &payload[..in_len], &mut self.scratch);
        let (errno, len) = result.map_or_else(|e| (e, 0), |n| (0, n));
        payload[..len].copy_from_slice(&self.scratch[..len]);
        abi::put_out_header(headers, len, errno, h.unique);
        abi::put_u32(headers, abi::RING_PAYLOAD_SZ, len as u32);
        commit_id
    }
}

/// Sets an SQE's `len` field, which `UringCmd80` does not expose: the REGISTER command needs
/// `len` = 2 (the header and payload iovecs).
fn with_sqe_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]`: a 64-byte `io_uring_sqe` of plain integers and unions
    // of them (no padding, every byte initialised: the crate starts from a zeroed SQE), then 64
    // bytes of command. Its bytes are a valid [u8; 128] and any bytes are a valid `Entry128`.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(sqe) };
    abi::put_u32(&mut raw, 24, len); // struct io_uring_sqe: __u32 len at offset 24
    // SAFETY: as above: every [u8; 128] is a valid `Entry128`.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) -> rustix::io::Result<()> {
    let mut cpus = rustix::thread::CpuSet::new();
    cpus.set(cpu);
    rustix::thread::sched_setaffinity(None, &cpus)
}

/// The kernel keeps one queue per possible CPU (`num_possible_cpus()`).
fn possible_cpus() -> Result<usize, String> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| format!("/sys/devices/system/cpu/possible: {e}"))?;
    let mut last = 0;
    for part in text.trim().split(',') {
        let hi = part.rsplit('-').next().unwrap_or(part);
        last = last.max(hi.parse::<usize>().map_err(|e| format!("cpu list {text:?}: {e}"))?);
    }
    Ok(last + 1)
}

/// Starts one thread per queue, pinned to its CPU; returns once every queue has its entries
/// registered (the ring is then live) or one failed.
fn start_queues(fuse: &Arc<OwnedFd>, ring: Ring, stats: &Arc<Stats>) -> Result<Threads, String> {
    let n = stats.threads.len();
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for qid in 0..n {
        let (fuse, stats, tx) = (Arc::clone(fuse), Arc::clone(stats), tx.clone());
        let qid = u16::try_from(qid).map_err(|_| "too many CPUs")?;
        threads.push(std::thread::spawn(move || {
            let cpu = match ring.pin {
                Pin::Queue => Some(usize::from(qid)),
                Pin::Other => Some((usize::from(qid) + 1) % n),
                Pin::None => None,
            };
            if let Some(Err(e)) = cpu.map(pin_thread) {
                eprintln!("queue {qid}: not pinned: {e}");
            }
            let q = Queue::new(qid, &fuse, ring.depth, ring.mode).and_then(|mut q| q.register().map(|()| q));
            match q {
                Ok(mut q) => {
                    let _ = tx.send(Ok(()));
                    q.run(&stats)
                }
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    Err(e)
                }
            }
        }));
    }
    for _ in 0..threads.len() {
        rx.recv().map_err(|e| e.to_string())??;
    }
    Ok(threads)
}

// ---------------------------------------------------------------------------------------------
// Mounting and the two subcommands.

#[derive(Parser)]
#[command(about = "FUSE over io_uring: a prototype server and a round-trip client (issue 9)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the prototype filesystem on MOUNTPOINT and serve it until unmounted (root only).
    Serve {
        /// Serve over the classic /dev/fuse read/write loop, not io_uring.
        #[arg(long)]
        classic: bool,
        /// With --classic: one reader thread per possible CPU, each pinned to its CPU, all
        /// reading the one /dev/fuse (instead of one thread).
        #[arg(long, requires = "classic")]
        per_cpu_readers: bool,
        /// Pin the thread that reads /dev/fuse (with --classic: the whole server) to CPU.
        #[arg(long, value_name = "CPU", conflicts_with = "per_cpu_readers")]
        cpu: Option<usize>,
        /// io_uring entries per queue.
        #[arg(long, default_value_t = 4)]
        depth: u32,
        /// io_uring setup flags of the queues' rings.
        #[arg(long, value_enum, default_value_t = RingMode::Plain)]
        ring: RingMode,
        /// Which CPU each io_uring queue's thread is pinned to.
        #[arg(long, value_enum, default_value_t = Pin::Queue)]
        pin: Pin,
        /// Ask for FUSE_OVER_IO_URING and register the ring even if the kernel did not offer
        /// it in FUSE_INIT (to see what the kernel answers with enable_uring off).
        #[arg(long, conflicts_with = "classic")]
        force_uring: bool,
        mountpoint: PathBuf,
    },
    /// A tight loop of getxattr or stat calls on PATH; prints microseconds per call.
    Bench {
        #[arg(long, value_enum)]
        op: Op,
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
        /// The extended attribute getxattr asks for.
        #[arg(long, default_value = "user.proto")]
        name: String,
        path: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Op {
    Getxattr,
    Stat,
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::Serve {
            classic,
            per_cpu_readers,
            cpu,
            depth,
            ring,
            pin,
            force_uring,
            mountpoint,
        } => {
            let transport = match classic {
                true => Transport::Classic {
                    per_cpu: per_cpu_readers,
                },
                false => Transport::Uring(Ring {
                    depth,
                    mode: ring,
                    pin,
                    force: force_uring,
                }),
            };
            serve(&mountpoint, transport, cpu)
        }
        Cmd::Bench { op, calls, name, path } => bench(op, calls, &name, &path),
    };
    if let Err(e) = result {
        eprintln!("fuse_uring_proto: {e}");
        std::process::exit(1);
    }
}

/// Opens /dev/fuse and mounts it on `mountpoint` with mount(2), as fusermount would.
fn mount(mountpoint: &Path) -> Result<OwnedFd, String> {
    use rustix::fs::{Mode, OFlags};
    let fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open /dev/fuse: {e}"))?;
    let data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        fuse.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    let data = CString::new(data).map_err(|e| e.to_string())?;
    let flags = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV;
    rustix::mount::mount("uringproto", mountpoint, "fuse.uringproto", flags, data.as_c_str())
        .map_err(|e| format!("mount {}: {e}", mountpoint.display()))?;
    Ok(fuse)
}

/// How the io_uring queues are set up.
#[derive(Clone, Copy, Debug)]
struct Ring {
    depth: u32,
    mode: RingMode,
    pin: Pin,
    force: bool,
}

/// How requests reach the server.
#[derive(Clone, Copy)]
enum Transport {
    Uring(Ring),
    /// read/write on /dev/fuse, from one thread or one pinned thread per CPU.
    Classic {
        per_cpu: bool,
    },
}

fn serve(mountpoint: &Path, transport: Transport, cpu: Option<usize>) -> Result<(), String> {
    let stats = Arc::new(match transport {
        Transport::Uring(_) => Stats::new("ring queues", possible_cpus()?),
        Transport::Classic { per_cpu: true } => Stats::new("readers", possible_cpus()?),
        Transport::Classic { per_cpu: false } => Stats::new("readers", 1),
    });
    let fuse = Arc::new(mount(mountpoint)?);
    let result = serve_mounted(&fuse, transport, cpu, &stats);
    if result.is_err() {
        // Never leave the mount behind: detach it (the connection ends with this process).
        let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
    }
    eprintln!("{}", stats.report());
    result
}

type Threads = Vec<std::thread::JoinHandle<Result<(), String>>>;

fn serve_mounted(
    fuse: &Arc<OwnedFd>,
    transport: Transport,
    cpu: Option<usize>,
    stats: &Arc<Stats>,
) -> Result<(), String> {
    let mut buf = vec![0u8; DEV_BUF];
    let offered = answer_init(fuse, &mut buf, transport)?;
    let (threads, cpu, what) = match transport {
        Transport::Uring(ring) if !offered && !ring.force => {
            return Err(format!(
                "the kernel did not offer FUSE_OVER_IO_URING in FUSE_INIT ({ring:?}): is \
                 /sys/module/fuse/parameters/enable_uring Y (and the kernel 6.14+ with CONFIG_FUSE_IO_URING)?"
            ));
        }
        Transport::Uring(ring) => {
            let what = format!("io_uring, {} queues, {ring:?}", stats.threads.len());
            (start_queues(fuse, ring, stats)?, cpu, what)
        }
        Transport::Classic { per_cpu: true } => {
            let what = format!(
                "classic /dev/fuse, {} reader threads, each on its CPU",
                stats.threads.len()
            );
            (start_readers(fuse, stats), Some(0), what)
        }
        Transport::Classic { per_cpu: false } => {
            let on = cpu.map_or("not pinned".to_string(), |c| format!("on CPU {c}"));
            (Vec::new(), cpu, format!("classic /dev/fuse, one thread {on}"))
        }
    };
    if let Some(cpu) = cpu {
        pin_thread(cpu).map_err(|e| format!("pin the /dev/fuse thread to CPU {cpu}: {e}"))?;
    }
    println!("READY {what}");
    let _ = std::io::stdout().flush();
    let reader = matches!(transport, Transport::Classic { .. }).then_some(0);
    serve_dev(fuse, &mut buf, stats, reader)?;
    for t in threads {
        t.join().map_err(|_| "a server thread panicked")??;
    }
    Ok(())
}

/// `--per-cpu-readers`: readers 1.. on CPUs 1.. (the calling thread is reader 0, on CPU 0).
fn start_readers(fuse: &Arc<OwnedFd>, stats: &Arc<Stats>) -> Threads {
    (1..stats.threads.len())
        .map(|cpu| {
            let (fuse, stats) = (Arc::clone(fuse), Arc::clone(stats));
            std::thread::spawn(move || {
                pin_thread(cpu).map_err(|e| format!("pin reader {cpu}: {e}"))?;
                serve_dev(&fuse, &mut vec![0u8; DEV_BUF], &stats, Some(cpu))
            })
        })
        .collect()
}

fn bench(op: Op, calls: u64, name: &str, path: &Path) -> Result<(), String> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let n = CString::new(name).map_err(|e| e.to_string())?;
    let mut value = [0u8; 256];
    let mut one = || -> rustix::io::Result<()> {
        match op {
            Op::Getxattr => rustix::fs::getxattr(p.as_c_str(), n.as_c_str(), &mut value[..]).map(drop),
            Op::Stat => rustix::fs::stat(p.as_c_str()).map(drop),
        }
    };
    let fail = |e: Errno| format!("{}: {e}", path.display());
    for _ in 0..calls.min(2000) {
        one().map_err(fail)?;
    }
    let t = Instant::now();
    for _ in 0..calls {
        one().map_err(fail)?;
    }
    println!("{:.3}", t.elapsed().as_secs_f64() * 1e6 / calls as f64);
    Ok(())
}
