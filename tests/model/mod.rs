//! Shared by the union test crates: a reference model of the merged view, the on-disk side of
//! the tests (writing layers, reading the upper back, snapshots of the lowers) and a driver that
//! runs operations on `unionfs::Union` the way the kernel would through a mount.
//!
//! The model is deliberately naive: the view is a map from path to object, computed once from
//! the layers by [`fold`] (the rules of docs/semantics.md, written independently of `src/union/index.rs`) and then
//! changed with plain POSIX semantics. Nothing in it knows about copy-up, whiteouts or opaque
//! markers beyond the initial fold; that is exactly what the library must make invisible.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

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

// ---- layers ------------------------------------------------------------------------------------

/// One entry of a layer, or of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        xattr: Option<Vec<u8>>,
    },
    Dir {
        mode: u32,
        xattr: Option<Vec<u8>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Layers only: another name of the file at `to` in the same layer.
    HardLink {
        to: PathBuf,
    },
}

impl Node {
    pub fn kind(&self) -> Kind {
        match self {
            Node::File { .. } | Node::HardLink { .. } => Kind::File,
            Node::Dir { .. } => Kind::Dir,
            Node::Symlink { .. } => Kind::Symlink,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }
}

/// A layer: relative path -> entry. Whiteouts and opaque markers are written as their OCI
/// names (`.wh.NAME`, `.wh..wh..opq`, empty files); [`write_layer`] may encode them the overlay
/// way instead.
pub type Layer = BTreeMap<PathBuf, Node>;

/// How [`write_layer`] puts whiteouts and opaque markers on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `.wh.NAME` files and `.wh..wh..opq`.
    Oci,
    /// Char device 0/0 and `trusted.overlay.opaque=y` (needs root).
    Overlay,
    /// What a kernel overlay nested in a layer leaves: whiteouts as empty files carrying
    /// `user.overlay.whiteout` in a directory marked `user.overlay.opaque=x`; opaque
    /// directories as `user.overlay.opaque=y` (or the OCI marker where `x` is needed).
    XattrWhiteouts,
}

pub fn file(data: &[u8]) -> Node {
    Node::File {
        data: data.to_vec(),
        mode: 0o644,
        xattr: None,
    }
}

pub fn dir() -> Node {
    Node::Dir {
        mode: 0o755,
        xattr: None,
    }
}

pub fn symlink(target: &str) -> Node {
    Node::Symlink {
        target: target.as_bytes().to_vec(),
    }
}

/// The whiteout entry for `path` (`dir/.wh.name`).
pub fn whiteout_path(path: &Path) -> PathBuf {
    let (dir, name) = split(path);
    let mut n = OsString::from(WH);
    n.push(name);
    dir.join(n)
}

/// The opaque marker entry of `dir`.
pub fn opaque_path(dir: &Path) -> PathBuf {
    dir.join(OPQ)
}

/// A layer from `(path, node)` pairs (whiteouts and opaque markers by their OCI names).
pub fn layer(entries: &[(&str, Node)]) -> Layer {
    entries.iter().map(|(p, n)| (PathBuf::from(p), n.clone())).collect()
}

/// `(parent, last component)`; the parent of a top-level name is the empty path (the root).
pub fn split(p: &Path) -> (&Path, &OsStr) {
    (p.parent().unwrap_or(Path::new("")), p.file_name().unwrap_or_default())
}

/// Whether a name may not be created through the view (docs/semantics.md: it would read as a whiteout).
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH.as_bytes())
}

fn children<'a>(layer: &'a Layer, dir: &'a Path) -> impl Iterator<Item = &'a OsStr> + 'a {
    layer
        .keys()
        .filter(move |k| k.parent() == Some(dir))
        .filter_map(|k| k.file_name())
}

/// The result of folding layers into a view.
#[derive(Debug, Default)]
pub struct Fold {
    /// Visible path -> (layer holding the visible entry, its path there with hard links resolved).
    pub entries: BTreeMap<PathBuf, (usize, PathBuf)>,
    /// Visible directory (the root is "") -> the layers merged into it, top first.
    pub dirs: BTreeMap<PathBuf, Vec<usize>>,
}

/// Folds layers (top first) into the view, by the rules of docs/semantics.md: the topmost entry wins; a `.wh.N`
/// hides `N` in the layers below its own only; a directory merges with same-named directories
/// below until one is opaque, a lower non-directory or a whiteout ends the merge.
pub fn fold(layers: &[Layer]) -> Fold {
    let mut roots = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        roots.push(i);
        if l.contains_key(Path::new(OPQ)) {
            break;
        }
    }
    let mut f = Fold::default();
    fold_dir(layers, Path::new(""), roots, &mut f);
    f
}

fn fold_dir(layers: &[Layer], dir: &Path, sources: Vec<usize>, f: &mut Fold) {
    let mut names = BTreeSet::new();
    for &l in &sources {
        names.extend(
            children(&layers[l], dir)
                .filter(|n| !is_reserved(n))
                .map(OsStr::to_os_string),
        );
    }
    for name in names {
        let path = dir.join(&name);
        let wh = whiteout_path(&path);
        let mut top: Option<usize> = None;
        let mut merge = Vec::new();
        for &l in &sources {
            let layer = &layers[l];
            match (top, layer.get(&path)) {
                (None, Some(n)) => {
                    top = Some(l);
                    if !n.is_dir() {
                        break;
                    }
                    merge.push(l);
                    if layer.contains_key(&opaque_path(&path)) {
                        break;
                    }
                }
                (Some(_), Some(n)) if n.is_dir() => {
                    merge.push(l);
                    if layer.contains_key(&opaque_path(&path)) {
                        break;
                    }
                }
                // A lower non-directory below a directory ends the merge.
                (Some(_), Some(_)) => break,
                (_, None) => {}
            }
            // Same-layer entry stays visible; everything below is hidden.
            if layer.contains_key(&wh) {
                break;
            }
        }
        let Some(l) = top else { continue };
        let canonical = match &layers[l][&path] {
            Node::HardLink { to } => to.clone(),
            _ => path.clone(),
        };
        f.entries.insert(path.clone(), (l, canonical));
        if !merge.is_empty() {
            fold_dir(layers, &path, merge, f);
        }
    }
    f.dirs.insert(dir.to_path_buf(), sources);
}

/// What the folded layers show: path -> entry (hard links resolved, no identities).
pub fn fold_contents(layers: &[Layer]) -> BTreeMap<PathBuf, Node> {
    fold(layers)
        .entries
        .into_iter()
        .map(|(p, (l, c))| (p, layers[l][&c].clone()))
        .collect()
}

// ---- the model of the view ---------------------------------------------------------------------

/// Identity of an object in the model (what the view's inode number must follow).
pub type ObjId = u64;

/// Why an operation fails in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fail {
    pub errno: i32,
    /// The kernel answers this itself (from its dentries) before sending the operation to the
    /// filesystem, so through a mount the library's own answer is never seen.
    pub vfs: bool,
}

