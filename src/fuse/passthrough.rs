//! How each open is answered: FUSE passthrough (the kernel reads and writes an open upper file
//! itself, without a round trip to us per request) or served by us, with which cache flags.
//!
//! The kernel's rules (fs/fuse/iomode.c) shape this module: every open of an inode that has a
//! backing file must name the *same* backing file, and an inode cannot have passthrough opens
//! and daemon-served opens at once. So each inode is in one mode at a time, decided by
//! the opens still outstanding:
//! - lower files are always served by us: their content never changes while mounted, the page
//!   cache keeps it across opens, and a later write-open copies them up to a *different* file,
//!   which could not share a lower backing file;
//! - an upper file goes passthrough when no daemon-served open of it is outstanding, sharing one
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

/// How one open was answered. `B` is the kernel's backing-file handle (a stand-in in tests).
pub(crate) enum Mode<B = BackingId> {
    /// Served by the kernel from this backing file.
    Passthrough(Arc<B>),
    /// Served by us (read/write requests reach the daemon), with these open flags.
    Served(FopenFlags),
}

struct Inode<B> {
    backing: Option<Arc<B>>,
    passthrough: u32,
    served: u32,
    /// Passthrough opens that may write (see [`Passthrough::writing`]).
    writers: u32,
}

impl<B> Default for Inode<B> {
    fn default() -> Self {
        Inode {
            backing: None,
            passthrough: 0,
            served: 0,
            writers: 0,
        }
    }
}

/// Passthrough state of the mount: per-inode modes and which handle counts where.
pub(crate) struct Passthrough<B = BackingId> {
    /// Negotiated at INIT: upper files may have been served by the kernel, so the daemon-served
    /// opens must allow for that (see `Passthrough::served_flags`).
    enabled: AtomicBool,
    /// Registering a backing file failed once: register no more (opens that must share an
    /// existing backing file still get it).
    refused: AtomicBool,
    inodes: Mutex<HashMap<u64, Inode<B>>>,
    /// File handle -> (inode, opened passthrough, opened for writing).
    handles: Mutex<HashMap<u64, (u64, bool, bool)>>,
}

impl<B> Default for Passthrough<B> {
    fn default() -> Self {
        Passthrough {
            enabled: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            inodes: Mutex::default(),
            handles: Mutex::default(),
        }
    }
}

