//! Images from a registry (`docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`), through the OCI
//! distribution API: the manifest (an index or manifest list resolved for this machine), the
//! config and every layer blob are fetched into the cache's blob store (`fetch.rs`), each checked
//! against its digest, and the image is then read in place from there exactly like an `oci:`
//! layout's (same catalogs, keyed by layer digest: a layer cached from either serves both).
//!
//! The registry is only asked for what the cache lacks: an image named by digest whose blobs are
//! all cached opens without a connection; by tag, only the manifest is asked for again.

pub mod auth;
pub mod client;
pub mod fetch;
pub mod lazy;
pub mod push;
pub mod reference;

use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use ureq::http::StatusCode;

use std::sync::Arc;

use self::client::Client;
use self::lazy::Lazy;
use self::reference::{Reference, Which};
use crate::image::ImageError;
use crate::image::layout::{self, Image};
use crate::image::scan::Progress;
use crate::image::source::RemoteRef;

pub use self::reference::is_registry;

/// How to reach registries (`--tls-verify`, `--cert-dir`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// `false`: TLS without verifying the registry's certificate, or plain HTTP.
    pub tls_verify: bool,
    /// Extra CA certificates (`*.crt`, `*.pem`) trusted besides the system's.
    pub cert_dir: Option<PathBuf>,
    /// Seconds a read of a lazy layer keeps trying to get its bytes from the registry before
    /// it fails with EIO (`--fetch-timeout`).
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: u64,
}

/// Long enough for a registry restarting or a link dropping for a moment, short enough that a
/// program reading a file learns the registry is gone before a user gives up on it.
pub const DEFAULT_FETCH_TIMEOUT: u64 = 30;

fn default_fetch_timeout() -> u64 {
    DEFAULT_FETCH_TIMEOUT
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tls_verify: true,
            cert_dir: None,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const IMAGE_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
/// Manifests and indexes are small; a bigger answer is not one.
const MANIFEST_LIMIT: u64 = 4 << 20;

/// One open of a registry image: the reference (for messages) and a client made when the
/// cache first lacks something.
pub struct Session<'a> {
    reference: Reference,
    opts: &'a Options,
    client: Option<Client>,
}

impl<'a> Session<'a> {
    /// A session for the image `reference` names (no connection until one is needed).
    pub fn new(reference: &str, opts: &'a Options) -> Result<Session<'a>, ImageError> {
        Ok(Session {
            reference: Reference::parse(reference).map_err(ImageError::Reference)?,
            opts,
            client: None,
        })
    }

    fn client(&mut self) -> Result<&Client, ImageError> {
        if self.client.is_none() {
            let (creds, from) = credentials(&self.reference).map_err(|e| self.error(e))?;
            let c = Client::connect(&self.reference, self.opts, creds, from).map_err(|e| self.error(e.to_string()))?;
            self.client = Some(c);
        }
        self.client
            .as_ref()
            .ok_or_else(|| self.error("no connection to the registry".into()))
    }

    fn error(&self, reason: String) -> ImageError {
        ImageError::Registry {
            reference: self.reference.to_string(),
            reason,
        }
    }
}

/// The credentials for `r` from the auth files, and the file they came from (or, when there
/// are none, every file looked in: a 401 names them).
pub(crate) fn credentials(r: &Reference) -> Result<(Option<auth::Credentials>, String), String> {
    let files = auth::auth_files();
    let found = auth::lookup(&files, &r.registry, &r.repository).map_err(|e| format!("credentials: {e}"))?;
    Ok(match found {
        Some((c, file)) => (Some(c), file.display().to_string()),
        None => {
            let all: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (None, all.join(", "))
        }
    })
}

/// Opens the registry image `reference` with its blobs in the store of `cache` (fetched where
/// missing, which `progress` follows). The image's `layout` is the cache directory: its blobs
/// are where an OCI layout keeps them.
pub fn open(reference: &str, cache: &Path, opts: &Options, progress: &dyn Progress) -> Result<Image, ImageError> {
    let mut s = Session::new(reference, opts)?;
    let tag = match &s.reference.image {
        Which::Tag(t) => Some(t.clone()),
        Which::Digest(_) => None,
    };
    let manifest_digest = resolve(&mut s, cache)?;
    let bytes = layout::read_blob(cache, &manifest_digest)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| s.error(format!("manifest {manifest_digest} is not an image manifest: {e}")))?;
    let named = PathBuf::from(s.reference.to_string());
    let config_digest = manifest.config().digest().to_string();
    progress.fetch("config", &config_digest);
    let config_bytes = fetch::read_small(&mut s, cache, &config_digest, manifest.config().size(), progress)?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| s.error(format!("config {config_digest} is not an image config: {e}")))?;
    layout::check_platform(&named, &config)?;
    let layers = layout::layer_descs(&named, &manifest, &config)?;
    // A layer with a table of contents is read lazily, by range, unless it is here already.
    let lazy = |l: &layout::LayerDesc| {
        crate::image::toc::kind_of(l).is_some() && layout::blob_path(cache, &l.digest).is_ok_and(|p| !p.is_file())
    };
    let whole: Vec<layout::LayerDesc> = layers.iter().filter(|l| !lazy(l)).cloned().collect();
    let remote = (whole.len() < layers.len()).then(|| RemoteRef(Arc::new(Lazy::new(s.reference.clone(), opts))));
    fetch_layers(&s.reference.to_string(), opts, cache, &whole, progress)?;
    Ok(Image {
        layout: cache.to_path_buf(),
        tag,
        manifest_digest,
        manifest,
        config_digest,
        config,
        layers,
        remote,
    })
}

