//! FUSE passthrough: the kernel reads and writes an open upper file itself, without a round
//! trip to us per request.
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

use fuser::BackingId;
use parking_lot::Mutex;

/// How one open was answered.
pub(crate) enum Mode {
    /// Served by the kernel from this backing file.
    Passthrough(Arc<BackingId>),
    /// Served by us (read/write requests reach the daemon).
    Cached,
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

    /// Decides how to answer the open `fh` of inode `ino` (`writable`: for writing).
    /// `shareable` says the handle's fd may back every open of the inode; `open_backing`
    /// registers it with the kernel.
    pub(crate) fn open<F: AsFd>(
        &self,
        ino: u64,
        fh: u64,
        writable: bool,
        shareable: Option<F>,
        open_backing: impl FnOnce(F) -> std::io::Result<BackingId>,
    ) -> Mode {
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
                        Mode::Cached
                    }
                }
            }
            _ => Mode::Cached,
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
