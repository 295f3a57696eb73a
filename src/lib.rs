//! unionfs: a union filesystem in userspace.
//!
//! Read-only lower layers (top first) under one writable upper, merged into one view, with the
//! semantics of Linux overlayfs (see `docs/semantics.md`): top-down lookup, whiteouts and opaque
//! directories in overlay and OCI formats, atomic copy-up, rename of any directory, stable inode
//! numbers.
//!
//! Layout: [`union`] holds all overlay semantics and knows nothing of FUSE; [`fuse`] adapts
//! fuser requests onto it; [`config`] validates a mount; [`sys`] wraps the system calls;
//! [`layers`] holds the offline layer tools (diff, commit, import, size, layers, check).

#![forbid(unsafe_code)]
// No function over 80 lines (clippy.toml): long ones get split into named steps.
#![deny(clippy::too_many_lines)]

pub mod attr;
pub mod blob;
pub mod config;
pub(crate) mod descent;
pub mod error;
pub mod format;
pub mod fuse;
pub mod idmap;
pub mod image;
pub mod inuse;
pub mod layers;
pub mod mountinfo;
pub mod registry;
pub(crate) mod sys;

pub use sys::dir_reads_on_this_thread;
pub mod union;

pub use attr::{Attr, Kind};
pub use config::{AtimeMode, AtimePolicy, MountConfig, RedirectDir, WhiteoutStyle};
pub use error::{Errno, FsResult, SetupError};
pub use union::{Ctx, DirEntry, DirSink, Opened, ROOT, SetAttr, StatFs, Stats, Union};
