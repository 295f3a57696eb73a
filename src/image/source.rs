//! Where a layer's blob bytes come from: a file on this host (an `oci:` layout's blob, or one
//! the registry code fetched whole into the cache), or a registry asked for byte ranges as
//! reads need them (a layer with a table of contents, mounted lazily).
//!
//! Nothing here checks bytes: every piece read from a blob is checked by its reader against a
//! digest it already trusts (the table of contents against the manifest's annotation, each
//! chunk against the table). When a piece fails its check, what was kept of the blob is
//! forgotten ([`Blob::forget`]) so the next read asks the registry again instead of failing
//! forever on a bad copy.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};

/// A registry, as a lazy layer sees it.
pub trait Remote: Send + Sync {
    /// Exactly `len` bytes at `from` of the blob `digest`, or why not (one line, naming the
    /// range). Gives up after the mount's fetch timeout.
    fn read(&self, digest: &str, from: u64, len: u64) -> Result<Vec<u8>, String>;
    /// What messages call where the blobs come from (`docker://HOST/REPO`; the layer's digest
    /// is in every message already, see `LayerReadError`).
    fn describe(&self) -> String;
}

/// A shareable [`Remote`] (an image carries one when some of its layers are lazy).
#[derive(Clone)]
pub struct RemoteRef(pub Arc<dyn Remote>);

impl std::fmt::Debug for RemoteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote")
    }
}

/// The bytes of a remote blob are fetched in aligned blocks of this size, a run of missing
/// blocks in one request: neighbouring small files (a directory's files lie together in the
/// tar) then cost one round trip instead of one each, which is what a slow link needs.
pub const BLOCK: u64 = 512 << 10;
/// A miss right after the previous fetch (a job reading the layer's files in tar order) fetches
/// twice as many blocks as the one before, up to this many, as the kernel's readahead does; a
/// miss elsewhere starts again at one.
const WINDOW: u64 = 16;

/// A layer's blob.
pub enum Blob {
    Local {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
    Remote {
        /// For messages: `docker://HOST/REPO`.
        label: PathBuf,
        remote: RemoteRef,
        digest: String,
        partial: Partial,
    },
}

impl Blob {
    /// The blob file at `path`.
    pub fn open(path: &Path) -> std::io::Result<Blob> {
        Ok(Blob::Local {
            path: path.to_path_buf(),
            file: Arc::new(std::fs::File::open(path)?),
        })
    }

    /// The blob `digest` of `size` bytes, read from `remote` as needed, with what was fetched
    /// kept in the cache directory `cache` (shared with every mount of the layer).
    pub fn remote(remote: RemoteRef, digest: &str, size: u64, label: PathBuf, cache: &Path) -> std::io::Result<Blob> {
        Ok(Blob::Remote {
            label,
            remote,
            digest: digest.to_string(),
            partial: Partial::open(&partial_path(cache, digest), size)?,
        })
    }

    /// What messages call the blob.
    pub fn path(&self) -> &Path {
        match self {
            Blob::Local { path, .. } => path,
            Blob::Remote { label, .. } => label,
        }
    }

    /// The local file, when the blob is one.
    pub fn file(&self) -> Option<&Arc<std::fs::File>> {
        match self {
            Blob::Local { file, .. } => Some(file),
            Blob::Remote { .. } => None,
        }
    }

    /// Fills `buf` from `offset` on; a blob shorter than that is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Blob::Local { file, .. } => file.read_exact_at(buf, offset),
            Blob::Remote {
                remote,
                digest,
                partial,
                ..
            } => {
                let end = offset
                    .checked_add(buf.len() as u64)
                    .filter(|&e| e <= partial.size)
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                if buf.is_empty() {
                    return Ok(());
                }
                partial.fetch(remote, digest, offset / BLOCK, (end - 1) / BLOCK, true)?;
                partial.file.read_exact_at(buf, offset)
            }
        }
    }

    /// Makes the blocks holding `len` bytes at `offset` present, without moving the readahead
    /// window of the reads (a no-op for a local blob).
    pub fn prefetch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let Blob::Remote {
            remote,
            digest,
            partial,
            ..
        } = self
        else {
            return Ok(());
        };
        let end = offset.saturating_add(len).min(partial.size);
        if end <= offset {
            return Ok(());
        }
        partial.fetch(remote, digest, offset / BLOCK, (end - 1) / BLOCK, false)
    }

    /// Drops every block kept (one of them failed a check: a registry that sent wrong bytes
    /// once is not trusted for the others it sent); the next reads fetch them again.
    pub fn forget(&self) {
        if let Blob::Remote { partial, .. } = self {
            if let Err(e) = partial.forget() {
                tracing::warn!("{}: {e}", self.path().display());
            }
        }
    }
}

/// `CACHE/partial/HEX`: what was fetched of the blob `digest`.
pub fn partial_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    cache.join("partial").join(hex)
}

