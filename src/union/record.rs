//! Prefetch lists in a mount (`--record`, `--prefetch`; see `image::prefetch`): the image files
//! a workload opens are listed by their path in the view, and a list given at mount has its
//! files' data fetched in the background.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use super::layerdir::ImageLower;
use super::node::Node;
use super::{ROOT, Union};
use crate::SetupError;
use crate::config::ImageSource;
use crate::image::prefetch::{self, Recorder};

/// The recorder `--record` asks for, its list started afresh.
pub(super) fn recorder(img: &ImageSource) -> Result<Option<Recorder>, SetupError> {
    let Some(path) = &img.record else { return Ok(None) };
    Recorder::create(path).map(Some).map_err(|source| SetupError::Io {
        role: "--record",
        path: path.clone(),
        source,
    })
}

/// Starts fetching the data of the files `--prefetch` lists, in `lowers` (the image's layers,
/// top first), on a thread of its own. An unreadable list refuses the mount.
pub(super) fn start_prefetch(img: &ImageSource, lowers: Vec<Arc<ImageLower>>) -> Result<(), SetupError> {
    let Some(list) = &img.prefetch else { return Ok(()) };
    let paths = prefetch::read_list(list).map_err(|source| SetupError::Io {
        role: "--prefetch",
        path: list.clone(),
        source,
    })?;
    if !lowers.iter().any(|l| l.layer.is_lazy()) {
        return Ok(());
    }
    let list = list.clone();
    let run = move || {
        let t0 = std::time::Instant::now();
        let layers: Vec<_> = lowers.iter().map(|l| &l.layer).collect();
        let done = prefetch::run(&layers, &paths);
        tracing::info!(
            "prefetch {}: {} files in {} requests ({} failed) in {:.1?}",
            list.display(),
            done.files,
            done.requests,
            done.failed,
            t0.elapsed()
        );
    };
    std::thread::Builder::new()
        .name("prefetch".into())
        .spawn(run)
        .map(|_| ())
        .map_err(|source| SetupError::Io {
            role: "prefetch thread",
            path: img.cache_dir.clone(),
            source,
        })
}

impl Union {
    /// Lists `node` in the `--record` list, if there is one, the first time it is opened.
    pub(super) fn record_open(&self, node: &Arc<Node>) {
        if let Some(r) = &self.recorder {
            r.note(node.ino, || self.view_path(node));
        }
    }

    /// The path of `node` in the view, relative to its root (a name it is known by).
    fn view_path(&self, node: &Node) -> Option<PathBuf> {
        let mut names: Vec<OsString> = Vec::new();
        let mut cur = self.node(node.ino).ok()?;
        // Parents that loop (which nothing should make) end the walk, not the daemon.
        while cur.ino != ROOT && names.len() <= self.nodes.len() {
            let (parent, name) = self.live_name(&cur)?;
            names.push(name);
            cur = self.node(parent).ok()?;
        }
        Some(names.iter().rev().collect())
    }
}
