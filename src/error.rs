//! Error types: `Errno` for filesystem operations (what the kernel sees), `SetupError` for mount
//! configuration (what a person sees: every variant names the path and the cause).

use std::io;
use std::panic::Location;
use std::path::PathBuf;

/// An errno returned by a union operation. The union core decides every errno; the FUSE adapter
/// only forwards it. An errno that came from a failed system call also remembers where in our
/// code it was turned into an `Errno` (the `?` that received it), so the adapter's log can say
/// which step of an operation failed, not only how. Two errnos are equal when their codes are.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{}", io::Error::from_raw_os_error(self.code))]
pub struct Errno {
    code: i32,
    at: Option<&'static Location<'static>>,
}

impl Errno {
    pub const ENOENT: Errno = Errno::new(libc::ENOENT);
    pub const EEXIST: Errno = Errno::new(libc::EEXIST);
    pub const EINVAL: Errno = Errno::new(libc::EINVAL);
    pub const EIO: Errno = Errno::new(libc::EIO);
    pub const EPERM: Errno = Errno::new(libc::EPERM);
    pub const EROFS: Errno = Errno::new(libc::EROFS);
    pub const ENOTDIR: Errno = Errno::new(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno::new(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno::new(libc::ENOTEMPTY);
    pub const EBADF: Errno = Errno::new(libc::EBADF);
    pub const ENODATA: Errno = Errno::new(libc::ENODATA);
    pub const ESTALE: Errno = Errno::new(libc::ESTALE);
    pub const EXDEV: Errno = Errno::new(libc::EXDEV);
    pub const ENOTSUP: Errno = Errno::new(libc::ENOTSUP);
    pub const ENAMETOOLONG: Errno = Errno::new(libc::ENAMETOOLONG);
    pub const ERANGE: Errno = Errno::new(libc::ERANGE);
    pub const E2BIG: Errno = Errno::new(libc::E2BIG);
    pub const ENOSYS: Errno = Errno::new(libc::ENOSYS);
    pub const ENOTTY: Errno = Errno::new(libc::ENOTTY);

    /// An errno the union decided itself (no system call behind it).
    pub const fn new(code: i32) -> Errno {
        Errno { code, at: None }
    }

    /// The raw errno value.
    pub fn code(self) -> i32 {
        self.code
    }

    /// Where a failed system call's errno entered our code, if it came from one.
    pub fn origin(self) -> Option<&'static Location<'static>> {
        self.at
    }
}

impl PartialEq for Errno {
    fn eq(&self, other: &Errno) -> bool {
        self.code == other.code
    }
}

impl Eq for Errno {}

impl From<rustix::io::Errno> for Errno {
    #[track_caller]
    fn from(e: rustix::io::Errno) -> Self {
        Errno {
            code: e.raw_os_error(),
            at: Some(Location::caller()),
        }
    }
}

impl From<io::Error> for Errno {
    #[track_caller]
    fn from(e: io::Error) -> Self {
        Errno {
            code: e.raw_os_error().unwrap_or(libc::EIO),
            at: Some(Location::caller()),
        }
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> Self {
        io::Error::from_raw_os_error(e.code)
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
    #[error("{role} {path} is in use by {holder}; an upper or workdir serves one mount at a time")]
    InUse {
        role: &'static str,
        path: PathBuf,
        holder: String,
    },
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails() -> FsResult<()> {
        rustix::fs::stat("/nonexistent/unionfs-error-test")?;
        Ok(())
    }

    #[test]
    fn a_failed_call_remembers_the_question_mark_that_received_it() {
        let e = fails().unwrap_err();
        assert_eq!(e, Errno::ENOENT);
        let at = e.origin().expect("an errno from a system call has an origin");
        assert_eq!(at.file(), file!());
        let line = include_str!("error.rs")
            .lines()
            .position(|l| l.contains("unionfs-error-test\")?;"));
        assert_eq!(Some(at.line() as usize), line.map(|n| n + 1));
        assert_eq!(Errno::ENOENT.origin(), None, "errnos the union decides have none");
    }
}
