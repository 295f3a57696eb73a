//! The union: every overlay semantic, in plain Rust, with no knowledge of FUSE.
//!
//! Objects are addressed by their view inode number (see `node.rs`). Each operation returns a
//! typed result or an [`Errno`]; the FUSE adapter only converts. Layers are reached only through
//! directory fds (`O_PATH`) and `*at` calls with `O_NOFOLLOW`, so a symlink inside a layer is
//! never followed by the daemon.
//!
//! Layer indices: `layers[0]` is the upper when there is one, then the lowers top first.
//!
//! How state is kept:
//! - every live directory node caches the fds of the layer directories merged into it and, once
//!   listed or searched, its merged index (`index.rs`); every change made through the view updates
//!   the index of the directory it touches, under that directory's `ns` mutex;
//! - copy-up (`copy_up.rs`) is serialised per object by `copy_lock` and publishes with one rename;
//! - removals and renames (`remove.rs`, `rename.rs`) write whiteouts and opaque markers through
//!   `crate::format`, the only module that knows how anything looks on disk.
//!
//! Where things are: opening a union (`setup.rs`); lookup, nodes' kernel references and
//! attributes (`lookup.rs`); where an object is for system calls (`locate.rs`); inode numbers
//! (`identity.rs`); a directory's layers and merged index (`dirs.rs`, `index.rs`).

mod acl;
mod atime;
mod copy_up;
mod copy_up_chain;
mod create;
mod dirs;
mod fileattr;
mod fsdir;
mod handles;
pub(crate) mod hardlinks;
mod identity;
pub(crate) mod index;
mod index_cache;

mod io;
pub(crate) mod layerdir;
mod locate;
mod lookup;
mod metacopy;
pub(crate) mod node;
mod privs;
mod readdir;
mod record;
mod redirect;
mod remove;
mod rename;
mod setup;

pub(crate) mod workdir;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::OFlags;

pub use self::atime::ReadAtime;
use self::handles::HandleTable;
use self::hardlinks::HardlinkIndex;
use self::index_cache::IndexCache;
pub use self::io::{Opened, SetAttr, StatFs, XattrAnswer};
pub(crate) use self::locate::{Loc, layer_fd};
pub(crate) use self::lookup::Held;
pub use self::node::ROOT;
use self::node::{Node, NodeTable};
pub use self::readdir::{DirEntry, DirSink};
use self::setup::{KernelAgreed, Layer, Process};
use self::workdir::Workdir;
use crate::attr::Kind;
use crate::config::MountConfig;
use crate::error::{Errno, FsResult};
use crate::format::ino::Numbering;
use crate::idmap::IdMap;
use crate::sys;

/// Who is asking: the caller's credentials, used to own new objects when we run as root.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's file-creation mask, when it is ours to apply (0 when the kernel applied it
    /// already). A default ACL of the parent replaces it.
    pub umask: u32,
}

/// The caller's open flags that carry over to the fd the daemon serves a file from.
///
/// Not `O_DIRECT`: it is the caller's contract with the mount's page cache, which the kernel
/// keeps by sending the caller's reads and writes to us uncached. The kernel may send any offset
/// and length (and our buffers are not aligned), which a direct fd on the layer's filesystem
/// refuses with EINVAL, so our fd stays buffered. A passthrough open reopens the backing file
/// with the caller's own flags, so there `O_DIRECT` reaches the upper's filesystem, as on kernel
/// overlayfs.
pub(crate) const SERVED_FD_FLAGS: OFlags = OFlags::SYNC.union(OFlags::DSYNC);

/// A snapshot of [`Union::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Objects the kernel (or an operation in progress) holds.
    pub nodes: usize,
    /// Directories whose merged listing is in memory, and the names in them.
    pub dir_indexes: usize,
    pub indexed_names: usize,
    pub open_handles: usize,
    /// Layer directories listed and entries stat'ed since the daemon started.
    pub dir_reads: u64,
    pub lstats: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nodes={} dir_indexes={} indexed_names={} open_handles={} dir_reads={} lstats={}",
            self.nodes, self.dir_indexes, self.indexed_names, self.open_handles, self.dir_reads, self.lstats
        )
    }
}