pub type Outcome = Result<(), Fail>;

fn vfs(errno: i32) -> Fail {
    Fail { errno, vfs: true }
}

fn fs_err(errno: i32) -> Fail {
    Fail { errno, vfs: false }
}

/// The merged view as a plain tree: path -> object, objects shared by hard links.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub names: BTreeMap<PathBuf, ObjId>,
    pub objs: BTreeMap<ObjId, Node>,
    /// Open write handles (slot -> object): an open object lives on without a name.
    pub handles: BTreeMap<u8, ObjId>,
    /// Objects up to this id come from the lowers.
    pub lower_ids: ObjId,
    /// Objects from the lowers whose layer has more than one name for them (visible or not).
    pub linked_in_lower: BTreeSet<ObjId>,
    /// Objects whose mtime the view has moved: data written or truncated, or (directories)
    /// an entry added, removed or renamed.
    pub modified: BTreeSet<ObjId>,
    /// Owner (uid, gid) of every object.
    pub owners: BTreeMap<ObjId, (u32, u32)>,
    /// Who creates new objects (the callers' uid and gid).
    pub creator: (u32, u32),
    next: ObjId,
}

/// The effective uid and gid of this process: owner of the layers the fixture writes.
pub fn process_owner() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

impl View {
    /// The view of `layers` (top first) before any change.
    pub fn from_layers(layers: &[Layer]) -> View {
        let f = fold(layers);
        let mut v = View {
            creator: process_owner(),
            ..View::default()
        };
        let mut ids: HashMap<(usize, PathBuf), ObjId> = HashMap::new();
        for (path, (l, canonical)) in f.entries {
            let node = layers[l][&canonical].clone();
            let linked = layers[l]
                .values()
                .any(|n| matches!(n, Node::HardLink { to } if *to == canonical));
            let id = *ids
                .entry((l, canonical))
                .or_insert_with(|| v.alloc(node, process_owner()));
            if linked {
                v.linked_in_lower.insert(id);
            }
            v.names.insert(path, id);
        }
        v.lower_ids = v.next;
        v
    }

    /// The parent directory of `p` gets a new mtime (the root is not tracked).
    fn touch_parent(&mut self, p: &Path) {
        if let Some(&id) = self.names.get(split(p).0) {
            self.modified.insert(id);
        }
    }

    fn alloc(&mut self, node: Node, owner: (u32, u32)) -> ObjId {
        self.next += 1;
        self.objs.insert(self.next, node);
        self.owners.insert(self.next, owner);
        self.next
    }

    /// A new object at `p`: owned by the creator, with the group of a setgid parent.
    fn create(&mut self, p: &Path, node: Node) {
        let dir = split(p).0;
        let gid = if self.mode_of_dir(dir) & 0o2000 != 0 {
            self.names.get(dir).map_or(process_owner().1, |id| self.owners[id].1)
        } else {
            self.creator.1
        };
        let id = self.alloc(node, (self.creator.0, gid));
        self.names.insert(p.to_path_buf(), id);
    }

    /// Path -> what it shows.
    pub fn contents(&self) -> BTreeMap<PathBuf, Node> {
        self.names
            .iter()
            .map(|(p, id)| (p.clone(), self.objs[id].clone()))
            .collect()
    }

    pub fn get(&self, p: &Path) -> Option<&Node> {
        self.names.get(p).map(|id| &self.objs[id])
    }

    fn get_mut(&mut self, id: ObjId) -> &mut Node {
        self.objs.get_mut(&id).expect("live object")
    }

    fn has_children(&self, p: &Path) -> bool {
        self.names.keys().any(|k| k.parent() == Some(p))
    }

    fn mode_of_dir(&self, p: &Path) -> u32 {
        match self.get(p) {
            Some(Node::Dir { mode, .. }) => *mode,
            // The root: the upper's root directory, made 0755 by the fixture.
            _ => 0o755,
        }
    }

    /// Drops objects no name and no handle refers to any more.
    fn gc(&mut self) {
        let live: BTreeSet<ObjId> = self.names.values().chain(self.handles.values()).copied().collect();
        self.objs.retain(|id, _| live.contains(id));
        self.owners.retain(|id, _| live.contains(id));
    }

    /// Path walk to the directory `dir`, as the kernel does it: every component must exist
    /// (the filesystem's lookup says ENOENT) and be a directory (the kernel says ENOTDIR).
    pub fn walk_dir(&self, dir: &Path) -> Outcome {
        let mut cur = PathBuf::new();
        for c in dir.components() {
            cur.push(c);
            match self.get(&cur) {
                None => return Err(fs_err(libc::ENOENT)),
                Some(n) if n.is_dir() => {}
                Some(_) => return Err(fs_err(libc::ENOTDIR)),
            }
        }
        Ok(())
    }

    /// Path walk to an existing object.
    pub fn walk(&self, p: &Path) -> Result<ObjId, Fail> {
        self.walk_dir(split(p).0)?;
        self.names.get(p).copied().ok_or(fs_err(libc::ENOENT))
    }

    /// Checks shared by every operation that makes a new name.
    fn check_new_name(&mut self, p: &Path) -> Outcome {
        let (dir, name) = split(p);
        self.walk_dir(dir)?;
        if self.names.contains_key(p) {
            return Err(vfs(libc::EEXIST));
        }
        if is_reserved(name) {
            return Err(fs_err(libc::EINVAL));
        }
        self.touch_parent(p);
        Ok(())
    }

    /// `open(p, O_CREAT | O_EXCL | O_WRONLY, mode)`, write `data`, close.
    pub fn create_file(&mut self, p: &Path, mode: u32, data: &[u8]) -> Outcome {
        self.check_new_name(p)?;
        let node = Node::File {
            data: data.to_vec(),
            mode: mode & 0o7777,
            xattr: None,
        };
        self.create(p, node);
        Ok(())
    }

    /// The file at `p` for a data change: directories and symlinks are refused the way
    /// `open(O_WRONLY | O_NOFOLLOW)` refuses them.
    fn file_id(&self, p: &Path) -> Result<ObjId, Fail> {
        let id = self.walk(p)?;
        match &self.objs[&id] {
            Node::File { .. } => Ok(id),
            Node::Dir { .. } => Err(vfs(libc::EISDIR)),
            _ => Err(vfs(libc::ELOOP)),
        }
    }

