//! OCI image layouts (`index.json`, `blobs/sha256/…`): from `oci:DIR[:TAG]` to the image's
//! layers, base first, each with its digest, DiffID, media type and annotations.
//!
//! Everything read here is small (index, manifests, config) and is checked against its digest
//! before it is used; layer blobs are only located, and checked by the pass that indexes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::ImageError;

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How a layer's tar is compressed (one type for reading and writing blobs).
pub use crate::blob::Compression;

/// One layer of an image, as its manifest and config describe it.
#[derive(Debug, Clone)]
pub struct LayerDesc {
    /// `sha256:…` of the blob.
    pub digest: String,
    pub size: u64,
    /// The media type as written (for messages).
    pub media_type: String,
    pub compression: Compression,
    /// `sha256:…` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    pub annotations: HashMap<String, String>,
}

/// An image found in a layout.
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: PathBuf,
    pub tag: Option<String>,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config_digest: String,
    pub config: ImageConfiguration,
    /// Base first, as in the manifest.
    pub layers: Vec<LayerDesc>,
    /// A registry image: where its lazy layers' chunks come from.
    pub remote: Option<super::source::RemoteRef>,
}

/// `oci:DIR[:TAG]` split into the layout directory and the tag. A colon that is part of the
/// directory's own name is kept when `DIR:TAG` names no layout but the whole does.
pub fn parse_reference(s: &str) -> Result<(PathBuf, Option<String>), ImageError> {
    let rest = s
        .strip_prefix("oci:")
        .ok_or_else(|| ImageError::Reference(format!("{s}: images are given as oci:DIR[:TAG]")))?;
    if let Some((dir, tag)) = rest.rsplit_once(':') {
        if !tag.contains('/') && !Path::new(rest).join("index.json").is_file() {
            return Ok((PathBuf::from(dir), Some(tag.to_string())));
        }
    }
    Ok((PathBuf::from(rest), None))
}

/// Where the blob `digest` of the layout `dir` is, refusing digests that are not
/// `ALGORITHM:HEX` (a digest is input: it must not lead outside `blobs/`).
pub fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| ImageError::invalid(dir.to_path_buf(), format!("malformed digest {digest}")))?;
    let ok_alg = !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+');
    let ok_hex = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !ok_alg || !ok_hex {
        return Err(ImageError::invalid(
            dir.to_path_buf(),
            format!("malformed digest {digest}"),
        ));
    }
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// Reads a small blob whole and checks it against its digest.
pub fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(dir, digest)?;
    let data = std::fs::read(&p).map_err(|e| ImageError::io(p.clone(), e))?;
    let got = crate::blob::digest(&data);
    if got != digest {
        return Err(ImageError::corrupt(p, format!("its digest is {got}, not {digest}")));
    }
    Ok(data)
}

/// The OCI name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Opens the image `tag` (or the only one) of the layout `dir`.
pub fn open(dir: &Path, tag: Option<&str>) -> Result<Image, ImageError> {
    let index_path = dir.join("index.json");
    let index_bytes = std::fs::read(&index_path).map_err(|e| ImageError::io(index_path.clone(), e))?;
    let index = ImageIndex::from_reader(&index_bytes[..])
        .map_err(|e| ImageError::invalid(index_path.clone(), format!("not an OCI image index: {e}")))?;
    let tags: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.annotations().as_ref()?.get(REF_NAME).cloned())
        .collect();
    let chosen = match tag {
        Some(t) => index
            .manifests()
            .iter()
            .find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(String::as_str)
                    == Some(t)
            })
            .ok_or_else(|| ImageError::NoTag {
                layout: dir.to_path_buf(),
                tag: t.to_string(),
                tags: tags.clone(),
            })?,
        None => match index.manifests().as_slice() {
            [one] => one,
            _ => {
                return Err(ImageError::NoTag {
                    layout: dir.to_path_buf(),
                    tag: String::new(),
                    tags,
                });
            }
        },
    };
    let digest = chosen.digest().to_string();
    let manifest_digest = resolve_platform(dir, &digest, chosen.media_type())?;
    let manifest_bytes = read_blob(dir, &manifest_digest)?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..]).map_err(|e| {
        ImageError::invalid(
            blob_path(dir, &manifest_digest).unwrap_or_default(),
            format!("not an image manifest: {e}"),
        )
    })?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = read_blob(dir, &config_digest)?;
    let config = ImageConfiguration::from_reader(&config_bytes[..]).map_err(|e| {
        ImageError::invalid(
            blob_path(dir, &config_digest).unwrap_or_default(),
            format!("not an image config: {e}"),
        )
    })?;
    check_platform(dir, &config)?;
    let layers = layer_descs(dir, &manifest, &config)?;
    Ok(Image {
        layout: dir.to_path_buf(),
        tag: tag.map(str::to_string),
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
        remote: None,
    })
}

