//! Operations on existing objects: attributes, open files, directory listings, xattrs, statfs.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, SeekFrom, Timespec, Timestamps};

use super::copy_up::Data;
use super::handles::{FileSource, OpenFile};
use super::node::Node;
use super::{Ctx, Union};
use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsResult};
use crate::image::cache::LastPiece;
use crate::sys::Target;

/// A change of attributes (each `None` leaves that attribute alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// `Some(None)` means "now".
    pub atime: Option<Option<SystemTime>>,
    pub mtime: Option<Option<SystemTime>>,
}

impl SetAttr {
    /// Nothing to change: what the kernel sends to drop privileges (see
    /// [`Union::drop_privs_for_write`]).
    pub fn is_empty(&self) -> bool {
        *self == SetAttr::default()
    }
}

/// An open file handle and what its fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The fd is open read-write on the upper copy (see [`Union::set_rw_upper_fds`]).
    pub shared_rw: bool,
    /// The object is in the upper layer; otherwise its content is a lower's and never changes
    /// while mounted.
    pub in_upper: bool,
    /// The object is also open through a handle from before its copy-up, which goes on reading
    /// the lower content: this open must not share the kernel's page cache with it.
    pub beside_older: bool,
    /// Writes must reach the daemon as the caller makes them (no FUSE passthrough, no page
    /// cache): the file is set-group-ID without group execute, a bit the kernel's FUSE layer
    /// leaves to us to drop (see `privs.rs`), or append-only, and our fd appends.
    pub daemon_writes: bool,
    /// What reads do to the access time, so what the kernel may cache (see `atime.rs`).
    pub atime: super::ReadAtime,
}

/// Filesystem statistics (of the upper, or of the top lower without one).
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

fn ts(t: Option<SystemTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(t) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut s = -(d.as_secs() as i64);
                    let mut n = d.subsec_nanos() as i64;
                    if n > 0 {
                        s -= 1;
                        n = 1_000_000_000 - n;
                    }
                    (s, n)
                }
            };
            Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

const OMIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: rustix::fs::UTIME_OMIT,
};

impl Union {
    /// Changes attributes (copying the object up first). `fh` is an open handle, if the change
    /// came through one (ftruncate on a file whose name is gone).
    pub fn setattr(&self, ctx: &Ctx, ino: u64, set: &SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        self.upper_index()?;
        let node = self.node(ino)?;
        if set.is_empty() {
            return self.drop_privs_for_write(ctx, &node, fh);
        }
        self.may_set_attr(&node, set)?;
        let truncating_to_zero = set.size == Some(0) && set.mode.is_none() && set.uid.is_none() && set.gid.is_none();
        let data = match set.size {
            None => Data::Meta,
            Some(0) if truncating_to_zero => Data::Empty,
            Some(_) => Data::All,
        };
        self.copy_up_with(&node, data)?;
        // Filling a metacopy file's data (another thread's first write) puts the file's mode
        // and times back when it is done, which would undo a change made meanwhile: wait for it.
        // (The state's read lock is let go first: the fill takes the state to write when done.)
        let metacopy = node.state.read().is_metacopy();
        let _fill = metacopy.then(|| node.copy_lock.lock());
        let kind = node.state.read().kind;
        let loc = self.locate(&node, fh)?;
        // Acts on the object itself, never on a symlink's target.
        let (dir, entry, at) = loc.at()?;
        if set.uid.is_some() || set.gid.is_some() {
            // Owners given through the view are stored as the layers carry them.
            rustix::fs::chownat(
                dir,
                &entry,
                set.uid.map(|u| rustix::fs::Uid::from_raw(self.idmap.uid_to_host(u))),
                set.gid.map(|g| rustix::fs::Gid::from_raw(self.idmap.gid_to_host(g))),
                at,
            )?;
        }
        if let Some(m) = set.mode {
            if kind == Kind::Symlink {
                return Err(Errno::ENOTSUP);
            }
            rustix::fs::chmodat(dir, &entry, Mode::from_raw_mode(m & 0o7777), AtFlags::empty())?;
        }
        if let Some(size) = set.size {
            match fh.and_then(|fh| self.handles.file(fh).ok()) {
                Some(f) if f.fd().is_ok_and(is_writable) => rustix::fs::ftruncate(f.fd()?, size)?,
                _ => {
                    let w = loc.open(OFlags::WRONLY)?;
                    rustix::fs::ftruncate(&w, size)?;
                }
            }
            self.drop_privs_at(ctx, &loc)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = Timestamps {
                last_access: set.atime.map(ts).unwrap_or(OMIT),
                last_modification: set.mtime.map(ts).unwrap_or(OMIT),
            };
            rustix::fs::utimensat(dir, &entry, &times, at)?;
        }
        self.attr_of(&node)
    }

