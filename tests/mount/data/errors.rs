//! docs/semantics.md, "Data": a failing layer. When a system call on a layer fails, the
//! application gets that errno (or EIO), never a short or empty success. The top lower layer here
//! is a tiny FUSE filesystem served by this test process, whose file reads past 64 KiB, one
//! directory's listing, one file's xattrs, one entry's lookup and two directories' opaque markers
//! fail with EIO, as a disk with bad sectors would; a real directory below it holds what those
//! markers may hide. Failing writes and xattr writes come from an upper on a tiny tmpfs (ENOSPC).
//! Every case runs with FUSE passthrough (the root default) and with `--no-passthrough` (the
//! data path of rootless mounts, where the daemon does every read and write, under the kernel's
//! writeback cache).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use crate::common::*;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyXattr, Request,
};

/// Bytes of `bad` that read fine; the rest fails.
const GOOD_PART: u64 = 64 * 1024;

const BAD_SIZE: u64 = 1 << 20;

/// The content of `bad` (and `good`) at `off`.
fn byte_at(off: u64) -> u8 {
    (off % 251) as u8
}

struct FailFs;

const BAD: u64 = 2;

const GOOD: u64 = 3;

const BAD_DIR: u64 = 4;

const BAD_XATTR: u64 = 5;

/// A directory listing `ok` and `badstat`, whose lookup fails.
const STAT_DIR: u64 = 6;

const OK_IN_STAT_DIR: u64 = 7;

const BAD_STAT: u64 = 8;

/// `marks`: directories whose opaque markers fail to read (`xdir`: every xattr read fails;
/// `sdir`: looking up `.wh..wh..opq` in it fails) and one whose markers read fine (`plain`). The
/// lower below has directories of the same names, each with a file `hidden` (`below` in `plain`).
const MARKS: u64 = 9;

const XDIR: u64 = 10;

const SDIR: u64 = 11;

const PLAIN: u64 = 12;

fn attr(ino: u64) -> Option<FileAttr> {
    let (kind, size, perm) = match ino {
        1 | BAD_DIR | STAT_DIR | MARKS | XDIR | SDIR | PLAIN => (FileType::Directory, 0, 0o755),
        BAD => (FileType::RegularFile, BAD_SIZE, 0o644),
        GOOD | BAD_XATTR | OK_IN_STAT_DIR | BAD_STAT => (FileType::RegularFile, 4096, 0o644),
        _ => return None,
    };
    Some(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    })
}

const TTL: Duration = Duration::from_secs(60);

impl Filesystem for FailFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent.0, name.to_str()) {
            (1, Some("bad")) => BAD,
            (1, Some("good")) => GOOD,
            (1, Some("baddir")) => BAD_DIR,
            (1, Some("badxattr")) => BAD_XATTR,
            (1, Some("statdir")) => STAT_DIR,
            (STAT_DIR, Some("ok")) => OK_IN_STAT_DIR,
            (STAT_DIR, Some("badstat")) => return reply.error(Errno::EIO),
            (1, Some("marks")) => MARKS,
            (MARKS, Some("xdir")) => XDIR,
            (MARKS, Some("sdir")) => SDIR,
            (MARKS, Some("plain")) => PLAIN,
            (SDIR, Some(".wh..wh..opq")) => return reply.error(Errno::EIO),
            _ => return reply.error(Errno::ENOENT),
        };
        match attr(ino) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = attr(ino.0).map_or(0, |a| a.size);
        let end = (offset + u64::from(size)).min(len);
        if ino.0 == BAD && end > GOOD_PART {
            return reply.error(Errno::EIO);
        }
        let data: Vec<u8> = (offset..end.max(offset)).map(byte_at).collect();
        reply.data(&data);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 == BAD_DIR {
            return reply.error(Errno::EIO);
        }
        if ino.0 == STAT_DIR {
            let entries = [
                (STAT_DIR, FileType::Directory, "."),
                (1, FileType::Directory, ".."),
                (OK_IN_STAT_DIR, FileType::RegularFile, "ok"),
                (BAD_STAT, FileType::RegularFile, "badstat"),
            ];
            for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                    break;
                }
            }
            return reply.ok();
        }
        if ino.0 == MARKS {
            let entries = [
                (MARKS, FileType::Directory, "."),
                (1, FileType::Directory, ".."),
                (XDIR, FileType::Directory, "xdir"),
                (SDIR, FileType::Directory, "sdir"),
                (PLAIN, FileType::Directory, "plain"),
            ];
            for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                    break;
                }
            }
            return reply.ok();
        }
        if matches!(ino.0, XDIR | SDIR | PLAIN) {
            for (i, (ino, name)) in [(ino.0, "."), (MARKS, "..")]
                .into_iter()
                .enumerate()
                .skip(offset as usize)
            {
                if reply.add(INodeNo(ino), (i + 1) as u64, FileType::Directory, name) {
                    break;
                }
            }
            return reply.ok();
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (BAD, FileType::RegularFile, "bad"),
            (GOOD, FileType::RegularFile, "good"),
            (BAD_DIR, FileType::Directory, "baddir"),
            (BAD_XATTR, FileType::RegularFile, "badxattr"),
            (STAT_DIR, FileType::Directory, "statdir"),
            (MARKS, FileType::Directory, "marks"),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        if (ino.0 == BAD_XATTR && name == "user.x") || ino.0 == XDIR {
            reply.error(Errno::EIO)
        } else {
            reply.error(Errno::NO_XATTR)
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, _size: u32, reply: ReplyXattr) {
        if ino.0 == BAD_XATTR {
            reply.error(Errno::EIO)
        } else {
            reply.size(0)
        }
    }
}

