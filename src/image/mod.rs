//! OCI images as lower layers, read in place from their blobs (see docs/semantics.md, "Images").

pub mod cache;
pub mod catalog;
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

use std::path::PathBuf;

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
