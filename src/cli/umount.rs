//! `unionfs umount [--lazy] MOUNTPOINT`: unmount, then wait for the daemon to exit.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use unionfs::fuse::session;
use unionfs::mountinfo::{self, MountEntry};

use super::pidfile;

/// How long to wait for the daemon after the unmount.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The topmost mount at `p` (canonical), if any.
fn mount_at(p: &Path) -> Option<MountEntry> {
    mountinfo::topmost_at(p)
}

/// The canonical path of `p` without touching it when it is a mount (a stale or hung FUSE mount
/// fails or blocks `stat`): canonicalize the parent and append the name.
fn resolve(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    if let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) {
        if let Ok(c) = std::fs::canonicalize(parent) {
            let c = c.join(name);
            if mount_at(&c).is_some() {
                return Ok(c);
            }
        }
    }
    std::fs::canonicalize(&abs)
}

pub fn run(mountpoint: &Path, lazy: bool) -> ExitCode {
    let shown = mountpoint.display();
    let target = match resolve(mountpoint) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("unionfs: umount: {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(entry) = mount_at(&target) else {
        eprintln!("unionfs: umount: {shown}: not a mount point");
        return ExitCode::from(2);
    };
    if !entry.is_fuse() {
        eprintln!(
            "unionfs: umount: {shown}: not a unionfs (FUSE) mount, it is {}",
            entry.fstype
        );
        return ExitCode::from(2);
    }
    let daemon = pidfile::find(&target);
    match session::unmount(&target, false) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) && lazy => {
            if let Err(e) = session::unmount(&target, true) {
                eprintln!("unionfs: umount: {shown}: {e}");
                return ExitCode::from(1);
            }
            // Detached; the daemon serves the open files and exits when the last one closes.
            if let Some(d) = daemon {
                eprintln!(
                    "unionfs: {shown} was busy and is now detached; the daemon (pid {}) exits once its last file is closed",
                    d.pid
                );
            }
            return ExitCode::SUCCESS;
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            eprintln!(
                "unionfs: umount: {shown}: target is busy (files or working directories are open on it); \
                 close them, or use `unionfs umount --lazy {shown}` to detach it now"
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("unionfs: umount: {shown}: {e}");
            return ExitCode::from(1);
        }
    }
    let Some(d) = daemon else {
        return ExitCode::SUCCESS;
    };
    let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
    while d.alive() {
        if Instant::now() >= deadline {
            eprintln!(
                "unionfs: umount: {shown}: unmounted, but the daemon (pid {}) has not exited after {} s",
                d.pid,
                DAEMON_EXIT_TIMEOUT.as_secs()
            );
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ExitCode::SUCCESS
}
