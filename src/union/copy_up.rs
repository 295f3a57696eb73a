//! Copy-up: moving a lower object into the upper before its first change.
//!
//! The copy is built in the workdir under a temporary name, completely (data, xattrs, owner,
//! mode, times, with data fsynced unless `--volatile`), and published by one `rename` into the
//! upper parent, so a crash at any step leaves the view as it was. Parents go first. Copy-up of
//! one object is serialised by its `copy_lock`; readers keep using the lower until the rename.
//!
//! A lower file with several hard links is copied once and the copy entered in the hard-link
//! index (`hardlinks.rs`), where every other name of it finds the copy when it is next looked
//! up, so the names never diverge and no copy-up searches a layer for them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat, Timespec, Timestamps};
use rustix::io::Errno as RErrno;

use super::node::{Node, ROOT};
use super::{Loc, Union};
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::sys::{self, Target};

/// What to copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Data {
    /// Everything.
    All,
    /// Metadata only: the caller truncates to zero right after (open with O_TRUNC).
    Empty,
    /// Metadata only, for a change of metadata: a regular file's data stays in the lower
    /// (`metacopy.rs`) where the mount allows it, else everything is copied.
    Meta,
}

impl Union {
    /// Makes sure `node` lives in the upper (copying up its parents first).
    pub(crate) fn copy_up(&self, node: &Arc<Node>) -> FsResult<()> {
        self.copy_up_with(node, Data::All)
    }

    /// Parents go first, top down, in a loop: the chain is as long as the tree is deep, which
    /// is input, so it is never a recursion.
    pub(crate) fn copy_up_with(&self, node: &Arc<Node>, data: Data) -> FsResult<()> {
        let upper = self.upper_index()?;
        loop {
            let mut chain = self.chain_to_upper(node, upper)?;
            // Two directories or more (the ancestors, and `node` if it is one) go up as one.
            let dirs = chain
                .iter()
                .rev()
                .take_while(|n| n.state.read().kind == Kind::Dir)
                .count();
            if dirs > 1 {
                let top: Vec<Arc<Node>> = chain.drain(chain.len() - dirs..).rev().collect();
                if !self.copy_up_dirs(&top, upper)? {
                    continue;
                }
            }
            let mut all = true;
            for (i, n) in chain.iter().enumerate().rev() {
                let data = if i == 0 { data } else { Data::All };
                if !self.copy_up_one(n, data, upper)? {
                    all = false;
                    break;
                }
            }
            if all {
                // Already up as a metacopy file: the data follows when it is needed.
                return match data {
                    Data::Meta => Ok(()),
                    Data::Empty => self.fill_data(node, true),
                    Data::All => self.fill_data(node, false),
                };
            }
        }
    }

    /// `node` and those of its ancestors that are not in the upper yet, `node` first.
    fn chain_to_upper(&self, node: &Arc<Node>, upper: usize) -> FsResult<Vec<Arc<Node>>> {
        let mut chain = Vec::new();
        let mut cur = Arc::clone(node);
        // Parents that loop (which nothing should make) end in an error, not in a hang.
        let most = self.nodes.len();
        while cur.ino != ROOT && cur.state.read().layer() != upper {
            let (parent, _) = self.live_name(&cur).ok_or(Errno::ENOENT)?;
            let next = self.node(parent)?;
            chain.push(cur);
            if chain.len() > most {
                return Err(Errno::EIO);
            }
            cur = next;
        }
        Ok(chain)
    }

