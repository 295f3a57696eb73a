//! Error types: `Errno` for filesystem operations (what the kernel sees), `SetupError` for mount
//! configuration (what a person sees: every variant names the path and the cause).

use std::io;
use std::path::PathBuf;

/// An errno returned by a union operation. The union core decides every errno; the FUSE adapter
/// only forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", io::Error::from_raw_os_error(self.0))]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);

    /// The raw errno value.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> Self {
        io::Error::from_raw_os_error(e.0)
    }
}

/// Result of a union operation.
pub type FsResult<T> = Result<T, Errno>;

/// Why a mount could not be set up. Each message names the path and the cause, so the CLI can
/// print it as one line.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{role} {path}: {source}")]
    Io {
        role: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{role} {path}: not a directory")]
    NotADirectory { role: &'static str, path: PathBuf },
    #[error("{inner_role} {inner} is inside {outer_role} {outer}; layers must not contain each other")]
    Nested {
        inner_role: &'static str,
        inner: PathBuf,
        outer_role: &'static str,
        outer: PathBuf,
    },
    #[error("workdir {work} is on another filesystem than upper {upper}; copy-up needs rename between them")]
    WorkdirOtherFs { work: PathBuf, upper: PathBuf },
    #[error("mountpoint {path} is already a mount point (use `unionfs umount` first)")]
    AlreadyMounted { path: PathBuf },
    #[error("no lower layer given (--lower a:b:c or -o lowerdir=a:b:c)")]
    NoLower,
    #[error("{given} lower layers given; at most {max} can be stacked")]
    TooManyLayers { given: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}