/// Follows image indexes (multi-platform images) down to the manifest for this machine.
fn resolve_platform(dir: &Path, digest: &str, media: &MediaType) -> Result<String, ImageError> {
    let is_index = matches!(media, MediaType::ImageIndex)
        || matches!(media, MediaType::Other(m) if m == "application/vnd.docker.distribution.manifest.list.v2+json");
    if !is_index {
        return Ok(digest.to_string());
    }
    let bytes = read_blob(dir, digest)?;
    let idx = ImageIndex::from_reader(&bytes[..]).map_err(|e| {
        ImageError::invalid(
            blob_path(dir, digest).unwrap_or_default(),
            format!("not an image index: {e}"),
        )
    })?;
    match pick_platform(&idx) {
        Ok((child, media)) => resolve_platform(dir, &child, &media),
        Err(why) => Err(ImageError::platform(blob_path(dir, digest).unwrap_or_default(), why)),
    }
}

/// The entry of the image index `idx` for this machine (linux and its architecture): its
/// digest and media type, or why there is none.
pub(crate) fn pick_platform(idx: &ImageIndex) -> Result<(String, MediaType), String> {
    let arch = host_arch();
    let found = idx.manifests().iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.architecture().to_string() == arch && p.os().to_string() == "linux")
    });
    if let Some(d) = found {
        return Ok((d.digest().to_string(), d.media_type().clone()));
    }
    let have: Vec<String> = idx
        .manifests()
        .iter()
        .filter_map(|d| {
            d.platform()
                .as_ref()
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
        })
        .collect();
    Err(format!(
        "no manifest for linux/{arch} in this image index (it has: {})",
        have.join(", ")
    ))
}

pub(crate) fn check_platform(dir: &Path, config: &ImageConfiguration) -> Result<(), ImageError> {
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" || arch != host_arch() {
        return Err(ImageError::platform(
            dir.to_path_buf(),
            format!("the image is for {os}/{arch}, this machine is linux/{}", host_arch()),
        ));
    }
    Ok(())
}

/// The compression a layer media type says, or an error naming an unsupported one.
pub fn compression_of(dir: &Path, media: &str) -> Result<Compression, ImageError> {
    Ok(match media {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        other => {
            return Err(ImageError::invalid(
                dir.to_path_buf(),
                format!("unsupported layer media type {other}"),
            ));
        }
    })
}

pub(crate) fn layer_descs(
    dir: &Path,
    m: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<LayerDesc>, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != m.layers().len() {
        return Err(ImageError::invalid(
            dir.to_path_buf(),
            format!(
                "the manifest has {} layers but the config {} DiffIDs",
                m.layers().len(),
                diff_ids.len()
            ),
        ));
    }
    m.layers()
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| {
            let media_type = d.media_type().to_string();
            Ok(LayerDesc {
                digest: d.digest().to_string(),
                size: d.size(),
                compression: compression_of(dir, &media_type)?,
                media_type,
                diff_id: diff_id.clone(),
                annotations: d.annotations().clone().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(
            parse_reference("oci:/a/b:v1").expect("ok"),
            (PathBuf::from("/a/b"), Some("v1".into()))
        );
        assert_eq!(parse_reference("oci:/a/b").expect("ok"), (PathBuf::from("/a/b"), None));
        assert!(parse_reference("docker://x").is_err());
    }

    #[test]
    fn digests_cannot_leave_the_blobs_directory() {
        let d = Path::new("/l");
        assert!(blob_path(d, "sha256:../../etc/passwd").is_err());
        assert!(blob_path(d, "../x:0123456789abcdef0123456789abcdef").is_err());
        assert!(blob_path(d, "sha256:ABCDEF0123456789abcdef0123456789").is_err());
        assert_eq!(
            blob_path(d, "sha256:0123456789abcdef0123456789abcdef").expect("ok"),
            PathBuf::from("/l/blobs/sha256/0123456789abcdef0123456789abcdef")
        );
    }
}
