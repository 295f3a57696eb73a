//! `unionfs layers`: `docker history` for a layer stack, one row per layer, top first: the
//! upper, the lower directories, then the image's layers with what its config and manifest say
//! of each (created by, created, blob size, digest). (Named for `docker history`: a `layers`
//! module inside `layers` would only repeat its parent.)

use std::collections::HashSet;
use std::path::PathBuf;

use super::size::{LayerFigures, layer_figures};
use super::stack::{ImageLayerDir, Lower};
use super::{Observer, Result, Stack};
use crate::image::layout::Image;

/// One layer's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerRow {
    /// `upper`, `lower N` (0 is the top lower), or `image N` (0 is the image's top layer).
    pub role: String,
    /// The directory, or an image layer's blob.
    pub path: PathBuf,
    #[serde(flatten)]
    pub figures: LayerFigures,
    /// For a layer of the image.
    #[serde(flatten)]
    pub image: Option<ImageLayerInfo>,
}

/// What an image says of one of its layers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageLayerInfo {
    /// The blob's `sha256:…`.
    pub digest: String,
    /// `sha256:…` of the uncompressed tar.
    pub diff_id: String,
    pub media_type: String,
    /// Bytes of the blob (compressed).
    pub blob_bytes: u64,
    /// Bytes of the uncompressed tar (unknown for a layer indexed from its table of contents).
    pub tar_bytes: Option<u64>,
    /// From the config's history entry for the layer.
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
}

/// The upper first (if any), then the lowers top first. Bytes are each layer's own `du`.
pub fn layers(stack: &Stack, obs: &dyn Observer) -> Result<Vec<LayerRow>> {
    let mut rows = Vec::new();
    if let Some(u) = &stack.upper {
        rows.push(LayerRow {
            role: "upper".into(),
            path: u.path.clone(),
            figures: layer_figures(u, &mut HashSet::new(), obs)?,
            image: None,
        });
    }
    let history = stack.image.as_ref().map(layer_history).unwrap_or_default();
    let mut image_layers = 0;
    for (i, l) in stack.lowers.iter().enumerate() {
        let (role, image) = match l {
            Lower::Dir(_) => (format!("lower {i}"), None),
            Lower::Image(il) => {
                // Top first, like the lowers; the history is base first.
                let n = image_layers;
                image_layers += 1;
                let base_first = history.len().checked_sub(n + 1);
                let h = base_first.and_then(|k| history.get(k)).cloned().unwrap_or_default();
                (format!("image {n}"), Some(info(il, h)))
            }
        };
        rows.push(LayerRow {
            role,
            path: l.path().to_path_buf(),
            figures: layer_figures(l, &mut HashSet::new(), obs)?,
            image,
        });
    }
    Ok(rows)
}

/// (created, created by, comment) of a history entry.
type Made = (Option<String>, Option<String>, Option<String>);

/// The history entries that made the image's layers, base first: `empty_layer` entries record
/// steps that made no layer (an `ENV`, a `CMD`) and are skipped, as `docker history` matches
/// them. A history shorter than the layers leaves the top layers without one.
fn layer_history(image: &Image) -> Vec<Made> {
    let mut out: Vec<Made> = image
        .config
        .history()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .map(|h| (h.created().clone(), h.created_by().clone(), h.comment().clone()))
        .collect();
    out.resize(image.layers.len(), Made::default());
    out
}

fn info(l: &ImageLayerDir, (created, created_by, comment): Made) -> ImageLayerInfo {
    ImageLayerInfo {
        digest: l.desc.digest.clone(),
        diff_id: l.desc.diff_id.clone(),
        media_type: l.desc.media_type.clone(),
        blob_bytes: l.desc.size,
        tar_bytes: l.lower.layer.tar_len(),
        created,
        created_by,
        comment,
    }
}
