//! Creating names: files, directories, nodes, symlinks and hard links.
//!
//! A new name lands in the upper directory (copied up first). Where the upper holds a whiteout
//! at that name, the object is built in the workdir and renamed over it in one step. A new
//! directory where a lower layer has the name is made opaque before it becomes visible.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, XattrFlags};

use super::copy_up::remove_any;
use super::index::{UpperWhiteout, Visible};
use super::io::Opened;
use super::layerdir::LayerDir;
use super::node::{DirState, Node, NodeState};
use super::{Ctx, Loc, Union, acl, check_name};
use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsResult};
use crate::format::markers;
use crate::sys::{self, Target};

/// What to make at a new name.
pub(crate) enum NewObject<'a> {
    File {
        mode: u32,
        flags: OFlags,
    },
    Dir {
        mode: u32,
    },
    Node {
        mode: u32,
        rdev: u64,
    },
    Symlink {
        target: &'a OsStr,
    },
    /// Another name for an existing (upper) object of kind `kind` and view number `ino`.
    Link {
        dir: &'a Arc<OwnedFd>,
        name: &'a OsStr,
        kind: Kind,
        ino: u64,
    },
}

impl NewObject<'_> {
    /// The permission bits asked for (none for symlinks and links).
    fn perm(&self) -> Option<u32> {
        match self {
            NewObject::File { mode, .. } | NewObject::Dir { mode } | NewObject::Node { mode, .. } => {
                Some(mode & 0o7777)
            }
            NewObject::Symlink { .. } | NewObject::Link { .. } => None,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            NewObject::File { .. } => Kind::File,
            NewObject::Dir { .. } => Kind::Dir,
            NewObject::Node { mode, .. } => Kind::from_mode(*mode),
            NewObject::Symlink { .. } => Kind::Symlink,
            NewObject::Link { kind, .. } => *kind,
        }
    }
}

impl Union {
    /// Creates and opens a regular file. Returns its attributes and a file handle.
    pub fn create(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, flags: i32) -> FsResult<(Attr, u64)> {
        self.create_file(ctx, parent, name, mode, flags).map(|(a, o)| (a, o.fh))
    }

    /// [`Union::create`], saying also what the handle's fd is (see [`Opened`]).
    pub fn create_file(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, flags: i32) -> FsResult<(Attr, Opened)> {
        let mut flags = OFlags::from_bits_retain(flags as u32);
        let shared_rw = self.agreed.rw_upper_fds.load(Ordering::Relaxed);
        if shared_rw {
            // A new file is always writable by its creator, whatever its mode.
            flags = (flags & !OFlags::RWMODE) | OFlags::RDWR;
        }
        let (node, attr, fd) = self.make(ctx, parent, name, NewObject::File { mode, flags })?;
        let fd = fd.ok_or(Errno::EIO)?;
        let atime = self.read_atime(&fd);
        let opened = Opened {
            fh: self.new_file_handle(fd, node),
            shared_rw,
            in_upper: true,
            beside_older: false,
            daemon_writes: attr.perm & 0o2010 == 0o2000,
            atime,
        };
        Ok((attr, opened))
    }