    /// `pwrite(data, offset)` on the file `id`.
    fn write_at(&mut self, id: ObjId, offset: u64, bytes: &[u8]) {
        // A zero-length write changes nothing, not even at an offset past the end.
        if bytes.is_empty() {
            return;
        }
        self.modified.insert(id);
        if let Node::File { data, .. } = self.get_mut(id) {
            let (start, end) = (offset as usize, offset as usize + bytes.len());
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
    }

    /// `ftruncate(len)` on the file `id`.
    fn truncate_at(&mut self, id: ObjId, len: u64) {
        self.modified.insert(id);
        if let Node::File { data, .. } = self.get_mut(id) {
            data.resize(len as usize, 0);
        }
    }

    /// `pwrite(p, data, offset)` through a fresh `O_WRONLY` open.
    pub fn write_file(&mut self, p: &Path, offset: u64, bytes: &[u8]) -> Outcome {
        let id = self.file_id(p)?;
        self.write_at(id, offset, bytes);
        Ok(())
    }

    /// `truncate(p, len)`.
    pub fn truncate(&mut self, p: &Path, len: u64) -> Outcome {
        let id = self.file_id(p)?;
        self.truncate_at(id, len);
        Ok(())
    }

    /// `mkdir(p, mode)`: the kernel keeps only the permission and sticky bits of `mode`; a new
    /// directory in a setgid directory inherits the setgid bit.
    pub fn mkdir(&mut self, p: &Path, mode: u32) -> Outcome {
        self.check_new_name(p)?;
        let sgid = self.mode_of_dir(split(p).0) & 0o2000;
        let node = Node::Dir {
            mode: (mode & 0o1777) | sgid,
            xattr: None,
        };
        self.create(p, node);
        Ok(())
    }

    /// `symlink(target, p)`.
    pub fn symlink(&mut self, p: &Path, target: &[u8]) -> Outcome {
        self.check_new_name(p)?;
        self.create(
            p,
            Node::Symlink {
                target: target.to_vec(),
            },
        );
        Ok(())
    }

    /// `link(from, to)` (the source is not followed if it is a symlink).
    pub fn link(&mut self, from: &Path, to: &Path) -> Outcome {
        let id = self.walk(from)?;
        let (dir, name) = split(to);
        self.walk_dir(dir)?;
        if self.names.contains_key(to) {
            return Err(vfs(libc::EEXIST));
        }
        if self.objs[&id].is_dir() {
            return Err(vfs(libc::EPERM));
        }
        if is_reserved(name) {
            return Err(fs_err(libc::EINVAL));
        }
        self.touch_parent(to);
        self.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    /// `unlink(p)`.
    pub fn unlink(&mut self, p: &Path) -> Outcome {
        self.walk_dir(split(p).0)?;
        match self.get(p) {
            None => return Err(vfs(libc::ENOENT)),
            Some(n) if n.is_dir() => return Err(vfs(libc::EISDIR)),
            Some(_) => {}
        }
        self.touch_parent(p);
        self.names.remove(p);
        self.gc();
        Ok(())
    }

    /// `rmdir(p)`.
    pub fn rmdir(&mut self, p: &Path) -> Outcome {
        self.walk_dir(split(p).0)?;
        match self.get(p) {
            None => return Err(vfs(libc::ENOENT)),
            Some(n) if !n.is_dir() => return Err(vfs(libc::ENOTDIR)),
            Some(_) => {}
        }
        if self.has_children(p) {
            return Err(fs_err(libc::ENOTEMPTY));
        }
        self.touch_parent(p);
        self.names.remove(p);
        self.gc();
        Ok(())
    }

    /// `renameat2(a, b, flags)`, with the checks in the order Linux makes them
    /// (`do_renameat2`, then `vfs_rename`, then the filesystem).
    pub fn rename(&mut self, a: &Path, b: &Path, flags: u32) -> Outcome {
        let (pa, _) = split(a);
        let (pb, nb) = split(b);
        self.walk_dir(pa)?;
        self.walk_dir(pb)?;
        let exchange = flags & RENAME_EXCHANGE != 0;
        let src = *self.names.get(a).ok_or(vfs(libc::ENOENT))?;
        let dst = self.names.get(b).copied();
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(vfs(libc::EEXIST));
        }
        if exchange && dst.is_none() {
            return Err(vfs(libc::ENOENT));
        }
        // The source may not be an ancestor of the target...
        if pb.starts_with(a) {
            return Err(vfs(libc::EINVAL));
        }
        // ...nor the target one of the source.
        if pa.starts_with(b) {
            return Err(vfs(if exchange { libc::EINVAL } else { libc::ENOTEMPTY }));
        }
        // Two names of one object: nothing happens.
        if dst == Some(src) {
            return Ok(());
        }
        if let (Some(d), false) = (dst, exchange) {
            match (self.objs[&src].is_dir(), self.objs[&d].is_dir()) {
                (true, false) => return Err(vfs(libc::ENOTDIR)),
                (false, true) => return Err(vfs(libc::EISDIR)),
                (true, true) if self.has_children(b) => return Err(fs_err(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        if is_reserved(nb) {
            return Err(fs_err(libc::EINVAL));
        }
        let take = |names: &mut BTreeMap<PathBuf, ObjId>, root: &Path| -> Vec<(PathBuf, ObjId)> {
            let keys: Vec<PathBuf> = names.keys().filter(|k| k.starts_with(root)).cloned().collect();
            keys.into_iter()
                .map(|k| {
                    let id = names.remove(&k).expect("listed key");
                    (k.strip_prefix(root).expect("under root").to_path_buf(), id)
                })
                .collect()
        };
        self.touch_parent(a);
        self.touch_parent(b);
        let moved = take(&mut self.names, a);
        let replaced = take(&mut self.names, b);
        for (rel, id) in moved {
            self.names.insert(join_rel(b, &rel), id);
        }
        if exchange {
            for (rel, id) in replaced {
                self.names.insert(join_rel(a, &rel), id);
            }
        }
        self.gc();
        Ok(())
    }

    /// `fchmodat(p, mode, AT_SYMLINK_NOFOLLOW)`: symlinks have no mode of their own.
    pub fn chmod(&mut self, p: &Path, new: u32) -> Outcome {
        let id = self.walk(p)?;
        match self.get_mut(id) {
            Node::File { mode, .. } | Node::Dir { mode, .. } => *mode = new & 0o7777,
            _ => return Err(fs_err(libc::ENOTSUP)),
        }
        Ok(())
    }

    /// `lsetxattr(p, "user.x", value)`: user xattrs exist on files and directories only.
    pub fn set_xattr(&mut self, p: &Path, value: &[u8]) -> Outcome {
        let id = self.walk(p)?;
        match self.get_mut(id) {
            Node::File { xattr, .. } | Node::Dir { xattr, .. } => *xattr = Some(value.to_vec()),
            _ => return Err(fs_err(libc::EPERM)),
        }
        Ok(())
    }

    /// `lremovexattr(p, "user.x")`: ENODATA where there is none (symlinks never have one).
    pub fn remove_xattr(&mut self, p: &Path) -> Outcome {
        let id = self.walk(p)?;
        match self.get_mut(id) {
            Node::File { xattr, .. } | Node::Dir { xattr, .. } if xattr.is_some() => *xattr = None,
            _ => return Err(fs_err(libc::ENODATA)),
        }
        Ok(())
    }

    /// `open(p, O_WRONLY)` kept open in `slot` (closing what the slot held before).
    pub fn open_write(&mut self, slot: u8, p: &Path) -> Outcome {
        self.close(slot);
        let id = self.file_id(p)?;
        self.handles.insert(slot, id);
        Ok(())
    }

    /// `pwrite` on the handle in `slot` (nothing if the slot is empty): lands on the object
    /// even if it has no name any more.
    pub fn write_handle(&mut self, slot: u8, offset: u64, bytes: &[u8]) -> Outcome {
        if let Some(&id) = self.handles.get(&slot) {
            self.write_at(id, offset, bytes);
        }
        Ok(())
    }

    /// `ftruncate` on the handle in `slot` (nothing if the slot is empty).
    pub fn truncate_handle(&mut self, slot: u8, len: u64) -> Outcome {
        if let Some(&id) = self.handles.get(&slot) {
            self.truncate_at(id, len);
        }
        Ok(())
    }

    /// `close` of the handle in `slot`, if any.
    pub fn close(&mut self, slot: u8) {
        self.handles.remove(&slot);
        self.gc();
    }

    /// Every handle closed (before an unmount).
    pub fn close_all(&mut self) {
        self.handles.clear();
        self.gc();
    }
}

fn join_rel(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

/// Keeps model identities and view inode numbers in one-to-one correspondence for the whole
/// run: an object keeps its number (copy-up, rename, remount), hard links share it, and two
/// live objects never share one.
#[derive(Debug, Default)]
pub struct Identity {
    by_id: HashMap<ObjId, u64>,
    by_ino: HashMap<u64, ObjId>,
}

impl Identity {
    /// Forgets objects that no longer exist (their numbers may be reused).
    pub fn retain_live(&mut self, view: &View) {
        self.by_id.retain(|id, _| view.objs.contains_key(id));
        self.by_ino.retain(|_, id| view.objs.contains_key(id));
    }

    pub fn check(&mut self, path: &Path, id: ObjId, ino: u64) -> Result<(), String> {
        if let Some(&known) = self.by_id.get(&id) {
            if known != ino {
                return Err(format!(
                    "{}: inode number changed from {known} to {ino}",
                    path.display()
                ));
            }
            return Ok(());
        }
        if let Some(other) = self.by_ino.get(&ino) {
            return Err(format!(
                "{}: inode number {ino} already belongs to another object (model ids {other} and {id})",
                path.display()
            ));
        }
        self.by_id.insert(id, ino);
        self.by_ino.insert(ino, id);
        Ok(())
    }
}

/// Compares what the library shows with the model, entry by entry, and checks identities.
pub fn compare_view(view: &View, seen: &BTreeMap<PathBuf, Seen>, ids: &mut Identity) -> Result<(), String> {
    let want = view.contents();
    let got: BTreeMap<PathBuf, Node> = seen.iter().map(|(p, s)| (p.clone(), s.node.clone())).collect();
    diff_trees("model", &want, "union", &got)?;
    for (p, id) in &view.names {
        ids.check(p, *id, seen[p].ino)?;
        if seen[p].owner != view.owners[id] {
            return Err(format!(
                "{}: owner {:?}, want {:?}",
                p.display(),
                seen[p].owner,
                view.owners[id]
            ));
        }
    }
    Ok(())
}

/// Which objects [`check_mtimes`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtimes {
    /// Files and symlinks.
    NonDirs,
    /// Directories as well.
    All,
}

/// Objects from the lowers that the view never modified show the lower's mtime: copy-up (for
/// chmod, xattrs, links, renames, or as the parent of something copied up) copies times.
pub fn check_mtimes(view: &View, seen: &BTreeMap<PathBuf, Seen>, which: Mtimes) -> Result<(), String> {
    let lower = SystemTime::UNIX_EPOCH + Duration::from_secs(LOWER_TIME as u64);
    for (p, id) in &view.names {
        let obj = &view.objs[id];
        let skip = *id > view.lower_ids || view.modified.contains(id) || (obj.is_dir() && which == Mtimes::NonDirs);
        if skip {
            continue;
        }
        let got = seen[p].mtime;
        if got != lower {
            let secs = got
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            return Err(format!(
                "{}: mtime {secs}, but the view never changed this {:?} (lower mtime {LOWER_TIME})",
                p.display(),
                obj.kind()
            ));
        }
    }
    Ok(())
}

/// Ok if equal, else a readable list of the differing paths.
pub fn diff_trees(
    a_name: &str,
    a: &BTreeMap<PathBuf, Node>,
    b_name: &str,
    b: &BTreeMap<PathBuf, Node>,
) -> Result<(), String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for p in paths {
        match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push(format!("  {}: {a_name} {x:?}, {b_name} {y:?}", p.display())),
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(format!("views differ:\n{}", out.join("\n")))
    }
}

// ---- on disk -----------------------------------------------------------------------------------

fn set_xattr_path(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// Reads one xattr without following a symlink; `None` if absent.
pub fn get_xattr_path(path: &Path, name: &str) -> Option<Vec<u8>> {
    let len = rustix::fs::lgetxattr_query(path, name).ok()?;
    let mut buf = vec![0u8; len];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Every xattr of an entry (not following symlinks), sorted.
pub fn all_xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let Ok(len) = rustix::fs::llistxattr_query(path) else {
        return BTreeMap::new();
    };
    let mut buf = vec![0u8; len];
    let n = rustix::fs::llistxattr(path, &mut buf[..]).unwrap_or(0);
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let name = OsString::from_vec(s.to_vec());
            let v = get_xattr_path(path, &name.to_string_lossy()).unwrap_or_default();
            (name, v)
        })
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `layer` below `root` (which must not exist), then sets every time stamp to
/// [`LOWER_TIME`] so that any access without `O_NOATIME` would show in the atime (relatime
/// updates an atime not newer than the mtime).
pub fn write_layer(root: &Path, layer: &Layer, enc: Encoding) {
    fs::create_dir(root).expect("create layer root");
    chmod(root, 0o755);
    let overlay = enc == Encoding::Overlay;
    let xattrs = enc == Encoding::XattrWhiteouts;
    // `.wh.N` that can be written at `N` itself (no entry `N` in this layer).
    let hidden_name = |p: &Path| -> Option<PathBuf> {
        let (dir, name) = split(p);
        if !is_reserved(name) || name == OPQ {
            return None;
        }
        let hidden = dir.join(OsStr::from_bytes(&name.as_bytes()[WH.len()..]));
        (!layer.contains_key(&hidden)).then_some(hidden)
    };
    let has_xattr_whiteouts = |dir: &Path| {
        layer
            .keys()
            .any(|k| k.parent() == Some(dir) && hidden_name(k).is_some())
    };
    // BTreeMap order puts every directory before its entries; hard links come last, when
    // their targets exist.
    for (p, node) in layer {
        let full = root.join(p);
        let (dir, name) = split(p);
        match node {
            Node::File { .. } if overlay && name == OPQ => {
                set_xattr_path(&root.join(dir), "trusted.overlay.opaque", b"y");
            }
            Node::File { .. } if xattrs && name == OPQ && !has_xattr_whiteouts(dir) => {
                set_xattr_path(&root.join(dir), "user.overlay.opaque", b"y");
            }
            Node::File { .. } if overlay && hidden_name(p).is_some() => {
                let target = root.join(hidden_name(p).unwrap_or_default());
                rustix::fs::mknodat(rustix::fs::CWD, &target, FileType::CharacterDevice, Mode::empty(), 0)
                    .unwrap_or_else(|e| panic!("mknod {}: {e}", target.display()));
            }
            Node::File { .. } if xattrs && hidden_name(p).is_some() => {
                let target = root.join(hidden_name(p).unwrap_or_default());
                fs::write(&target, b"").expect("write xattr whiteout");
                set_xattr_path(&target, "user.overlay.whiteout", b"y");
                set_xattr_path(&root.join(dir), "user.overlay.opaque", b"x");
            }
            Node::File { data, mode, xattr } => {
                fs::write(&full, data).expect("write lower file");
                if let Some(v) = xattr {
                    set_xattr_path(&full, XATTR, v);
                }
                chmod(&full, *mode);
            }
            Node::Dir { mode, xattr } => {
                fs::create_dir(&full).expect("create lower dir");
                if let Some(v) = xattr {
                    set_xattr_path(&full, XATTR, v);
                }
                chmod(&full, *mode);
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &full).expect("create lower symlink")
            }
            Node::HardLink { .. } => {}
        }
    }
    for (p, node) in layer {
        if let Node::HardLink { to } = node {
            fs::hard_link(root.join(to), root.join(p)).expect("create lower hard link");
        }
    }
    let t = Timespec {
        tv_sec: LOWER_TIME,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    for p in walk_disk(root) {
        rustix::fs::utimensat(rustix::fs::CWD, root.join(&p), &times, AtFlags::SYMLINK_NOFOLLOW)
            .expect("set lower times");
    }
}

/// Every path below `root` ("" for the root itself), parents first.
fn walk_disk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() {
        let full = root.join(&out[i]);
        if fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
            let mut names: Vec<OsString> = fs::read_dir(&full)
                .expect("read dir")
                .map(|e| e.expect("dir entry").file_name())
                .collect();
            names.sort();
            for n in names {
                out.push(out[i].join(n));
            }
        }
        i += 1;
    }
    out
}

fn open_noatime(dir: &OwnedFd, name: &OsStr, dirflag: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::NOATIME | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if dirflag {
        flags |= OFlags::DIRECTORY;
    }
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

/// Which access times [`snapshot`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atimes {
    /// Files and directories (never symlinks: reading a link target always moves its atime).
    FilesAndDirs,
    /// Files only.
    Files,
}

/// A description of everything under `root` that the union must never change: names, types,
/// data, link targets, modes, owners, link counts, inode numbers, xattrs and times.
/// Read with `O_NOATIME`, so taking it changes nothing.
pub fn snapshot(root: &Path, atimes: Atimes) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let top = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOATIME | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open layer root");
    let st = rustix::fs::fstat(&top).expect("stat layer root");
    out.insert(PathBuf::new(), describe(&st, root, String::new(), atimes));
    snapshot_dir(root, Path::new(""), &top, atimes, &mut out);
    out
}

fn snapshot_dir(root: &Path, rel: &Path, dir: &OwnedFd, atimes: Atimes, out: &mut BTreeMap<PathBuf, String>) {
    let d = rustix::fs::Dir::new(rustix::io::dup(dir).expect("dup")).expect("read dir");
    let mut names = Vec::new();
    for e in d {
        let e = e.expect("dir entry");
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    names.sort();
    for n in names {
        let st = rustix::fs::statat(dir, &n, AtFlags::SYMLINK_NOFOLLOW).expect("stat");
        let p = rel.join(&n);
        let full = root.join(&p);
        let content = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let f = open_noatime(dir, &n, false).expect("open file");
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut fs::File::from(f), &mut data).expect("read file");
                format!("{data:?}")
            }
            FileType::Symlink => format!("{:?}", rustix::fs::readlinkat(dir, &n, Vec::new()).expect("readlink")),
            FileType::Directory => {
                let sub = open_noatime(dir, &n, true).expect("open dir");
                snapshot_dir(root, &p, &sub, atimes, out);
                String::new()
            }
            _ => String::new(),
        };
        out.insert(p, describe(&st, &full, content, atimes));
    }
}

