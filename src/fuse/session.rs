//! Mount sessions: mounting, serving with a pool of threads, and unmounting.
//!
//! We own shutdown (docs/architecture.md, "FUSE facts"): a signal or `unionfs umount` detaches the mount lazily,
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
    /// Let root (and the owner) reach the mount; ignored when `allow_other` is set.
    pub allow_root: bool,
    /// Honour setuid bits and device nodes (container images need them).
    pub suid: bool,
    pub dev: bool,
    /// Allow executing files (`noexec` when false).
    pub exec: bool,
    /// The mount's source as shown in /proc/self/mountinfo.
    pub fsname: String,
    /// The mount's type is `fuse.<subtype>` (mount(8) runs the program it names for a remount).
    pub subtype: String,
    /// Further kernel mount flags and options (atime, sync, dirsync, SELinux `context=`, ...).
    pub extra: Vec<MountOption>,
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
            allow_root: false,
            suid: root,
            dev: root,
            exec: true,
            fsname: "unionfs".into(),
            subtype: "unionfs".into(),
            extra: Vec::new(),
            adapter: AdapterOptions::default(),
        }
    }

    /// The fuser configuration for a union that is read-only or not.
    fn fuser_config(&self, read_only: bool) -> Config {
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName(self.fsname.clone()),
            MountOption::Subtype(self.subtype.clone()),
            MountOption::DefaultPermissions,
            if read_only { MountOption::RO } else { MountOption::RW },
        ];
        if self.suid {
            cfg.mount_options.push(MountOption::Suid);
        }
        if self.dev {
            cfg.mount_options.push(MountOption::Dev);
        }
        if !self.exec {
            cfg.mount_options.push(MountOption::NoExec);
        }
        for o in &self.extra {
            // Session::new refuses conflicting pairs; ours (RO/RW above) win.
            if !matches!(o, MountOption::RO | MountOption::RW) && !cfg.mount_options.contains(o) {
                cfg.mount_options.push(o.clone());
            }
        }
        cfg.acl = if self.allow_other {
            SessionACL::All
        } else if self.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        // Each worker gets std's default stack (2 MiB, or RUST_MIN_STACK): fuser spawns them and
        // has no stack setting. Chosen on purpose: no handler recurses with the input, and the
        // most a worker was measured to touch is 16 KiB (docs/architecture.md, "Thread stacks";
        // tests/mount_deep.rs runs the daemon at 256 KiB).
        cfg.n_threads = Some(self.threads.max(2));
        cfg.clone_fd = true;
        cfg
    }
}

/// A mounted union, not yet serving.
pub struct Mounted {
    session: Session<FuseAdapter>,
    mountpoint: PathBuf,
}

/// Mounts `union` at `mountpoint`. When this returns Ok, the kernel has completed INIT and the
/// mount is usable as soon as [`Mounted::run`] starts (requests made before that wait in the
/// kernel's queue).
pub fn mount(union: Arc<Union>, mountpoint: &Path, opts: &SessionOptions) -> io::Result<Mounted> {
    let cfg = opts.fuser_config(!union.writable());
    let adapter = FuseAdapter::new(union, opts.adapter);
    let notifier = adapter.notifier_slot();
    let session = match super::kernel_mount::mount(mountpoint, &cfg.mount_options, cfg.acl, &opts.subtype)? {
        Some(fd) => Session::from_fd(adapter, fd, cfg.acl, cfg.clone()).inspect_err(|_| {
            // Mounted, but no session: nothing would ever answer it.
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        })?,
        None => Session::new(adapter, mountpoint, &cfg)?,
    };
    // Requests wait until `run`, so none can need the notifier before it is here.
    let _ = notifier.set(session.notifier());
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
        let mut bg = self.session.spawn()?;
        // When its session ends, fuser unmounts the path once more with a plain umount2 (its
        // "still mounted?" check is true even then). After a lazy unmount, with files held open
        // for a long time, that could take down a new mount made at the same place since. We own
        // unmounting, so keep the thread handle and forget the rest: it holds only fuser's mount
        // record and a channel sender, and the process ends soon after.
        let guard = std::mem::replace(&mut bg.guard, std::thread::spawn(|| Ok(())));
        std::mem::forget(bg);
        guard
            .join()
            .map_err(|_| io::Error::other("the FUSE session thread panicked"))?
    }
}

/// Unmounts `mountpoint`; with `lazy`, detaches it so open files do not keep it busy (the daemon
/// exits once the kernel lets go). Root uses umount2(2), a plain user fusermount3. A busy mount
/// gives an error with `raw_os_error() == Some(EBUSY)` either way.
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
    let out = cmd.arg("--").arg(mountpoint).output()?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.contains("Device or resource busy") {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    Err(io::Error::other(msg))
}
