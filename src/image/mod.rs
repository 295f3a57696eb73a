//! OCI images as lower layers, read in place from their blobs (see docs/semantics.md, "Images").

pub mod cache;
pub mod cache_dir;
pub mod catalog;
pub mod chunked;
pub mod estargz;
#[cfg(test)]
mod fixture;
pub mod gzip;
pub mod layer;
pub mod layout;
mod pipe;
pub mod prefetch;
pub mod scan;
pub mod source;
pub mod store;
pub mod tee;
pub mod toc;
pub mod write;
pub mod zstd;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::cache::ContentCache;
use self::layer::ImageLayer;
use self::scan::Progress;

/// Why an image could not be used. Every message names the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Reference(String),
    /// A registry image that cannot be had: `reference` as given, and why.
    #[error("{reference}: {reason}")]
    Registry { reference: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Platform { path: PathBuf, reason: String },
    #[error("{}: {}", layout.display(), no_tag(tag, tags))]
    NoTag {
        layout: PathBuf,
        tag: String,
        tags: Vec<String>,
    },
}

impl ImageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> ImageError {
        ImageError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn platform(path: impl Into<PathBuf>, reason: impl Into<String>) -> ImageError {
        ImageError::Platform {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The image `reference` names: an `oci:DIR[:TAG]` layout, or a registry's
/// `docker://HOST/REPO[:TAG|@DIGEST]` with its blobs fetched into the store of `cache_dir`
/// where missing (`registry` says how to reach it).
pub fn open_image(
    reference: &str,
    cache_dir: &Path,
    registry: &crate::registry::Options,
    progress: &dyn Progress,
) -> Result<layout::Image, ImageError> {
    if crate::registry::is_registry(reference) {
        return crate::registry::open(reference, cache_dir, registry, progress);
    }
    let (dir, tag) = layout::parse_reference(reference)?;
    layout::open(&dir, tag.as_deref())
}

/// The layers of the image `reference` (see [`open_image`]), top first, open for reading with
/// their catalogs in `cache_dir` (each made by one pass over its blob the first time, which
/// `progress` follows), and the image itself.
pub fn open_layers(
    reference: &str,
    cache_dir: &Path,
    registry: &crate::registry::Options,
    cache: Arc<ContentCache>,
    progress: &dyn Progress,
) -> Result<(layout::Image, Vec<ImageLayer>), ImageError> {
    let image = open_image(reference, cache_dir, registry, progress)?;
    let dir = image.layout.clone();
    let remote = image.remote.clone();
    let descs: Vec<&layout::LayerDesc> = image.layers.iter().rev().collect();
    // Layers without a catalog are scanned side by side, one more at a time than there are
    // cores: a scan is one thread inflating and reading the tar and two hashing (`tee.rs`), so
    // the scan that inflates least leaves room for another.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get() + 1)
        .min(descs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let opened: Vec<parking_lot::Mutex<Option<Result<ImageLayer, ImageError>>>> =
        descs.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                use std::sync::atomic::Ordering::Relaxed;
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= descs.len() || failed.load(Relaxed) {
                        break;
                    }
                    progress.layer(i + 1, descs.len(), &descs[i].digest);
                    let r = ImageLayer::open(&dir, descs[i], cache_dir, Arc::clone(&cache), remote.as_ref(), progress);
                    failed.fetch_or(r.is_err(), Relaxed);
                    *opened[i].lock() = Some(r);
                }
            });
        }
    });
    let mut layers = Vec::with_capacity(descs.len());
    for (slot, desc) in opened.into_iter().zip(&descs) {
        match slot.into_inner() {
            Some(r) => layers.push(r?),
            // Not opened: an earlier layer failed, and its error comes first.
            None => {
                return Err(ImageError::invalid(&dir, format!("layer {} not opened", desc.digest)));
            }
        }
    }
    // The whole directory (registry blobs, catalogs, content) is held to the limit at every
    // mount, least recently used first; what this mount uses is open now, so it stays. Only
    // when over: a prune visits every piece.
    if !cache_dir::over(cache_dir, cache.limit()) {
        return Ok((image, layers));
    }
    match cache_dir::prune(cache_dir, cache.limit()) {
        Ok(p) if p.removed > 0 => tracing::info!(
            "cache {}: {} unused entries removed ({} bytes) to stay within {} bytes",
            cache_dir.display(),
            p.removed,
            p.freed,
            cache.limit()
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cache {}: not trimmed: {e}", cache_dir.display()),
    }
    Ok((image, layers))
}

/// Takes the lock file `path` (made if missing) exclusively, waiting for whoever holds it: one
/// process makes a shared cache entry (a catalog, a fetched blob), the others then find it.
/// The lock lasts as long as the file returned stays open.
pub fn lock_file(path: &Path) -> Result<std::fs::File, ImageError> {
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io(path, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| ImageError::io(path, e.into()))?;
    Ok(lock)
}

/// A device number for the objects of the layer `digest`: stable for the layer wherever it is
/// mounted, and outside the numbers real devices get.
pub fn layer_dev(digest: &str) -> u64 {
    use sha2::{Digest as _, Sha256};
    let h = Sha256::digest(digest.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_le_bytes(b) >> 8) | (0xfe << 56)
}

fn no_tag(tag: &str, tags: &[String]) -> String {
    let have = if tags.is_empty() {
        "none".to_string()
    } else {
        tags.join(", ")
    };
    if tag.is_empty() {
        format!("the layout holds several images: name one with oci:DIR:TAG (tags: {have})")
    } else {
        format!("no image tagged {tag} (tags: {have})")
    }
}
