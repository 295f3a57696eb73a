//! The request table: one method per FUSE request, each converting its arguments, calling the
//! union and answering through the helpers of `reply.rs`.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use super::reply::*;
use super::{FuseAdapter, init, ioctl, passthrough};
use crate::error::Errno;
use crate::union::SetAttr;

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> std::io::Result<()> {
        // Backing files need CAP_SYS_ADMIN (checked again by the kernel at each registration).
        let want_pt = self.opts.passthrough && self.union.writable() && crate::sys::privileged();
        let pt = init::negotiate(
            cfg,
            want_pt,
            self.union.upper_is_stacked(),
            self.opts.readdirplus_always,
        );
        self.passthrough.enable(pt);
        let wb = !pt && self.opts.writeback_cache && init::negotiate_writeback(cfg);
        self.union.set_rw_upper_fds(pt || wb);
        let acl = self.union.acl_supported() && init::negotiate_acl(cfg);
        if self.union.config().acl && !acl {
            tracing::info!("POSIX ACLs are off: the upper's filesystem (or the kernel) does not support them");
        }
        self.union.set_posix_acl(acl);
        tracing::debug!(passthrough = pt, writeback_cache = wb, acl, "negotiated");
        Ok(())
    }

    fn destroy(&mut self) {
        self.destroyed.store(true, Ordering::SeqCst);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(parent.0, name) {
            Ok(a) => self.reply_entry(reply, &a),
            // A negative entry: the kernel caches the miss for the TTL (node id 0).
            Err(e) if e == Errno::ENOENT => {
                let mut neg = file_attr(&negative_attr());
                neg.ino = INodeNo(0);
                reply.entry(&self.opts.ttl, &neg, Generation(0));
            }
            Err(e) => reply.error(failed("lookup", (parent.0, name), e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.fstat(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(failed("getattr", ino.0, e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
        };
        match self.union.setattr(&ctx(req), ino.0, &set, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(failed("setattr", (ino.0, set), e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(failed("readlink", ino.0, e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let r = self
            .union
            .mknod(&self.creator(req, umask), parent.0, name, mode, rdev as u64);
        self.entry(reply, r, "mknod", (parent.0, name));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.union.mkdir(&self.creator(req, umask), parent.0, name, mode);
        self.entry(reply, r, "mkdir", (parent.0, name));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.union.unlink(parent.0, name), "unlink", (parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.union.rmdir(parent.0, name), "rmdir", (parent.0, name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let r = self.union.symlink(&ctx(req), parent.0, link_name, target.as_os_str());
        self.entry(reply, r, "symlink", (parent.0, link_name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.union.rename(parent.0, name, newparent.0, newname, flags.bits());
        empty(reply, r, "rename", (parent.0, name, newparent.0, newname, flags.bits()));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.entry(
            reply,
            self.union.link(ino.0, newparent.0, newname),
            "link",
            (ino.0, newparent.0, newname),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let o = match self.union.open_file(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(failed("open", (ino.0, flags.0), e)),
        };
        let mode = self.open_mode(ino.0, o, flags.0, false, |fd| reply.open_backing(fd));
        match mode {
            passthrough::Mode::Passthrough(id) => reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id),
            passthrough::Mode::Served(flags) => reply.opened(FileHandle(o.fh), flags),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            match self.union.read(fh.0, offset, &mut buf[..size as usize]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(failed("read", (fh.0, offset, size), e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel derives an O_APPEND offset from its cached size, which passthrough writes
        // through other opens may have outdated: append at the real end of file instead.
        let append = flags.0 & libc::O_APPEND != 0 && self.passthrough.enabled();
        // Write-back of the page cache (a shared mapping) is no write of the caller's: the
        // kernel drops no privileges for it.
        let by_caller = !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let r = if by_caller {
            self.drop_privs(req, ino, fh)
        } else {
            Ok(())
        };
        let r = r.and_then(|()| {
            if append {
                self.union.append(fh.0, data)
            } else {
                self.union.write(fh.0, offset, data)
            }
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(failed("write", (fh.0, offset, data.len()), e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.union.fsync(fh.0, datasync), "fsync", fh.0);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            // The kernel may keep listings: every change reaches the directory through the
            // mount (which invalidates its cache), and our offsets keep concurrent listings from
            // mixing into the cache (see `Union::readdir_chunk`).
            // Changes to a lower (`--revalidate`) do not pass through the mount: no cache then.
            Ok(fh) if self.union.config().revalidate => reply.opened(FileHandle(fh), FopenFlags::empty()),
            // A listing that updates the access time must reach us (see `Union::readdir_into`).
            Ok(fh) if self.union.listing_updates_atime(ino.0) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_CACHE_DIR)
            }
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(failed("opendir", ino.0, e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        let mut sink = Listing(reply);
        match self.union.readdir_into(fh.0, offset, false, &mut sink) {
            Ok(()) => sink.0.ok(),
            Err(e) => sink.0.error(failed("readdir", ino, e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        let mut sink = ListingPlus { reply, adapter: self };
        match self.union.readdir_into(fh.0, offset, true, &mut sink) {
            Ok(()) => sink.reply.ok(),
            Err(e) => sink.reply.error(failed("readdirplus", ino, e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.union.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.union.fsyncdir(ino.0), "fsyncdir", ino.0);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(failed("statfs", (), e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.union.setxattr(&ctx(req), ino.0, name, value, flags),
            "setxattr",
            (ino.0, name),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.union.getxattr(ino.0, name), "getxattr", (ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.union.listxattr(ino.0).map(|names| {
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(n.as_encoded_bytes());
                out.push(0);
            }
            out
        });
        xattr_reply(reply, size, r, "listxattr", ino.0);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.union.removexattr(ino.0, name), "removexattr", (ino.0, name));
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing to flush (writes go straight to the upper); ENOSYS once stops the upcall on
        // every close.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.error(fuser::Errno::ENOSYS);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let creator = self.creator(req, umask);
        let (a, o) = match self.union.create_file(&creator, parent.0, name, mode, flags) {
            Ok(r) => r,
            Err(e) => return reply.error(failed("create", (parent.0, name, flags), e)),
        };
        let attr = file_attr(&a);
        // The attributes of a file just made may be cached as any others, even when it is open
        // for writing through passthrough (`attr_ttl`): nothing can have mapped it yet, and
        // every change of its size or data that can follow (a write, a truncate) makes the
        // kernel drop or replace them. Cached, they spare a GETATTR for the permission check
        // of the open itself.
        match self.open_mode(a.ino, o, flags, true, |fd| reply.open_backing(fd)) {
            passthrough::Mode::Passthrough(id) => reply.created_passthrough(
                &self.opts.ttl,
                &attr,
                Generation(0),
                FileHandle(o.fh),
                FopenFlags::empty(),
                &id,
            ),
            passthrough::Mode::Served(flags) => {
                reply.created(&self.attr_ttl(a.ino), &attr, Generation(0), FileHandle(o.fh), flags)
            }
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .drop_privs(req, ino, fh)
            .and_then(|()| self.union.fallocate(fh.0, offset, length, mode));
        empty(reply, r, "fallocate", (fh.0, offset, length, mode));
    }

    /// Only the inode-flag requests, which the kernel makes itself for FS_IOC_GETFLAGS and
    /// FS_IOC_SETFLAGS on any file of the mount (through a private open of the file, with the
    /// caller's ownership and CAP_LINUX_IMMUTABLE already checked). Every other ioctl is
    /// refused with ENOTTY. FS_IOC_FIEMAP never arrives: the kernel answers it for FUSE files
    /// itself (EOPNOTSUPP), and a restricted FUSE ioctl could not carry its extent array.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let r =
            ioctl::FlagsRequest::decode(cmd, in_data).and_then(|req| self.inode_flags_request(ino.0, req, out_size));
        match r {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(failed("ioctl", (ino.0, cmd), e)),
        }
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match self.union.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(failed("lseek", (fh.0, offset, whence), e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.drop_privs(req, ino_out, fh_out).and_then(|()| {
            self.union
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(failed("copy_file_range", (fh_in.0, fh_out.0, len), e)),
        }
    }
}
