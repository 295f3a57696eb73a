//! How each open is answered: FUSE passthrough (the kernel reads and writes an open upper file
//! itself, without a round trip to us per request) or served by us, with which cache flags.
//!
//! The kernel's rules (fs/fuse/iomode.c) shape this module: every open of an inode that has a
//! backing file must name the *same* backing file, and an inode cannot have passthrough opens
//! and cached (daemon-served) opens at once. So each inode is in one mode at a time, decided by
//! the opens still outstanding:
//! - lower files are always served cached: their content never changes while mounted, the page
//!   cache keeps it across opens, and a later write-open copies them up to a *different* file,
//!   which could not share a lower backing file;
//! - an upper file goes passthrough when no cached open of it is outstanding, sharing one
//!   backing file (a read-write fd, see `Union::set_rw_upper_fds`) among all its opens.
//!
//! Our counts only fall when RELEASE arrives, which the kernel sends after it has dropped the
//! file, so they never undercount what the kernel holds.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FopenFlags};

use crate::union::{Opened, ReadAtime};
use parking_lot::Mutex;

/// How one open was answered.
pub(crate) enum Mode {
    /// Served by the kernel from this backing file.
    Passthrough(Arc<BackingId>),
    /// Served by us (read/write requests reach the daemon), with these open flags.
    Cached(FopenFlags),
}

#[derive(Default)]
struct Inode {
    backing: Option<Arc<BackingId>>,
    passthrough: u32,
    cached: u32,
    /// Passthrough opens that may write (see [`Passthrough::writing`]).
    writers: u32,
}

/// Passthrough state of the mount: per-inode modes and which handle counts where.
#[derive(Default)]
pub(crate) struct Passthrough {
    /// Negotiated at INIT: upper files may have been served by the kernel, so the daemon-served
    /// opens must allow for that (see `FuseAdapter::cached_flags`).
    enabled: AtomicBool,
    /// Registering a backing file failed once: register no more (opens that must share an
    /// existing backing file still get it).
    refused: AtomicBool,
    inodes: Mutex<HashMap<u64, Inode>>,
    /// File handle -> (inode, opened passthrough, opened for writing).
    handles: Mutex<HashMap<u64, (u64, bool, bool)>>,
}

impl Passthrough {
    pub(crate) fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decides how to answer the open `o` of inode `ino` (`writable`: for writing;
    /// `lower_may_change` with `--revalidate`). `shareable` is the handle's fd if it may back
    /// every open of the inode; `open_backing` registers it with the kernel.
    pub(crate) fn open<F: AsFd>(
        &self,
        ino: u64,
        o: &Opened,
        writable: bool,
        lower_may_change: bool,
        shareable: Option<F>,
        open_backing: impl FnOnce(F) -> std::io::Result<BackingId>,
    ) -> Mode {
        let fh = o.fh;
        let cached = || Mode::Cached(self.cached_flags(o, lower_may_change));
        let mut inodes = self.inodes.lock();
        let st = inodes.entry(ino).or_default();
        let mode = match (&st.backing, shareable) {
            (Some(b), _) if st.passthrough > 0 => Mode::Passthrough(Arc::clone(b)),
            (_, Some(fd)) if st.cached == 0 && self.enabled() && !self.refused.load(Ordering::Relaxed) => {
                match open_backing(fd) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        st.backing = Some(Arc::clone(&id));
                        Mode::Passthrough(id)
                    }
                    Err(e) => {
                        // Not allowed after all (no CAP_SYS_ADMIN in the initial user namespace,
                        // or a backing filesystem stacked too deep): serve file I/O ourselves.
                        tracing::info!("FUSE passthrough unavailable ({e}); serving file I/O in the daemon");
                        self.refused.store(true, Ordering::Relaxed);
                        cached()
                    }
                }
            }
            _ => cached(),
        };
        let pt = matches!(mode, Mode::Passthrough(_));
        if pt {
            st.passthrough += 1;
            st.writers += u32::from(writable);
        } else {
            st.cached += 1;
        }
        drop(inodes);
        self.handles.lock().insert(fh, (ino, pt, writable));
        mode
    }

    /// Whether the kernel may be changing `ino` behind our back: it is open for writing through
    /// passthrough, where writes through a shared mapping change the backing file's data and
    /// times without the FUSE layer noticing. Its attributes must not be cached meanwhile.
    pub(crate) fn writing(&self, ino: u64) -> bool {
        self.enabled() && self.inodes.lock().get(&ino).is_some_and(|st| st.writers > 0)
    }

    /// Flags for an open we serve ourselves. Lower content never changes while mounted, so its
    /// pages stay valid across opens. An upper file is served by us while passthrough is on only
    /// when it is also open through the daemon from before its copy-up; the kernel's page cache
    /// and its idea of the size can then lag behind the backing file, so such opens bypass the
    /// page cache and appends go to our end of file (see the adapter's `write`). Without
    /// passthrough the same holds while a handle from before the copy-up is open: it reads the
    /// lower content, and must not find the copy's pages in the cache it shares with this open.
    /// Writes to a file whose privileges only we drop (`Opened::daemon_writes`) must reach us as
    /// the caller's, not from the page cache. A read that must update the access time must
    /// reach the file: the next one (the cache is dropped at open), or every one
    /// (`strictatime`).
    fn cached_flags(&self, o: &Opened, lower_may_change: bool) -> FopenFlags {
        if o.in_upper && (self.enabled() || o.beside_older || o.daemon_writes) {
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        if !o.in_upper && lower_may_change {
            return FopenFlags::empty();
        }
        match o.atime {
            ReadAtime::Untouched => FopenFlags::FOPEN_KEEP_CACHE,
            ReadAtime::NextRead => FopenFlags::empty(),
            ReadAtime::EveryRead => FopenFlags::FOPEN_DIRECT_IO,
        }
    }

    /// Forgets the open `fh`; the last passthrough open of an inode closes its backing file.
    pub(crate) fn release(&self, fh: u64) {
        let Some((ino, pt, writable)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        let Some(st) = inodes.get_mut(&ino) else {
            return;
        };
        if pt {
            st.passthrough = st.passthrough.saturating_sub(1);
            st.writers = st.writers.saturating_sub(u32::from(writable));
            if st.passthrough == 0 {
                st.backing = None;
            }
        } else {
            st.cached = st.cached.saturating_sub(1);
        }
        if st.passthrough == 0 && st.cached == 0 {
            inodes.remove(&ino);
        }
    }
}
