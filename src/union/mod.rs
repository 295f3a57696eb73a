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
//!   `whiteout.rs`, the only module that knows their encodings.

mod acl;
mod atime;
mod copy_up;
mod create;
mod fileattr;
mod handles;
pub(crate) mod hardlinks;
pub(crate) mod index;
mod index_cache;

mod io;
pub(crate) mod node;
mod privs;
mod readdir;
mod remove;
mod rename;

pub(crate) mod workdir;

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::OFlags;

pub use self::atime::ReadAtime;
use self::handles::{HandleTable, OpenFile};
use self::hardlinks::HardlinkIndex;
use self::index::{DirIndex, Slot};
use self::index_cache::{IndexCache, Verdict};
pub use self::io::{Opened, SetAttr, StatFs};
pub use self::node::ROOT;
use self::node::{DirState, Node, NodeState, NodeTable};
pub use self::readdir::{DirEntry, DirSink};
use self::workdir::Workdir;
use crate::attr::{Attr, Kind};
use crate::config::{MountConfig, WhiteoutStyle};
use crate::error::{Errno, FsResult, SetupError};
use crate::format::ino::Numbering;
use crate::format::markers;
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
pub(crate) const BACKING_FLAGS: OFlags = OFlags::SYNC.union(OFlags::DSYNC);

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
    pub stats: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nodes={} dir_indexes={} indexed_names={} open_handles={} dir_reads={} stats={}",
            self.nodes, self.dir_indexes, self.indexed_names, self.open_handles, self.dir_reads, self.stats
        )
    }
}

/// One layer directory.
pub(crate) struct Layer {
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    /// The filesystem's id (stable across reboots where the filesystem has a UUID): with an
    /// inode number, the identity of a lower object in the hard-link index.
    pub fsid: u64,
}

/// Where an object is, for system calls.
pub(crate) enum Loc {
    /// A directory, by its own `O_PATH` fd.
    Dir(Arc<OwnedFd>),
    /// Any other object, as the entry `name` of a directory (in the object's layer).
    Entry(Arc<OwnedFd>, OsString),
    /// An unlinked file, through an open handle.
    Open(Arc<OpenFile>),
}

impl Loc {
    fn open_fd(&self) -> Option<&OwnedFd> {
        match self {
            Loc::Dir(fd) => Some(fd),
            Loc::Open(f) => Some(&f.fd),
            Loc::Entry(..) => None,
        }
    }

    pub fn stat(&self) -> rustix::io::Result<rustix::fs::Stat> {
        match (self, self.open_fd()) {
            (Loc::Entry(dir, name), _) => sys::stat_at(dir.as_fd(), name),
            (_, Some(fd)) => rustix::fs::fstat(fd),
            _ => Err(rustix::io::Errno::BADF),
        }
    }

