//! Switching a live union read-only and back: `unionfs remount --ro|--rw MOUNTPOINT`, and the
//! form mount.fuse3 runs for `mount -o remount,ro MOUNTPOINT` (`unionfs SOURCE MOUNTPOINT -o
//! ro,remount,...`). A remount changes the kernel's mount only: the kernel then refuses every
//! write with EROFS before it reaches the daemon, and refuses to go read-only while a file is
//! open for writing (EBUSY), as for any filesystem; the daemon keeps serving.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustix::mount::MountFlags;
use unionfs::fuse::kernel_mount;
use unionfs::mountinfo;

use super::options::split_options;

/// The mountpoint and option items of a remount request in the compat form (an `-o` list
/// holding `remount`), if `args` are one.
pub fn request(args: &[OsString]) -> Option<(PathBuf, Vec<Vec<u8>>)> {
    let mut items = Vec::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let b = a.as_bytes();
        if b == b"-o" {
            items.extend(split_options(it.next()?));
        } else if let Some(rest) = b.strip_prefix(b"-o") {
            items.extend(split_options(std::ffi::OsStr::from_bytes(rest)));
        } else if !b.starts_with(b"-") {
            positional.push(PathBuf::from(a));
        }
    }
    if !items.iter().any(|i| i == b"remount") {
        return None;
    }
    Some((positional.pop()?, items))
}

/// The mount flags mount(8)'s option list names (it lists what the mount has plus the change).
fn flags_of(items: &[Vec<u8>]) -> MountFlags {
    items.iter().fold(MountFlags::empty(), |f, i| {
        f | match i.as_slice() {
            b"ro" => MountFlags::RDONLY,
            b"nosuid" => MountFlags::NOSUID,
            b"nodev" => MountFlags::NODEV,
            b"noexec" => MountFlags::NOEXEC,
            b"sync" => MountFlags::SYNCHRONOUS,
            b"dirsync" => MountFlags::DIRSYNC,
            b"noatime" => MountFlags::NOATIME,
            b"nodiratime" => MountFlags::NODIRATIME,
            b"relatime" => MountFlags::RELATIME,
            b"strictatime" => MountFlags::STRICTATIME,
            b"lazytime" => MountFlags::LAZYTIME,
            _ => MountFlags::empty(),
        }
    })
}

/// `mount -o remount,...` through mount.fuse3.
pub fn from_options(mnt: &Path, items: &[Vec<u8>]) -> ExitCode {
    apply(mnt, |_| Ok(flags_of(items)))
}

/// `unionfs remount --ro|--rw MOUNTPOINT`: the mount's other flags are kept.
pub fn run(mnt: &Path, read_only: bool) -> ExitCode {
    apply(mnt, |m| kernel_mount::flags_for_remount(m, read_only))
}

fn apply(mnt: &Path, flags: impl FnOnce(&Path) -> std::io::Result<MountFlags>) -> ExitCode {
    let shown = mnt.display();
    let target = match std::fs::canonicalize(mnt) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("unionfs: remount: {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    match mountinfo::topmost_at(&target) {
        Some(e) if e.mountpoint == target && e.is_fuse() => {}
        Some(e) if e.mountpoint == target => {
            eprintln!(
                "unionfs: remount: {shown}: not a unionfs (FUSE) mount, it is {}",
                e.fstype
            );
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("unionfs: remount: {shown}: not a mount point");
            return ExitCode::from(2);
        }
    }
    let r = flags(&target).and_then(|f| kernel_mount::remount(&target, f));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            eprintln!("unionfs: remount: {shown}: busy (a file is open for writing)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unionfs: remount: {shown}: {e}");
            ExitCode::from(1)
        }
    }
}
