//! OCI images as lower layers, read in place from their blobs (see docs/semantics.md, "Images").

pub mod cache;
pub mod catalog;
pub mod estargz;
#[cfg(test)]
mod fixture;
pub mod gzip;
pub mod layer;
pub mod layout;
pub mod scan;
pub mod store;
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

/// The layers of the image `reference` (`oci:DIR[:TAG]`), top first, open for reading with
/// their catalogs in `cache_dir` (each made by one pass over its blob the first time, which
/// `progress` follows), and the image itself.
pub fn open_layers(
    reference: &str,
    cache_dir: &Path,
    cache: Arc<ContentCache>,
    progress: &dyn Progress,
) -> Result<(layout::Image, Vec<ImageLayer>), ImageError> {
    let (dir, tag) = layout::parse_reference(reference)?;
    let image = layout::open(&dir, tag.as_deref())?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for (n, desc) in image.layers.iter().rev().enumerate() {
        progress.layer(n + 1, image.layers.len(), &desc.digest);
        layers.push(ImageLayer::open(&dir, desc, cache_dir, Arc::clone(&cache), progress)?);
    }
    Ok((image, layers))
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
