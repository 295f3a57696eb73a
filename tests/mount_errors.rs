//! A failing layer: when a system call on a layer fails, the application gets that errno (or
//! EIO), never a short or empty success. The lower layer here is a tiny FUSE filesystem served
//! by this test process, whose file reads past 64 KiB, one directory's listing and one file's
//! xattrs fail with EIO, as a disk with bad sectors would.

mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
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

fn attr(ino: u64) -> Option<FileAttr> {
    let (kind, size, perm) = match ino {
        1 | BAD_DIR | STAT_DIR => (FileType::Directory, 0, 0o755),
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
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (BAD, FileType::RegularFile, "bad"),
            (GOOD, FileType::RegularFile, "good"),
            (BAD_DIR, FileType::Directory, "baddir"),
            (BAD_XATTR, FileType::RegularFile, "badxattr"),
            (STAT_DIR, FileType::Directory, "statdir"),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        if ino.0 == BAD_XATTR && name == "user.x" {
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

/// A union whose only lower is the failing filesystem. The union's mount guard is dropped
/// before the failing one (field order).
struct Setup {
    m: Mount,
    _fail: FailMount,
    l: Layers,
}

fn setup(extra: &[&str]) -> Setup {
    let l = Layers::new(1);
    let fail = FailMount::start(&l.lowers[0]);
    let m = l.mount(extra);
    Setup { m, _fail: fail, l }
}

fn errno_of(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

#[test]
fn a_failing_read_of_a_lower_file_reaches_the_application_as_eio() {
    for mode in [&[][..], &["--no-passthrough"][..]] {
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
    let s = setup(&[]);
    let r = std::fs::OpenOptions::new().append(true).open(s.m.path("bad"));
    assert_eq!(
        r.map_err(errno_of).err(),
        Some(libc::EIO),
        "copy-up of a file that cannot be read"
    );
    assert!(!exists_raw(&s.l.up("bad")), "a partial copy was published");
    assert!(
        workdir_leftovers(&s.l.work).is_empty(),
        "the workdir kept a partial copy"
    );
    // The view is as before: the file is still the lower one.
    assert_eq!(lstat(&s.m.path("bad")).len(), BAD_SIZE);
}

#[test]
fn a_failing_directory_listing_is_an_error_not_an_empty_directory() {
    for mode in [&[][..], &["--no-passthrough"][..]] {
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
        assert_eq!(names(&s.m.mnt), ["bad", "baddir", "badxattr", "good", "statdir"]);
    }
}

#[test]
fn failing_xattr_calls_are_errors_not_empty_answers() {
    let s = setup(&[]);
    let p = s.m.path("badxattr");
    assert_eq!(xget_err(&p, "user.x").err(), Some(libc::EIO), "getxattr");
    let mut buf = vec![0u8; 1024];
    assert_eq!(
        rerr(rustix::fs::llistxattr(&p, &mut buf[..])),
        Some(libc::EIO),
        "listxattr"
    );
    assert_eq!(xget_err(&s.m.path("good"), "user.x").err(), Some(libc::ENODATA));
}

#[test]
fn an_entry_that_cannot_be_looked_up_fails_the_listing_instead_of_vanishing() {
    let s = setup(&[]);
    // The kernel asks for attributes with a listing's first chunk (readdirplus): an entry whose
    // lookup fails must not be dropped silently from the listing.
    let r = std::fs::read_dir(s.m.path("statdir")).and_then(|rd| rd.collect::<Result<Vec<_>, _>>());
    match r {
        Err(e) => assert_eq!(errno_of(e), libc::EIO),
        Ok(entries) => {
            let mut got: Vec<String> = entries
                .iter()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            got.sort();
            assert_eq!(got, ["badstat", "ok"], "a listing that succeeds must be complete");
        }
    }
    let err = std::fs::symlink_metadata(s.m.path("statdir/badstat")).expect_err("lstat badstat");
    assert_eq!(errno_of(err), libc::EIO);
    assert!(std::fs::symlink_metadata(s.m.path("statdir/ok")).is_ok());
}
