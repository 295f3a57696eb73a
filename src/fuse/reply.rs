//! Turning the union's answers into fuser's: attributes, listings, errors (one funnel that logs
//! every failed request), xattr and empty replies.

use std::time::SystemTime;

use fuser::{
    FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyXattr, Request,
    TimeOrNow,
};

use super::FuseAdapter;
use crate::attr::{Attr, Kind};
use crate::error::Errno;
use crate::union::{Ctx, DirEntry, DirSink, XattrAnswer};

pub(super) fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

/// The one way a failed request is answered: logged (at debug level, so `--log debug` shows
/// why an application got an error) with the operation, what it was about, the errno and, for
/// a failed system call, the place in the union core that made it. Misses (ENOENT) go to trace:
/// negative lookups are the normal case of every `$PATH` search and would drown the rest.
pub(super) fn failed(op: &'static str, about: impl std::fmt::Debug, e: Errno) -> fuser::Errno {
    let at = e.origin().map(|l| format!("{}:{}", l.file(), l.line()));
    let at = at.as_deref().unwrap_or("decided by the union");
    if e == Errno::ENOENT {
        tracing::trace!(op, ?about, errno = e.code(), at, "{e}");
    } else {
        tracing::debug!(op, ?about, errno = e.code(), at, "{e}");
    }
    fuser::Errno::from_i32(e.code())
}

/// A plain listing reply as the union's [`DirSink`].
pub(super) struct Listing(pub ReplyDirectory);

impl DirSink for Listing {
    fn add(&mut self, e: &DirEntry, _attr: Option<&Attr>) -> bool {
        !self.0.add(INodeNo(e.ino), e.offset, kind(e.kind), &e.name)
    }
}

/// A listing-with-attributes reply as the union's [`DirSink`].
pub(super) struct ListingPlus<'a> {
    pub reply: ReplyDirectoryPlus,
    pub adapter: &'a FuseAdapter,
}

impl DirSink for ListingPlus<'_> {
    fn add(&mut self, e: &DirEntry, attr: Option<&Attr>) -> bool {
        let Some(a) = attr else { return false };
        // One TTL covers the name and the attributes here: a file the kernel may be changing
        // behind our back (see `attr_ttl`) goes without, and is looked up again.
        !self.reply.add(
            INodeNo(a.ino),
            e.offset,
            &e.name,
            &self.adapter.attr_ttl(a.ino),
            &file_attr(a),
            Generation(0),
        )
    }
}

pub(super) fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

pub(super) fn time(t: Option<TimeOrNow>) -> Option<Option<SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => Some(t),
        TimeOrNow::Now => None,
    })
}

pub(super) fn empty(reply: ReplyEmpty, r: Result<(), Errno>, op: &'static str, about: impl std::fmt::Debug) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(failed(op, about, e)),
    }
}

/// Replies to an xattr read for a caller's buffer of `size` bytes (see `XattrAnswer`).
pub(super) fn xattr_reply(
    reply: ReplyXattr,
    size: u32,
    r: Result<Vec<u8>, Errno>,
    op: &'static str,
    about: impl std::fmt::Debug,
) {
    match r.and_then(|v| XattrAnswer::for_buffer(v, size)) {
        Ok(XattrAnswer::Size(n)) => reply.size(n),
        Ok(XattrAnswer::Bytes(v)) => reply.data(&v),
        Err(e) => reply.error(failed(op, about, e)),
    }
}

/// Attributes for a negative entry (only the TTL matters to the kernel).
pub(super) fn negative_attr() -> Attr {
    Attr {
        ino: 0,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        kind: Kind::File,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
    }
}
