//! Walks over trees of any depth.
//!
//! Depth is input: an image layer, a user's tree or a tar may nest directories as deep as it
//! likes (paths longer than PATH_MAX are made with relative `mkdirat`). So no walk recurses: each
//! keeps its path as a stack of frames on the heap ([`Descent`]), and of the directories on that
//! path only the last [`WINDOW`] levels stay open, whatever the depth (the layer tools run with
//! the user's open-file limit, often 1,024).
//!
//! A directory further up is *parked*: its fd is closed and its identity (device and inode
//! number) kept. When the walk comes back up to it, it is reopened as `..` of the directory
//! below it, which is open at that moment, and it must be the same directory: one moved
//! meanwhile is an error (ESTALE), never a walk of something else. A walk thus makes a bounded
//! number of extra system calls per directory it enters (an `fstat` when parking, an `openat`
//! and an `fstat` when coming back), and reopening never resolves more than one name.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, Result};

/// How many levels at the bottom of a walk's path keep their directories open. Small, so a walk
/// holds few fds; more than one, so a walk through a wide directory does not park and reopen
/// it for every subdirectory.
pub(crate) const WINDOW: usize = 8;

/// A directory on a walk's path: open, or parked (see the module documentation).
pub(crate) struct PathDir {
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
}

impl PathDir {
    pub fn new(fd: OwnedFd) -> PathDir {
        PathDir {
            fd: Some(fd),
            dev: 0,
            ino: 0,
        }
    }

    /// A handle of our own on `dir`, where a walk starts (the caller keeps its fd).
    pub fn dup(dir: BorrowedFd<'_>) -> Result<PathDir> {
        Ok(PathDir::new(rustix::io::fcntl_dupfd_cloexec(dir, 0)?))
    }

    /// The directory's fd; EBADF while parked (a walk works at the open end of its path only).
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd()).ok_or(Errno::BADF)
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// The fd itself; EBADF while parked.
    pub fn into_fd(self) -> Result<OwnedFd> {
        self.fd.ok_or(Errno::BADF)
    }

    /// Closes the directory, keeping its identity.
    pub fn park(&mut self) -> Result<()> {
        if let Some(fd) = &self.fd {
            let st = rustix::fs::fstat(fd)?;
            (self.dev, self.ino) = (st.st_dev, st.st_ino);
            self.fd = None;
        }
        Ok(())
    }

    /// Reopens a parked directory as `..` of `child`, the directory below it on the path.
    pub fn unpark(&mut self, child: BorrowedFd<'_>) -> Result<()> {
        if self.fd.is_some() {
            return Ok(());
        }
        let fd = rustix::fs::openat(
            child,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_dev, st.st_ino) != (self.dev, self.ino) {
            return Err(Errno::STALE);
        }
        self.fd = Some(fd);
        Ok(())
    }
}

/// One level of a walk, with the directories it holds.
pub(crate) trait Frame {
    /// Parks what `child` (the next frame down the path) will be able to reopen. `child` may be
    /// parked itself: only what it holds counts, not whether it is open.
    fn park(&mut self, child: &Self) -> Result<()>;
    /// Reopens what [`Frame::park`] closed, through `child`, which is open.
    fn unpark(&mut self, child: &Self) -> Result<()>;
}

/// A walk's path: frames from where it started (first) to where it is (last). The last frame
/// is always open; frames more than [`WINDOW`] levels above it are parked.
pub(crate) struct Descent<F> {
    frames: Vec<F>,
}

impl<F: Frame> Descent<F> {
    pub fn new(first: F) -> Descent<F> {
        Descent { frames: vec![first] }
    }

    /// Goes one level down, into `f`.
    pub fn push(&mut self, f: F) -> Result<()> {
        self.frames.push(f);
        let n = self.frames.len();
        if n > WINDOW {
            let (above, below) = self.frames.split_at_mut(n - WINDOW);
            if let (Some(leaving), Some(child)) = (above.last_mut(), below.first()) {
                leaving.park(child)?;
            }
        }
        Ok(())
    }

    /// Goes one level up: returns the last frame and reopens the one above it. None when the
    /// walk is over.
    pub fn pop(&mut self) -> Result<Option<F>> {
        let Some(done) = self.frames.pop() else {
            return Ok(None);
        };
        if let Some(top) = self.frames.last_mut() {
            top.unpark(&done)?;
        }
        Ok(Some(done))
    }

    pub fn last(&self) -> Option<&F> {
        self.frames.last()
    }

    pub fn last_mut(&mut self) -> Option<&mut F> {
        self.frames.last_mut()
    }

    /// The number of levels (the first frame counts as one).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The frames, first to last.
    pub fn frames(&self) -> &[F] {
        &self.frames
    }
}