fn describe(st: &rustix::fs::Stat, full: &Path, content: String, atimes: Atimes) -> String {
    let keep = match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => false,
        FileType::Directory => atimes == Atimes::FilesAndDirs,
        _ => true,
    };
    let atime = if keep {
        format!("{}.{}", st.st_atime, st.st_atime_nsec)
    } else {
        "-".to_string()
    };
    format!(
        "mode={:o} uid={} gid={} ino={} nlink={} size={} rdev={} atime={atime} mtime={}.{} ctime={}.{} xattrs={:?} content={content}",
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_ino,
        st.st_nlink,
        st.st_size,
        st.st_rdev,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
        all_xattrs(full),
    )
}

/// Differences between two snapshots, one line per path.
pub fn diff_snapshots(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    paths
        .into_iter()
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| {
            format!(
                "  {:?}: before {:?}\n  {:?}: after  {:?}",
                p,
                before.get(p),
                p,
                after.get(p)
            )
        })
        .collect()
}

/// Reads a layer (the upper) back from disk in the OCI naming of [`Layer`]: a char device 0/0
/// becomes `.wh.NAME`, an opaque xattr becomes `.wh..wh..opq`. Also returns every way the
/// layer breaks the on-disk format of docs/semantics.md.
pub fn read_layer(root: &Path) -> (Layer, Vec<String>) {
    let mut layer = Layer::new();
    let mut problems = Vec::new();
    let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
    let is_opaque = |p: &Path| {
        OPAQUE_XATTRS
            .iter()
            .any(|x| get_xattr_path(p, x).as_deref() == Some(b"y"))
    };
    if is_opaque(root) {
        layer.insert(PathBuf::from(OPQ), file(b""));
    }
    for p in walk_disk(root).into_iter().skip(1) {
        let full = root.join(&p);
        let md = fs::symlink_metadata(&full).expect("stat upper entry");
        let (dir, name) = split(&p);
        let mode = md.mode() & 0o7777;
        let xattr = get_xattr_path(&full, XATTR);
        let ft = FileType::from_raw_mode(md.mode());
        if is_reserved(name) && (ft != FileType::RegularFile || md.len() != 0) {
            problems.push(format!(
                "{}: a {ft:?} of size {} with a whiteout name",
                p.display(),
                md.len()
            ));
        }
        let node = match ft {
            FileType::Directory => {
                if is_opaque(&full) {
                    layer.insert(opaque_path(&p), file(b""));
                }
                Node::Dir { mode, xattr }
            }
            FileType::RegularFile => {
                if md.nlink() > 1 {
                    if let Some(first) = inodes.get(&md.ino()) {
                        layer.insert(p.clone(), Node::HardLink { to: first.clone() });
                        continue;
                    }
                    inodes.insert(md.ino(), p.clone());
                }
                Node::File {
                    data: fs::read(&full).expect("read upper file"),
                    mode,
                    xattr,
                }
            }
            FileType::Symlink => Node::Symlink {
                target: fs::read_link(&full).expect("readlink").into_os_string().into_vec(),
            },
            FileType::CharacterDevice if md.rdev() == 0 => {
                let mut wh = OsString::from(WH);
                wh.push(name);
                layer.insert(dir.join(wh), file(b""));
                continue;
            }
            other => {
                problems.push(format!("{}: unexpected {other:?} in the upper", p.display()));
                continue;
            }
        };
        layer.insert(p, node);
    }
    (layer, problems)
}

