//! `import`: the objects an entry makes: files, hard links (only to what the archive made
//! before it), FIFOs and device nodes.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tar::EntryType;

use super::paths::components;
use super::{Importer, Made};
use crate::layers::Result;
use crate::sys;

impl Importer<'_> {
    pub(super) fn make_file<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        e: &mut tar::Entry<'_, R>,
    ) -> Result<Made> {
        let fd = rustix::fs::openat(
            dir,
            n,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|err| self.fail(raw, err))?;
        let mut f = File::from(fd);
        io::copy(e, &mut f).map_err(|err| self.fail(raw, err))?;
        Ok(Made::File)
    }

    /// A hard link: only to a non-directory this archive made before, by a path inside it.
    pub(super) fn hard_link<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        e: &mut tar::Entry<'_, R>,
    ) -> Result<Made> {
        let target = e
            .link_name_bytes()
            .ok_or_else(|| self.refuse(raw, "a hard link without a target"))?
            .into_owned();
        let tc = components(&target)
            .map_err(|why| self.refuse(raw, format!("hard link pointing out of the layer ({why})")))?;
        let kind = self
            .tree
            .find(tc.iter().copied())
            .and_then(|id| self.tree.node(id).made);
        match kind {
            Some(Made::File | Made::Symlink | Made::Other) => {}
            Some(Made::Dir | Made::ImplicitDir) => return Err(self.refuse(raw, "hard link to a directory")),
            _ => {
                let t = String::from_utf8_lossy(&target);
                return Err(self.refuse(
                    raw,
                    format!("hard link to '{t}', which the archive did not create before it"),
                ));
            }
        }
        let Some((&tname, tparent)) = tc.split_last() else {
            return Err(self.refuse(raw, "hard link to the root"));
        };
        let tfd = sys::open_dir_beneath(self.root, OsStr::from_bytes(&tparent.join(&b'/')))
            .map_err(|err| self.fail(raw, err))?;
        rustix::fs::linkat(&tfd, OsStr::from_bytes(tname), dir, n, AtFlags::empty())
            .map_err(|err| self.fail(raw, err))?;
        // A hard link shares the inode: no metadata of its own.
        Ok(kind.unwrap_or(Made::Other))
    }

    /// A FIFO, or a device node (refused without CAP_MKNOD, and 0/0, which reads as a whiteout).
    pub(super) fn make_special(&self, dir: BorrowedFd<'_>, n: &OsStr, raw: &[u8], h: &tar::Header) -> Result<Made> {
        let ty = h.entry_type();
        let (ft, rdev) = if ty == EntryType::Fifo {
            (FileType::Fifo, 0)
        } else {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            if ty == EntryType::Char && major == 0 && minor == 0 {
                return Err(self.refuse(raw, "character device 0/0 (it would read as a whiteout)"));
            }
            if !self.mknod_ok {
                return Err(self.refuse(raw, "device node, and this process may not create them (no CAP_MKNOD)"));
            }
            let ft = if ty == EntryType::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            (ft, rustix::fs::makedev(major, minor))
        };
        rustix::fs::mknodat(dir, n, ft, Mode::from_raw_mode(0o600), rdev).map_err(|err| self.fail(raw, err))?;
        Ok(Made::Other)
    }
}
