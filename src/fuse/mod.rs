//! The FUSE adapter: maps fuser requests onto [`Union`] and its results onto replies. No overlay
//! logic lives here; errnos are decided by the union, this only forwards them.

mod handlers;
mod init;
mod ioctl;
pub mod kernel_mount;
mod passthrough;
mod reply;
pub mod session;

use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{FileHandle, FopenFlags, Generation, INodeNo, Notifier, ReplyEntry, Request};

use self::reply::{ctx, failed, file_attr};
use crate::attr::Attr;
use crate::error::Errno;
use crate::union::{Ctx, Opened, Union};

/// Options of the adapter (how long the kernel may cache).
#[derive(Debug, Clone, Copy)]
pub struct AdapterOptions {
    /// Entry and attribute timeout. Layers do not change behind our back while mounted, and every
    /// change passes through us, so this can be long.
    pub ttl: Duration,
    /// Use FUSE passthrough for upper files when the kernel and our privileges allow it.
    pub passthrough: bool,
    /// Every listing chunk carries attributes (see `init::negotiate`).
    pub readdirplus_always: bool,
    /// Use the kernel's writeback cache where passthrough is not used (see
    /// `init::negotiate_writeback`).
    pub writeback_cache: bool,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            ttl: Duration::from_secs(86400),
            passthrough: true,
            readdirplus_always: true,
            writeback_cache: true,
        }
    }
}

/// `fuser::Filesystem` over a [`Union`].
pub struct FuseAdapter {
    union: Arc<Union>,
    opts: AdapterOptions,
    /// Set once the kernel sent DESTROY (clean unmount).
    destroyed: Arc<AtomicBool>,
    passthrough: passthrough::Passthrough,
    /// POSIX ACLs negotiated (with FUSE_DONT_MASK).

    /// Tells the kernel what changed without its knowledge (set once the session exists).
    notifier: Arc<OnceLock<Notifier>>,
}

impl FuseAdapter {
    pub fn new(union: Arc<Union>, opts: AdapterOptions) -> Self {
        FuseAdapter {
            union,
            opts,
            destroyed: Arc::new(AtomicBool::new(false)),
            passthrough: passthrough::Passthrough::default(),
            notifier: Arc::new(OnceLock::new()),
        }
    }

    /// Serves an inode-flags ioctl (see `ioctl.rs`); `None` is any other ioctl (ENOTTY).
    fn inode_flags_request(&self, ino: u64, req: Option<ioctl::FlagsRequest>, out_size: u32) -> Result<Vec<u8>, Errno> {
        use ioctl::FlagsRequest as R;
        let set = |flags: u32| {
            self.union.set_inode_flags(ino, flags)?;
            // The change moves the ctime, which the kernel would not ask us for again.
            self.invalidate_attrs(ino);
            Ok(Vec::new())
        };
        match req.ok_or(Errno::ENOTTY)? {
            R::Get => Ok(ioctl::flags_reply(self.union.inode_flags(ino)?, out_size)),
            R::GetX => Ok(ioctl::fsxattr_reply(self.union.inode_flags(ino)?)),
            R::Set(flags) => set(flags),
            R::SetX(xflags) => set(ioctl::flags_from_xflags(self.union.inode_flags(ino)?, xflags)),
        }
    }

    /// Where the session puts its notifier once it exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        Arc::clone(&self.notifier)
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages): we changed them in a way
    /// the kernel cannot know. Only takes a spinlock in the kernel, so it is safe inside a
    /// request handler.
    fn invalidate_attrs(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // ENOENT: the kernel holds no inode for it, so nothing is cached.
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::trace!(ino, "attribute invalidation: {e}");
            }
        }
    }

    /// Drops setuid/setgid as the kernel would before `req` changes the data of `ino` through
    /// the handle `fh` (see `Union::drop_privs`).
    fn drop_privs(&self, req: &Request, ino: INodeNo, fh: FileHandle) -> Result<(), Errno> {
        if self.union.drop_privs(&ctx(req), fh.0)? {
            self.invalidate_attrs(ino.0);
        }
        Ok(())
    }

    /// The caller of a creating request; with POSIX ACLs on, the kernel leaves its umask to us.
    fn creator(&self, req: &Request, umask: u32) -> Ctx {
        let mut c = ctx(req);
        if self.union.posix_acl() {
            c.umask = umask;
        }
        c
    }

    /// A flag that turns true when the kernel ends the session.
    pub fn destroyed_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.destroyed)
    }

    /// How to answer the open `o` of `ino` with the caller's `flags` (see `passthrough.rs`, the
    /// one place that decides). `created`: the open makes the file (CREATE), so the kernel
    /// has no inode for it yet, nothing cached to drop.
    fn open_mode(
        &self,
        ino: u64,
        o: Opened,
        flags: i32,
        created: bool,
        open_backing: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> passthrough::Mode {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let revalidate = self.union.config().revalidate;
        let r = self.union.with_file(o.fh, |fd| {
            let shareable = (o.shared_rw && !o.daemon_writes).then(|| fd.as_fd());
            Ok(self
                .passthrough
                .open(ino, &o, writable, revalidate, shareable, open_backing))
        });
        let mode = r.unwrap_or(passthrough::Mode::Served(FopenFlags::empty()));
        if writable && !created && matches!(mode, passthrough::Mode::Passthrough(_)) {
            // From now on its attributes are not cached (see `attr_ttl`); drop those cached
            // before, which a write through a shared mapping would otherwise hide.
            self.invalidate_attrs(ino);
        }
        mode
    }

    /// How long the kernel may keep the attributes of `ino`.
    fn attr_ttl(&self, ino: u64) -> Duration {
        if self.passthrough.writing(ino) {
            Duration::ZERO
        } else {
            self.opts.ttl
        }
    }

    /// An entry reply: names are kept for the TTL, attributes as `attr_ttl` says.
    fn reply_entry(&self, reply: ReplyEntry, a: &Attr) {
        reply.entry_with_ttls(&self.attr_ttl(a.ino), &self.opts.ttl, &file_attr(a), Generation(0));
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>, op: &'static str, about: impl std::fmt::Debug) {
        match r {
            Ok(a) => self.reply_entry(reply, &a),
            Err(e) => reply.error(failed(op, about, e)),
        }
    }
}