/// Whiteouts in the upper (layer 0 of `layers`) that hide nothing: no lower layer merged into
/// their directory has that name (docs/semantics.md: "only in the upper and nothing below: plain unlink";
/// "no whiteouts inside an opaque directory").
pub fn redundant_whiteouts(layers: &[Layer]) -> Vec<String> {
    let f = fold(layers);
    let mut out = Vec::new();
    for p in layers[0].keys() {
        let (dir, name) = split(p);
        if !is_reserved(name) || name == OPQ {
            continue;
        }
        let hidden = dir.join(OsStr::from_bytes(&name.as_bytes()[WH.len()..]));
        let below = f.dirs.get(dir).map(|v| &v[1..]).unwrap_or(&[]);
        if !below
            .iter()
            .any(|&l| layers[l].contains_key(&hidden) || layers[l].contains_key(p))
        {
            out.push(format!("{}: whiteout with nothing below it to hide", hidden.display()));
        }
    }
    out
}

// ---- the fixture and the driver ----------------------------------------------------------------

/// Layer directories in a fresh temporary directory.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    /// Top first.
    pub lowers: Vec<PathBuf>,
    pub layers: Vec<Layer>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// How the union writes whiteouts and opaque markers in the upper.
    pub style: WhiteoutStyle,
}