    /// Opens `ino`; a write or truncating open copies it up first. Returns a file handle.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        self.open_file(ino, flags).map(|o| o.fh)
    }

    /// [`Union::open`], saying also where the handle's fd points (see [`Opened`]).
    pub fn open_file(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let node = self.node(ino)?;
        let flags = OFlags::from_bits_retain(flags as u32);
        let writes = flags.intersects(OFlags::WRONLY | OFlags::RDWR) || flags.contains(OFlags::TRUNC);
        if writes {
            self.upper_index()?;
            self.copy_up_with(
                &node,
                if flags.contains(OFlags::TRUNC) {
                    Data::Empty
                } else {
                    Data::All
                },
            )?;
        }
        // A metacopy file reads its data from the lower until its data is copied up.
        let in_upper = {
            let s = node.state.read();
            Some(s.layer()) == self.upper && !s.is_metacopy()
        };
        // The kernel hands us explicit offsets: O_APPEND on our fd would override them.
        // O_DIRECT stays off our fd (see `SERVED_FD_FLAGS`).
        let mut f = flags & (OFlags::RWMODE | OFlags::TRUNC | OFlags::NONBLOCK | super::SERVED_FD_FLAGS);
        // The caller's O_NOATIME too: our reads of the file are its reads (a passthrough backing
        // file is reopened by the kernel with each caller's own flags, so sharing ours is safe).
        if !in_upper || self.upper_fds_noatime() || flags.contains(OFlags::NOATIME) {
            f |= OFlags::NOATIME;
        }
        let (loc, layer) = self.locate_data(&node)?;
        if let (false, Some(img)) = (in_upper, loc.image_file().cloned()) {
            self.record_open(&node);
            return Ok(Opened {
                fh: self.new_handle(FileSource::Image(img), node, layer),
                shared_rw: false,
                in_upper: false,
                beside_older: false,
                daemon_writes: false,
                atime: super::ReadAtime::Untouched,
            });
        }
        let mut shared_rw = false;
        let rw = (f & !OFlags::RWMODE) | OFlags::RDWR;
        let (ofd, appending) = if in_upper && self.agreed.rw_upper_fds.load(Ordering::Relaxed) {
            // The caller's access mode is enforced by the kernel on its own file; ours may
            // then serve every later open of the object (a passthrough backing file).
            match loc.open(rw) {
                Ok(fd) => {
                    shared_rw = true;
                    (fd, false)
                }
                Err(_) => open_as_asked(&loc, rw, flags).or_else(|_| open_as_asked(&loc, f, flags))?,
            }
        } else {
            open_as_asked(&loc, f, flags)?
        };
        let daemon_writes = in_upper && (appending || sgid_without_group_exec(&ofd));
        let atime = if in_upper {
            self.read_atime(&ofd)
        } else {
            super::ReadAtime::Untouched
        };
        let beside_older = in_upper
            && self
                .handles
                .files_of(node.ino)
                .iter()
                .any(|f| f.layer != node_layer(&node));
        Ok(Opened {
            fh: self.new_handle(FileSource::Fd(ofd), node, layer),
            shared_rw,
            in_upper,
            beside_older,
            daemon_writes,
            atime,
        })
    }

    /// Open upper files read-write whatever access an open asks for, so that one fd can serve
    /// every open of the object (the FUSE adapter's passthrough needs this), and the kernel's
    /// writeback cache can read through an open that asked to write only.
    pub fn set_rw_upper_fds(&self, on: bool) {
        self.agreed.rw_upper_fds.store(on, Ordering::Relaxed);
    }

    pub(crate) fn new_file_handle(&self, fd: OwnedFd, node: Arc<Node>) -> u64 {
        let layer = node.state.read().layer();
        self.new_handle(FileSource::Fd(fd), node, layer)
    }

    /// A handle reading `source`, which is in `layer` (a metacopy file's lower, for its data).
    fn new_handle(&self, source: FileSource, node: Arc<Node>, layer: usize) -> u64 {
        self.handles.open_file(OpenFile {
            source,
            layer,
            node,
            last_piece: LastPiece::default(),
        })
    }

    /// Runs `f` on the fd of file handle `fh`.
    pub fn with_file<R>(&self, fh: u64, f: impl FnOnce(&OwnedFd) -> FsResult<R>) -> FsResult<R> {
        f(self.handles.file(fh)?.fd()?)
    }

    /// Reads into `buf` at `off`; returns the byte count.
    pub fn read(&self, fh: u64, off: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.handles.file(fh)?.read_at(buf, off)
    }

    /// Writes `data` at `off`; returns the byte count.
    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> FsResult<usize> {
        self.with_file(fh, |fd| {
            let mut done = 0;
            while done < data.len() {
                match rustix::io::pwrite(fd, &data[done..], off + done as u64)? {
                    // No progress and no error: report it rather than spin.
                    0 => return Err(Errno::EIO),
                    n => done += n,
                }
            }
            Ok(done)
        })
    }

    /// Appends `data` at the file's end of file as it is now; returns the byte count.
    pub fn append(&self, fh: u64, data: &[u8]) -> FsResult<usize> {
        self.with_file(fh, |fd| {
            let mut done = 0;
            while done < data.len() {
                let buf = [std::io::IoSlice::new(&data[done..])];
                match rustix::io::pwritev2(fd, &buf, 0, rustix::io::ReadWriteFlags::APPEND)? {
                    0 => return Err(Errno::EIO),
                    n => done += n,
                }
            }
            Ok(done)
        })
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: u64) {
        self.handles.release(fh);
    }

    /// Flushes a file's data (and metadata unless `datasync`) to the upper's disk, and the name a
    /// copy-up gave it.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let f = self.handles.file(fh)?;
        let node = &f.node;
        // A file of an image layer holds nothing to sync.
        let Ok(fd) = f.fd() else { return Ok(()) };
        if datasync {
            rustix::fs::fdatasync(fd)?
        } else {
            rustix::fs::fsync(fd)?
        }
        if node.name_unsynced.swap(false, Ordering::Relaxed) {
            let parent = self.live_name(node).and_then(|(p, _)| self.nodes.get(p));
            if let Some(pdir) = parent.and_then(|p| self.upper_dir_fd(&p)) {
                self.sync_dir(pdir.as_fd());
            }
        }
        Ok(())
    }

    /// fallocate(2) on an open file.
    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> FsResult<()> {
        self.with_file(fh, |fd| {
            rustix::fs::fallocate(fd, FallocateFlags::from_bits_retain(mode as u32), off, len)?;
            Ok(())
        })
    }

    /// lseek(2) for SEEK_DATA / SEEK_HOLE (other whences the kernel handles itself).
    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> FsResult<i64> {
        let f = self.handles.file(fh)?;
        if let FileSource::Image(i) = &f.source {
            // An image layer's files are data throughout (their zeros are data).
            let (size, off) = (i.entry.size as i64, off.max(0));
            return match whence {
                libc::SEEK_DATA if off < size => Ok(off),
                libc::SEEK_HOLE if off < size => Ok(size),
                libc::SEEK_DATA | libc::SEEK_HOLE => Err(Errno::new(libc::ENXIO)),
                libc::SEEK_SET => Ok(off),
                libc::SEEK_END => Ok(size + off),
                _ => Err(Errno::EINVAL),
            };
        }
        self.with_file(fh, |fd| {
            let pos = match whence {
                libc::SEEK_DATA => SeekFrom::Data(off.max(0) as u64),
                libc::SEEK_HOLE => SeekFrom::Hole(off.max(0) as u64),
                libc::SEEK_SET => SeekFrom::Start(off as u64),
                libc::SEEK_END => SeekFrom::End(off),
                _ => return Err(Errno::EINVAL),
            };
            Ok(rustix::fs::seek(fd, pos)? as i64)
        })
    }

    /// copy_file_range(2) between two open files.
    pub fn copy_file_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> FsResult<usize> {
        let fin = self.handles.file(fh_in)?;
        let fout = self.handles.file(fh_out)?;
        let (mut a, mut b) = (off_in, off_out);
        let Ok(input) = fin.fd() else {
            // From a file of an image layer: read it and write what was read.
            let mut buf = vec![0u8; (len as usize).min(1 << 20)];
            let n = fin.read_at(&mut buf, off_in)?;
            return Ok(rustix::io::pwrite(fout.fd()?, &buf[..n], off_out)?);
        };
        Ok(rustix::fs::copy_file_range(
            input,
            Some(&mut a),
            fout.fd()?,
            Some(&mut b),
            len as usize,
        )?)
    }

    /// Syncs a directory's upper copy, if it has one.
    pub fn fsyncdir(&self, ino: u64) -> FsResult<()> {
        let node = self.node(ino)?;
        if let Some(fd) = self.upper_dir_fd(&node) {
            let d = rustix::fs::openat(
                &*fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rustix::fs::fsync(&d)?;
        }
        Ok(())
    }

    /// statfs of the upper, or of the top lower without one.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let s = match self.layers[0].root.fs_fd() {
            Some(fd) => rustix::fs::fstatvfs(&*fd)?,
            None => return Err(Errno::ENOSYS),
        };
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namemax as u32,
            frsize: s.f_frsize as u32,
        })
    }

    /// Whether the upper sits on a stacking filesystem (overlayfs, FUSE, eCryptfs): a file
    /// there cannot back a FUSE passthrough unless the kernel allows two levels of stacking.
    pub fn upper_is_stacked(&self) -> bool {
        const STACKING: [i64; 3] = [0x794c_7630, 0x6573_5546, 0xf15f];
        self.upper
            .and_then(|u| self.layers[u].root.fs_fd())
            .is_some_and(|fd| rustix::fs::fstatfs(&*fd).is_ok_and(|s| STACKING.contains(&s.f_type)))
    }

    // ---- xattrs -----------------------------------------------------------------------------

    /// An open handle on the object as it is now: the cheapest way to it.
    fn open_as_it_is(&self, node: &Node) -> Option<Arc<OpenFile>> {
        let layer = node.state.read().layer();
        self.handles.files_of(node.ino).into_iter().find(|o| o.layer == layer)
    }

    /// Runs `f` on the way xattr calls reach `node` (an object on a filesystem: the upper's).
    fn xattr_target<R>(&self, node: &Node, f: impl FnOnce(&Target<'_>) -> FsResult<R>) -> FsResult<R> {
        if let Some(fd) = self.open_as_it_is(node).as_ref().and_then(|o| o.fd().ok()) {
            return f(&Target::Open(fd.as_fd()));
        }
        f(&self.locate(node, None)?.target()?)
    }

    /// Reads an xattr's value. Private ones (overlay markers, our origin) read as absent.
    /// The value comes from one read of the layer, so a size query answered from it can never
    /// disagree with the value of the same call, whatever a concurrent writer does.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if crate::format::xattrs::is_private(name) {
            return Err(Errno::ENODATA);
        }
        let node = self.node(ino)?;
        if let Some(open) = self.open_as_it_is(&node) {
            if let Ok(fd) = open.fd() {
                return Ok(Target::Open(fd.as_fd()).read_xattr(name)?);
            }
        }
        Ok(self.locate(&node, None)?.read_xattr(name)?)
    }

    /// Lists xattr names, private ones left out.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<OsString>> {
        let node = self.node(ino)?;
        let names = match self.open_as_it_is(&node).as_ref().and_then(|o| o.fd().ok()) {
            Some(fd) => Target::Open(fd.as_fd()).list_xattrs()?,
            None => self.locate(&node, None)?.list_xattrs()?,
        };
        Ok(names
            .into_iter()
            .filter(|n| !crate::format::xattrs::is_private(n))
            .collect())
    }

    /// Sets an xattr (copying up first). Private names are refused with EPERM.
    pub fn setxattr(&self, ctx: &Ctx, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        if crate::format::xattrs::is_private(name) {
            return Err(Errno::EPERM);
        }
        self.upper_index()?;
        let node = self.node(ino)?;
        self.may_set_xattr(&node)?;
        self.copy_up_with(&node, Data::Meta)?;
        if name == super::acl::ACCESS {
            // Before the ACL, as kernel overlayfs does it: the ACL's mode update keeps the bit.
            let loc = self.locate(&node, None)?;
            let st = loc.stat()?;
            if super::privs::acl_kills_sgid(ctx, &st) {
                let (dir, entry, _) = loc.at()?;
                let mode = Mode::from_raw_mode(st.st_mode & 0o7777 & !0o2000);
                rustix::fs::chmodat(dir.as_fd(), &entry, mode, AtFlags::empty())?;
            }
        }
        self.xattr_target(&node, |t| {
            Ok(t.set_xattr(name, value, rustix::fs::XattrFlags::from_bits_retain(flags as u32))?)
        })
    }

    /// Removes an xattr (copying up first).
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        if crate::format::xattrs::is_private(name) {
            return Err(Errno::EPERM);
        }
        self.upper_index()?;
        let node = self.node(ino)?;
        // Nothing to remove means nothing to copy up.
        self.xattr_target(&node, |t| t.get_xattr(name)?.map(|_| ()).ok_or(Errno::ENODATA))?;
        self.may_set_xattr(&node)?;
        self.copy_up_with(&node, Data::Meta)?;
        self.xattr_target(&node, |t| Ok(t.remove_xattr(name)?))
    }
}

