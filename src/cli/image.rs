//! The image side of `unionfs mount --image` and of the layer tools' `--image`: the layers'
//! catalogs are made (one pass over each blob the first time) before the daemon starts or the
//! tool runs, with a progress line on a terminal, so a corrupt or truncated blob is refused
//! with one line before anything is mounted or written.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use unionfs::config::MountConfig;
use unionfs::image::ImageError;
use unionfs::image::cache::ContentCache;
use unionfs::image::layer::ImageLayer;
use unionfs::image::layout::Image;
use unionfs::image::scan::Progress;
use unionfs::layers::human_size;

/// A progress line on stderr when it is a terminal.
struct Line(Option<ProgressBar>);

impl Progress for Line {
    fn layer(&self, n: usize, count: usize, digest: &str) {
        if let Some(b) = &self.0 {
            let short = digest.get(..19).unwrap_or(digest);
            b.set_prefix(format!("indexing layer {n}/{count} {short}"));
            b.set_position(0);
        }
    }
    fn fetch(&self, what: &str, digest: &str) {
        if let Some(b) = &self.0 {
            let short = digest.get(..19).unwrap_or(digest);
            b.set_prefix(format!("fetching {what} {short}"));
            b.set_position(0);
        }
    }
    fn blob_bytes(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
            b.set_message(human_size(b.position()));
        }
    }
}

/// The environment variable that hands the background daemon the registry image the command
/// resolved (`docker://HOST/REPO@sha256:…`), so a tag that moves meanwhile cannot change what is
/// mounted, and the daemon starts without asking the registry again.
pub const PINNED_ENV: &str = "UNIONFS_PINNED_IMAGE";

/// Makes the catalogs of the image `config` names (if any): for a registry image named by a
/// tag, also the reference pinned to the manifest that was resolved. The error is one line.
pub fn index(config: &MountConfig) -> Result<Option<String>, String> {
    let Some(img) = &config.image else { return Ok(None) };
    let (image, _) = open(&img.reference, &img.cache_dir, &img.registry, img.cache_size).map_err(|e| e.to_string())?;
    if !unionfs::registry::reference::is_registry(&img.reference) {
        return Ok(None);
    }
    let r = unionfs::registry::reference::Reference::parse(&img.reference)?;
    Ok(Some(r.pinned(&image.manifest_digest).to_string()))
}

/// In the background daemon: the image the command resolved, in place of the tag it was given.
pub fn take_pinned(config: &mut MountConfig) {
    let (Some(img), Ok(pinned)) = (config.image.as_mut(), std::env::var(PINNED_ENV)) else {
        return;
    };
    if unionfs::registry::reference::is_registry(&img.reference) && unionfs::registry::reference::is_registry(&pinned) {
        img.reference = pinned;
    }
}

/// Opens the image `reference` (`oci:DIR[:TAG]`, or `docker://…` reached as `registry` says)
/// with its catalogs (and a registry image's blobs) in `cache_dir`, made or fetched with a
/// progress line where missing: the image and its layers, top first.
pub fn open(
    reference: &str,
    cache_dir: &Path,
    registry: &unionfs::registry::Options,
    cache_size: u64,
) -> Result<(Image, Vec<ImageLayer>), ImageError> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let line = Line(bar);
    let cache = Arc::new(ContentCache::new(cache_dir, cache_size));
    let r = unionfs::image::open_layers(reference, cache_dir, registry, cache, &line);
    if let Some(b) = &line.0 {
        b.finish_and_clear();
    }
    r
}