/// The failing filesystem, mounted by this process; dropping it unmounts it.
struct FailMount {
    session: Option<fuser::BackgroundSession>,
    mnt: PathBuf,
}

impl FailMount {
    fn start(mnt: &Path) -> FailMount {
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![fuser::MountOption::FSName("unionfs-failfs".into())];
        cfg.acl = fuser::SessionACL::All;
        let session = fuser::spawn_mount(FailFs, mnt, &cfg).expect("mount the failing filesystem");
        FailMount {
            session: Some(session),
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for FailMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        drop(self.session.take());
    }
}

/// The two data paths: passthrough of upper files (root default) and the daemon for everything.
const MODES: [&[&str]; 2] = [&[], &["--no-passthrough"]];

/// A union of the failing filesystem (top) over a real lower directory. The union's mount
/// guard is dropped before the failing one (field order).
struct Setup {
    m: Mount,
    _fail: FailMount,
    l: Layers,
}

fn setup(extra: &[&str]) -> Setup {
    let l = Layers::new(2);
    // What the unreadable markers of marks/xdir and marks/sdir may hide, and what the readable
    // ones of marks/plain merge.
    l.put(
        1,
        "marks/xdir/hidden",
        b"hidden by an opaque marker that cannot be read",
    );
    l.put(
        1,
        "marks/sdir/hidden",
        b"hidden by an opaque marker that cannot be read",
    );
    l.put(1, "marks/plain/below", b"merged from below");
    let fail = FailMount::start(&l.lowers[0]);
    let m = l.mount(extra);
    Setup { m, _fail: fail, l }
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn a_failing_read_of_a_lower_file_reaches_the_application_as_eio() {
    for mode in MODES {
        let s = setup(mode);
        // The good part reads fine.
        let mut f = std::fs::File::open(s.m.path("bad")).expect("open bad");
        let mut head = vec![0u8; GOOD_PART as usize];
        f.read_exact(&mut head).expect("the first 64 KiB read fine");
        assert!(head.iter().enumerate().all(|(i, b)| *b == byte_at(i as u64)));
        // Past it: EIO, not a short read that looks like the end of the file, not zeros.
        let err = std::fs::read(s.m.path("bad")).expect_err("reading all of bad must fail");
        assert_eq!(errno_of(err), libc::EIO, "{mode:?}");
        let mut buf = vec![0u8; 4096];
        let r = std::os::unix::fs::FileExt::read_at(&f, &mut buf, 512 * 1024);
        assert_eq!(
            r.map_err(errno_of).err(),
            Some(libc::EIO),
            "{mode:?}: pread past the good part"
        );
        // With O_DIRECT the same (no page cache in between).
        let fd = rustix::fs::open(
            s.m.path("bad"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
            rustix::fs::Mode::empty(),
        )
        .expect("open O_DIRECT");
        let mut abuf = AlignedBuf::new(1 << 20);
        let r = rustix::io::pread(&fd, abuf.as_mut(), 0);
        assert_eq!(rerr(r), Some(libc::EIO), "{mode:?}: O_DIRECT read across the bad part");
        // Files that read fine still do.
        let good = std::fs::read(s.m.path("good")).expect("read good");
        assert_eq!(good.len(), 4096);
    }
}

#[test]
fn a_failing_copy_up_fails_the_write_and_leaves_nothing_behind() {
    for mode in MODES {
        let s = setup(mode);
        let r = std::fs::OpenOptions::new().append(true).open(s.m.path("bad"));
        assert_eq!(
            r.map_err(errno_of).err(),
            Some(libc::EIO),
            "{mode:?}: copy-up of a file that cannot be read"
        );
        assert!(!exists_raw(&s.l.up("bad")), "{mode:?}: a partial copy was published");
        assert!(
            workdir_leftovers(&s.l.work).is_empty(),
            "{mode:?}: the workdir kept a partial copy"
        );
        // The view is as before: the file is still the lower one.
        assert_eq!(lstat(&s.m.path("bad")).len(), BAD_SIZE, "{mode:?}");
        // A copy-up for a metadata change reads the data too.
        let r = std::fs::set_permissions(s.m.path("bad"), std::os::unix::fs::PermissionsExt::from_mode(0o600));
        assert_eq!(
            err_code(r),
            Some(libc::EIO),
            "{mode:?}: chmod of a file that cannot be read"
        );
        assert!(!exists_raw(&s.l.up("bad")), "{mode:?}: a partial copy was published");
        assert_eq!(
            std::os::unix::fs::MetadataExt::mode(&lstat(&s.m.path("bad"))) & 0o7777,
            0o644,
            "{mode:?}"
        );
    }
}

#[test]
fn a_failing_directory_listing_is_an_error_not_an_empty_directory() {
    for mode in MODES {
        let s = setup(mode);
        let err = std::fs::read_dir(s.m.path("baddir"))
            .and_then(|rd| rd.collect::<Result<Vec<_>, _>>())
            .expect_err("listing baddir must fail");
        assert_eq!(errno_of(err), libc::EIO, "{mode:?}");
        // Looking a name up in it needs its listing too.
        let err = std::fs::symlink_metadata(s.m.path("baddir/x")).expect_err("lookup in baddir");
        assert_eq!(
            errno_of(err),
            libc::EIO,
            "{mode:?}: lookup in a directory that cannot be read"
        );
        // The root lists.
        assert_eq!(
            names(&s.m.mnt),
            ["bad", "baddir", "badxattr", "good", "marks", "statdir"],
            "{mode:?}"
        );
    }
}

#[test]
fn failing_xattr_calls_are_errors_not_empty_answers() {
    for mode in MODES {
        let s = setup(mode);
        let p = s.m.path("badxattr");
        assert_eq!(xget_err(&p, "user.x").err(), Some(libc::EIO), "{mode:?}: getxattr");
        let mut buf = vec![0u8; 1024];
        assert_eq!(
            rerr(rustix::fs::llistxattr(&p, &mut buf[..])),
            Some(libc::EIO),
            "{mode:?}: listxattr"
        );
        // Also the size query (a zero-length buffer) that comes before the real call.
        assert_eq!(
            rerr(rustix::fs::llistxattr(&p, &mut [0u8; 0][..])),
            Some(libc::EIO),
            "{mode:?}: listxattr size query"
        );
        assert_eq!(
            rerr(rustix::fs::lgetxattr(&p, "user.x", &mut [0u8; 0][..])),
            Some(libc::EIO),
            "{mode:?}: getxattr size query"
        );
        assert_eq!(
            xget_err(&s.m.path("good"), "user.x").err(),
            Some(libc::ENODATA),
            "{mode:?}"
        );
    }
}

#[test]
fn an_entry_that_cannot_be_looked_up_fails_the_listing_instead_of_vanishing() {
    for mode in MODES {
        let s = setup(mode);
        // The kernel asks for attributes with a listing's first chunk (readdirplus): an entry
        // whose lookup fails must not be dropped silently from the listing.
        let r = std::fs::read_dir(s.m.path("statdir")).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
        assert_listing_fails_or_is_complete(r, &["badstat", "ok"], mode);
        let err = std::fs::symlink_metadata(s.m.path("statdir/badstat")).expect_err("lstat badstat");
        assert_eq!(errno_of(err), libc::EIO, "{mode:?}");
        assert!(std::fs::symlink_metadata(s.m.path("statdir/ok")).is_ok(), "{mode:?}");
    }
}

/// A listing either fails with EIO or holds every name of `want`.
fn assert_listing_fails_or_is_complete(r: std::io::Result<Vec<std::fs::DirEntry>>, want: &[&str], mode: &[&str]) {
    match r {
        Err(e) => assert_eq!(errno_of(e), libc::EIO, "{mode:?}"),
        Ok(entries) => {
            let mut got: Vec<String> = entries
                .iter()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            got.sort();
            assert_eq!(got, want, "{mode:?}: a listing that succeeds must be complete");
        }
    }
}

/// An opaque marker that cannot be read (the layer fails the xattr read, or the lookup of the
/// `.wh..wh..opq` entry) makes the directory an error: never "not opaque", which would merge the
/// lower directory below and show what the marker may hide.
#[test]
fn an_opaque_marker_that_cannot_be_read_is_an_error_not_a_merge() {
    for mode in MODES {
        let s = setup(mode);
        // The premise: a directory whose markers read fine merges the lower one below.
        assert_eq!(names(&s.m.path("marks/plain")), ["below"], "{mode:?}");
        assert_eq!(
            std::fs::read(s.m.path("marks/plain/below")).unwrap(),
            b"merged from below"
        );
        for dir in ["marks/xdir", "marks/sdir"] {
            let what = format!("{mode:?}: {dir}");
            let err = std::fs::symlink_metadata(s.m.path(dir)).expect_err(&format!("{what}: lstat must fail"));
            assert_eq!(errno_of(err), libc::EIO, "{what}: lstat");
            let r = std::fs::read_dir(s.m.path(dir)).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
            match r {
                Err(e) => assert_eq!(errno_of(e), libc::EIO, "{what}: listing"),
                Ok(v) => panic!("{what}: listed as {v:?}"),
            }
            let hidden = format!("{dir}/hidden");
            let r = std::fs::read(s.m.path(&hidden));
            assert_eq!(err_code(r), Some(libc::EIO), "{what}: read of {hidden}");
            let r = std::fs::symlink_metadata(s.m.path(&hidden));
            assert_eq!(err_code(r), Some(libc::EIO), "{what}: lstat of {hidden}");
            // Creating in it would need to know what it hides too.
            let r = std::fs::write(s.m.path(&format!("{dir}/new")), b"x");
            assert_eq!(err_code(r), Some(libc::EIO), "{what}: create in it");
        }
        let r = std::fs::read_dir(s.m.path("marks")).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
        assert_listing_fails_or_is_complete(r, &["plain", "sdir", "xdir"], mode);
        assert!(!exists_raw(&s.l.up("marks/xdir")), "{mode:?}: something was copied up");
        assert!(!exists_raw(&s.l.up("marks/sdir")), "{mode:?}: something was copied up");
    }
}

/// Bytes the tiny upper holds.
const SMALL: usize = 4 << 20;

/// Layers whose upper and workdir live on a tmpfs mounted by the test (`opts`: its `-o size=`
/// value and any further options). Dropped in field order: the union, the tmpfs, the directories.
struct SmallUpper {
    m: Mount,
    _t: TmpfsGuard,
    l: Layers,
    /// The tmpfs, for calls straight to it.
    fs: PathBuf,
}

fn small_upper(opts: &str, mode: &[&str], lower: &[(&str, &[u8])]) -> SmallUpper {
    let mut l = Layers::new(1);
    for (rel, data) in lower {
        l.put(0, rel, data);
    }
    let fs = l.dir.path().join("small");
    let t = TmpfsGuard::mount(&fs, opts);
    l.upper = fs.join("upper");
    l.work = fs.join("work");
    std::fs::create_dir(&l.upper).unwrap();
    std::fs::create_dir(&l.work).unwrap();
    let m = l.mount(mode);
    SmallUpper { m, _t: t, l, fs }
}

/// Checks that what the upper file `stored` holds is what was written (`data`), page by page,
/// where a page is not a hole left by a failed write-back (zeros); returns the bytes of data.
fn assert_stored_is_written(stored: &[u8], data: &[u8], what: &str) -> usize {
    assert!(
        stored.len() <= data.len(),
        "{what}: the upper file grew past what was written"
    );
    let mut real = 0;
    for (i, page) in stored.chunks(4096).enumerate() {
        let want = &data[i * 4096..i * 4096 + page.len()];
        if page != want {
            assert!(
                page.iter().all(|b| *b == 0),
                "{what}: the upper holds bytes at {} that were never written",
                i * 4096
            );
        } else {
            real += page.len();
        }
    }
    assert!(real <= SMALL, "{what}: more data stored than the upper holds");
    real
}

/// A write the upper refuses (ENOSPC) reaches the application as that errno: buffered writes
/// report it at write() or at the latest at fsync() (or close() without fsync), direct writes
/// at the write. With `--no-passthrough` the daemon does the write (under the kernel's writeback
/// cache, so the buffered write() succeeds and the write-back fails). Nothing reports success
/// for data the upper does not hold.
#[test]
fn a_failing_write_to_the_upper_reaches_the_application() {
    let data = Rng::new(12).bytes(2 * SMALL);
    for mode in MODES {
        let s = small_upper("4m", mode, &[]);

        // Buffered writes, then fsync.
        let mut f = std::fs::File::create(s.m.path("buffered")).unwrap();
        let mut write_err = None;
        for chunk in data.chunks(256 << 10) {
            if let Err(e) = f.write_all(chunk) {
                write_err = Some(errno_of(e));
                break;
            }
        }
        let sync = err_code(f.sync_all());
        match write_err {
            Some(e) => assert_eq!(e, libc::ENOSPC, "{mode:?}: buffered write"),
            None => assert_eq!(
                sync,
                Some(libc::ENOSPC),
                "{mode:?}: fsync after writing twice the upper's size into the page cache"
            ),
        }
        drop(f);
        let stored = std::fs::read(s.l.up("buffered")).unwrap();
        assert_stored_is_written(&stored, &data, &format!("{mode:?}: buffered"));
        std::fs::remove_file(s.m.path("buffered")).unwrap();

        // Buffered writes, then close without fsync: close reports the failed write-back.
        let mut f = std::fs::File::create(s.m.path("closed")).unwrap();
        let mut write_err = None;
        for chunk in data[..SMALL * 3 / 2].chunks(256 << 10) {
            if let Err(e) = f.write_all(chunk) {
                write_err = Some(errno_of(e));
                break;
            }
        }
        let fd = f.into_raw_fd();
        // SAFETY: `fd` was just taken from the File, which no longer owns it; closed once here.
        let closed = unsafe { libc::close(fd) };
        let close_err = (closed != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
        assert_eq!(
            write_err.or(close_err),
            Some(libc::ENOSPC),
            "{mode:?}: neither write() nor close() reported the failed write"
        );
        let stored = std::fs::read(s.l.up("closed")).unwrap();
        assert_stored_is_written(&stored, &data, &format!("{mode:?}: closed"));
        std::fs::remove_file(s.m.path("closed")).unwrap();

        // Direct writes (no page cache): each reports ENOSPC itself, or a count of bytes that are
        // in the upper.
        let fd = rustix::fs::open(
            s.m.path("direct"),
            rustix::fs::OFlags::RDWR
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::DIRECT
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o644),
        )
        .unwrap();
        // First in requests the daemon gets whole (768 KiB), then page by page until not one
        // more page fits: each pass must end with ENOSPC, never with a write that reports
        // success (or nothing) for bytes the upper does not hold.
        let mut off = 0usize;
        for size in [768 << 10, 4096] {
            let err = loop {
                assert!(off < data.len(), "{mode:?}: wrote twice the upper's size with O_DIRECT");
                let chunk = AlignedBuf::from_slice(&data[off..(off + size).min(data.len())]);
                match rustix::io::pwrite(&fd, chunk.as_ref(), off as u64) {
                    Ok(0) => panic!("{mode:?}: O_DIRECT write at {off} wrote nothing and reported no error"),
                    Ok(n) => {
                        let stored = std::fs::read(s.l.up("direct")).unwrap();
                        assert!(
                            stored.len() >= off + n && stored[off..off + n] == data[off..off + n],
                            "{mode:?}: O_DIRECT write at {off} reported {n} bytes the upper does not hold"
                        );
                        off += n;
                    }
                    Err(e) => break e.raw_os_error(),
                }
            };
            assert_eq!(err, libc::ENOSPC, "{mode:?}: O_DIRECT write of {size} bytes at {off}");
            assert!(
                off <= SMALL,
                "{mode:?}: {off} bytes reported written into a {SMALL}-byte upper"
            );
        }
        // A failed request leaves no longer file behind (the kernel truncates what it may have
        // extended).
        assert_eq!(
            std::fs::metadata(s.l.up("direct")).unwrap().len(),
            off as u64,
            "{mode:?}: upper size"
        );
        // What was reported written reads back, directly and from the upper.
        let mut back = AlignedBuf::new(off);
        let n = rustix::io::pread(&fd, back.as_mut(), 0).unwrap();
        assert!(
            n == off && back.as_ref() == &data[..off],
            "{mode:?}: O_DIRECT read-back"
        );
        drop(fd);
        let stored = std::fs::read(s.l.up("direct")).unwrap();
        assert!(stored[..off] == data[..off], "{mode:?}: upper file");
        assert!(daemon_alive(&s.m), "{mode:?}: the daemon died");
    }
}

/// An xattr the upper refuses (a tmpfs with room for few inodes has little room for xattrs:
/// ENOSPC) reaches the application as the errno the upper gives for the same call, on a new
/// file, a directory and a lower file (copied up first); the value is not there afterwards, and
/// a small value still sets.
#[test]
fn a_failing_setxattr_on_the_upper_reaches_the_application() {
    let big = vec![b'v'; 48 << 10];
    for mode in MODES {
        let s = small_upper("4m,nr_inodes=32", mode, &[("low", b"lower file")]);
        // The errno the upper gives for this value itself.
        let scratch = s.fs.join("scratch");
        std::fs::write(&scratch, b"").unwrap();
        let want = rerr(xset(&scratch, "user.big", &big));
        let small_ok = xset(&scratch, "user.small", b"fits").is_ok();
        std::fs::remove_file(&scratch).unwrap();
        assert!(want.is_some(), "the tmpfs took a 48 KiB xattr: no failure to inject");

        std::fs::write(s.m.path("new"), b"new file").unwrap();
        std::fs::create_dir(s.m.path("dir")).unwrap();
        for rel in ["new", "dir", "low"] {
            let p = s.m.path(rel);
            assert_eq!(
                rerr(xset(&p, "user.big", &big)),
                want,
                "{mode:?}: setxattr of 48 KiB on {rel}"
            );
            assert_eq!(
                xget_err(&p, "user.big").err(),
                Some(libc::ENODATA),
                "{mode:?}: {rel} shows a value that was refused"
            );
            assert!(!xlist(&p).contains(&"user.big".to_string()), "{mode:?}: {rel}: listed");
            if exists_raw(&s.l.up(rel)) {
                assert_eq!(xget(&s.l.up(rel), "user.big"), None, "{mode:?}: upper {rel}");
            }
            if small_ok {
                xset(&p, "user.small", b"fits").unwrap_or_else(|e| panic!("{mode:?}: small xattr on {rel}: {e}"));
                assert_eq!(xget(&p, "user.small").as_deref(), Some(&b"fits"[..]), "{mode:?}: {rel}");
            }
        }
        assert_eq!(std::fs::read(s.m.path("low")).unwrap(), b"lower file", "{mode:?}");
        assert_eq!(std::fs::read(s.l.lower(0, "low")).unwrap(), b"lower file", "{mode:?}");
    }
}
