//! Opening a union: the layers (through their private mounts where there are some), the
//! workdir, the hard-link index, the owner mappings in force, and the root node. Everything that
//! is decided once per mount and what the daemon process is.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::handles::HandleTable;
use super::hardlinks::HardlinkIndex;
use super::index_cache::IndexCache;
use super::layerdir::{ImageLower, LayerDir};
use super::node::{DirState, Node, NodeState, NodeTable, ROOT};
use super::workdir::Workdir;
use super::{Union, atime};
use crate::attr::Kind;
use crate::config::{ImageSource, MountConfig, WhiteoutStyle};
use crate::error::{FsResult, SetupError};
use crate::format::ino::Numbering;
use crate::idmap::IdMap;
use crate::image::cache::ContentCache;
use crate::sys;

/// One layer directory.
pub(crate) struct Layer {
    pub path: PathBuf,
    pub root: Arc<LayerDir>,
    pub dev: u64,
    /// The filesystem's id (stable across reboots where the filesystem has a UUID): with an
    /// inode number, the identity of a lower object in the hard-link index.
    pub fsid: u64,
}

/// What the daemon process is, as far as the objects it creates are concerned.
pub(super) struct Process {
    /// We can write `trusted.*` xattrs and chown: running with CAP_SYS_ADMIN.
    pub privileged: bool,
    /// The process umask is 0 (the daemon's is), so create modes apply as given.
    pub umask_is_zero: bool,
    /// Our effective ids: the owner of what we create.
    pub euid: u32,
    pub egid: u32,
}

impl Process {
    pub(super) fn current() -> Process {
        Process {
            privileged: sys::privileged(),
            umask_is_zero: sys::umask_is_zero(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        }
    }
}

/// What the FUSE adapter settled with the kernel at INIT, after the union was opened.
#[derive(Default)]
pub(super) struct KernelAgreed {
    /// See [`Union::set_rw_upper_fds`].
    pub rw_upper_fds: AtomicBool,
    /// See [`Union::set_posix_acl`].
    pub posix_acl: AtomicBool,
}

impl Union {
    /// Opens the layers of `config` (validating it first) and cleans the workdir.
    pub fn new(config: &MountConfig) -> Result<Union, SetupError> {
        let config = config.validate(None)?;
        let mut private = atime::PrivateMounts::make(&config);
        let lowers = std::mem::take(&mut private.lowers);
        let private = private.upper;
        let mut layers = open_layers(&config, private.as_ref(), lowers)?;
        let mut recorder = None;
        if let Some(img) = &config.image {
            let (image_layers, lowers) = open_image_layers(img)?;
            layers.extend(image_layers);
            recorder = super::record::recorder(img)?;
            super::record::start_prefetch(img, lowers)?;
        }
        let upper = config.upper.as_ref().map(|_| 0);
        let work = match (&config.upper, &config.workdir) {
            (Some(_), Some(w)) => Some(Workdir::prepare(w, private.as_ref())?),
            _ => None,
        };
        let hardlinks = match &work {
            Some(w) => open_hardlink_index(&config, w, &layers[0])?,
            None => HardlinkIndex::default(),
        };
        let idmap = effective_idmap(&config.idmap, &layers, config.upper.is_some());
        let numbering = Numbering::new(layers.iter().map(|l| l.dev).collect());
        let u = Union {
            layers,
            upper,
            work,
            nodes: NodeTable::default(),
            handles: HandleTable::default(),
            hardlinks,
            index_cache: IndexCache::new(config.index_cache),
            next_listing: AtomicU64::new(1),
            oci: AtomicBool::new(config.whiteouts == WhiteoutStyle::Oci),
            process: Process::current(),
            agreed: KernelAgreed::default(),
            idmap,
            numbering,
            atime_by_mount: private.is_some(),
            recorder,
            config,
        };
        u.insert_root().map_err(|e| SetupError::Io {
            role: "layer root",
            path: u.layers[0].path.clone(),
            source: e.into(),
        })?;
        Ok(u)
    }

    pub(super) fn insert_root(&self) -> FsResult<()> {
        let mut dir_layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let marks = l.root.marks()?;
            dir_layers.push((i, Arc::clone(&l.root)));
            if marks.opaque {
                break;
            }
        }
        self.nodes.get_or_insert(ROOT, 1, || {
            Node::new(
                ROOT,
                NodeState::new(ROOT, OsStr::new(""), Kind::Dir, 0, Some(DirState::new(dir_layers))),
            )
        });
        Ok(())
    }
}

/// Opens the workdir's hard-link index for the upper `upper`, logging what had to go.
fn open_hardlink_index(config: &MountConfig, work: &Workdir, upper: &Layer) -> Result<HardlinkIndex, SetupError> {
    let workdir = config.workdir.clone().unwrap_or_default();
    let privileged = sys::privileged();
    let upper_fd = upper
        .root
        .fs_fd()
        .ok_or_else(|| SetupError::Invalid("the upper is not a directory".into()))?;
    let (index, cleanup) = HardlinkIndex::open(work, upper_fd.as_fd(), privileged).map_err(|e| SetupError::Io {
        role: "workdir",
        path: workdir.clone(),
        source: e.into(),
    })?;
    if cleanup.foreign > 0 {
        tracing::warn!(
            "the hard-link index in {} was made for another upper than {} (or by an older unionfs): its {} entries were removed",
            workdir.display(),
            upper.path.display(),
            cleanup.foreign
        );
    }
    if cleanup.rebuilt > 0 {
        tracing::info!(
            "the hard-link index in {} was made again from the {} copies the upper holds",
            workdir.display(),
            cleanup.rebuilt
        );
    }
    if cleanup.orphans > 0 {
        tracing::info!(
            "removed {} entries of the hard-link index in {} whose copies had no name left in the upper",
            cleanup.orphans,
            workdir.display()
        );
    }
    Ok(index)
}