    /// How xattr calls reach it.
    pub fn target(&self) -> sys::Target<'_> {
        match (self, self.open_fd()) {
            (Loc::Entry(dir, name), _) => sys::Target::Entry(dir.as_fd(), name),
            (_, Some(fd)) => sys::Target::Fd(fd.as_fd()),
            // Unreachable: Open always holds a file handle.
            _ => sys::Target::Fd(rustix::fs::CWD),
        }
    }

    /// `(dirfd, path, flags)` for `*at` calls that must act on the object itself, never on a
    /// symlink's target.
    pub fn at(&self) -> (BorrowedFd<'_>, OsString, rustix::fs::AtFlags) {
        use std::os::unix::ffi::OsStringExt;
        match (self, self.open_fd()) {
            (Loc::Entry(dir, name), _) => (dir.as_fd(), name.clone(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            (_, Some(fd)) => (
                rustix::fs::CWD,
                OsString::from_vec(sys::fd_path(fd.as_fd()).into_bytes()),
                rustix::fs::AtFlags::empty(),
            ),
            _ => (rustix::fs::CWD, OsString::new(), rustix::fs::AtFlags::empty()),
        }
    }

    /// Opens it for I/O.
    pub fn open(&self, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        match (self, self.open_fd()) {
            (Loc::Entry(dir, name), _) => sys::open_at(dir.as_fd(), name, flags),
            (_, Some(fd)) => sys::reopen(fd.as_fd(), flags),
            _ => Err(rustix::io::Errno::BADF),
        }
    }
}

/// A mounted (or mountable) union of layers.
/// What the daemon process is, as far as the objects it creates are concerned.
struct Process {
    /// We can write `trusted.*` xattrs and chown: running with CAP_SYS_ADMIN.
    privileged: bool,
    /// The process umask is 0 (the daemon's is), so create modes apply as given.
    umask_is_zero: bool,
    /// Our effective ids: the owner of what we create.
    euid: u32,
    egid: u32,
}

impl Process {
    fn current() -> Process {
        Process {
            privileged: sys::has_cap_sys_admin(),
            umask_is_zero: sys::umask_is_zero(),
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
        }
    }
}

/// What the FUSE adapter settled with the kernel at INIT, after the union was opened.
#[derive(Default)]
struct KernelAgreed {
    /// See [`Union::set_rw_upper_fds`].
    rw_upper_fds: AtomicBool,
    /// See [`Union::set_posix_acl`].
    posix_acl: AtomicBool,
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
    config: MountConfig,
}

impl Union {
    /// Opens the layers of `config` (validating it first) and cleans the workdir.
    pub fn new(config: &MountConfig) -> Result<Union, SetupError> {
        let config = config.validate(None)?;
        let mut private = atime::PrivateMounts::make(&config);
        let lowers = std::mem::take(&mut private.lowers);
        let private = private.upper;
        let layers = open_layers(&config, private.as_ref(), lowers)?;
        let upper = config.upper.as_ref().map(|_| 0);
        let work = match (&config.upper, &config.workdir) {
            (Some(_), Some(w)) => Some(Workdir::prepare(w, private.as_ref())?),
            _ => None,
        };
        let hardlinks = match &work {
            Some(w) => open_hardlink_index(&config, w, &layers[0])?,
            None => HardlinkIndex::default(),
        };
        let idmap = effective_idmap(&config.idmap, &layers);
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
            config,
        };
        u.insert_root().map_err(|e| SetupError::Io {
            role: "layer root",
            path: u.layers[0].path.clone(),
            source: e.into(),
        })?;
        Ok(u)
    }

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
            && !matches!(
                sys::Target::Fd(self.layers[0].root.as_fd()).read_xattr(OsStr::new(acl::ACCESS)),
                Err(rustix::io::Errno::NOTSUP)
            )
    }

    /// The kernel enforces POSIX ACLs (they are read through us) and leaves the creation mask to
    /// us: new objects then inherit their directory's default ACL, computed here.
    pub fn set_posix_acl(&self, on: bool) {
        self.agreed.posix_acl.store(on, Ordering::Relaxed);
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
            stats: sys::STATS.load(Ordering::Relaxed),
        }
    }

    /// Kernel lookup count of `ino` (for tests of the forget protocol).
    pub fn lookup_count(&self, ino: u64) -> u64 {
        self.nodes.lookups(ino)
    }

    fn insert_root(&self) -> FsResult<()> {
        let mut dir_layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let marks = markers::dir_marks(l.root.as_fd())?;
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

    // ---- identity -------------------------------------------------------------------------

    /// The view inode number of an object with raw number `raw` in `layer`.
    fn tag_ino(&self, layer: usize, raw: u64) -> u64 {
        self.numbering.view(layer, raw)
    }

    /// The view inode number of the entry `name` of `dir` in `layer`, whose raw number is `raw`.
    /// Upper objects made by copy-up carry their origin's number in an xattr.
    fn ino_of(&self, layer: usize, dir: BorrowedFd<'_>, name: &OsStr, kind: Kind, raw: u64) -> u64 {
        if Some(layer) == self.upper {
            if let Ok(Some(v)) = sys::get_xattr(dir, name, crate::format::xattrs::origin(kind)) {
                if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                    return u64::from_le_bytes(b);
                }
            }
        }
        self.tag_ino(layer, raw)
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

    /// Runs `f` on the directory's index, building it first if needed.
    fn with_index<R>(&self, dir: &Node, f: impl FnOnce(&mut DirIndex) -> R) -> FsResult<R> {
        // With `revalidate`, a lower directory that changed since the build makes it stale.
        let stamps = if self.config.revalidate {
            self.lower_stamps(&self.dir_layers(dir)?)
        } else {
            Vec::new()
        };
        {
            let mut st = dir.state.write();
            let ds = st.dir.as_mut().ok_or(Errno::ENOTDIR)?;
            if let (Some(idx), true) = (ds.index.as_mut(), ds.lower_stamps == stamps) {
                idx.touch();
                return Ok(f(idx));
            }
        }
        let layers = self.dir_layers(dir)?;
        let mut built = index::build(&layers, self.upper, &|l, fd, name, kind, raw| {
            self.ino_of(l, fd.as_fd(), name, kind, raw)
        })?;
        built.touch();
        let node = self.nodes.get(dir.ino);
        let r = {
            let mut st = dir.state.write();
            let ds = st.dir.as_mut().ok_or(Errno::ENOTDIR)?;
            // Another thread may have built it meanwhile; theirs is as good as ours.
            if ds.index.is_none() || ds.lower_stamps != stamps {
                if let Some(n) = &node {
                    built.generation = self.index_cache.charge(n, built.len());
                }
                ds.index = Some(built);
                ds.lower_stamps = stamps;
            }
            match ds.index.as_mut() {
                Some(idx) => Ok(f(idx)),
                None => Err(Errno::EIO),
            }
        };
        self.trim_indexes();
        r
    }

    /// Drops least recently used directory indexes while they hold more names than the mount
    /// allows (see `index_cache.rs`).
    fn trim_indexes(&self) {
        self.index_cache.trim(|node, generation| {
            if self.handles.is_open(node.ino) {
                return Verdict::Keep;
            }
            // Never wait: the caller may hold a lock this node's state is behind.
            let Some(mut st) = node.state.try_write() else {
                return Verdict::Keep;
            };
            let Some(ds) = st.dir.as_mut() else {
                return Verdict::Gone;
            };
            match &ds.index {
                Some(idx) if idx.generation == generation => {
                    if idx.take_used() {
                        Verdict::Keep
                    } else {
                        ds.index = None;
                        Verdict::Dropped
                    }
                }
                _ => Verdict::Gone,
            }
        });
    }

    /// Change stamps (ctime) of a directory's lower layer directories.
    fn lower_stamps(&self, layers: &[(usize, Arc<OwnedFd>)]) -> Vec<(i64, u64)> {
        layers
            .iter()
            .filter(|(l, _)| Some(*l) != self.upper)
            .map(|(_, fd)| rustix::fs::fstat(&**fd).map_or((0, 0), |s| (s.st_ctime, s.st_ctime_nsec)))
            .collect()
    }

    fn dir_layers(&self, dir: &Node) -> FsResult<Vec<(usize, Arc<OwnedFd>)>> {
        let st = dir.state.read();
        st.dir.as_ref().map(|d| d.layers.clone()).ok_or(Errno::ENOTDIR)
    }

    /// The upper directory fd of a directory node, if it has one.
    fn upper_dir_fd(&self, dir: &Node) -> Option<Arc<OwnedFd>> {
        let st = dir.state.read();
        let d = st.dir.as_ref()?;
        d.layers
            .first()
            .filter(|(l, _)| Some(*l) == self.upper)
            .map(|(_, fd)| Arc::clone(fd))
    }

    fn slot(&self, dir: &Node, name: &OsStr) -> FsResult<Slot> {
        // Lookups only read the index: take the shared lock when it is already built.
        if let Some(idx) = dir.state.read().dir.as_ref().and_then(|d| d.index.as_ref()) {
            idx.touch();
            return Ok(idx.get(name));
        }
        self.with_index(dir, |idx| idx.get(name))
    }

    /// Finds `name` in directory `parent` and returns its node, adding `lookups` kernel references.
    fn resolve_child(&self, parent: u64, name: &OsStr, lookups: u64) -> FsResult<(Arc<Node>, Attr)> {
        check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        let dir = self.dir_node(parent)?;
        let vis = self.slot(&dir, name)?.vis.ok_or(Errno::ENOENT)?;
        let dir_layers = self.dir_layers(&dir)?;
        let top = layer_fd(&dir_layers, vis.layer).ok_or(Errno::ESTALE)?;
        let st = sys::stat_at(top.as_fd(), name)?;
        let kind = Kind::from_mode(st.st_mode);
        if kind == Kind::File && st.st_nlink > 1 && Some(vis.layer) != self.upper && !self.hardlinks.is_empty() {
            let key = self.hardlink_key(vis.layer, &st);
            if self.hardlinks.holds(key, &st) {
                // Another name of this object was copied up: this name shows the copy too.
                self.link_up(&dir, name, vis.ino, |pdir| self.hardlinks.link_to(key, pdir, name))?;
                return self.resolve_child(parent, name, lookups);
            }
        }
        let mut layers = Vec::new();
        if kind == Kind::Dir {
            // A node we hold for this very directory keeps its layer fds.
            let known = self.nodes.get(vis.ino).and_then(|n| {
                let s = n.state.read();
                let same = s.layer() == vis.layer && s.kind == kind && !s.unlinked;
                same.then(|| s.dir.as_ref().map(|d| d.layers.clone())).flatten()
            });
            layers = match known {
                Some(l) => l,
                None => self.merged_layers(&dir_layers, &vis, name)?,
            };
        }
        let merged = layers.len() > 1;
        let node = self.remember(parent, name, &vis, kind, layers, lookups);
        let mut attr = self.view_attr(vis.ino, &st);
        if merged {
            attr.nlink = 1;
        }
        if Some(vis.layer) == self.upper {
            self.uncount_index_link(&mut attr, &sys::Target::Entry(top.as_fd(), name));
        }
        Ok((node, attr))
    }

    /// The layer directories that the directory `name` (visible as `vis` in a directory merged
    /// from `dir_layers`) merges, top first, ending at the first opaque one.
    fn merged_layers(
        &self,
        dir_layers: &[(usize, Arc<OwnedFd>)],
        vis: &index::Visible,
        name: &OsStr,
    ) -> FsResult<Vec<(usize, Arc<OwnedFd>)>> {
        let mut out = Vec::new();
        for &l in &vis.merge {
            let Some(dfd) = layer_fd(dir_layers, l) else { break };
            let fd = match sys::open_path_dir(dfd.as_fd(), name) {
                Ok(fd) => fd,
                // What the index saw there is no directory now (a changed lower).
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
                    if !out.is_empty() =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            let opaque = markers::dir_marks(fd.as_fd())?.opaque;
            out.push((l, Arc::new(fd)));
            if opaque {
                break;
            }
        }
        Ok(out)
    }

    /// The node of `vis` (found as `parent/name`), from the table or new, with `lookups` more
    /// references.
    fn remember(
        &self,
        parent: u64,
        name: &OsStr,
        vis: &index::Visible,
        kind: Kind,
        layers: Vec<(usize, Arc<OwnedFd>)>,
        lookups: u64,
    ) -> Arc<Node> {
        let make_state = |layers: Vec<(usize, Arc<OwnedFd>)>| {
            NodeState::new(
                parent,
                name,
                kind,
                vis.layer,
                (kind == Kind::Dir).then(|| DirState::new(layers)),
            )
        };
        let mut fresh = Some(layers);
        let (node, created) = self.nodes.get_or_insert(vis.ino, lookups, || {
            Node::new(vis.ino, make_state(fresh.take().unwrap_or_default()))
        });
        if !created {
            let mut s = node.state.write();
            // Only move a node up the stack: after a copy-up, a stale index of another hard-link
            // name may still point at the lower object. But a copy whose every name is gone is
            // no longer what its number shows: a lower name of it, found again, is the lower
            // object (the hard-link index dropped the copy with its last upper name).
            if s.kind != kind || vis.layer < s.layer() || (s.unlinked && vis.layer != s.layer()) {
                *s = make_state(fresh.take().unwrap_or_default());
            } else {
                s.seen_as(parent, name);
            }
        }
        node
    }

    /// Looks up `name` in `parent` for internal use: the node stays in the table (as if the
    /// kernel held it) until the returned pin is dropped, so nested walks cannot drop a node
    /// an outer one still uses.
    pub(crate) fn pin_child(&self, parent: u64, name: &OsStr) -> FsResult<Pin<'_>> {
        let (node, _) = self.resolve_child(parent, name, 1)?;
        Ok(Pin { union: self, node })
    }

    /// Looks up `name` in `parent`; the kernel now holds one more reference to the result.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.resolve_child(parent, name, 1).map(|(_, a)| a)
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.nodes.forget(ino, n);
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.getattr_fh(ino, None)
    }

    /// Attributes of `ino`, asked through the open handle `fh` (fstat): the handle reaches a
    /// file whose names are all gone.
    pub fn getattr_fh(&self, ino: u64, fh: Option<u64>) -> FsResult<Attr> {
        let node = self.node(ino)?;
        let (merged, layer) = {
            let s = node.state.read();
            (s.dir.as_ref().is_some_and(|d| d.layers.len() > 1), s.layer())
        };
        let loc = self.locate(&node, fh)?;
        let st = loc.stat()?;
        let mut a = self.view_attr(node.ino, &st);
        if merged {
            a.nlink = 1;
        }
        if Some(layer) == self.upper {
            self.uncount_index_link(&mut a, &loc.target());
        }
        Ok(a)
    }

    /// The attributes the view shows for `st` under inode number `ino` (owners mapped).
    pub(crate) fn view_attr(&self, ino: u64, st: &rustix::fs::Stat) -> Attr {
        let mut a = Attr::from_stat(ino, st);
        if !self.idmap.is_identity() {
            (a.uid, a.gid) = self.idmap.to_view(a.uid, a.gid);
        }
        a
    }

    /// An upper copy of a multiply-linked lower file has its names in the view counted for it
    /// (see `hardlinks.rs`): the upper holds only those looked up since, plus the index's link.
    fn uncount_index_link(&self, a: &mut Attr, target: &sys::Target<'_>) {
        if a.kind == Kind::File && a.nlink > 1 && !self.hardlinks.is_empty() {
            if let Some(n) = self.hardlinks.view_count(target) {
                a.nlink = n;
            }
        }
    }

    pub(crate) fn attr_of(&self, node: &Node) -> FsResult<Attr> {
        self.getattr_fh(node.ino, None)
    }

    /// The target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        match self.locate(&node, None)? {
            Loc::Entry(dir, name) => Ok(rustix::fs::readlinkat(&*dir, &name, Vec::new())?.into_bytes()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// A name of `node` in a directory the table still holds (the kernel may have forgotten
    /// the directory of the name we saw first, while it still holds another hard link's).
    pub(crate) fn live_name(&self, node: &Node) -> Option<(u64, OsString)> {
        {
            let s = node.state.read();
            if s.unlinked {
                return None;
            }
            if s.parent == node.ino || self.nodes.get(s.parent).is_some() {
                return Some((s.parent, s.name.to_os_string()));
            }
        }
        node.state.write().promote_alias(|p| self.nodes.get(p).is_some())
    }

    /// Where `node`'s visible object is. A file whose names are all gone is reached through
    /// the open handle `fh`, if given.
    pub(crate) fn locate(&self, node: &Node, fh: Option<u64>) -> FsResult<Loc> {
        let (layer, dir_fd) = {
            let s = node.state.read();
            (s.layer(), s.dir_fd())
        };
        if let Some(fd) = dir_fd {
            return Ok(Loc::Dir(fd));
        }
        if let Some((parent, name)) = self.live_name(node) {
            if let Some(dfd) = self
                .nodes
                .get(parent)
                .and_then(|p| self.dir_layers(&p).ok())
                .and_then(|l| layer_fd(&l, layer))
            {
                return Ok(Loc::Entry(dfd, name));
            }
        }
        let open = match fh {
            Some(fh) => self.handles.file(fh).ok(),
            None => self.handles.files_of(node.ino).into_iter().next(),
        };
        open.map(Loc::Open).ok_or(Errno::ENOENT)
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

/// A node referenced by an internal operation; dropping it releases the reference.
pub(crate) struct Pin<'a> {
    union: &'a Union,
    pub node: Arc<Node>,
}

impl std::ops::Deref for Pin<'_> {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.union.nodes.forget(self.node.ino, 1);
    }
}

