//! What a cache directory holds, and trimming it (`unionfs cache ls|prune`).
//!
//! Four kinds of entries: registry blobs (`blobs/sha256/HEX`), what was fetched of lazily read
//! ones (`partial/HEX`), layer catalogs (`layers/`) and pieces of file content (`content/`). Every mount and image shares them, so nothing in the
//! directory says which are still wanted; what a running mount uses it holds open (a layer
//! keeps its blob and catalog open for the life of the mount, see `layer.rs`). Pruning
//! therefore removes only what no process has open and what was not used in the last minute (a
//! mount may be between fetching a blob and opening it), least recently used first; the mtime
//! is the last use (moved when a mount opens a layer, and by the content cache on hits).
//! Removing an entry a later mount needs only costs that mount a fetch or a scan.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What an entry of the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Blob,
    /// What was fetched of a lazily read registry blob (`partial/HEX`).
    Partial,
    Catalog,
    Piece,
}

/// One entry of a cache directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Item {
    pub kind: Kind,
    /// The digest it is named by (`sha256:HEX`).
    pub digest: String,
    #[serde(skip)]
    pub path: PathBuf,
    /// Bytes it takes on disk (allocated blocks).
    pub bytes: u64,
    /// Its last use, in seconds since the epoch.
    pub used: i64,
    /// A running process has it open.
    pub in_use: bool,
}

/// Entries used this recently are never pruned.
const RECENT: Duration = Duration::from_secs(60);

/// Every entry of the cache directory `cache`, least recently used first.
pub fn list(cache: &Path) -> Vec<Item> {
    let open = open_files(cache);
    let mut items = Vec::new();
    let mut add = |kind: Kind, dir: PathBuf, name_to_digest: &dyn Fn(&str) -> Option<String>| {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let (Some(digest), Ok(md)) = (name_to_digest(&name), e.metadata()) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            let path = e.path();
            items.push(Item {
                kind,
                digest,
                in_use: open.contains(&(md.dev(), md.ino())),
                bytes: md.blocks() * 512,
                used: md.mtime(),
                path,
            });
        }
    };
    add(Kind::Blob, cache.join("blobs").join("sha256"), &|n| {
        hex_name(n).map(|h| format!("sha256:{h}"))
    });
    add(Kind::Partial, cache.join("partial"), &|n| {
        hex_name(n).map(|h| format!("sha256:{h}"))
    });
    add(Kind::Catalog, cache.join("layers"), &|n| {
        n.strip_prefix("sha256-")
            .and_then(hex_name)
            .map(|h| format!("sha256:{h}"))
    });
    let content = cache.join("content");
    let fan_out: Vec<PathBuf> = std::fs::read_dir(&content)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    for d in fan_out {
        add(Kind::Piece, d, &|n| hex_name(n).map(|h| format!("sha256:{h}")));
    }
    items.sort_by_key(|i| i.used);
    items
}

/// `name` if it is 64 lowercase hex digits.
fn hex_name(name: &str) -> Option<&str> {
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(name)
}

/// Device and inode of every file below `cache` that a process we can see has open.
fn open_files(cache: &Path) -> HashSet<(u64, u64)> {
    let root = std::fs::canonicalize(cache).unwrap_or_else(|_| cache.to_path_buf());
    let mut out = HashSet::new();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for p in procs.filter(|p| p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())) {
        for fd in std::fs::read_dir(p.path().join("fd")).into_iter().flatten().flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.starts_with(&root) {
                // The link's target may be gone (a deleted file); the fd itself still stats.
                if let Ok(md) = std::fs::metadata(fd.path()) {
                    out.insert((md.dev(), md.ino()));
                }
            }
        }
    }
    out
}

/// Whether the cache takes more than `limit`, judged without visiting every piece: the content
/// cache's running total, and the blobs and catalogs (a few files per layer).
pub fn over(cache: &Path, limit: u64) -> bool {
    let content: u64 = std::fs::read_to_string(cache.join("content").join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let files = |d: PathBuf| -> u64 {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|md| md.is_file())
            .map(|md| md.blocks() * 512)
            .sum()
    };
    content + files(cache.join("blobs").join("sha256")) + files(cache.join("partial")) + files(cache.join("layers"))
        > limit
}

/// What [`prune`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    pub removed: usize,
    pub freed: u64,
    /// Entries kept because a process has them open or they were used in the last minute.
    pub busy: usize,
    pub left: u64,
}

/// Removes entries of `cache` that are neither open nor recently used, least recently used
/// first, until the entries left take at most `keep` bytes.
pub fn prune(cache: &Path, keep: u64) -> std::io::Result<Pruned> {
    let items = list(cache);
    let mut total: u64 = items.iter().map(|i| i.bytes).sum();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut p = Pruned::default();
    // Pieces go through the content cache's own lock, which keeps its running total right.
    let content = super::cache::ContentCache::new(cache, u64::MAX);
    for i in &items {
        if total <= keep {
            break;
        }
        if i.in_use || now - i.used < RECENT.as_secs() as i64 {
            p.busy += 1;
            continue;
        }
        let gone = match i.kind {
            Kind::Piece => content.remove(&i.path),
            _ => std::fs::remove_file(&i.path),
        };
        match gone {
            Ok(()) => {
                total -= i.bytes;
                p.removed += 1;
                p.freed += i.bytes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= i.bytes,
            Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", i.path.display()))),
        }
    }
    p.left = total;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(p: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(p).expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .expect("mtime");
    }

    #[test]
    fn prune_keeps_what_is_open_or_recent_and_removes_the_oldest_first() {
        let t = tempfile::tempdir().expect("tmp");
        let blobs = t.path().join("blobs/sha256");
        let layers = t.path().join("layers");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        std::fs::create_dir_all(&layers).expect("mkdir");
        let h = |c: char| c.to_string().repeat(64);
        let (old, older, open, recent) = (
            blobs.join(h('a')),
            blobs.join(h('b')),
            blobs.join(h('c')),
            layers.join(format!("sha256-{}", h('d'))),
        );
        for (p, secs) in [(&old, 600), (&older, 900), (&open, 1200), (&recent, 0)] {
            std::fs::write(p, vec![1u8; 10_000]).expect("write");
            age(p, secs);
        }
        std::fs::write(blobs.join("not-a-digest"), b"x").expect("write");
        let _held = std::fs::File::open(&open).expect("hold");
        let items = list(t.path());
        assert_eq!(items.len(), 4, "{items:?}");
        assert!(items.iter().any(|i| i.in_use && i.path == open));
        // Keep room for one entry: the oldest unused go first, open and recent ones stay.
        let p = prune(t.path(), 12_288 * 3).expect("prune");
        assert_eq!((p.removed, older.exists(), old.exists()), (1, false, true), "{p:?}");
        let p = prune(t.path(), 0).expect("prune");
        assert_eq!(p.removed, 1, "{p:?}");
        assert!(!old.exists() && open.exists() && recent.exists());
        assert_eq!(p.busy, 2, "{p:?}");
    }
}