/// Opens the layer directories of `config`, upper first: the upper through its private mount
/// and each lower through the private mount in `lowers` (by position) where there is one.
fn open_layers(
    config: &MountConfig,
    private: Option<&atime::PrivateUpper>,
    lowers: Vec<Option<OwnedFd>>,
) -> Result<Vec<Layer>, SetupError> {
    let open = |role: &'static str, p: &PathBuf, mine: Option<OwnedFd>| -> Result<Layer, SetupError> {
        let io = |e: rustix::io::Errno| SetupError::Io {
            role,
            path: p.clone(),
            source: e.into(),
        };
        let fd = match (private, mine) {
            (Some(pu), _) if role == "upper" => pu.open(p),
            (_, Some(fd)) => Ok(fd),
            _ => sys::open_dir_path(p),
        }
        .map_err(io)?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        let fsid = rustix::fs::fstatvfs(&fd).map(|v| v.f_fsid).unwrap_or(0);
        Ok(Layer {
            path: p.clone(),
            root: LayerDir::fs(fd),
            dev: st.st_dev,
            fsid: if fsid == 0 { st.st_dev } else { fsid },
        })
    };
    let mut layers = Vec::new();
    if let Some(u) = &config.upper {
        layers.push(open("upper", u, None)?);
    }
    let mut mine = lowers.into_iter();
    for l in &config.lowers {
        layers.push(open("lower layer", l, mine.next().flatten())?);
    }
    Ok(layers)
}

/// The layers of the image `img`, top first (their catalogs are made on the first mount).
fn open_image_layers(img: &ImageSource) -> Result<(Vec<Layer>, Vec<Arc<ImageLower>>), SetupError> {
    struct Quiet;
    impl crate::image::scan::Progress for Quiet {}
    let cache = Arc::new(ContentCache::new(&img.cache_dir, img.cache_size));
    let (image, layers) = crate::image::open_layers(&img.reference, &img.cache_dir, &img.registry, cache, &Quiet)
        .map_err(|e| SetupError::Invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(layers.len());
    let mut lowers = Vec::with_capacity(layers.len());
    for layer in layers {
        let dev = crate::image::layer_dev(&layer.digest);
        let path = crate::image::layout::blob_path(&image.layout, &layer.digest)
            .map_err(|e| SetupError::Invalid(e.to_string()))?;
        let lower = ImageLower::new(layer, dev).map_err(|source| SetupError::Io {
            role: "image layer",
            path: path.clone(),
            source,
        })?;
        out.push(Layer {
            path,
            root: lower.root(),
            dev,
            fsid: dev,
        });
        lowers.push(lower);
    }
    Ok((out, lowers))
}

/// The owner mappings a mount uses: none when the top layer already carries owners of the view
/// (its root's owner is in a view range and in no layer range). Podman passes its container's
/// mapping along with layers it has shifted to it already; applying it again would show (and
/// store) owners shifted twice.
fn effective_idmap(asked: &IdMap, layers: &[Layer], has_upper: bool) -> IdMap {
    if asked.uids.is_empty() && asked.gids.is_empty() {
        return asked.clone();
    }
    match top_lower(layers, has_upper).and_then(|l| l.root.stat().ok()) {
        Some(st) => idmap_for_top_owner(asked, st.st_uid),
        None => asked.clone(),
    }
}

/// The top lower layer: after the upper (which the mount made itself) if there is one.
fn top_lower(layers: &[Layer], has_upper: bool) -> Option<&Layer> {
    layers.get(usize::from(has_upper))
}

/// The mappings to apply when the top lower's root belongs to `uid`: none if `uid` is an owner
/// of the view and of no layer range (the layers were shifted already).
fn idmap_for_top_owner(asked: &IdMap, uid: u32) -> IdMap {
    let in_view = asked.uids.iter().any(|r| uid >= r.view && uid - r.view < r.len);
    let in_host = asked.uids.iter().any(|r| uid >= r.host && uid - r.host < r.len);
    if in_view && !in_host {
        tracing::info!(
            "the layers' owners are shifted already (the top layer's root belongs to {uid}): the uid/gid mappings are not applied again"
        );
        return IdMap {
            uids: Vec::new(),
            gids: Vec::new(),
            ..asked.clone()
        };
    }
    asked.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdRange;

    fn layer(dir: &std::path::Path) -> Layer {
        std::fs::create_dir_all(dir).expect("mkdir");
        Layer {
            path: dir.to_path_buf(),
            root: LayerDir::fs(sys::open_dir_path(dir).expect("open")),
            dev: 0,
            fsid: 0,
        }
    }

    #[test]
    fn the_idmap_is_judged_by_the_top_lower_with_or_without_an_upper() {
        let t = tempfile::tempdir().expect("tmp");
        let [a, b] = [t.path().join("a"), t.path().join("b")];
        let two_lowers = [layer(&a), layer(&b)];
        // No upper: the first layer is the top lower (not the second, as it once was).
        assert_eq!(top_lower(&two_lowers, false).map(|l| &l.path), Some(&a));
        // An upper first: the layer after it.
        assert_eq!(top_lower(&two_lowers, true).map(|l| &l.path), Some(&b));
        let asked = IdMap {
            uids: vec![IdRange {
                host: 100_000,
                view: 0,
                len: 65_536,
            }],
            ..IdMap::default()
        };
        assert!(
            idmap_for_top_owner(&asked, 0).uids.is_empty(),
            "shifted already: not applied again"
        );
        assert_eq!(idmap_for_top_owner(&asked, 100_000).uids, asked.uids);
    }
}
