//! Mount sessions: mounting, serving with a pool of threads, and unmounting.
//!
//! We own shutdown (FUSER-NOTES A2): a signal or `unionfs umount` detaches the mount lazily,
//! the kernel then ends the session, and `run` returns. fuser's AutoUnmount is not used: it can
//! hang shutdown.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use super::{AdapterOptions, FuseAdapter};
use crate::union::Union;

/// How to mount.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Worker threads (at least 2: a handler waiting on another request must not deadlock).
    pub threads: usize,
    /// Let every user reach the mount (subject to modes): needed by containers with several uids.
    pub allow_other: bool,
    /// Honour setuid bits and device nodes (container images need them).
    pub suid: bool,
    pub dev: bool,
    pub fsname: String,
    pub adapter: AdapterOptions,
}

impl SessionOptions {
    /// Defaults for the current user: as root, `allow_other`, `suid` and `dev` (like a kernel
    /// overlay mount); as a plain user, what fusermount3 allows.
    pub fn for_current_user() -> Self {
        let root = rustix::process::geteuid().is_root();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 16);
        SessionOptions {
            threads,
            allow_other: root,
            suid: root,
            dev: root,
            fsname: "unionfs".into(),
            adapter: AdapterOptions::default(),
        }
    }
}

/// A mounted union, not yet serving.
pub struct Mounted {
    session: Session<FuseAdapter>,
    mountpoint: PathBuf,
}

/// Mounts `union` at `mountpoint`. When this returns Ok, the kernel has completed INIT and the
/// mount is usable as soon as [`Mounted::run`] starts.
pub fn mount(union: Arc<Union>, mountpoint: &Path, opts: &SessionOptions) -> io::Result<Mounted> {
    let read_only = !union.writable();
    let adapter = FuseAdapter::new(union, opts.adapter);
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("unionfs".into()),
        MountOption::DefaultPermissions,
        if read_only { MountOption::RO } else { MountOption::RW },
    ];
    if opts.suid {
        cfg.mount_options.push(MountOption::Suid);
    }
    if opts.dev {
        cfg.mount_options.push(MountOption::Dev);
    }
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(opts.threads.max(2));
    cfg.clone_fd = true;
    let session = Session::new(adapter, mountpoint, &cfg)?;
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// Detaches the mount at `mountpoint` (lazily, so open files do not keep it busy; the daemon
/// exits once the kernel lets go). Root uses umount2(2), a plain user fusermount3.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        return rustix::mount::unmount(mountpoint, flags).map_err(io::Error::from);
    }
    let prog = std::env::var_os("FUSERMOUNT_PATH").unwrap_or_else(|| "fusermount3".into());
    let mut cmd = std::process::Command::new(prog);
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(mountpoint).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
