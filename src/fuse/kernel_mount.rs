//! Mounting with mount(2) ourselves when we may (root, or root in a user namespace), and
//! switching a live mount read-only and back.
//!
//! fuser's own direct mount names the filesystem type `fuse`, without the subtype. mount(8)
//! finds the program to run for `mount -o remount,ro MNT` by that type (mount.fuse3 runs the
//! program `fuse.PROGRAM` names): with `fuse` alone there is none, and the remount fails. So we
//! mount as fuser does (same flags, same data, a `/dev/fuse` fd), with the type
//! `fuse.SUBTYPE`, and hand the fd to fuser's session. Where mount(2) is not allowed (a plain
//! user), fuser's fusermount3 path is used, which records the subtype itself.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use fuser::{MountOption, SessionACL};
use rustix::fs::{Mode, OFlags, StatVfsMountFlags};
use rustix::mount::MountFlags;

/// Mounts `/dev/fuse` at `mountpoint` as `fuse.SUBTYPE`; the fd to serve. `None` when mount(2)
/// is not allowed here (EPERM: the caller goes through fusermount3).
pub fn mount(
    mountpoint: &Path,
    options: &[MountOption],
    acl: SessionACL,
    subtype: &str,
) -> io::Result<Option<OwnedFd>> {
    let root_mode = rustix::fs::stat(mountpoint)?.st_mode;
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        fd.as_raw_fd(),
        root_mode,
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    let mut flags = MountFlags::empty();
    if !options.contains(&MountOption::Dev) {
        flags |= MountFlags::NODEV;
    }
    if !options.contains(&MountOption::Suid) {
        flags |= MountFlags::NOSUID;
    }
    let mut source = "/dev/fuse".to_string();
    for o in options {
        match o {
            MountOption::DefaultPermissions => data.push_str(",default_permissions"),
            MountOption::CUSTOM(c) => {
                data.push(',');
                data.push_str(c);
            }
            MountOption::FSName(name) => source = name.clone(),
            MountOption::RO => flags |= MountFlags::RDONLY,
            MountOption::NoExec => flags |= MountFlags::NOEXEC,
            MountOption::NoAtime => flags |= MountFlags::NOATIME,
            MountOption::DirSync => flags |= MountFlags::DIRSYNC,
            MountOption::Sync => flags |= MountFlags::SYNCHRONOUS,
            MountOption::NoDev => flags |= MountFlags::NODEV,
            MountOption::NoSuid => flags |= MountFlags::NOSUID,
            _ => {}
        }
    }
    if acl != SessionACL::Owner {
        // RootAndOwner too: the kernel lets everyone in, fuser's dispatch filters.
        data.push_str(",allow_other");
    }
    let fstype = if subtype.is_empty() {
        "fuse".to_string()
    } else {
        format!("fuse.{subtype}")
    };
    let data = std::ffi::CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::mount::mount(
        source.as_str(),
        mountpoint,
        fstype.as_str(),
        flags,
        Some(data.as_c_str()),
    ) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::PERM) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The mount flags a remount of `mnt` must repeat to keep what it has (a remount replaces the
/// mount's flags), with read-only as `read_only` says.
pub fn flags_for_remount(mnt: &Path, read_only: bool) -> io::Result<MountFlags> {
    let have = rustix::fs::statvfs(mnt)?.f_flag;
    let pairs = [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::SYNCHRONOUS, MountFlags::SYNCHRONOUS),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ];
    let mut flags = pairs
        .iter()
        .filter(|(st, _)| have.contains(*st))
        .fold(MountFlags::empty(), |f, (_, m)| f | *m);
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    Ok(flags)
}

/// Remounts the FUSE mount at `mnt` with `flags` (read-only or not, and the per-mount flags a
/// remount must repeat). The kernel refuses writes to a read-only FUSE mount itself (EROFS),
/// and refuses to go read-only while a file is open for writing (EBUSY), as for any filesystem.
pub fn remount(mnt: &Path, flags: MountFlags) -> io::Result<()> {
    rustix::mount::mount_remount(mnt, flags, "").map_err(io::Error::from)
}
