//! The model of the view: a map from path to object, changed with plain POSIX semantics,
//! and comparisons of what the library shows with it.

use super::*;

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

pub(super) fn vfs(errno: i32) -> Fail {
    Fail { errno, vfs: true }
}

pub(super) fn fs_err(errno: i32) -> Fail {
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
        for (path, (l, canonical)) in f.entries.clone() {
            let node = f.node(layers, &path).expect("folded entry");
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

    /// `ftruncate(len)` on the file `id`. Like every data change by a caller without
    /// CAP_FSETID (the creator, when it is not root), it drops setuid, and setgid where group
    /// members may execute the file or the caller is not in its group (the kernel's rule; the
    /// library applies it to truncates, the FUSE adapter also to writes).
    fn truncate_at(&mut self, id: ObjId, len: u64) {
        self.modified.insert(id);
        let (uid, gid) = self.creator;
        let group = self.owners.get(&id).map(|o| o.1);
        if let Node::File { data, mode, .. } = self.get_mut(id) {
            data.resize(len as usize, 0);
            if uid != 0 && *mode & 0o6000 != 0 {
                let mut kill = 0o4000;
                if *mode & 0o2000 != 0 && (*mode & 0o010 != 0 || group != Some(gid)) {
                    kill |= 0o2000;
                }
                *mode &= !kill;
            }
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

pub(super) fn join_rel(base: &Path, rel: &Path) -> PathBuf {
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
