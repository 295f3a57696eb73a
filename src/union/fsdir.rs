//! Directories on a filesystem, with their fds opened on demand.
//!
//! Every directory the kernel holds is a node, and every node keeps a directory per layer it
//! merges. Holding an fd open for each would make the daemon's open files grow with the depth
//! and breadth of what the kernel holds: a tree 100,000 directories deep needs 100,000 open
//! directories at once, past any open-file limit. So only layer roots stay open; any other
//! directory keeps how to open it again (the directory it is an entry of, and its name there)
//! and its identity (device, inode number), and its fd is one of a bounded set: past
//! [`FdCache`]'s capacity, the least recently used are closed (a clock: a directory used since
//! it was last looked at gets a second chance). Opening one again goes down from the nearest
//! open ancestor, one name at a time, and must find the same directory (else ESTALE): a layer
//! that changed under the mount is an error, never another directory.
//!
//! Upper directories move (rename through the view): the rename tells the directory its new
//! place ([`FsDir::moved`]).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use rustix::io::Errno as RErrno;

use super::layerdir::LayerDir;
use crate::sys;

/// A directory on a filesystem.
pub(crate) struct FsDir {
    slot: Arc<Slot>,
    /// Where it is: the directory it is an entry of and its name there; none for a layer's
    /// root, whose fd stays open.
    from: Mutex<Option<(Arc<LayerDir>, OsString)>>,
    id: (u64, u64),
    /// Its protection flags (`format::xattrs::PROT_*`), read from its protattr xattr once:
    /// only the daemon changes them, and it says so ([`FsDir::set_protection`]).
    prot: AtomicU8,
}

/// [`FsDir::prot`] before the xattr was read.
const PROT_UNREAD: u8 = u8::MAX;

/// A directory's fd, open or closed: what [`FdCache`] keeps track of.
struct Slot {
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// Used since the cache last looked at it.
    used: AtomicBool,
    /// Counted by the cache (every directory but a layer's root).
    counted: bool,
}

impl Slot {
    fn new(fd: OwnedFd, counted: bool) -> Arc<Slot> {
        Arc::new(Slot {
            fd: Mutex::new(Some(Arc::new(fd))),
            used: AtomicBool::new(true),
            counted,
        })
    }

    fn is_open(&self) -> bool {
        self.fd.lock().is_some()
    }