/// The fetched blocks of a remote blob, in one sparse file of the cache directory: the blob's
/// bytes where they lie in the blob, then one byte per block, 1 once the block is written. Two
/// mounts of the layer share it (both write the same bytes); a process killed between the two
/// writes leaves a block unmarked (fetched again) or, on a crash, marked with bytes that never
/// reached the disk, which the reader's digest check catches like any other bad copy.
pub struct Partial {
    file: std::fs::File,
    size: u64,
    /// Blocks this process has seen marked (read again from the file otherwise: another mount
    /// may have fetched them).
    seen: Vec<AtomicBool>,
    state: Mutex<Fetching>,
    /// Signalled when a fetch ends.
    fetched: Condvar,
}

/// The fetches of a [`Partial`] under way.
struct Fetching {
    /// The block after the last fetch, and how many blocks that fetch asked for.
    next: u64,
    window: u64,
    /// Blocks being fetched by some thread.
    inflight: BTreeSet<u64>,
}

impl Partial {
    fn open(path: &Path, size: u64) -> std::io::Result<Partial> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        let count = size.div_ceil(BLOCK);
        if file.metadata()?.len() != size + count {
            // New, or from another blob size (damaged): nothing in it counts.
            file.set_len(0).and_then(|()| file.set_len(size + count))?;
        }
        // Last use, for `unionfs cache prune`.
        let _ = file.set_modified(std::time::SystemTime::now());
        // The marks as they are now, in one read (a warm cache then costs no read per block).
        let mut marks = vec![0u8; count as usize];
        if file.read_exact_at(&mut marks, size).is_err() {
            marks.fill(0);
        }
        Ok(Partial {
            file,
            size,
            seen: marks.iter().map(|&m| AtomicBool::new(m == 1)).collect(),
            state: Mutex::new(Fetching {
                next: u64::MAX,
                window: 0,
                inflight: BTreeSet::new(),
            }),
            fetched: Condvar::new(),
        })
    }

    fn present(&self, k: u64) -> bool {
        let Some(seen) = self.seen.get(k as usize) else {
            return false;
        };
        if seen.load(Ordering::Relaxed) {
            return true;
        }
        let mut mark = [0u8];
        let here = self.file.read_exact_at(&mut mark, self.size + k).is_ok() && mark[0] == 1;
        if here {
            seen.store(true, Ordering::Relaxed);
        }
        here
    }

    /// Makes blocks `first..=last` present: the missing ones, and (for a read, `readahead`) the
    /// blocks after them that the readahead window adds, in one request. Blocks another thread is fetching are waited
    /// for, not fetched twice (the kernel reads a big file's pages on several threads at once).
    fn fetch(&self, remote: &RemoteRef, digest: &str, first: u64, last: u64, readahead: bool) -> std::io::Result<()> {
        // The common case, a read of what is here, takes no lock.
        if (first..=last).all(|k| self.present(k)) {
            return Ok(());
        }
        let mut st = self.state.lock();
        let (lo, hi) = loop {
            let missing: Vec<u64> = (first..=last).filter(|&k| !self.present(k)).collect();
            let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) else {
                return Ok(());
            };
            if missing.iter().any(|k| st.inflight.contains(k)) {
                // Bounded: the fetching thread gives up after the fetch timeout.
                self.fetched.wait(&mut st);
                continue;
            }
            let window = match readahead {
                true if lo == st.next => (st.window * 2).clamp(1, WINDOW),
                _ => 1,
            };
            let count = self.seen.len() as u64;
            let mut end = hi.max(lo + window - 1).min(count.saturating_sub(1));
            // The window stops at the first block already here or on its way.
            if let Some(k) = (hi + 1..=end).find(|&k| st.inflight.contains(&k) || self.present(k)) {
                end = k - 1;
            }
            if readahead {
                (st.next, st.window) = (end + 1, end + 1 - lo);
            }
            st.inflight.extend(lo..=end);
            break (lo, end);
        };
        drop(st);
        let r = self.fetch_run(remote, digest, lo, hi);
        let mut st = self.state.lock();
        for k in lo..=hi {
            st.inflight.remove(&k);
        }
        self.fetched.notify_all();
        r
    }

    /// Fetches blocks `lo..=hi` and marks them present.
    fn fetch_run(&self, remote: &RemoteRef, digest: &str, lo: u64, hi: u64) -> std::io::Result<()> {
        let from = lo * BLOCK;
        let to = ((hi + 1) * BLOCK).min(self.size);
        let bytes = remote.0.read(digest, from, to - from).map_err(std::io::Error::other)?;
        self.file.write_all_at(&bytes, from)?;
        self.file
            .write_all_at(&vec![1u8; (hi + 1 - lo) as usize], self.size + lo)?;
        for k in lo..=hi {
            if let Some(s) = self.seen.get(k as usize) {
                s.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn forget(&self) -> std::io::Result<()> {
        self.file.write_all_at(&vec![0u8; self.seen.len()], self.size)?;
        for s in &self.seen {
            s.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}
