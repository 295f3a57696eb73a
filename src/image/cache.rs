//! The content cache: pieces of file data decompressed from layer blobs, named by their sha256
//! (so a piece shared by two layers, or two images, is kept once), with a size limit.
//!
//! Every piece read back is hashed and compared with its name before a byte of it is used: a
//! piece changed, cut short or half written behind the daemon's back is a miss (and is removed),
//! never different data. Pieces are written under a temporary name and renamed into place.
//!
//! The size limit holds across every daemon sharing the directory, in allocated blocks (what
//! `du` shows, not the pieces' lengths: small pieces take a whole block each), fan-out
//! directories included: admissions take a lock (`flock` on `content.lock`) and keep the total
//! in `content.size`; over the limit, the pieces least recently used (their mtime, moved on a
//! hit when it is more than a minute old) go first, until the total is at nine tenths of the
//! limit, so evictions come in batches.
//!
//! An open file keeps the last piece it read ([`LastPiece`]): a file read in requests smaller
//! than a piece asks for the same piece several times in a row, and reading and hashing it
//! from disk each time made warm reads of big files cost more than the unpacked file.

use std::io::{Read as _, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustix::fs::FlockOperation;
use sha2::{Digest as _, Sha256};

/// A hit moves a piece's mtime (its place in the eviction order) only when it is older than
/// this: one metadata write per piece and minute at most, whichever process reads it.
const TOUCH_AFTER: Duration = Duration::from_secs(60);

/// What a file of `len` bytes takes on disk (the block size of the filesystems we run on).
fn allocated(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// The piece a reader used last, checked (see the module's comment). It lives as long as the
/// open file that holds it.
#[derive(Default)]
pub struct LastPiece(Mutex<Option<Named>>);

/// A piece with its name.
type Named = ([u8; 32], Arc<Vec<u8>>);

impl LastPiece {
    pub fn get(&self, d: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let l = self.0.lock();
        l.as_ref().filter(|(k, _)| k == d).map(|(_, b)| Arc::clone(b))
    }

    pub fn set(&self, d: &[u8; 32], b: &Arc<Vec<u8>>) {
        *self.0.lock() = Some((*d, Arc::clone(b)));
    }
}

/// A content cache directory.
pub struct ContentCache {
    dir: PathBuf,
    limit: u64,
    tmp_seq: AtomicU64,
    pub stats: CacheStats,
}

/// What the cache did (for the daemon's statistics and tests).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Pieces found damaged (and removed).
    pub damaged: AtomicU64,
    pub stored: AtomicU64,
    pub evicted: AtomicU64,
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A piece's bytes, its open file and mtime (one open for the read and a later touch).
fn read_piece(p: &Path) -> Option<(Vec<u8>, std::fs::File, SystemTime)> {
    let mut f = std::fs::File::open(p).ok()?;
    let md = f.metadata().ok()?;
    let mut bytes = Vec::with_capacity(usize::try_from(md.len()).ok()?);
    f.read_to_end(&mut bytes).ok()?;
    Some((bytes, f, md.modified().ok()?))
}

impl ContentCache {
    /// The cache in `dir` (created when first written) holding at most `limit` bytes of pieces.
    pub fn new(dir: &Path, limit: u64) -> ContentCache {
        ContentCache {
            dir: dir.to_path_buf(),
            limit,
            tmp_seq: AtomicU64::new(0),
            stats: CacheStats::default(),
        }
    }

    /// The size limit, in bytes of disk.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn content_dir(&self) -> PathBuf {
        self.dir.join("content")
    }

    fn piece_path(&self, d: &[u8; 32]) -> PathBuf {
        let h = hex(d);
        self.content_dir().join(&h[..2]).join(&h)
    }

    /// The piece named `d`, if the cache has it intact.
    pub fn get(&self, d: &[u8; 32]) -> Option<Arc<Vec<u8>>> {
        let p = self.piece_path(d);
        let Some((bytes, f, mtime)) = read_piece(&p) else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if Sha256::digest(&bytes)[..] != d[..] {
            tracing::warn!("content cache: {} is damaged; removed", p.display());
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(&p);
            return None;
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        if now.duration_since(mtime).unwrap_or_default() > TOUCH_AFTER {
            // Our own file, so setting its time needs no write access to it.
            let _ = f.set_modified(now);
        }
        Some(Arc::new(bytes))
    }

    /// Keeps `bytes` (whose sha256 is `d`) if it fits under the limit. Failures only mean the
    /// piece is not kept.
    pub fn put(&self, d: &[u8; 32], bytes: &[u8]) {
        if allocated(bytes.len() as u64) > self.limit / 4 {
            return;
        }
        if let Err(e) = self.admit(d, bytes) {
            tracing::debug!("content cache {}: not kept: {e}", self.dir.display());
        }
    }

    fn admit(&self, d: &[u8; 32], bytes: &[u8]) -> std::io::Result<()> {
        let p = self.piece_path(d);
        if p.exists() {
            return Ok(());
        }
        let cdir = self.content_dir();
        let _lock = self.lock()?;
        // Under the lock: eviction removes fan-out directories it empties.
        let fan_out = p.parent().unwrap_or(&cdir);
        let new_dir = !fan_out.exists();
        std::fs::create_dir_all(fan_out)?;
        let mut total = self.total();
        // What `du` will count: the piece's blocks, and a new fan-out directory's first block.
        let len = allocated(bytes.len() as u64) + if new_dir { 4096 } else { 0 };
        if total + len > self.limit {
            total = self.evict(self.limit / 10 * 9 - len.min(self.limit / 10 * 9))?;
        }
        let tmp = cdir.join(format!(
            ".tmp.{}.{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let r = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        self.set_total(total + len)?;
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The lock every change of the directory's pieces and total holds.
    fn lock(&self) -> std::io::Result<std::fs::File> {
        let cdir = self.content_dir();
        std::fs::create_dir_all(&cdir)?;
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cdir.join("lock"))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)?;
        Ok(lock)
    }

    /// The running total (under the lock), counted again when its file is missing or damaged.
    fn total(&self) -> u64 {
        match std::fs::read_to_string(self.content_dir().join("size")) {
            Ok(s) => s.trim().parse().unwrap_or_else(|_| self.scan_total()),
            Err(_) => self.scan_total(),
        }
    }

    fn set_total(&self, total: u64) -> std::io::Result<()> {
        // In place, at a fixed width: truncating and rewriting a file makes ext4 flush it to
        // disk at close (its replace-by-truncate heuristic), which cost every cold read ~4 ms.
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.content_dir().join("size"))?;
        let line = format!("{total:>20}\n");
        if rustix::io::pwrite(&f, line.as_bytes(), 0)? != line.len() {
            return Err(std::io::Error::other("a short write of the content cache's size"));
        }
        Ok(())
    }

    /// Removes the piece file `p` (`unionfs cache prune`), keeping the running total right.
    pub fn remove(&self, p: &Path) -> std::io::Result<()> {
        let _lock = self.lock()?;
        let blocks = std::fs::metadata(p)?.blocks() * 512;
        let total = self.total();
        std::fs::remove_file(p)?;
        self.set_total(total.saturating_sub(blocks))
    }

    /// Every piece with its size and last use.
    fn pieces(&self) -> Vec<(PathBuf, u64, (i64, i64))> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.content_dir()) else {
            return out;
        };
        for sub in rd.flatten() {
            if !sub.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if let Ok(md) = f.metadata() {
                    out.push((f.path(), md.blocks() * 512, (md.mtime(), md.mtime_nsec())));
                }
            }
        }
        out
    }

    /// The fan-out directories' blocks.
    fn dirs_total(&self) -> u64 {
        let Ok(rd) = std::fs::read_dir(self.content_dir()) else {
            return 0;
        };
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|md| md.is_dir())
            .map(|md| md.blocks() * 512)
            .sum()
    }

    fn scan_total(&self) -> u64 {
        self.pieces().iter().map(|p| p.1).sum::<u64>() + self.dirs_total()
    }

    /// Removes the least recently used pieces until the total is at most `target`; returns the
    /// total left.
    fn evict(&self, target: u64) -> std::io::Result<u64> {
        let mut pieces = self.pieces();
        let mut total: u64 = pieces.iter().map(|p| p.1).sum::<u64>() + self.dirs_total();
        pieces.sort_by_key(|p| p.2);
        for (path, len, _) in pieces {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                if let Some(dir) = path.parent() {
                    let blocks = std::fs::metadata(dir).map_or(0, |md| md.blocks() * 512);
                    if std::fs::remove_dir(dir).is_ok() {
                        total = total.saturating_sub(blocks);
                    }
                }
            }
        }
        Ok(total)
    }

    /// Bytes the pieces and their directories take on disk (a scan: for reports and tests).
    pub fn bytes(&self) -> u64 {
        self.scan_total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(n: u8, len: usize) -> ([u8; 32], Arc<Vec<u8>>) {
        let b = vec![n; len];
        (Sha256::digest(&b).into(), Arc::new(b))
    }

    fn age(c: &ContentCache, d: &[u8; 32], secs: u64) {
        let f = std::fs::File::open(c.piece_path(d)).expect("piece");
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .expect("mtime");
    }

    #[test]
    fn pieces_come_back_intact_or_not_at_all() {
        let t = tempfile::tempdir().expect("tmp");
        let c = ContentCache::new(t.path(), 1 << 20);
        let (d, b) = piece(1, 100_000);
        assert!(c.get(&d).is_none());
        c.put(&d, &b);
        assert_eq!(c.get(&d), Some(b.clone()));
        std::fs::write(c.piece_path(&d), b"changed behind our back").expect("damage");
        assert!(c.get(&d).is_none());
        assert!(!c.piece_path(&d).exists(), "a damaged piece is removed");
        std::fs::remove_dir_all(t.path()).expect("the whole cache removed");
        assert!(c.get(&d).is_none());
        c.put(&d, &b);
        assert_eq!(c.get(&d), Some(b));
    }

    #[test]
    fn the_limit_holds_and_the_least_recently_used_go_first() {
        let t = tempfile::tempdir().expect("tmp");
        let c = ContentCache::new(t.path(), 200_000);
        // 10,000 bytes take 12,288 on disk, and most pieces a fan-out directory of their own
        let pieces: Vec<_> = (0..14u8).map(|i| piece(i, 10_000)).collect();
        for (k, (d, b)) in pieces[..7].iter().enumerate() {
            c.put(d, b);
            age(&c, d, 600 - k as u64);
        }
        assert!(
            c.get(&pieces[0].0).is_some(),
            "a hit makes piece 0, older than a minute, the most recently used"
        );
        for (i, (d, b)) in pieces.iter().enumerate().skip(7) {
            c.put(d, b);
            assert!(c.bytes() <= 200_000, "after {i}: {}", c.bytes());
        }
        assert!(c.stats.evicted.load(Ordering::Relaxed) > 0);
        assert!(c.get(&pieces[0].0).is_some(), "recently used piece kept");
        assert!(c.get(&pieces[1].0).is_none(), "the oldest piece went first");
        assert!(c.get(&pieces[13].0).is_some());
    }
}
