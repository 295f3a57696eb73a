//! The layers a tool is given: each layer directory opened once, and the stack they make (the
//! lowers top first, the upper if any, the workdir whose hard-link index the view depends on).
//! A lower is a directory or a layer of an OCI image (`--image`): the image's layers lie below
//! the directories, top first, as `unionfs mount --image` stacks them.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::listing::{self, Listing};
use super::lowers::{ImageDir, LowerDir};
use super::place::{CatalogDir, Place, walk_catalog};
use super::{LayerError, Result, full_path};
use crate::image::layer::ImageLayer;
use crate::image::layout::{Image, LayerDesc};
use crate::sys;
use crate::union::layerdir::ImageLower;

/// One layer directory, opened (by the offline tools; the mount has `union::Layer`).
pub struct LayerDir {
    pub path: PathBuf,
    pub(crate) root: OwnedFd,
    pub dev: u64,
    pub ino: u64,
}

impl LayerDir {
    /// Opens the layer directory at `path` (`role` names it in errors).
    pub fn open(role: &str, path: &Path) -> Result<LayerDir> {
        let fd = sys::open_dir_path(path).map_err(|e| match e {
            rustix::io::Errno::NOTDIR => LayerError::invalid(path, format!("{role} is not a directory")),
            e => LayerError::invalid(path, format!("{role}: {}", std::io::Error::from(e))),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| LayerError::io(path, e))?;
        Ok(LayerDir {
            path: path.to_path_buf(),
            root: fd,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// `path/rel`, for messages.
    pub(crate) fn at(&self, rel: &[u8]) -> PathBuf {
        full_path(&self.path, rel)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

/// A layer of an OCI image, as a lower: read in place through its catalog.
pub struct ImageLayerDir {
    /// The layer's blob (for messages).
    pub path: PathBuf,
    /// The layer as the image's manifest and config describe it.
    pub desc: LayerDesc,
    pub(crate) lower: Arc<ImageLower>,
}

/// A lower layer: a directory, or a layer of an image.
pub enum Lower {
    Dir(LayerDir),
    Image(ImageLayerDir),
}

impl Lower {
    /// The directory, or the image layer's blob.
    pub fn path(&self) -> &Path {
        match self {
            Lower::Dir(d) => &d.path,
            Lower::Image(i) => &i.path,
        }
    }

    /// The device the mount gives the layer's objects.
    pub fn dev(&self) -> u64 {
        match self {
            Lower::Dir(d) => d.dev,
            Lower::Image(i) => i.lower.dev,
        }
    }

    /// The filesystem id the mount's hard-link index keys the layer's objects by.
    pub(crate) fn fsid(&self) -> u64 {
        match self {
            Lower::Dir(d) => {
                let fsid = rustix::fs::fstatvfs(d.fd()).map(|v| v.f_fsid).unwrap_or(0);
                if fsid == 0 { d.dev } else { fsid }
            }
            Lower::Image(i) => i.lower.dev,
        }
    }

    /// `path/rel`, for messages (inside an image layer: below its blob's name).
    pub(crate) fn at(&self, rel: &[u8]) -> PathBuf {
        full_path(self.path(), rel)
    }

    /// The layer's root directory.
    pub(crate) fn root(&self) -> Result<Place> {
        match self {
            Lower::Dir(d) => sys::open_path_dir(d.fd(), OsStr::new("."))
                .map(Place::Fs)
                .map_err(|e| LayerError::io(&d.path, e)),
            Lower::Image(i) => Ok(Place::Catalog(CatalogDir::root(&i.lower))),
        }
    }
}

/// What [`WholeLayer::walk`] calls: `f(listing, None)` for each directory once listed, then
/// `f(listing, Some(entry))` for each of its entries.
pub(crate) type WholeWalkFn<'f> = dyn FnMut(&Listing, Option<&listing::Entry>) -> Result<()> + 'f;

/// A layer read whole (`size`, `layers`, `check`'s origins): the upper, or any lower.
pub(crate) trait WholeLayer {
    /// The stat result of the layer's root.
    fn root_stat(&self) -> Result<rustix::fs::Stat>;
    /// Every entry of the layer, depth first in name order.
    fn walk(&self, f: &mut WholeWalkFn<'_>) -> Result<()>;
}

impl WholeLayer for LayerDir {
    fn root_stat(&self) -> Result<rustix::fs::Stat> {
        rustix::fs::fstat(self.fd()).map_err(|e| LayerError::io(&self.path, e))
    }
    fn walk(&self, f: &mut WholeWalkFn<'_>) -> Result<()> {
        listing::walk_all(self.fd(), &self.path, b"", &mut |_, _, l, e| f(l, e))
    }
}

impl WholeLayer for Lower {
    fn root_stat(&self) -> Result<rustix::fs::Stat> {
        match self {
            Lower::Dir(d) => d.root_stat(),
            Lower::Image(i) => Ok(i.lower.stat_of(i.lower.layer.root())),
        }
    }
    fn walk(&self, f: &mut WholeWalkFn<'_>) -> Result<()> {
        match self {
            Lower::Dir(d) => d.walk(f),
            Lower::Image(i) => walk_catalog(CatalogDir::root(&i.lower), &i.path, f),
        }
    }
}

/// A layer stack: lowers top first, and the upper if there is one.
pub struct Stack {
    pub lowers: Vec<Lower>,
    pub upper: Option<LayerDir>,
    /// The workdir the union is mounted with: its hard-link index says what lower files with
    /// several names show after one of them was copied up (see `linked.rs`).
    pub workdir: Option<PathBuf>,
    /// The image whose layers are the bottom lowers, if any.
    pub image: Option<Image>,
}

impl Stack {
    /// Opens the layers; a layer given twice (or the upper among the lowers) is refused.
    pub fn open(lowers: &[PathBuf], upper: Option<&Path>) -> Result<Stack> {
        let upper = upper.map(|u| LayerDir::open("upper", u)).transpose()?;
        let mut ls: Vec<LayerDir> = Vec::new();
        for l in lowers {
            let layer = LayerDir::open("lower layer", l)?;
            let same = |o: &LayerDir| o.dev == layer.dev && o.ino == layer.ino;
            if upper.as_ref().is_some_and(same) {
                return Err(LayerError::invalid(l, "is the upper too; a layer must appear once"));
            }
            if ls.iter().any(same) {
                return Err(LayerError::invalid(l, "lower layer given twice"));
            }
            ls.push(layer);
        }
        Ok(Stack {
            lowers: ls.into_iter().map(Lower::Dir).collect(),
            upper,
            workdir: None,
            image: None,
        })
    }

    /// The same stack over the image `image`, whose open `layers` (top first, as
    /// `image::open_layers` gives them) become the bottom lowers.
    pub fn with_image(mut self, image: Image, layers: Vec<ImageLayer>) -> Result<Stack> {
        if layers.len() != image.layers.len() {
            return Err(LayerError::invalid(&image.layout, "not the layers of the image"));
        }
        for (desc, layer) in image.layers.iter().rev().zip(layers) {
            let path = crate::image::layout::blob_path(&image.layout, &layer.digest)
                .map_err(|e| LayerError::invalid(&image.layout, e.to_string()))?;
            let desc = desc.clone();
            let dev = crate::image::layer_dev(&layer.digest);
            let lower = ImageLower::new(layer, dev).map_err(|e| LayerError::io(&path, e))?;
            self.lowers.push(Lower::Image(ImageLayerDir { path, desc, lower }));
        }
        self.image = Some(image);
        Ok(self)
    }

    /// The same stack, read with the workdir `w` (see [`Stack::workdir`]).
    pub fn with_workdir(mut self, w: Option<PathBuf>) -> Stack {
        self.workdir = w;
        self
    }

    /// The upper, or an error naming what is missing.
    pub fn upper(&self) -> Result<&LayerDir> {
        self.upper
            .as_ref()
            .ok_or_else(|| LayerError::invalid(PathBuf::from("--upper"), "an upper layer is required"))
    }

    /// The image's root directory: the lowers' roots, down to the first opaque one.
    pub(crate) fn image_root(&self) -> Result<ImageDir> {
        self.image_root_from(0)
    }

    /// The root directory of the image the lowers from `first` on make (where an absolute
    /// redirect in lower `first - 1` is resolved).
    pub(crate) fn image_root_from(&self, first: usize) -> Result<ImageDir> {
        let mut dirs = Vec::new();
        for (i, l) in self.lowers.iter().enumerate().skip(first) {
            let place = l.root()?;
            let marks = place.marks().map_err(|e| LayerError::io(l.path(), e))?;
            dirs.push(LowerDir {
                layer: i,
                place,
                marks,
                jumped: first > 0,
            });
            if marks.opaque {
                break;
            }
        }
        Ok(ImageDir { dirs })
    }
}