    /// Copies up `node`, whose parent is in the upper. Returns false, having done nothing, if
    /// its parent is not in the upper (it was moved meanwhile): the caller starts again.
    fn copy_up_one(&self, node: &Arc<Node>, data: Data, upper: usize) -> FsResult<bool> {
        if node.state.read().layer() == upper {
            return Ok(true);
        }
        let _g = node.copy_lock.lock();
        let (kind, layer) = {
            let s = node.state.read();
            if s.layer() == upper {
                return Ok(true);
            }
            (s.kind, s.layer())
        };
        if node.ino == ROOT {
            return Ok(true);
        }
        let (parent_ino, name) = self.live_name(node).ok_or(Errno::ENOENT)?;
        let parent = self.node(parent_ino)?;
        if parent.state.read().layer() != upper {
            return Ok(false);
        }
        let pdir_layer = self.upper_layer_dir(&parent).ok_or(Errno::EIO)?;
        let pdir = pdir_layer.fs_fd().ok_or(Errno::EIO)?;
        let src = self.locate(node, None)?;
        let st = src.stat()?;
        let data = self.data_to_copy(data, kind, &st, &src);
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        if let Err(e) = self.build_copy(&src, &st, kind, work, &tmp, node.ino, data) {
            let _ = remove_any(work, &tmp, kind);
            return Err(e);
        }
        // Other names of a multiply-linked file find the copy through the index.
        let indexed = (kind == Kind::File && st.st_nlink > 1).then(|| self.hardlink_key(layer, &st));
        if let Some(key) = indexed {
            if let Err(e) = self.hardlinks.record(work, &tmp, key, &st) {
                let _ = remove_any(work, &tmp, kind);
                return Err(e.into());
            }
        }
        let new_fd = {
            let _ns = parent.ns.lock();
            // A copy-up is not a change of the parent: keep its times (as overlayfs does).
            let published = keep_dir_times(pdir.as_fd(), || {
                rustix::fs::renameat_with(work, &tmp, &*pdir, &name, rustix::fs::RenameFlags::NOREPLACE)
            });
            if let Err(e) = published {
                let _ = remove_any(work, &tmp, kind);
                if let Some(key) = indexed {
                    self.hardlinks.forget(key);
                }
                return Err(e.into());
            }
            if kind == Kind::Dir {
                self.sync_dir(pdir.as_fd());
            } else {
                // The copy's data is durable already; its name becomes so when the file is
                // fsynced (or its directory is), as on a plain filesystem.
                node.name_unsynced.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let new_fd = if kind == Kind::Dir {
                let fd = sys::open_path_dir(pdir.as_fd(), &name)?;
                Some(pdir_layer.fs_child(&name, fd)?)
            } else {
                None
            };
            let _ = self.with_index(&parent, |idx| idx.moved_up(&name, upper));
            new_fd
        };
        {
            let mut s = node.state.write();
            if data == Data::Meta {
                s.set_metacopy(upper, layer, false);
            } else {
                s.set_layer(upper);
            }
            if let (Some(d), Some(fd)) = (s.dir.as_mut(), new_fd) {
                d.layers.insert(0, (upper, fd));
            }
        }
        if indexed.is_some() {
            // This copies up the directories of the other names (a loop back into copy-up), but
            // only directories, which link nothing: two calls deep at most.
            self.link_known_names(node, &pdir, &name);
        }
        Ok(true)
    }

    /// What a copy-up asked for `data` copies of the object `st` at `src`. A file of an image
    /// layer is copied whole: its data lives in a compressed blob, which neither kernel
    /// overlayfs nor our offline layer tools read through a metacopy file.
    fn data_to_copy(&self, data: Data, kind: Kind, st: &Stat, src: &Loc) -> Data {
        match data {
            Data::Meta if self.wants_metacopy(kind, st) && src.image_file().is_none() => Data::Meta,
            Data::Meta => Data::All,
            d => d,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build_copy(
        &self,
        src: &Loc,
        st: &Stat,
        kind: Kind,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        ino: u64,
        data: Data,
    ) -> FsResult<()> {
        let mut file = None;
        match kind {
            Kind::Dir => rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?,
            Kind::File => {
                let out = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                if data == Data::All {
                    copy_file_data(src, st, &out)?;
                    if !self.config.volatile {
                        rustix::fs::fsync(&out)?;
                    }
                }
                file = Some(out);
            }
            Kind::Symlink => {
                let target = src.readlink()?;
                rustix::fs::symlinkat(target.as_slice(), work, tmp)?;
            }
            _ => rustix::fs::mknodat(
                work,
                tmp,
                FileType::from_raw_mode(st.st_mode),
                Mode::from_raw_mode(0o600),
                st.st_rdev,
            )?,
        }
        // A regular file is reached through its fd (no path walk), anything else by name.
        let to = match &file {
            Some(f) => Target::Open(f.as_fd()),
            None => Target::Entry(work, tmp),
        };
        copy_xattrs_of(src, &to)?;
        if let (Data::Meta, Some(f)) = (data, &file) {
            self.mark_metacopy(&to, f, st.st_size as u64)?;
        }
        // Best effort: without it the copy gets its own number after a remount.
        let _ = to.set_xattr(
            OsStr::new(crate::format::xattrs::origin(kind)),
            &ino.to_le_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        self.finish_meta(&to, kind, st)?;
        Ok(())
    }

    /// Owner, then mode (a chown clears setuid), then times, on `to`: by its fd when it is an
    /// open file (no name to resolve in the workdir), else by name.
    pub(super) fn finish_meta(&self, to: &Target<'_>, kind: Kind, st: &Stat) -> FsResult<()> {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(st.st_uid),
            rustix::fs::Gid::from_raw(st.st_gid),
        );
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match *to {
            Target::Open(fd) => {
                if self.process.privileged {
                    rustix::fs::fchown(fd, Some(uid), Some(gid))?;
                }
                rustix::fs::fchmod(fd, mode)?;
                rustix::fs::futimens(fd, &stat_times(st))?;
            }
            Target::Entry(dir, name) => {
                if self.process.privileged {
                    rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
                }
                if kind != Kind::Symlink {
                    rustix::fs::chmodat(dir, name, mode, AtFlags::empty())?;
                }
                rustix::fs::utimensat(dir, name, &stat_times(st), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            // Not used for a copy (it has a name, or an open fd).
            Target::Fd(_) => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    /// Durability of a rename or create: fsync the directory, unless mounted volatile.
    pub(crate) fn sync_dir(&self, dir: BorrowedFd<'_>) {
        if !self.config.volatile {
            if let Ok(d) = rustix::fs::openat(
                dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                let _ = rustix::fs::fsync(&d);
            }
        }
    }
}

/// Runs `f` on the directory `dir`, then puts its times back: copying up into it is not a
/// change of the directory.
pub(crate) fn keep_dir_times<R>(
    dir: BorrowedFd<'_>,
    f: impl FnOnce() -> rustix::io::Result<R>,
) -> rustix::io::Result<R> {
    let before = rustix::fs::fstat(dir).ok();
    let r = f()?;
    if let Some(st) = before {
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            sys::fd_path(dir).as_c_str(),
            &stat_times(&st),
            AtFlags::empty(),
        );
    }
    Ok(r)
}

/// Copies the data of the regular file `src` (attributes `st`) into `out`.
pub(super) fn copy_file_data(src: &Loc, st: &Stat, out: &OwnedFd) -> FsResult<()> {
    match src.image_file() {
        Some(img) => copy_image_data(img, out),
        None => {
            let input = src.open(OFlags::RDONLY | OFlags::NOATIME)?;
            // Fewer allocated blocks than the size means holes worth skipping.
            let sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
            copy_data(&input, out, st.st_size as u64, sparse)
        }
    }
}

/// The access and modification times of `st`, for utimensat.
pub(super) fn stat_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Copies `len` bytes: reflink where the filesystem can, else `copy_file_range` over the data
/// extents only (holes stay holes), else read/write.
fn copy_data(input: &OwnedFd, out: &OwnedFd, len: u64, sparse: bool) -> FsResult<()> {
    if len == 0 {
        return Ok(());
    }
    if rustix::fs::ioctl_ficlone(out, input).is_ok() {
        return Ok(());
    }
    if !sparse {
        // Dense: the copy ends where the data does, so no truncate to the size is needed.
        return copy_range(input, out, 0, len);
    }
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(input, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(RErrno::NXIO) => break,
            // No SEEK_DATA support: treat everything as data.
            Err(_) => pos,
        };
        let end = rustix::fs::seek(input, SeekFrom::Hole(start)).unwrap_or(len).min(len);
        copy_range(input, out, start, end)?;
        pos = end.max(start + 1);
    }
    rustix::fs::ftruncate(out, len)?;
    Ok(())
}

fn copy_range(input: &OwnedFd, out: &OwnedFd, start: u64, end: u64) -> FsResult<()> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = (end - off_in).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(input, Some(&mut off_in), out, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(RErrno::XDEV) | Err(RErrno::INVAL) | Err(RErrno::NOSYS) | Err(RErrno::OPNOTSUPP) => {
                return rw_copy(input, out, off_in, end);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn rw_copy(input: &OwnedFd, out: &OwnedFd, mut off: u64, end: u64) -> FsResult<()> {
    let mut buf = vec![0u8; 1 << 20];
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = rustix::io::pread(input, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(out, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
    }
    Ok(())
}

/// Copies every non-private xattr. `security.*`/`trusted.*` ones the upper refuses are skipped
/// (an unprivileged daemon cannot set them); any other failure fails the copy-up.
/// Copies the data of a file of an image layer into `out`.
fn copy_image_data(img: &super::handles::ImageFile, out: &OwnedFd) -> FsResult<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < img.entry.size {
        let n = img.lower.layer.read(&img.entry, off, &mut buf).map_err(|e| {
            tracing::warn!("copy-up: {e}");
            Errno::EIO
        })?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(out, &buf[done..n], off + done as u64)?;
        }
        off += n as u64;
    }
    Ok(())
}

/// Copies the xattrs of the located object `from` (any layer) to `to`.
pub(super) fn copy_xattrs_of(from: &Loc, to: &Target<'_>) -> FsResult<()> {
    let get = |n: &OsStr| match from.read_xattr(n) {
        Ok(v) => Ok(Some(v)),
        Err(RErrno::NODATA) => Ok(None),
        Err(e) => Err(e),
    };
    copy_xattrs_with(from.list_xattrs()?, &get, to)
}

/// Copies the xattrs `names` (values from `get`), minus private ones, to `to`.
fn copy_xattrs_with(
    names: Vec<OsString>,
    get: &dyn Fn(&OsStr) -> rustix::io::Result<Option<Vec<u8>>>,
    to: &Target<'_>,
) -> FsResult<()> {
    use std::os::unix::ffi::OsStrExt;
    for name in names {
        if crate::format::xattrs::is_private(&name) {
            continue;
        }
        let Some(v) = get(&name)? else { continue };
        if let Err(e) = to.set_xattr(&name, &v, rustix::fs::XattrFlags::empty()) {
            let b = name.as_bytes();
            // An ACL that the upper could store but refused would vanish with the copy: a
            // permission hole. Only an upper without ACL support may drop it.
            let optional = if b.starts_with(b"system.posix_acl_") {
                e == RErrno::NOTSUP
            } else {
                (b.starts_with(b"security.") || b.starts_with(b"trusted.") || b.starts_with(b"system."))
                    && matches!(e, RErrno::PERM | RErrno::NOTSUP | RErrno::ACCESS | RErrno::INVAL)
            };
            if !optional {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Removes a half-built object (from the workdir, or staged beside its final name).
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &OsStr, kind: Kind) -> rustix::io::Result<()> {
    sys::remove_entry(dir, name, kind == Kind::Dir)
}