impl Fixture {
    /// Writes `lowers` (top first) and makes an empty upper.
    pub fn new(lowers: &[(Layer, Encoding)]) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut paths = Vec::new();
        for (i, (l, enc)) in lowers.iter().enumerate() {
            let p = tmp.path().join(format!("lower{i}"));
            write_layer(&p, l, *enc);
            paths.push(p);
        }
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).expect("create upper");
        chmod(&upper, 0o755);
        let work = tmp.path().join("work");
        Fixture {
            style: WhiteoutStyle::Overlay,
            lowers: paths,
            layers: lowers.iter().map(|(l, _)| l.clone()).collect(),
            upper,
            work,
            tmp,
        }
    }

    pub fn config(&self) -> MountConfig {
        let mut cfg = MountConfig::new(self.lowers.clone(), Some(self.upper.clone()));
        cfg.workdir = Some(self.work.clone());
        cfg.whiteouts = self.style;
        cfg
    }

    /// The same union with its own workdir, to look at the layers as a remount would while the
    /// main union is still alive.
    pub fn second_config(&self) -> MountConfig {
        let mut cfg = self.config();
        cfg.workdir = Some(self.tmp.path().join("work-check"));
        cfg
    }

    pub fn mount(&self) -> Driver {
        Driver::new(&self.config())
    }

    pub fn snapshot_lowers(&self, atimes: Atimes) -> Vec<BTreeMap<PathBuf, String>> {
        self.lowers.iter().map(|l| snapshot(l, atimes)).collect()
    }

    /// The upper as a layer, plus its format problems.
    pub fn read_upper(&self) -> (Layer, Vec<String>) {
        read_layer(&self.upper)
    }

    /// Checks the upper on its own: valid encodings, no useless whiteouts, and folded over the
    /// lowers by the model's rules it shows `want`.
    pub fn check_upper(&self, want: &BTreeMap<PathBuf, Node>) -> Result<(), String> {
        let (upper, mut problems) = self.read_upper();
        let mut all = vec![upper];
        all.extend(self.layers.iter().cloned());
        problems.extend(redundant_whiteouts(&all));
        if !problems.is_empty() {
            return Err(format!("upper layer format:\n  {}", problems.join("\n  ")));
        }
        diff_trees("model", want, "upper+lowers on disk", &fold_contents(&all))
    }

    /// Leftovers in our part of the workdir (nothing may stay there between operations).
    pub fn workdir_leftovers(&self) -> Vec<OsString> {
        match fs::read_dir(self.work.join("unionfs")) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// One object as read through the library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub ino: u64,
    pub mtime: SystemTime,
    pub owner: (u32, u32),
    /// In the model's terms: files with data, mode and `user.x`; dirs with mode and `user.x`.
    pub node: Node,
}

fn code(e: unionfs::Errno) -> i32 {
    e.0
}

/// Runs operations on a `Union` as the kernel would: paths are walked with `lookup` from the
/// root (a non-directory in the middle is the kernel's ENOTDIR; opening a directory or, with
/// `O_NOFOLLOW`, a symlink for writing its EISDIR / ELOOP), the last component is looked up
/// before a create, remove, rename or link, and every lookup reference is later returned with
/// `forget`. Everything else is left to the library, whose own errnos are what gets compared.
pub struct Driver {
    union: Option<Union>,
    cfg: MountConfig,
    pub ctx: Ctx,
    /// References taken by the current operation.
    pending: Vec<u64>,
    /// References held like the kernel's dentry cache: from the last tree read until the end of
    /// the next operation.
    cached: Vec<u64>,
    /// Open write handles: slot -> (file handle, inode number). An open file pins its inode in
    /// the kernel, so each holds one lookup reference until it is closed.
    handles: BTreeMap<u8, (u64, u64)>,
}

impl Driver {
    pub fn new(cfg: &MountConfig) -> Driver {
        let union = Union::new(cfg).unwrap_or_else(|e| panic!("mount: {e}"));
        let ctx = Ctx {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            pid: 0,
            umask: 0,
        };
        Driver {
            union: Some(union),
            cfg: cfg.clone(),
            ctx,
            pending: Vec::new(),
            cached: Vec::new(),
            handles: BTreeMap::new(),
        }
    }

    pub fn u(&self) -> &Union {
        self.union.as_ref().expect("mounted")
    }

    /// Unmount and mount again over the same directories.
    pub fn remount(&mut self) {
        self.close_all();
        self.pending.clear();
        self.cached.clear();
        self.union = None;
        self.union = Some(Union::new(&self.cfg).unwrap_or_else(|e| panic!("remount: {e}")));
    }

