//! Offline tools for layer directories, one module per command: `diff` (what an upper
//! changes), `commit` (the upper as an OCI image layer), `import` (an OCI layer tar as a new
//! layer directory), `size`, `history` (`unionfs layers`: a per-layer summary) and `check`
//! (a consistency check with repair).
//!
//! What they share: `stack.rs` opens the layers, `listing.rs` reads one layer directory and
//! walks a whole layer, `place.rs` reads a lower's directory wherever it is (a directory, or an
//! OCI image layer's catalog), `lowers.rs` looks the image (the lowers' union) up at the
//! upper's paths, `indirect.rs` follows kernel overlayfs's redirected directories and metacopy
//! files (in the upper or in a lower), and `linked.rs` finds names that show a copy from the
//! workdir's hard-link index. Output files, digests and compression are [`crate::blob`]'s.
//!
//! Nothing here needs FUSE or a mount. Every question about markers (whiteouts, opaque
//! directories, private xattrs) is answered by [`crate::format`], the module the union core
//! uses, so the tools read every format the mount reads.
//!
//! Speed: the tools that compare an upper with its lowers (`diff`, `commit`, `check`) walk the
//! upper only, and look at the lowers only at the paths the upper has (a few `lstat`s per upper
//! entry and per lower layer), so their cost follows the size of the change, not of the image.

pub mod check;
pub mod commit;
pub mod diff;
pub mod history;
pub mod import;
mod indirect;
mod linked;
mod listing;
mod lowers;
mod place;
pub mod size;
pub mod stack;
pub mod view;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use stack::{ImageLayerDir, LayerDir, Lower, Stack};

/// Why a layer tool failed. Every variant names the path it is about and the cause, so the
/// command line prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// Writing the tool's output failed (`commit` into a writer it was given, which it has no
    /// name for; `commit_to_file` names the file).
    #[error("output: {0}")]
    Output(#[source] std::io::Error),
    #[error("interrupted; no output was left behind")]
    Interrupted,
    /// An image given with `--image` could not be opened or written (the message names the
    /// layout or blob).
    #[error("{0}")]
    Image(#[from] crate::image::ImageError),
}

pub type Result<T> = std::result::Result<T, LayerError>;

impl LayerError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl Into<std::io::Error>) -> LayerError {
        LayerError::Io {
            path: path.into(),
            source: e.into(),
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> LayerError {
        LayerError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// What a tool does with the directories it is given, for the locks it takes on them (see
/// `crate::inuse`: a live mount holds its upper and workdir exclusively).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Reads them and may run beside a mount (`diff`, `size`, `layers`, `check`): the answer is
    /// then a snapshot of a moving target, and says so.
    Read,
    /// Reads them and needs them to hold still (`commit`): refused while a mount holds them.
    ReadStill,
    /// Changes them (`check --repair`, `import`): refused while anyone else uses them.
    Write,
}

/// The locks a tool holds while it runs, and warnings for the user.
#[derive(Debug)]
pub struct Claim {
    pub warnings: Vec<String>,
    _locks: Vec<crate::inuse::DirLock>,
}

/// Locks `dirs` (role, path; paths that do not exist are skipped) for `how`.
pub fn claim(dirs: &[(&str, &Path)], how: Use) -> Result<Claim> {
    use crate::inuse::{Access, LockError, lock};
    let mut c = Claim {
        warnings: Vec::new(),
        _locks: Vec::new(),
    };
    let access = if how == Use::Write {
        Access::Exclusive
    } else {
        Access::Shared
    };
    for &(role, dir) in dirs {
        if !dir.is_dir() {
            continue;
        }
        match lock(dir, access) {
            Ok(l) => c._locks.push(l),
            Err(LockError::Busy { holder }) if how == Use::Read => c.warnings.push(format!(
                "{role} {} is in use by {holder}: this is a snapshot of a moving target",
                dir.display()
            )),
            Err(LockError::Busy { holder }) => {
                return Err(LayerError::invalid(
                    dir,
                    format!("{role} in use by {holder}; unmount it (or wait for it) first"),
                ));
            }
            // A directory we may not open for reading cannot be used by a mount of ours either.
            Err(LockError::Io(e)) if how == Use::Read => c.warnings.push(format!("{role} {}: {e}", dir.display())),
            Err(LockError::Io(e)) => return Err(LayerError::io(dir, e)),
        }
    }
    Ok(c)
}

/// Receives progress of long walks and tells them to stop. All methods have no-op defaults.
pub trait Observer: Sync {
    /// One more entry handled.
    fn entry(&self) {}
    /// `n` more bytes of file data handled.
    fn bytes(&self, _n: u64) {}
    /// Whether the user asked to stop (Ctrl-C): the tool then removes what it was writing and
    /// returns [`LayerError::Interrupted`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that shows nothing and never cancels.
pub struct Quiet;

impl Observer for Quiet {}

/// `a/b` + `c` = `a/b/c` (relative paths inside a layer, as bytes; the root is empty).
pub(crate) fn join(rel: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
    p.extend_from_slice(rel);
    if !rel.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

/// `root/rel`, for messages.
pub(crate) fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// A size as `docker ps -s` prints it: decimal units, three significant digits (`61.6kB`,
/// `444MB`, `0B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    // Three significant digits, like Go's %.3g without the exponent form.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{v:.digits$}");
    if s.starts_with("1000") && u < UNITS.len() - 1 {
        s = "1".into();
        u += 1;
    }
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    format!("{s}{}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_print_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(61_600), "61.6kB");
        assert_eq!(human_size(61_649), "61.6kB");
        assert_eq!(human_size(444_000_000), "444MB");
        assert_eq!(human_size(1_234_567), "1.23MB");
        assert_eq!(human_size(999_999), "1MB");
        assert_eq!(human_size(10_060), "10.1kB");
    }
}
