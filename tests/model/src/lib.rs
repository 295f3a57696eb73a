//! `unionfs-model`: a reference model of the merged view, the on-disk side of the tests (writing
//! layers, reading the upper back, snapshots of the lowers), a driver that runs operations on
//! `unionfs::Union` the way the kernel would through a mount, and the [`harness`] that runs one
//! operation sequence on both and compares them. The library tests (`tests/union/`) and the
//! fuzzer (`fuzz/`) depend on it; it is not published.
//!
//! The model is deliberately naive: the view is a map from path to object, computed once from
//! the layers by [`fold`] (the rules of docs/semantics.md, written independently of `src/union/index.rs`) and then
//! changed with plain POSIX semantics. Nothing in it knows about copy-up, whiteouts or opaque
//! markers beyond the initial fold; that is exactly what the library must make invisible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use unionfs::{Attr, Ctx, Kind, MountConfig, ROOT, SetAttr, Union, WhiteoutStyle};

/// OCI whiteout prefix, also the prefix the view refuses for new names.
pub const WH: &str = ".wh.";
/// OCI opaque marker.
pub const OPQ: &str = ".wh..wh..opq";
/// The one user xattr the tests set and compare.
pub const XATTR: &str = "user.x";
/// Opaque xattrs the library may write (docs/semantics.md: trusted when privileged, else user).
pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
/// Times given to every lower entry, old enough that a relatime read would move the atime.
const LOWER_TIME: i64 = 1_000_000_000;

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

mod disk;
mod driver;
pub mod harness;
pub mod hostile;
mod layers;
mod view;

pub use disk::*;
pub use driver::*;
pub use hostile::{OUTSIDE, SENTINEL, SENTINEL_NAME};
pub use layers::*;
pub use view::*;
