//! Where a layer's blob bytes come from: a file on this host (an `oci:` layout's blob, or one
//! the registry code fetched whole into the cache), or a registry asked for byte ranges as
//! reads need them (a layer with a table of contents, mounted lazily).
//!
//! Nothing here checks bytes: every piece read from a blob is checked by its reader against a
//! digest it already trusts (the table of contents against the manifest's annotation, each
//! chunk against the table). When a piece fails its check, what was kept of the blob is
//! forgotten ([`Blob::forget`]) so the next read asks the registry again instead of failing
//! forever on a bad copy.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

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
/// Blocks kept in memory per layer (least recently used dropped first). What a read decodes
/// goes to the content cache on disk; these only serve the neighbours of what was read.
const KEPT: usize = 32;

/// Blocks kept, by number, least recently used first.
type Kept = Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>;

/// A layer's blob.
pub enum Blob {
    Local {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
    Remote {
        /// For messages: `docker://…@sha256:…` of the blob.
        label: PathBuf,
        remote: RemoteRef,
        digest: String,
        size: u64,
        blocks: Kept,
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

    /// The blob `digest` of `size` bytes, read from `remote` as needed.
    pub fn remote(remote: RemoteRef, digest: &str, size: u64, label: PathBuf) -> Blob {
        Blob::Remote {
            label,
            remote,
            digest: digest.to_string(),
            size,
            blocks: Mutex::new(VecDeque::new()),
        }
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
                size,
                blocks,
                ..
            } => {
                let end = offset
                    .checked_add(buf.len() as u64)
                    .filter(|&e| e <= *size)
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                if buf.is_empty() {
                    return Ok(());
                }
                let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
                let have = fetch_blocks(remote, digest, *size, blocks, first, last)?;
                for (k, b) in (first..=last).zip(have) {
                    let start = k * BLOCK;
                    let from = offset.max(start);
                    let to = end.min(start + b.len() as u64);
                    buf[(from - offset) as usize..(to - offset) as usize]
                        .copy_from_slice(&b[(from - start) as usize..(to - start) as usize]);
                }
                Ok(())
            }
        }
    }

    /// Drops every block kept (one of them failed a check: a registry that sent wrong bytes
    /// once is not trusted for the others it sent); the next reads fetch them again.
    pub fn forget(&self) {
        if let Blob::Remote { blocks, .. } = self {
            blocks.lock().clear();
        }
    }
}

/// Blocks `first..=last` of the blob, from memory where kept, the missing ones fetched in one
/// request.
fn fetch_blocks(
    remote: &RemoteRef,
    digest: &str,
    size: u64,
    blocks: &Kept,
    first: u64,
    last: u64,
) -> std::io::Result<Vec<Arc<Vec<u8>>>> {
    let mut have: Vec<Option<Arc<Vec<u8>>>> = {
        let mut kept = blocks.lock();
        (first..=last)
            .map(|k| {
                let i = kept.iter().position(|(n, _)| *n == k)?;
                // Most recently used last.
                let hit = kept.remove(i)?;
                let b = Arc::clone(&hit.1);
                kept.push_back(hit);
                Some(b)
            })
            .collect()
    };
    let missing: Vec<u64> = (first..=last)
        .zip(&have)
        .filter(|(_, b)| b.is_none())
        .map(|(k, _)| k)
        .collect();
    if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
        let from = lo * BLOCK;
        let to = ((hi + 1) * BLOCK).min(size);
        let bytes = remote.0.read(digest, from, to - from).map_err(std::io::Error::other)?;
        let mut kept = blocks.lock();
        for k in lo..=hi {
            let at = ((k - lo) * BLOCK) as usize;
            let b = Arc::new(bytes[at..(at + BLOCK as usize).min(bytes.len())].to_vec());
            if let Some(slot) = have.get_mut((k - first) as usize) {
                *slot = Some(Arc::clone(&b));
            }
            kept.retain(|(n, _)| *n != k);
            kept.push_back((k, b));
            while kept.len() > KEPT {
                kept.pop_front();
            }
        }
    }
    have.into_iter()
        .map(|b| b.ok_or_else(|| std::io::Error::other("a block went missing")))
        .collect()
}