pub struct Union {
    layers: Vec<Layer>,
    upper: Option<usize>,
    /// The workdir (see `workdir.rs`); none without an upper.
    work: Option<Workdir>,
    nodes: NodeTable,
    handles: HandleTable,
    /// Copies of multiply-linked lower files (see `hardlinks.rs`).
    hardlinks: HardlinkIndex,
    index_cache: IndexCache,
    /// Tags of directory listings (see `readdir_chunk`).
    next_listing: AtomicU64,
    /// Write OCI `.wh.` markers (asked for, or mknod was refused).
    oci: AtomicBool,
    process: Process,
    agreed: KernelAgreed,
    /// Owner mappings in force (see `idmap.rs` and `effective_idmap`).
    idmap: IdMap,
    /// How inode numbers of the layers' objects become the view's (`format::ino`).
    numbering: Numbering,
    /// The upper is reached through a private mount with the atime options (`atime.rs`).
    atime_by_mount: bool,
    /// `--record`: the image files opened are listed (`record.rs`).
    recorder: Option<crate::image::prefetch::Recorder>,
    config: MountConfig,
}

impl Union {
    /// The validated configuration this union runs with.
    pub fn config(&self) -> &MountConfig {
        &self.config
    }

    /// Whether there is a writable upper.
    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Whether POSIX ACLs can work: the mount asks for them and the filesystem new objects land
    /// on (the upper, else the top lower) stores them.
    pub fn acl_supported(&self) -> bool {
        self.config.acl
            && self.layers[0].root.fs_fd().is_none_or(|fd| {
                !matches!(
                    sys::Target::Fd(fd.as_fd()).read_xattr(OsStr::new(acl::ACCESS)),
                    Err(rustix::io::Errno::NOTSUP)
                )
            })
    }

    /// The kernel enforces POSIX ACLs (they are read through us) and leaves the creation mask to
    /// us: new objects then inherit their directory's default ACL, computed here.
    pub fn set_posix_acl(&self, on: bool) {
        self.agreed.posix_acl.store(on, Ordering::Relaxed);
    }

    /// Whether the kernel enforces POSIX ACLs and leaves creation masks to us (see
    /// [`Union::set_posix_acl`]).
    pub fn posix_acl(&self) -> bool {
        self.agreed.posix_acl.load(Ordering::Relaxed)
    }

    /// Number of nodes the kernel (or internal walks) currently reference.
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// What the union holds in memory and the system calls it made so far (walks every node:
    /// for occasional reports, not for request paths).
    pub fn stats(&self) -> Stats {
        let (mut indexes, mut names) = (0, 0);
        self.nodes.for_each(|n| {
            if let Some(idx) = n.state.read().dir.as_ref().and_then(|d| d.index.as_ref()) {
                indexes += 1;
                names += idx.len();
            }
        });
        Stats {
            nodes: self.nodes.len(),
            dir_indexes: indexes,
            indexed_names: names,
            open_handles: self.handles.len(),
            dir_reads: sys::DIR_READS.load(Ordering::Relaxed),
            lstats: sys::STATS.load(Ordering::Relaxed),
        }
    }

    /// Kernel lookup count of `ino` (for tests of the forget protocol).
    pub fn lookup_count(&self, ino: u64) -> u64 {
        self.nodes.lookups(ino)
    }

    // ---- nodes and indexes ----------------------------------------------------------------

    fn node(&self, ino: u64) -> FsResult<Arc<Node>> {
        self.nodes.get(ino).ok_or(Errno::ESTALE)
    }

    fn dir_node(&self, ino: u64) -> FsResult<Arc<Node>> {
        let n = self.node(ino)?;
        if n.state.read().kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(n)
    }

    // ---- helpers shared by the mutating modules ---------------------------------------------

    fn upper_index(&self) -> FsResult<usize> {
        self.upper.ok_or(Errno::EROFS)
    }

    fn work_fd(&self) -> FsResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.scratch()).ok_or(Errno::EROFS)
    }

    /// A fresh name in the workdir.
    fn tmp_name(&self) -> OsString {
        self.work.as_ref().map(|w| w.tmp_name()).unwrap_or_default()
    }

    fn oci(&self) -> bool {
        self.oci.load(Ordering::Relaxed)
    }
}

fn check_name(name: &OsStr) -> FsResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}
