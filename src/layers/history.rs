//! `unionfs layers`: `docker history` for a layer stack, one row per layer, top first. (Named
//! for `docker history`: a `layers` module inside `layers` would only repeat its parent.)

use std::collections::HashSet;
use std::path::PathBuf;

use super::size::{LayerFigures, layer_figures};
use super::{Observer, Result, Stack};

/// One layer's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerRow {
    /// `upper`, or `lower N` (0 is the top lower).
    pub role: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub figures: LayerFigures,
}

/// The upper first (if any), then the lowers top first. Bytes are each layer's own `du`.
pub fn layers(stack: &Stack, obs: &dyn Observer) -> Result<Vec<LayerRow>> {
    let mut rows = Vec::new();
    if let Some(u) = &stack.upper {
        rows.push(LayerRow {
            role: "upper".into(),
            path: u.path.clone(),
            figures: layer_figures(u, &mut HashSet::new(), obs)?,
        });
    }
    for (i, l) in stack.lowers.iter().enumerate() {
        rows.push(LayerRow {
            role: format!("lower {i}"),
            path: l.path.clone(),
            figures: layer_figures(l, &mut HashSet::new(), obs)?,
        });
    }
    Ok(rows)
}