/// Opens `loc` with our flags `f` for a caller that asked for `asked`. An append-only file
/// (`chattr +a`) refuses write opens without O_APPEND: then ours keeps the caller's O_APPEND,
/// every write through it appends, as the flag demands, and the second value is true (such a
/// handle's writes must come from the caller, never rewritten from the page cache).
fn open_as_asked(loc: &super::Loc, f: OFlags, asked: OFlags) -> FsResult<(OwnedFd, bool)> {
    match loc.open(f) {
        Err(rustix::io::Errno::PERM) if asked.contains(OFlags::APPEND) => Ok((loc.open(f | OFlags::APPEND)?, true)),
        r => Ok((r?, false)),
    }
}

/// A regular file that is set-group-ID but not executable by its group.
fn sgid_without_group_exec(fd: &OwnedFd) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|st| st.st_mode & 0o172010 == 0o102000)
}

fn node_layer(node: &Node) -> usize {
    node.state.read().layer()
}

fn is_writable(fd: &OwnedFd) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.intersects(OFlags::WRONLY | OFlags::RDWR))
}

/// What an xattr read (a value, or the list of names) answers for a caller's buffer of `size`
/// bytes: the size needed when `size` is 0, else the bytes, or ERANGE when they do not fit.
pub enum XattrAnswer {
    Size(u32),
    Bytes(Vec<u8>),
}

impl XattrAnswer {
    pub fn for_buffer(bytes: Vec<u8>, size: u32) -> FsResult<XattrAnswer> {
        match size {
            0 => Ok(XattrAnswer::Size(u32::try_from(bytes.len()).map_err(|_| Errno::E2BIG)?)),
            s if bytes.len() > s as usize => Err(Errno::ERANGE),
            _ => Ok(XattrAnswer::Bytes(bytes)),
        }
    }
}
