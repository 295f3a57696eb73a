//! The layers a tool is given: each layer directory opened once, and the stack they make (the
//! lowers top first, the upper if any, the workdir whose hard-link index the view depends on).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::lowers::{ImageDir, LowerDir};
use super::{LayerError, Result, full_path};
use crate::format::markers;
use crate::sys;

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

/// A layer stack: lowers top first, and the upper if there is one.
pub struct Stack {
    pub lowers: Vec<LayerDir>,
    pub upper: Option<LayerDir>,
    /// The workdir the union is mounted with: its hard-link index says what lower files with
    /// several names show after one of them was copied up (see `linked.rs`).
    pub workdir: Option<PathBuf>,
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
            lowers: ls,
            upper,
            workdir: None,
        })
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
        let mut dirs = Vec::new();
        for (i, l) in self.lowers.iter().enumerate() {
            let fd = sys::open_path_dir(l.fd(), OsStr::new(".")).map_err(|e| LayerError::io(&l.path, e))?;
            let marks = markers::dir_marks(fd.as_fd()).map_err(|e| LayerError::io(&l.path, e))?;
            dirs.push(LowerDir { layer: i, fd, marks });
            if marks.opaque {
                break;
            }
        }
        Ok(ImageDir { dirs })
    }
}
