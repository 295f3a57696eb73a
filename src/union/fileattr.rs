//! Inode flags (`lsattr`/`chattr`: immutable, append-only, no-atime, ...), read from the
//! visible object and set on its upper copy, as kernel overlayfs does.
//!
//! The flags are the upper filesystem's own: it enforces immutable and append-only on
//! everything the daemon and FUSE passthrough do to the file, so a flag set through the view
//! holds for every later change made through it.

use std::os::fd::OwnedFd;

use rustix::fs::{IFlags, OFlags};

use super::Union;
use super::node::Node;
use crate::attr::Kind;
use crate::error::{Errno, FsResult};

impl Union {
    /// The inode flags (FS_IOC_GETFLAGS) of `ino`'s visible object.
    pub fn inode_flags(&self, ino: u64) -> FsResult<u32> {
        let node = self.node(ino)?;
        if self.locate(&node, None)?.image_file().is_some() {
            // A tar carries no inode flags.
            return Ok(0);
        }
        let fd = self.open_for_flags(&node)?;
        Ok(rustix::fs::ioctl_getflags(&fd)?.bits())
    }

    /// Sets the inode flags (FS_IOC_SETFLAGS) of `ino`, copying it up first. The kernel has
    /// checked that the caller owns the object and may change immutable and append-only.
    pub fn set_inode_flags(&self, ino: u64, flags: u32) -> FsResult<()> {
        self.upper_index()?;
        let node = self.node(ino)?;
        self.copy_up(&node)?;
        let fd = self.open_for_flags(&node)?;
        rustix::fs::ioctl_setflags(&fd, IFlags::from_bits_retain(flags))?;
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