    /// Creates a directory.
    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32) -> FsResult<Attr> {
        self.make(ctx, parent, name, NewObject::Dir { mode }).map(|(_, a, _)| a)
    }

    /// Creates a FIFO, socket or device node (`mode` includes the file type).
    pub fn mknod(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32, rdev: u64) -> FsResult<Attr> {
        let ft = FileType::from_raw_mode(mode);
        match ft {
            FileType::RegularFile => {
                return self
                    .make(
                        ctx,
                        parent,
                        name,
                        NewObject::File {
                            mode,
                            flags: OFlags::WRONLY,
                        },
                    )
                    .map(|(_, a, _)| a);
            }
            // A char device 0/0 would read back as a whiteout after a remount.
            FileType::CharacterDevice if rdev == 0 => return Err(Errno::EPERM),
            FileType::Directory | FileType::Symlink | FileType::Unknown => return Err(Errno::EINVAL),
            _ => {}
        }
        self.make(ctx, parent, name, NewObject::Node { mode, rdev })
            .map(|(_, a, _)| a)
    }

    /// Creates a symlink to `target`.
    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &OsStr, target: &OsStr) -> FsResult<Attr> {
        self.make(ctx, parent, name, NewObject::Symlink { target })
            .map(|(_, a, _)| a)
    }

    /// Adds the name `newname` in `newparent` for the object `ino` (copied up first).
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> FsResult<Attr> {
        let node = self.node(ino)?;
        // An existing target is EEXIST even when the source is a directory (as Linux checks).
        let target = self.dir_node(newparent)?;
        if !markers::is_reserved_name(newname) && self.slot(&target, newname)?.vis.is_some() {
            return Err(Errno::EEXIST);
        }
        if node.state.read().kind == Kind::Dir {
            return Err(Errno::EPERM);
        }
        self.copy_up(&node)?;
        let kind = node.state.read().kind;
        // Copied up above: the object is in the upper, a filesystem directory.
        let Loc::Entry(src_dir, src_name) = self.locate(&node, None)? else {
            return Err(Errno::ENOENT);
        };
        let ctx = Ctx::default();
        let obj = NewObject::Link {
            dir: &src_dir,
            name: &src_name,
            kind,
            ino: node.ino,
        };
        let (n, _, _) = self.make(&ctx, newparent, newname, obj)?;
        // A copy of a multiply-linked lower file counts its names itself (see `hardlinks.rs`).
        if !self.hardlinks.is_empty() {
            if let Ok(Loc::Entry(fd, name)) = self.locate(&n, None) {
                self.count_names(Some((fd, name)), 1);
            }
        }
        self.attr_of(&n)
    }

    /// Makes a new name in `parent` and returns its node (with one kernel reference), its
    /// attributes and, for files, an open fd.
    fn make(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        obj: NewObject<'_>,
    ) -> FsResult<(Arc<Node>, Attr, Option<OwnedFd>)> {
        let upper = self.upper_index()?;
        check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::EINVAL);
        }
        let dir = self.dir_node(parent)?;
        self.copy_up(&dir)?;
        let pdir_layer = self.upper_layer_dir(&dir).ok_or(Errno::EIO)?;
        let pdir = pdir_layer.fs_fd().ok_or(Errno::EIO)?;
        let kind = obj.kind();
        let _ns = dir.ns.lock();
        let slot = self.slot(&dir, name)?;
        if slot.vis.is_some() {
            return Err(Errno::EEXIST);
        }
        self.may_create(&dir)?;
        let fd = self.build_at(ctx, &pdir, name, &obj, &slot)?;
        if slot.upper_wh == Some(UpperWhiteout::Oci) {
            let _ = rustix::fs::unlinkat(&*pdir, markers::oci_name(name), AtFlags::empty());
        }
        let st = sys::stat_at(pdir.as_fd(), name)?;
        let ino = match &obj {
            // Every name of an object shares its number.
            NewObject::Link { ino, .. } => *ino,
            _ => self.tag_ino(upper, st.st_ino),
        };
        self.with_index(&dir, |idx| idx.show(name, Visible::new(upper, kind, ino)))?;
        let node = self.remember_new(parent, name, (&pdir_layer, &pdir), &obj, ino)?;
        Ok((node, self.view_attr(ino, &st), fd))
    }

    /// Builds `obj` at `pdir/name`, whose index entry is `slot`: in place, or in the workdir
    /// when it must be complete before it shows (over a whiteout, or a directory that must be
    /// opaque first) and then moved there in one step.
    fn build_at(
        &self,
        ctx: &Ctx,
        pdir: &Arc<OwnedFd>,
        name: &OsStr,
        obj: &NewObject<'_>,
        slot: &super::index::Slot,
    ) -> FsResult<Option<OwnedFd>> {
        let kind = obj.kind();
        let pst = rustix::fs::fstat(&**pdir)?;
        let opaque = kind == Kind::Dir && (slot.in_lower || slot.upper_wh.is_some());
        let over_whiteout = slot.upper_wh == Some(UpperWhiteout::AtName);
        let staged = over_whiteout || opaque;
        let (bdir, bname) = if staged {
            (self.work_fd()?, self.tmp_name())
        } else {
            (pdir.as_fd(), name.to_os_string())
        };
        let perms = obj
            .perm()
            .map(|m| self.inherited_perms(pdir.as_fd(), m, ctx.umask, kind == Kind::Dir))
            .transpose()?;
        let place = Placement {
            sgid: pst.st_mode & libc::S_ISGID != 0,
            gid: pst.st_gid,
            opaque,
        };
        let built = self
            .build_new(ctx, bdir, &bname, obj, perms.as_ref(), place)
            .and_then(|fd| {
                if staged {
                    self.publish_over(bdir, &bname, pdir.as_fd(), name, kind, over_whiteout)?;
                }
                Ok(fd)
            });
        if built.is_err() && staged {
            let _ = remove_any(bdir, &bname, kind);
        }
        built
    }

    /// The node of a new name `parent/name` (in the upper directory `pdir`, open as its fd),
    /// with one kernel reference.
    fn remember_new(
        &self,
        parent: u64,
        name: &OsStr,
        (pdir, pfd): (&Arc<LayerDir>, &Arc<OwnedFd>),
        obj: &NewObject<'_>,
        ino: u64,
    ) -> FsResult<Arc<Node>> {
        let upper = self.upper_index()?;
        let kind = obj.kind();
        let dir_state = if kind == Kind::Dir {
            let fd = pdir.fs_child(name, sys::open_path_dir(pfd.as_fd(), name)?)?;
            Some(DirState::new(vec![(upper, fd)]))
        } else {
            None
        };
        let mut fresh = Some(NodeState::new(parent, name, kind, upper, dir_state));
        let (node, created) = self.nodes.get_or_insert(ino, 1, || {
            Node::new(
                ino,
                fresh
                    .take()
                    .unwrap_or_else(|| NodeState::new(parent, name, kind, upper, None)),
            )
        });
        if !created {
            let mut s = node.state.write();
            match (obj, fresh) {
                (NewObject::Link { .. }, _) => s.seen_as(parent, name),
                // A stale node under a reused inode number: point it at the new object.
                (_, Some(f)) => *s = f,
                _ => {}
            }
        }
        Ok(node)
    }

    /// The permission bits and ACLs of a new object asked for with `perm` in the upper
    /// directory `pdir` (see `acl.rs`): its default ACL if it has one and ACLs are on, else the
    /// caller's umask.
    fn inherited_perms(&self, pdir: BorrowedFd<'_>, perm: u32, umask: u32, is_dir: bool) -> FsResult<acl::Inherited> {
        let default = if self.agreed.posix_acl.load(Ordering::Relaxed) {
            sys::get_xattr_fd(pdir, OsStr::new(acl::DEFAULT))?.and_then(|v| acl::Acl::parse(&v))
        } else {
            None
        };
        Ok(acl::inherit(default.as_ref(), perm, umask, is_dir))
    }

    /// Creates the object at `dir/name` with its final owner, mode and ACLs.
    fn build_new(
        &self,
        ctx: &Ctx,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        obj: &NewObject<'_>,
        perms: Option<&acl::Inherited>,
        parent: Placement,
    ) -> FsResult<Option<OwnedFd>> {
        let mut fd = None;
        let mut final_mode = None;
        let m = perms.map_or(0, |p| p.mode);
        match obj {
            NewObject::File { flags, .. } => {
                let acc = *flags & (OFlags::RWMODE | super::SERVED_FD_FLAGS);
                let acc = acc | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
                // Never a set-id bit before the owner is final; those come with the chmod below.
                let f = rustix::fs::openat(dir, name, acc, Mode::from_raw_mode(m & 0o1777))?;
                fd = Some(f);
                // Our open applied exactly `m` unless the process umask interfered.
                if m & 0o6000 != 0 || !self.process.umask_is_zero {
                    final_mode = Some(m);
                }
            }
            NewObject::Dir { .. } => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
                final_mode = Some(if parent.sgid { m | libc::S_ISGID } else { m });
                if parent.opaque {
                    let d = sys::open_path_dir(dir, name)?;
                    markers::mark_opaque(d.as_fd(), self.oci(), self.process.privileged)?;
                }
            }
            NewObject::Node { mode, rdev } => {
                rustix::fs::mknodat(dir, name, FileType::from_raw_mode(*mode), Mode::from_raw_mode(m), *rdev)?;
                final_mode = Some(m);
            }
            NewObject::Symlink { target } => rustix::fs::symlinkat(*target, dir, name)?,
            NewObject::Link {
                dir: src_dir,
                name: src_name,
                ..
            } => {
                rustix::fs::linkat(&***src_dir, *src_name, dir, name, AtFlags::empty())?;
                return Ok(None);
            }
        }
        if let Some(p) = perms {
            let target = match &fd {
                Some(f) => Target::Open(f.as_fd()),
                None => Target::Entry(dir, name),
            };
            // Before the owner and mode: the final chmod then keeps the ACL's mask in step.
            for (xattr, acl) in [(acl::ACCESS, &p.access), (acl::DEFAULT, &p.default)] {
                if let Some(a) = acl {
                    target.set_xattr(OsStr::new(xattr), &a.to_bytes(), XattrFlags::empty())?;
                }
            }
        }
        // The caller's ids are the view's; a set-group-id parent's group is stored already.
        let gid = if parent.sgid {
            parent.gid
        } else {
            self.idmap.gid_to_host(ctx.gid)
        };
        let uid = self.idmap.uid_to_host(ctx.uid);
        // A file we create gets our fsuid, and our fsgid unless the parent is set-group-id.
        let ours = (
            self.process.euid,
            if parent.sgid { parent.gid } else { self.process.egid },
        );
        let plain_file = matches!(obj, NewObject::File { .. });
        if self.process.privileged && !(plain_file && ours == (uid, gid)) {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(m) = final_mode {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(m), AtFlags::empty())?;
        }
        Ok(fd)
    }

    /// Moves a finished object from the workdir to `dir/name`, replacing a whiteout there.
    pub(crate) fn publish_over(
        &self,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        kind: Kind,
        over_whiteout: bool,
    ) -> FsResult<()> {
        if over_whiteout && kind == Kind::Dir {
            // rename(2) cannot put a directory over a non-directory: swap, then drop the whiteout.
            rustix::fs::renameat_with(work, tmp, dir, name, RenameFlags::EXCHANGE)?;
            let _ = rustix::fs::unlinkat(work, tmp, AtFlags::empty());
        } else if over_whiteout {
            rustix::fs::renameat(work, tmp, dir, name)?;
        } else {
            rustix::fs::renameat_with(work, tmp, dir, name, RenameFlags::NOREPLACE)?;
        }
        Ok(())
    }
}

/// Where a new object goes: what it takes from its parent directory.
#[derive(Clone, Copy)]
struct Placement {
    /// The parent is set-group-id: the object takes its group (and a directory the bit).
    sgid: bool,
    gid: u32,
    /// A directory hiding a lower one of its name: opaque from the start.
    opaque: bool,
}
