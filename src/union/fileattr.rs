//! Inode flags (`lsattr`/`chattr`: immutable, append-only, no-atime, ...), read from the
//! visible object and set on its upper copy, as kernel overlayfs does.
//!
//! A file's flags are the upper filesystem's own: it enforces immutable and append-only on
//! everything the daemon and FUSE passthrough do to the file, so a flag set through the view
//! holds for every later change made through it.
//!
//! A directory's immutable and append-only flags are kept as kernel overlayfs keeps them, in
//! its protattr xattr (`format::xattrs::PROTATTR`), and enforced here: a really immutable
//! upper directory could take no copy-up of a child, whose contents may still change, and an
//! append-only one would let a deletion through, since a whiteout is a new entry. The checks
//! come where Linux makes them (`may_create`, `may_delete`, `notify_change`), so each
//! operation meets the errno the kernel gives first.

use std::os::fd::OwnedFd;

use rustix::fs::{IFlags, OFlags};

use super::Union;
use super::io::SetAttr;
use super::layerdir::LayerDir;
use super::node::Node;
use crate::attr::Kind;
use crate::error::{Errno, FsResult};
use crate::format::xattrs::{self, PROT_APPEND, PROT_IMMUTABLE};

/// FS_IOC_GETFLAGS bits of the protection flags.
const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;

impl Union {
    /// The inode flags (FS_IOC_GETFLAGS) of `ino`'s visible object.
    pub fn inode_flags(&self, ino: u64) -> FsResult<u32> {
        let node = self.node(ino)?;
        if self.locate(&node, None)?.image_file().is_some() {
            // A tar carries no inode flags.
            return Ok(0);
        }
        let fd = self.open_for_flags(&node)?;
        let real = rustix::fs::ioctl_getflags(&fd)?.bits();
        let prot = self.protection(&node)?;
        Ok(real
            | if prot & PROT_IMMUTABLE != 0 { FS_IMMUTABLE_FL } else { 0 }
            | if prot & PROT_APPEND != 0 { FS_APPEND_FL } else { 0 })
    }

    /// Sets the inode flags (FS_IOC_SETFLAGS) of `ino`, copying it up first. The kernel has
    /// checked that the caller owns the object and may change immutable and append-only.
    pub fn set_inode_flags(&self, ino: u64, flags: u32) -> FsResult<()> {
        self.upper_index()?;
        let node = self.node(ino)?;
        self.copy_up(&node)?;
        let fd = self.open_for_flags(&node)?;
        if node.state.read().kind != Kind::Dir {
            rustix::fs::ioctl_setflags(&fd, IFlags::from_bits_retain(flags))?;
            return Ok(());
        }
        let prot = if flags & FS_IMMUTABLE_FL != 0 {
            PROT_IMMUTABLE
        } else {
            0
        } | if flags & FS_APPEND_FL != 0 { PROT_APPEND } else { 0 };
        if prot != 0 && !self.process.privileged {
            // As for files: an unprivileged daemon cannot hold these flags (README, "Limits").
            return Err(Errno::EPERM);
        }
        // Clears the real flags an older version set on the directory itself, too.
        rustix::fs::ioctl_setflags(&fd, IFlags::from_bits_retain(flags & !(FS_IMMUTABLE_FL | FS_APPEND_FL)))?;
        let upper = self.upper_layer_dir(&node).ok_or(Errno::EIO)?;
        let LayerDir::Fs(dir) = &*upper else {
            return Err(Errno::EIO);
        };
        if prot != 0 {
            let name = xattrs::protattr_name(self.process.privileged);
            rustix::fs::fsetxattr(
                &fd,
                name,
                &xattrs::protattr_value(prot),
                rustix::fs::XattrFlags::empty(),
            )?;
        } else {
            for name in xattrs::PROTATTR {
                match rustix::fs::fremovexattr(&fd, name) {
                    Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                    // An unprivileged daemon cannot even look at trusted.*: nothing of ours.
                    Err(rustix::io::Errno::PERM) if !self.process.privileged => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        dir.set_protection(prot);
        Ok(())
    }

    /// The protection flags of the directory node `dir` (none for anything else, and for a
    /// directory not in the upper: kernel overlayfs reads them from the upper only).
    pub(super) fn protection(&self, dir: &Node) -> FsResult<u8> {
        match self.upper_layer_dir(dir).as_deref() {
            Some(LayerDir::Fs(d)) => Ok(d.protection()?),
            _ => Ok(0),
        }
    }

    /// Linux's `may_create`, once the name was found free: nothing is added to an immutable
    /// directory.
    pub(super) fn may_create(&self, dir: &Node) -> FsResult<()> {
        if self.protection(dir)? & PROT_IMMUTABLE != 0 {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Linux's `may_delete`, once the victim was found and before its type is compared with
    /// the call's: nothing leaves an immutable or append-only directory, and an immutable or
    /// append-only directory (`victim`, when the victim is a directory) is neither removed nor
    /// moved.
    pub(super) fn may_delete(&self, dir: &Node, victim: Option<&Node>) -> FsResult<()> {
        if self.protection(dir)? != 0 || victim.map(|v| self.protection(v)).transpose()?.unwrap_or(0) != 0 {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Linux's `notify_change` for a protected directory: no new owner, mode or set times,
    /// and an immutable one not even a touch.
    pub(super) fn may_set_attr(&self, node: &Node, set: &SetAttr) -> FsResult<()> {
        let prot = self.protection(node)?;
        if prot == 0 {
            return Ok(());
        }
        let set_times = matches!(set.atime, Some(Some(_))) || matches!(set.mtime, Some(Some(_)));
        let touch = set.atime.is_some() || set.mtime.is_some();
        if set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set_times
            || (touch && prot & PROT_IMMUTABLE != 0)
        {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Linux's `xattr_permission`: a protected directory's xattrs do not change.
    pub(super) fn may_set_xattr(&self, node: &Node) -> FsResult<()> {
        if self.protection(node)? != 0 {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// A read-only fd on the object (flags live on files and directories only).
    fn open_for_flags(&self, node: &Node) -> FsResult<OwnedFd> {
        let how = match node.state.read().kind {
            Kind::Dir => OFlags::RDONLY | OFlags::DIRECTORY,
            Kind::File => OFlags::RDONLY | OFlags::NONBLOCK,
            _ => return Err(Errno::ENOTTY),
        };
        Ok(self.locate(node, None)?.open(how | OFlags::NOATIME)?)
    }
}