    /// Returns every reference taken so far (the kernel forgetting its dentries).
    pub fn forget_all(&mut self) {
        let u = self.union.as_ref().expect("mounted");
        for ino in self.pending.drain(..).chain(self.cached.drain(..)) {
            u.forget(ino, 1);
        }
    }

    /// End of an operation: its references go, and so do those of the cache it ran with.
    pub fn end_op(&mut self) {
        self.forget_all();
    }

    /// End of an operation whose references stay cached through the next one (the cache it
    /// ran with goes).
    pub fn end_op_keeping(&mut self) {
        let u = self.union.as_ref().expect("mounted");
        for ino in self.cached.drain(..) {
            u.forget(ino, 1);
        }
        self.cached.append(&mut self.pending);
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<Attr, i32> {
        let a = self.u().lookup(parent, name).map_err(code)?;
        self.pending.push(a.ino);
        Ok(a)
    }

    /// Walks `p` from the root; a non-directory in the middle is ENOTDIR (the kernel's answer).
    pub fn walk(&mut self, p: &Path) -> Result<(u64, Kind), i32> {
        let (mut ino, mut kind) = (ROOT, Kind::Dir);
        for c in p.components() {
            if kind != Kind::Dir {
                return Err(libc::ENOTDIR);
            }
            let a = self.lookup(ino, c.as_os_str())?;
            (ino, kind) = (a.ino, a.kind);
        }
        Ok((ino, kind))
    }

    pub fn walk_dir(&mut self, p: &Path) -> Result<u64, i32> {
        match self.walk(p)? {
            (ino, Kind::Dir) => Ok(ino),
            _ => Err(libc::ENOTDIR),
        }
    }

    /// The kernel looks up the last component before it sends a create, remove, rename or link
    /// (and keeps the reference until it forgets the dentry). A miss is what creating expects;
    /// the operation itself is still sent, so the library's own checks are what is tested.
    fn lookup_last(&mut self, parent: u64, name: &OsStr) -> Result<(), i32> {
        match self.lookup(parent, name) {
            Ok(_) | Err(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The file at `p` for writing: the kernel refuses directories (EISDIR) and, with
    /// `O_NOFOLLOW`, symlinks (ELOOP) without asking the filesystem.
    fn walk_file(&mut self, p: &Path) -> Result<u64, i32> {
        match self.walk(p)? {
            (_, Kind::Dir) => Err(libc::EISDIR),
            (_, Kind::Symlink) => Err(libc::ELOOP),
            (ino, _) => Ok(ino),
        }
    }

    pub fn create_file(&mut self, p: &Path, mode: u32, data: &[u8]) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        let (attr, fh) = self
            .u()
            .create(&self.ctx, parent, name, mode, libc::O_WRONLY)
            .map_err(code)?;
        self.pending.push(attr.ino);
        let r = self.write_all(fh, 0, data);
        self.u().release(fh);
        r
    }

    fn write_all(&self, fh: u64, offset: u64, data: &[u8]) -> Result<(), i32> {
        if data.is_empty() {
            return Ok(());
        }
        let n = self.u().write(fh, offset, data).map_err(code)?;
        assert_eq!(n, data.len(), "short write");
        Ok(())
    }

    pub fn write_file(&mut self, p: &Path, offset: u64, data: &[u8]) -> Result<(), i32> {
        let ino = self.walk_file(p)?;
        let fh = self.u().open(&self.ctx, ino, libc::O_WRONLY).map_err(code)?;
        let r = self.write_all(fh, offset, data);
        self.u().release(fh);
        r
    }

    pub fn setattr(&mut self, p: &Path, set: &SetAttr) -> Result<(), i32> {
        let (ino, _) = self.walk(p)?;
        self.u().setattr(&self.ctx, ino, set, None).map(|_| ()).map_err(code)
    }

    pub fn truncate(&mut self, p: &Path, len: u64) -> Result<(), i32> {
        self.walk_file(p)?;
        self.setattr(
            p,
            &SetAttr {
                size: Some(len),
                ..SetAttr::default()
            },
        )
    }

    pub fn chmod(&mut self, p: &Path, mode: u32) -> Result<(), i32> {
        self.setattr(
            p,
            &SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            },
        )
    }

    pub fn set_xattr(&mut self, p: &Path, value: &[u8]) -> Result<(), i32> {
        let (ino, _) = self.walk(p)?;
        self.u().setxattr(ino, OsStr::new(XATTR), value, 0).map_err(code)
    }

    pub fn remove_xattr(&mut self, p: &Path) -> Result<(), i32> {
        let (ino, _) = self.walk(p)?;
        self.u().removexattr(ino, OsStr::new(XATTR)).map_err(code)
    }

    pub fn open_write(&mut self, slot: u8, p: &Path) -> Result<(), i32> {
        self.close(slot);
        let ino = self.walk_file(p)?;
        let fh = self.u().open(&self.ctx, ino, libc::O_WRONLY).map_err(code)?;
        // The walk's last reference (to the file itself) now belongs to the open handle.
        let held = self.pending.pop();
        debug_assert_eq!(held, Some(ino));
        self.handles.insert(slot, (fh, ino));
        Ok(())
    }

    pub fn write_handle(&mut self, slot: u8, offset: u64, data: &[u8]) -> Result<(), i32> {
        match self.handles.get(&slot) {
            Some(&(fh, _)) => self.write_all(fh, offset, data),
            None => Ok(()),
        }
    }

    /// `ftruncate`: a setattr that names the open handle.
    pub fn truncate_handle(&mut self, slot: u8, len: u64) -> Result<(), i32> {
        let Some(&(fh, ino)) = self.handles.get(&slot) else {
            return Ok(());
        };
        let set = SetAttr {
            size: Some(len),
            ..SetAttr::default()
        };
        self.u()
            .setattr(&self.ctx, ino, &set, Some(fh))
            .map(|_| ())
            .map_err(code)
    }

    pub fn close(&mut self, slot: u8) {
        if let Some((fh, ino)) = self.handles.remove(&slot) {
            self.u().release(fh);
            self.u().forget(ino, 1);
        }
    }

    pub fn close_all(&mut self) {
        let slots: Vec<u8> = self.handles.keys().copied().collect();
        for s in slots {
            self.close(s);
        }
    }

    pub fn mkdir(&mut self, p: &Path, mode: u32) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        // vfs_mkdir passes on only the permission and sticky bits.
        let a = self.u().mkdir(&self.ctx, parent, name, mode & 0o1777).map_err(code)?;
        self.pending.push(a.ino);
        Ok(())
    }

    pub fn symlink(&mut self, p: &Path, target: &[u8]) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        let a = self
            .u()
            .symlink(&self.ctx, parent, name, OsStr::from_bytes(target))
            .map_err(code)?;
        self.pending.push(a.ino);
        Ok(())
    }