    /// Closes the fd (it is opened again when next needed); roots stay open.
    fn close(&self) -> bool {
        self.counted && self.fd.lock().take().is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counted && self.fd.get_mut().is_some() {
            FdCache::global().open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl FsDir {
    /// A layer's root (never closed).
    pub fn root(fd: OwnedFd) -> FsDir {
        let id = rustix::fs::fstat(&fd).map_or((0, 0), |s| (s.st_dev, s.st_ino));
        FsDir {
            slot: Slot::new(fd, false),
            from: Mutex::new(None),
            id,
            prot: AtomicU8::new(PROT_UNREAD),
        }
    }

    /// The directory `name` of `parent`, open as `fd`: its fd may be closed and opened again.
    pub fn child(parent: &Arc<LayerDir>, name: &OsStr, fd: OwnedFd) -> rustix::io::Result<Arc<LayerDir>> {
        let st = rustix::fs::fstat(&fd)?;
        let slot = Slot::new(fd, true);
        FdCache::global().admit(&slot);
        Ok(Arc::new(LayerDir::Fs(FsDir {
            slot,
            from: Mutex::new(Some((Arc::clone(parent), name.to_os_string()))),
            id: (st.st_dev, st.st_ino),
            prot: AtomicU8::new(PROT_UNREAD),
        })))
    }

    /// The directory's protection flags (immutable, append-only: see `format::xattrs`).
    pub fn protection(&self) -> rustix::io::Result<u8> {
        let p = self.prot.load(Ordering::Relaxed);
        if p != PROT_UNREAD {
            return Ok(p);
        }
        let fd = self.fd()?;
        let mut p = 0;
        for name in crate::format::xattrs::PROTATTR {
            match sys::get_xattr_fd(fd.as_fd(), OsStr::new(name)) {
                Ok(Some(v)) => p |= crate::format::xattrs::parse_protattr(&v),
                Ok(None) => {}
                // Unreadable (a directory its owner may not read, for a rootless daemon): none
                // of ours, since only a privileged daemon writes them; changes go on as before.
                Err(e) => tracing::debug!("protattr of a directory: {e}"),
            }
        }
        self.prot.store(p, Ordering::Relaxed);
        Ok(p)
    }

    /// The daemon wrote the directory's protattr xattr: `prot` is what it now says.
    pub fn set_protection(&self, prot: u8) {
        self.prot.store(prot, Ordering::Relaxed);
    }

    /// The directory is now the entry `name` of `parent` (renamed in the upper).
    pub fn moved(&self, parent: Arc<LayerDir>, name: &OsStr) {
        let mut from = self.from.lock();
        if from.is_some() {
            *from = Some((parent, name.to_os_string()));
        }
    }

    /// The fd, opened again if it was closed.
    pub fn fd(&self) -> rustix::io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.slot.fd.lock().as_ref() {
            self.slot.used.store(true, Ordering::Relaxed);
            return Ok(Arc::clone(fd));
        }
        self.reopen()
    }

    /// Opens the directory again from the nearest open ancestor, one name at a time (a chain of
    /// closed ancestors may be as long as the tree is deep: no recursion).
    fn reopen(&self) -> rustix::io::Result<Arc<OwnedFd>> {
        // The closed ancestors, nearest first, down from an open one.
        let mut chain: Vec<(Arc<LayerDir>, OsString)> = Vec::new();
        let mut next = self.from.lock().clone();
        let top = loop {
            let (parent, name) = next.ok_or(RErrno::STALE)?;
            let LayerDir::Fs(p) = &*parent else {
                return Err(RErrno::STALE);
            };
            if let Some(fd) = p.slot.fd.lock().as_ref() {
                p.slot.used.store(true, Ordering::Relaxed);
                chain.push((Arc::clone(&parent), name));
                break Arc::clone(fd);
            }
            next = p.from.lock().clone();
            chain.push((parent, name));
        };
        // `chain[i].1` is the name in `chain[i].0` of the directory below it: chain[0].1 is ours.
        let mut fd = top;
        for i in (0..chain.len()).rev() {
            let name = &chain[i].1;
            let opened = Arc::new(sys::open_path_dir(fd.as_fd(), name)?);
            let want = if i == 0 { Some(self) } else { fs_of(&chain[i - 1].0) };
            let Some(dir) = want else { return Err(RErrno::STALE) };
            let st = rustix::fs::fstat(&*opened)?;
            if (st.st_dev, st.st_ino) != dir.id {
                return Err(RErrno::STALE);
            }
            // Another thread may have opened it meanwhile: one fd is counted either way.
            let mut slot = dir.slot.fd.lock();
            if slot.is_none() {
                *slot = Some(Arc::clone(&opened));
                drop(slot);
                FdCache::global().admit(&dir.slot);
            }
            dir.slot.used.store(true, Ordering::Relaxed);
            fd = opened;
        }
        Ok(fd)
    }

    #[cfg(test)]
    fn close(&self) -> bool {
        self.slot.close()
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.slot.is_open()
    }
}

fn fs_of(d: &LayerDir) -> Option<&FsDir> {
    match d {
        LayerDir::Fs(f) => Some(f),
        LayerDir::Image(_) => None,
    }
}

/// The bounded set of directory fds the process keeps open (see the module comment).
pub(crate) struct FdCache {
    queue: Mutex<VecDeque<Weak<Slot>>>,
    open: AtomicUsize,
    capacity: usize,
}

impl FdCache {
    /// The process's cache: half its open-file limit (the rest is for open files, the layers'
    /// roots and FUSE), at least 64.
    pub fn global() -> &'static FdCache {
        static CACHE: OnceLock<FdCache> = OnceLock::new();
        CACHE.get_or_init(|| {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(1024);
            FdCache::with_capacity((limit / 2).clamp(64, 1 << 20) as usize)
        })
    }

    fn with_capacity(capacity: usize) -> FdCache {
        FdCache {
            queue: Mutex::new(VecDeque::new()),
            open: AtomicUsize::new(0),
            capacity,
        }
    }

    /// An fd just opened joins the set.
    fn admit(&self, d: &Arc<Slot>) {
        self.open.fetch_add(1, Ordering::Relaxed);
        let mut q = self.queue.lock();
        q.push_back(Arc::downgrade(d));
        self.evict(&mut q);
        // Directories the union dropped leave their entries behind (and a weak reference keeps
        // an allocation): sweep them when they outnumber the open ones, so the queue's memory
        // follows what is open (amortised: a sweep at most every `open` admissions).
        if q.len() > 2 * self.open.load(Ordering::Relaxed).max(64) {
            q.retain(|w| w.upgrade().is_some_and(|d| d.is_open()));
        }
    }

    /// Closes the least recently used fds while more than the capacity are open.
    fn evict(&self, q: &mut VecDeque<Weak<Slot>>) {
        let mut looked = 0;
        while self.open.load(Ordering::Relaxed) > self.capacity && looked < 2 * q.len() + 1 {
            looked += 1;
            let Some(w) = q.pop_front() else { return };
            let Some(f) = w.upgrade() else {
                // Dropped: its fd is closed already (see `Drop`).
                continue;
            };
            if !f.is_open() {
                continue;
            }
            if f.used.swap(false, Ordering::Relaxed) {
                q.push_back(w);
                continue;
            }
            if f.close() {
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_directories_open_again_down_a_chain_and_must_be_the_same() {
        let t = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(t.path().join("a/b/c")).expect("mkdir");
        let root = Arc::new(LayerDir::Fs(FsDir::root(sys::open_dir_path(t.path()).expect("open"))));
        let mut cur = Arc::clone(&root);
        let mut dirs = Vec::new();
        for n in ["a", "b", "c"] {
            let fd = sys::open_path_dir(cur.fs_fd().expect("fd").as_fd(), OsStr::new(n)).expect("open");
            cur = FsDir::child(&cur, OsStr::new(n), fd).expect("child");
            dirs.push(Arc::clone(&cur));
        }
        for d in &dirs {
            assert!(fs_of(d).expect("fs").close());
        }
        let c = fs_of(&dirs[2]).expect("fs").fd().expect("reopened down the chain");
        assert!(sys::stat_at(c.as_fd(), OsStr::new(".")).is_ok());
        assert!(
            fs_of(&dirs[0]).expect("fs").is_open(),
            "the ancestors opened on the way stay open"
        );
        // Replaced by another directory of the same name: not the same one.
        assert!(fs_of(&dirs[2]).expect("fs").close());
        std::fs::rename(t.path().join("a/b/c"), t.path().join("old")).expect("mv");
        std::fs::create_dir(t.path().join("a/b/c")).expect("mkdir again");
        assert_eq!(fs_of(&dirs[2]).expect("fs").fd().err(), Some(RErrno::STALE));
        // Told where it moved: found again.
        fs_of(&dirs[2]).expect("fs").moved(Arc::clone(&root), OsStr::new("old"));
        assert!(fs_of(&dirs[2]).expect("fs").fd().is_ok());
    }
}