impl<B> Passthrough<B> {
    pub(crate) fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decides how to answer the open `o` of inode `ino` (`writable`: for writing;
    /// `revalidate`: lower files may change while mounted, so the kernel keeps none of their pages). `shareable` is the handle's fd if it may back
    /// every open of the inode; `open_backing` registers it with the kernel.
    pub(crate) fn open<F: AsFd>(
        &self,
        ino: u64,
        o: &Opened,
        writable: bool,
        revalidate: bool,
        shareable: Option<F>,
        open_backing: impl FnOnce(F) -> std::io::Result<B>,
    ) -> Mode<B> {
        let fh = o.fh;
        let served = || Mode::Served(self.served_flags(o, revalidate));
        let mut inodes = self.inodes.lock();
        let st = inodes.entry(ino).or_default();
        let mode = match (&st.backing, shareable) {
            (Some(b), _) if st.passthrough > 0 => Mode::Passthrough(Arc::clone(b)),
            (_, Some(fd)) if st.served == 0 && self.enabled() && !self.refused.load(Ordering::Relaxed) => {
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
                        served()
                    }
                }
            }
            _ => served(),
        };
        let pt = matches!(mode, Mode::Passthrough(_));
        if pt {
            st.passthrough += 1;
            st.writers += u32::from(writable);
        } else {
            st.served += 1;
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
    fn served_flags(&self, o: &Opened, revalidate: bool) -> FopenFlags {
        if o.in_upper && (self.enabled() || o.beside_older || o.daemon_writes) {
            return FopenFlags::FOPEN_DIRECT_IO;
        }
        if !o.in_upper && revalidate {
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
            st.served = st.served.saturating_sub(1);
        }
        if st.passthrough == 0 && st.served == 0 {
            inodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;

    use super::*;

    /// A backing file in tests: which registration made it.
    #[derive(Debug, PartialEq)]
    struct Backing(u32);

    fn opened(fh: u64, in_upper: bool) -> Opened {
        Opened {
            fh,
            shared_rw: in_upper,
            in_upper,
            beside_older: false,
            daemon_writes: false,
            atime: ReadAtime::Untouched,
        }
    }

    fn on() -> Passthrough<Backing> {
        let p = Passthrough::default();
        p.enable(true);
        p
    }

    /// An fd that may back the inode (any fd does for the decision).
    fn fd() -> Option<std::fs::File> {
        Some(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    fn backing_of(m: &Mode<Backing>) -> Option<&Backing> {
        match m {
            Mode::Passthrough(b) => Some(b),
            Mode::Served(_) => None,
        }
    }

    #[test]
    fn opens_of_an_upper_file_share_one_backing_file_until_the_last_closes() {
        let p = on();
        let registered = Cell::new(0);
        let register = |_| {
            registered.set(registered.get() + 1);
            Ok(Backing(registered.get()))
        };
        let a = p.open(7, &opened(1, true), true, false, fd(), register);
        let b = p.open(7, &opened(2, true), false, false, fd(), register);
        assert_eq!(backing_of(&a), Some(&Backing(1)));
        assert_eq!(
            backing_of(&b),
            Some(&Backing(1)),
            "the second open shares the first's backing file"
        );
        assert_eq!(registered.get(), 1);
        assert!(p.writing(7), "open for writing through passthrough");
        p.release(1);
        assert!(!p.writing(7), "the writer closed");
        p.release(2);
        let c = p.open(7, &opened(3, true), false, false, fd(), register);
        assert_eq!(
            backing_of(&c),
            Some(&Backing(2)),
            "a new backing file after the last close"
        );
    }

    #[test]
    fn lower_files_are_served_by_us_and_keep_their_pages() {
        let p = on();
        let m = p.open(7, &opened(1, false), false, false, None::<std::fs::File>, |_| {
            panic!("a lower file never gets a backing file")
        });
        assert!(matches!(m, Mode::Served(f) if f == FopenFlags::FOPEN_KEEP_CACHE));
        // With --revalidate a lower file may change: its pages are not kept.
        let m = p.open(8, &opened(2, false), false, true, None::<std::fs::File>, |_| {
            panic!("lower")
        });
        assert!(matches!(m, Mode::Served(f) if f.is_empty()));
    }

    #[test]
    fn an_inode_with_a_served_open_gets_no_passthrough_until_it_closes() {
        let p = on();
        // Opened before its copy-up: served by us.
        let old = p.open(7, &opened(1, false), false, false, None::<std::fs::File>, |_| {
            panic!("lower")
        });
        assert!(matches!(old, Mode::Served(_)));
        let mut o = opened(2, true);
        o.beside_older = true;
        let new = p.open(7, &o, true, false, fd(), |_| -> io::Result<Backing> {
            panic!("the kernel refuses mixing passthrough and daemon-served opens of one inode")
        });
        assert!(matches!(new, Mode::Served(f) if f == FopenFlags::FOPEN_DIRECT_IO));
        p.release(1);
        p.release(2);
        let later = p.open(7, &opened(3, true), false, false, fd(), |_| Ok(Backing(1)));
        assert_eq!(backing_of(&later), Some(&Backing(1)));
    }

    #[test]
    fn a_refused_registration_turns_passthrough_off_for_good() {
        let p = on();
        let m = p.open(7, &opened(1, true), true, false, fd(), |_| {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(matches!(m, Mode::Served(f) if f == FopenFlags::FOPEN_DIRECT_IO));
        let m = p.open(8, &opened(2, true), true, false, fd(), |_| -> io::Result<Backing> {
            panic!("no second attempt after a refusal")
        });
        assert!(matches!(m, Mode::Served(_)));
    }

    #[test]
    fn without_passthrough_upper_files_keep_the_page_cache() {
        let p: Passthrough<Backing> = Passthrough::default();
        let m = p.open(7, &opened(1, true), true, false, fd(), |_| -> io::Result<Backing> {
            panic!("passthrough is off")
        });
        assert!(matches!(m, Mode::Served(f) if f == FopenFlags::FOPEN_KEEP_CACHE));
        assert!(!p.writing(7));
    }
}