    pub fn link(&mut self, from: &Path, to: &Path) -> Result<(), i32> {
        let (ino, _) = self.walk(from)?;
        let (dir, name) = split(to);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        let a = self.u().link(ino, parent, name).map_err(code)?;
        self.pending.push(a.ino);
        Ok(())
    }

    pub fn unlink(&mut self, p: &Path) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        self.u().unlink(&self.ctx, parent, name).map_err(code)
    }

    pub fn rmdir(&mut self, p: &Path) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        self.u().rmdir(&self.ctx, parent, name).map_err(code)
    }

    pub fn rename(&mut self, from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
        let (d1, n1) = split(from);
        let (d2, n2) = split(to);
        let p1 = self.walk_dir(d1)?;
        let p2 = self.walk_dir(d2)?;
        self.lookup_last(p1, n1)?;
        self.lookup_last(p2, n2)?;
        self.u().rename(&self.ctx, p1, n1, p2, n2, flags).map_err(code)
    }

    /// Reads a whole file through a fresh read-only handle.
    pub fn read_file(&mut self, p: &Path) -> Result<Vec<u8>, i32> {
        let (ino, _) = self.walk(p)?;
        self.read_ino(ino)
    }

    fn read_ino(&self, ino: u64) -> Result<Vec<u8>, i32> {
        let fh = self.u().open(&self.ctx, ino, libc::O_RDONLY).map_err(code)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let r = loop {
            match self.u().read(fh, out.len() as u64, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Err(code(e)),
            }
        };
        self.u().release(fh);
        r.map(|_| out)
    }

    fn xattr(&self, ino: u64) -> Result<Option<Vec<u8>>, String> {
        match self.u().getxattr(ino, OsStr::new(XATTR)) {
            Err(unionfs::Errno::ENODATA) => Ok(None),
            Err(e) => Err(format!("getxattr: {e}")),
            Ok(v) => Ok(Some(v)),
        }
    }

    /// The whole view, read the way `find | xargs cat` would: readdir every directory, look up
    /// every entry, read files, link targets and `user.x`. Checks on the way that readdir and
    /// lookup agree (name, inode number, type) and that getattr agrees with lookup. The lookup
    /// references are kept until the end of the next operation, like the kernel's dentry cache.
    pub fn read_tree(&mut self) -> Result<BTreeMap<PathBuf, Seen>, String> {
        let mut out = BTreeMap::new();
        let taken_before = self.pending.len();
        let r = self.read_dir_into(ROOT, Path::new(""), &mut out);
        let taken: Vec<u64> = self.pending.drain(taken_before..).collect();
        self.cached.extend(taken);
        r.map(|_| out)
    }

    fn read_dir_into(&mut self, ino: u64, path: &Path, out: &mut BTreeMap<PathBuf, Seen>) -> Result<(), String> {
        let at = |p: &Path| {
            if p.as_os_str().is_empty() {
                "/".to_string()
            } else {
                p.display().to_string()
            }
        };
        let fh = self
            .u()
            .opendir(ino)
            .map_err(|e| format!("opendir {}: {e}", at(path)))?;
        let entries = self.u().readdir(fh, 0);
        self.u().release(fh);
        let entries = entries.map_err(|e| format!("readdir {}: {e}", at(path)))?;
        let dots: Vec<&OsStr> = entries.iter().take(2).map(|e| e.name.as_os_str()).collect();
        if dots != [OsStr::new("."), OsStr::new("..")] {
            return Err(format!("readdir {}: starts with {dots:?}, not . and ..", at(path)));
        }
        let mut names = BTreeSet::new();
        for e in entries.iter().skip(2) {
            let p = path.join(&e.name);
            if !names.insert(e.name.clone()) {
                return Err(format!("readdir {}: {:?} listed twice", at(path), e.name));
            }
            let a = self.lookup(ino, &e.name).map_err(|errno| {
                format!(
                    "{}: listed by readdir but lookup fails: {}",
                    p.display(),
                    std::io::Error::from_raw_os_error(errno)
                )
            })?;
            if a.ino != e.ino || a.kind != e.kind {
                return Err(format!(
                    "{}: readdir says ino {} {:?}, lookup says ino {} {:?}",
                    p.display(),
                    e.ino,
                    e.kind,
                    a.ino,
                    a.kind
                ));
            }
            let g = self
                .u()
                .getattr(a.ino)
                .map_err(|e| format!("{}: getattr: {e}", p.display()))?;
            if (g.ino, g.kind, g.perm, g.size) != (a.ino, a.kind, a.perm, a.size) {
                return Err(format!(
                    "{}: getattr says ino {} {:?} mode {:o} size {}, lookup says ino {} {:?} mode {:o} size {}",
                    p.display(),
                    g.ino,
                    g.kind,
                    g.perm,
                    g.size,
                    a.ino,
                    a.kind,
                    a.perm,
                    a.size
                ));
            }
            let mode = u32::from(a.perm);
            let node = match a.kind {
                Kind::File => {
                    let data = self
                        .read_ino(a.ino)
                        .map_err(|e| format!("{}: read: errno {e}", p.display()))?;
                    if data.len() as u64 != a.size {
                        return Err(format!(
                            "{}: size {} but {} bytes read",
                            p.display(),
                            a.size,
                            data.len()
                        ));
                    }
                    Node::File {
                        data,
                        mode,
                        xattr: self.xattr(a.ino).map_err(|e| format!("{}: {e}", p.display()))?,
                    }
                }
                Kind::Dir => {
                    let xattr = self.xattr(a.ino).map_err(|e| format!("{}: {e}", p.display()))?;
                    self.read_dir_into(a.ino, &p, out)?;
                    Node::Dir { mode, xattr }
                }
                Kind::Symlink => Node::Symlink {
                    target: self
                        .u()
                        .readlink(a.ino)
                        .map_err(|e| format!("{}: readlink: {e}", p.display()))?,
                },
                k => return Err(format!("{}: unexpected {k:?}", p.display())),
            };
            out.insert(
                p,
                Seen {
                    ino: a.ino,
                    mtime: a.mtime,
                    owner: (a.uid, a.gid),
                    node,
                },
            );
        }
        Ok(())
    }
}

/// Reads the view through a second union over the same layers (what a remount would show),
/// checks its node table drains, and returns it.
pub fn read_fresh(cfg: &MountConfig) -> Result<BTreeMap<PathBuf, Seen>, String> {
    let mut d = Driver::new(cfg);
    let seen = d.read_tree();
    d.forget_all();
    let live = d.u().live_nodes();
    if live != 1 {
        return Err(format!(
            "fresh union: {live} nodes live after every lookup was forgotten (want 1, the root)"
        ));
    }
    seen
}

/// `st_blocks` of a path, in bytes.
pub fn allocated_bytes(p: &Path) -> u64 {
    fs::symlink_metadata(p).expect("stat").blocks() * 512
}
