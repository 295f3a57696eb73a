//! A directory node's layer directories and its merged index: built on first use (`index.rs`),
//! kept in step with changes, dropped by the memory bound (`index_cache.rs`) and, with
//! `--revalidate`, built again when a lower directory changed.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::Union;
use super::index::{self, DirIndex, Slot};
use super::index_cache::Verdict;
use super::layerdir::LayerDir;
use super::node::Node;
use crate::error::{Errno, FsResult};

impl Union {
    /// Runs `f` on the directory's index, building it first if needed.
    pub(super) fn with_index<R>(&self, dir: &Node, f: impl FnOnce(&mut DirIndex) -> R) -> FsResult<R> {
        // With `revalidate`, a lower directory that changed since the build makes it stale.
        let stamps = if self.config.revalidate {
            self.lower_stamps(&self.dir_layers(dir)?)
        } else {
            Vec::new()
        };
        {
            let mut st = dir.state.write();
            let ds = st.dir.as_mut().ok_or(Errno::ENOTDIR)?;
            if let (Some(idx), true) = (ds.index.as_mut(), ds.lower_stamps == stamps) {
                idx.touch();
                return Ok(f(idx));
            }
        }
        let layers = self.dir_layers(dir)?;
        let mut built = index::build(&layers, self.upper, &|l, d, name, kind, raw| {
            self.ino_of(l, d, name, kind, raw)
        })?;
        built.touch();
        let node = self.nodes.get(dir.ino);
        let r = {
            let mut st = dir.state.write();
            let ds = st.dir.as_mut().ok_or(Errno::ENOTDIR)?;
            // Another thread may have built it meanwhile; theirs is as good as ours.
            if ds.index.is_none() || ds.lower_stamps != stamps {
                if let Some(n) = &node {
                    built.generation = self.index_cache.charge(n, built.len());
                }
                ds.index = Some(built);
                ds.lower_stamps = stamps;
            }
            match ds.index.as_mut() {
                Some(idx) => Ok(f(idx)),
                None => Err(Errno::EIO),
            }
        };
        self.trim_indexes();
        r
    }
    /// Drops least recently used directory indexes while they hold more names than the mount
    /// allows (see `index_cache.rs`).
    pub(super) fn trim_indexes(&self) {
        self.index_cache.trim(|node, generation| {
            if self.handles.is_open(node.ino) {
                return Verdict::Keep;
            }
            // Never wait: the caller may hold a lock this node's state is behind.
            let Some(mut st) = node.state.try_write() else {
                return Verdict::Keep;
            };
            let Some(ds) = st.dir.as_mut() else {
                return Verdict::Gone;
            };
            match &ds.index {
                Some(idx) if idx.generation == generation => {
                    if idx.take_used() {
                        Verdict::Keep
                    } else {
                        ds.index = None;
                        Verdict::Dropped
                    }
                }
                _ => Verdict::Gone,
            }
        });
    }
    /// Change stamps (ctime) of a directory's lower layer directories.
    pub(super) fn lower_stamps(&self, layers: &[(usize, Arc<LayerDir>)]) -> Vec<(i64, u64)> {
        layers
            .iter()
            .filter(|(l, _)| Some(*l) != self.upper)
            .map(|(_, d)| d.stat().map_or((0, 0), |s| (s.st_ctime, s.st_ctime_nsec)))
            .collect()
    }
    pub(super) fn dir_layers(&self, dir: &Node) -> FsResult<Vec<(usize, Arc<LayerDir>)>> {
        let st = dir.state.read();
        st.dir.as_ref().map(|d| d.layers.clone()).ok_or(Errno::ENOTDIR)
    }
    /// The upper directory fd of a directory node, if it has one.
    pub(super) fn upper_dir_fd(&self, dir: &Node) -> Option<Arc<OwnedFd>> {
        self.upper_layer_dir(dir)?.fs_fd()
    }

    /// The upper's directory of the directory node `dir`, if it has one.
    pub(super) fn upper_layer_dir(&self, dir: &Node) -> Option<Arc<LayerDir>> {
        let st = dir.state.read();
        let d = st.dir.as_ref()?;
        d.layers
            .first()
            .filter(|(l, _)| Some(*l) == self.upper)
            .map(|(_, d)| Arc::clone(d))
    }
    pub(super) fn slot(&self, dir: &Node, name: &OsStr) -> FsResult<Slot> {
        // Lookups only read the index: take the shared lock when it is already built.
        if let Some(idx) = dir.state.read().dir.as_ref().and_then(|d| d.index.as_ref()) {
            idx.touch();
            return Ok(idx.get(name));
        }
        self.with_index(dir, |idx| idx.get(name))
    }
}
