//! Setuid and setgid bits dropped when a file's data changes, by the kernel's rule
//! (`setattr_should_drop_suidgid`, applied by `file_remove_privs` on write, truncate, fallocate
//! and copy_file_range): setuid always, setgid when group members may execute the file or the
//! writer is not in its group, nothing for a writer with CAP_FSETID.
//!
//! The mount negotiates FUSE_HANDLE_KILLPRIV_V2, so the kernel's FUSE layer leaves all of it to
//! us (docs/architecture.md, "FUSE facts"): on the writes, truncates, fallocates and copies
//! that reach us, and on the empty SETATTR it sends before a write it passes to the upper file
//! itself (passthrough). A chown needs nothing here: the daemon's own chown of the upper file
//! clears the bits as the kernel's chown does. Writes the kernel sends from its page cache
//! (write-back of a shared mapping) are not the caller's writes: the kernel drops nothing for
//! them, and neither do we.

use std::os::fd::AsFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, Stat};

use super::copy_up::Data;
use super::node::Node;
use super::{Ctx, Loc, Union};
use crate::attr::{Attr, Kind};
use crate::error::FsResult;
use crate::sys;

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

impl Union {
    /// Drops setuid/setgid of the file open as `fh` before `ctx` changes its data through it.
    /// Returns whether the mode changed (the kernel's cached attributes are then stale).
    pub fn drop_privs(&self, ctx: &Ctx, fh: u64) -> FsResult<bool> {
        let f = self.handles.file(fh)?;
        let fd = f.fd()?;
        let Some(mode) = mode_after_write(ctx, &rustix::fs::fstat(fd)?) else {
            return Ok(false);
        };
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        Ok(true)
    }

    /// What a SETATTR that changes nothing asks for. With FUSE_HANDLE_KILLPRIV_V2 the kernel
    /// leaves setuid/setgid to us, and before a data change it does not send us (a write
    /// through FUSE passthrough) it sends, from the writer, a SETATTR whose privilege-drop flag
    /// fuser 0.18 does not pass on: the rule of a data change by `ctx` applies. (`chown(f, -1,
    /// -1)` sends the same; the kernel clears setuid then even for root, we keep it for a
    /// caller with CAP_FSETID.)
    pub(crate) fn drop_privs_for_write(&self, ctx: &Ctx, node: &Arc<Node>, fh: Option<u64>) -> FsResult<Attr> {
        if node.state.read().kind == Kind::File && mode_after_write(ctx, &self.locate(node, fh)?.stat()?).is_some() {
            self.copy_up_with(node, Data::Meta)?;
            self.drop_privs_at(ctx, &self.locate(node, fh)?)?;
        }
        self.attr_of(node)
    }

    /// [`Union::drop_privs`] for an object reached by its location (a truncate by name).
    pub(crate) fn drop_privs_at(&self, ctx: &Ctx, loc: &Loc) -> FsResult<bool> {
        let Some(mode) = mode_after_write(ctx, &loc.stat()?) else {
            return Ok(false);
        };
        let (dir, entry, _) = loc.at()?;
        rustix::fs::chmodat(dir.as_fd(), &entry, Mode::from_raw_mode(mode), AtFlags::empty())?;
        Ok(true)
    }
}

/// Whether setting an access ACL on `st` by `ctx` clears its setgid bit: when the caller is
/// neither in the file's group nor holds CAP_FSETID (kernel overlayfs's
/// `ovl_set_or_remove_acl`, the VFS's `posix_acl_update_mode`). The daemon sets the ACL with
/// its own credentials, which would keep the bit, and fuser 0.18 cannot negotiate the flag
/// with which the kernel's FUSE would tell us (FUSE_SETXATTR_ACL_KILL_SGID).
pub(crate) fn acl_kills_sgid(ctx: &Ctx, st: &Stat) -> bool {
    if st.st_mode & S_ISGID == 0 {
        return false;
    }
    let (capable, in_group) = caller(ctx, st.st_gid);
    !capable && !in_group
}

/// Whether the caller of `ctx` holds CAP_FSETID, and whether it is in the group `gid` (its
/// own or a supplementary one), read from /proc. Without /proc (the caller is gone, or in
/// another pid namespace) root counts as capable and only the request's gid as its group.
fn caller(ctx: &Ctx, gid: u32) -> (bool, bool) {
    let creds = sys::process_creds(ctx.pid);
    let capable = creds.as_ref().map_or(ctx.uid == 0, |c| c.fsetid);
    let in_group = ctx.gid == gid || creds.is_some_and(|c| c.groups.contains(&gid));
    (capable, in_group)
}

/// The permission bits `st` must get when `ctx` changes its data, if they change.
fn mode_after_write(ctx: &Ctx, st: &Stat) -> Option<u32> {
    let mode = st.st_mode & 0o7777;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || mode & (S_ISUID | S_ISGID) == 0 {
        return None;
    }
    let (capable, in_group) = caller(ctx, st.st_gid);
    if capable {
        return None;
    }
    let mut kill = mode & S_ISUID;
    if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !in_group) {
        kill |= S_ISGID;
    }
    (kill != 0).then_some(mode & !kill)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_of(mode: u32, gid: u32) -> Stat {
        // A real stat, made a regular file with the given mode and group.
        let mut st = rustix::fs::stat("/").expect("stat /");
        st.st_mode = (st.st_mode & !0o177777) | 0o100000 | mode;
        st.st_gid = gid;
        st
    }

    fn plain(uid: u32, gid: u32) -> Ctx {
        // pid 0: no /proc lookup, so only uid and gid decide.
        Ctx {
            uid,
            gid,
            pid: 0,
            umask: 0,
        }
    }

    #[test]
    fn kernel_rule() {
        let user = plain(1000, 1000);
        assert_eq!(mode_after_write(&user, &stat_of(0o6666, 0)), Some(0o666));
        assert_eq!(mode_after_write(&user, &stat_of(0o2766, 0)), Some(0o766));
        assert_eq!(mode_after_write(&user, &stat_of(0o6777, 0)), Some(0o777));
        // setgid without group execute stays for a member of the group.
        assert_eq!(mode_after_write(&user, &stat_of(0o2666, 1000)), None);
        assert_eq!(mode_after_write(&user, &stat_of(0o6666, 1000)), Some(0o2666));
        assert_eq!(mode_after_write(&user, &stat_of(0o2676, 1000)), Some(0o676));
        assert_eq!(mode_after_write(&user, &stat_of(0o644, 0)), None);
        assert_eq!(mode_after_write(&plain(0, 0), &stat_of(0o6777, 5)), None);
    }
}