fn layer_fd(layers: &[(usize, Arc<OwnedFd>)], layer: usize) -> Option<Arc<OwnedFd>> {
    layers.iter().find(|(l, _)| *l == layer).map(|(_, fd)| Arc::clone(fd))
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

/// Opens the workdir's hard-link index for the upper `upper`, logging what had to go.
fn open_hardlink_index(config: &MountConfig, work: &Workdir, upper: &Layer) -> Result<HardlinkIndex, SetupError> {
    let workdir = config.workdir.clone().unwrap_or_default();
    let privileged = sys::has_cap_sys_admin();
    let (index, cleanup) = HardlinkIndex::open(work, upper.root.as_fd(), privileged).map_err(|e| SetupError::Io {
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
            root: Arc::new(fd),
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

/// The owner mappings a mount uses: none when the top layer already carries owners of the view
/// (its root's owner is in a view range and in no layer range). Podman passes its container's
/// mapping along with layers it has shifted to it already; applying it again would show (and
/// store) owners shifted twice.
fn effective_idmap(asked: &IdMap, layers: &[Layer]) -> IdMap {
    if asked.uids.is_empty() && asked.gids.is_empty() {
        return asked.clone();
    }
    // The top lower (after the upper, which the mount made itself, if there is one).
    let top_lower = layers.get(usize::from(layers.len() > 1));
    let Some(st) = top_lower.and_then(|l| rustix::fs::fstat(&*l.root).ok()) else {
        return asked.clone();
    };
    let in_view = asked
        .uids
        .iter()
        .any(|r| st.st_uid >= r.view && st.st_uid - r.view < r.len);
    let in_host = asked
        .uids
        .iter()
        .any(|r| st.st_uid >= r.host && st.st_uid - r.host < r.len);
    if in_view && !in_host {
        tracing::info!(
            "the layers' owners are shifted already (the top layer's root belongs to {}): the uid/gid mappings are not applied again",
            st.st_uid
        );
        return IdMap {
            uids: Vec::new(),
            gids: Vec::new(),
            ..asked.clone()
        };
    }
    asked.clone()
}