/// Layer blobs fetched at once: a slow link is filled by several streams, as `podman pull`
/// does; more would mostly share the same link.
const FETCHERS: usize = 4;

/// Fetches the blobs of `layers` missing from the store, [`FETCHERS`] at a time (each worker
/// with its own connection and tokens). The error is that of the first layer that failed.
fn fetch_layers(
    reference: &str,
    opts: &Options,
    cache: &Path,
    layers: &[layout::LayerDesc],
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<parking_lot::Mutex<Option<ImageError>>> =
        layers.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    std::thread::scope(|sc| {
        for _ in 0..FETCHERS.min(layers.len()) {
            sc.spawn(|| {
                let mut s = match Session::new(reference, opts) {
                    Ok(s) => s,
                    Err(e) => {
                        failed.store(true, Relaxed);
                        *results[0].lock() = Some(e);
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(l) = layers.get(i).filter(|_| !failed.load(Relaxed)) else {
                        break;
                    };
                    progress.fetch(&format!("layer {}/{}", i + 1, layers.len()), &l.digest);
                    if let Err(e) = fetch::ensure_indexed(&mut s, cache, l, progress) {
                        failed.store(true, Relaxed);
                        *results[i].lock() = Some(e);
                    }
                }
            });
        }
    });
    match results.into_iter().find_map(parking_lot::Mutex::into_inner) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The digest of the image manifest `s` names for this machine, kept in the blob store
/// (following an index or manifest list down to the entry for this platform).
fn resolve(s: &mut Session, cache: &Path) -> Result<String, ImageError> {
    let mut which = s.reference.image.clone();
    // An index naming an index is allowed, a loop is not.
    for _ in 0..4 {
        let (digest, media) = manifest(s, cache, &which)?;
        if IMAGE_TYPES.contains(&media.as_str()) {
            return Ok(digest);
        }
        if !INDEX_TYPES.contains(&media.as_str()) {
            return Err(s.error(format!("unsupported manifest media type {media:?}")));
        }
        let bytes = layout::read_blob(cache, &digest)?;
        let idx = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| s.error(format!("manifest {digest} is not an image index: {e}")))?;
        let (child, _) = layout::pick_platform(&idx).map_err(|why| s.error(why))?;
        which = Which::Digest(child);
    }
    Err(s.error("image indexes nested too deep".into()))
}

/// The manifest `which` (from the store when named by a digest it has, else from the
/// registry, checked and kept): its digest and media type.
fn manifest(s: &mut Session, cache: &Path, which: &Which) -> Result<(String, String), ImageError> {
    if let Which::Digest(d) = which {
        if let Ok(bytes) = layout::read_blob(cache, d) {
            if let Ok(p) = layout::blob_path(cache, d) {
                fetch::touch(&p);
            }
            return Ok((d.clone(), media_of(&bytes, None)));
        }
    }
    let mut resp = s
        .client()?
        .get(&format!("manifests/{}", which.as_str()), Some(MANIFEST_TYPES), None)
        .map_err(|e| s.error(e.to_string()))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            let what = match which {
                Which::Tag(t) => format!("tag {t}"),
                Which::Digest(d) => format!("manifest {d}"),
            };
            let body = resp
                .body_mut()
                .with_config()
                .limit(1 << 16)
                .read_to_string()
                .unwrap_or_default();
            // Registries answer an unknown repository with NAME_UNKNOWN, or (Distribution 2.8)
            // with MANIFEST_UNKNOWN like an unknown tag.
            let repo = &s.reference.repository;
            let why = if body.contains("NAME_UNKNOWN") {
                format!("unknown repository {repo}")
            } else {
                format!("unknown {what} (or repository {repo})")
            };
            return Err(s.error(format!("{why}: not found (404)")));
        }
        st => return Err(s.error(format!("manifest: the registry answered HTTP {}", st.as_u16()))),
    }
    let header = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(MANIFEST_LIMIT)
        .read_to_vec()
        .map_err(|e| s.error(format!("manifest: {e}")))?;
    let digest = crate::blob::digest(&bytes);
    if let Which::Digest(d) = which {
        if *d != digest {
            return Err(s.error(format!(
                "manifest {d} is corrupt: the registry sent one whose digest is {digest}"
            )));
        }
    }
    fetch::keep(cache, &digest, &bytes)?;
    Ok((digest, media_of(&bytes, header.as_deref())))
}

/// A manifest's media type: its own `mediaType` field, else what the registry said it was, else
/// what its shape says (the field is optional in OCI manifests).
fn media_of(bytes: &[u8], header: Option<&str>) -> String {
    let v = serde_json::from_slice::<serde_json::Value>(bytes).unwrap_or_default();
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return m.to_string();
    }
    match header {
        Some(h) if !h.is_empty() && h != "application/json" => h.to_string(),
        _ if v.get("manifests").is_some() => INDEX_TYPES[0].to_string(),
        _ if v.get("layers").is_some() => IMAGE_TYPES[0].to_string(),
        _ => header.unwrap_or_default().to_string(),
    }
}
