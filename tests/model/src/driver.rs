//! The fixture (layers on disk) and the driver that runs operations on `unionfs::Union` the
//! way the kernel would through a mount.

use super::*;

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
    /// Upper files opened read-write whatever an open asks (`Union::set_rw_upper_fds`).
    pub rw_upper_fds: bool,
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
            rw_upper_fds: false,
            lowers: paths,
            layers: lowers.iter().map(|(l, _)| l.clone()).collect(),
            upper,
            work,
            tmp,
        }
    }

    /// Writes a crafted `upper` (docs/semantics.md, "Untrusted uppers") over the empty one, with
    /// [`OUTSIDE`] in its redirects standing for `outside/`, and the sentinel files next to the
    /// layers (in the temporary root and in `outside/`). Returns the upper as written.
    pub fn plant_upper(&mut self, upper: &Layer) -> Layer {
        let outside = self.tmp.path().join("outside");
        fs::create_dir(&outside).expect("create outside");
        for d in [self.tmp.path(), &outside] {
            fs::write(d.join(SENTINEL_NAME), SENTINEL).expect("write sentinel");
        }
        let real = outside.as_os_str().as_bytes();
        let upper: Layer = upper
            .iter()
            .map(|(p, n)| match n {
                Node::File { data, .. } if split(p).1 == REDIRECT && data == OUTSIDE.as_bytes() => {
                    (p.clone(), file(real))
                }
                _ => (p.clone(), n.clone()),
            })
            .collect();
        fs::remove_dir(&self.upper).expect("remove empty upper");
        write_layer(&self.upper, &upper, Encoding::Oci);
        upper
    }

    pub fn config(&self) -> MountConfig {
        let mut cfg = MountConfig::new(self.lowers.clone(), Some(self.upper.clone()));
        cfg.workdir = Some(self.work.clone());
        cfg.whiteouts = self.style;
        // Metadata changes then leave metacopy files, whose data the checks read from below,
        // and renames of merged directories redirects, which the fold of the upper follows.
        cfg.metacopy = true;
        cfg.redirect_dir = unionfs::RedirectDir::On;
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
        let mut d = Driver::new(&self.config());
        d.set_rw_upper_fds(self.rw_upper_fds);
        d
    }

    pub fn snapshot_lowers(&self, atimes: Atimes) -> Vec<BTreeMap<PathBuf, String>> {
        self.lowers.iter().map(|l| snapshot(l, atimes)).collect()
    }

    /// The upper as a layer, plus its format problems.
    pub fn read_upper(&self) -> (Layer, Vec<String>) {
        read_layer(&self.upper)
    }

    /// Checks the upper on its own: valid encodings, no useless whiteouts, and folded over the
    /// lowers by the model's rules (redirects and metacopy files followed as kernel overlayfs
    /// follows them) it shows `want`.
    pub fn check_upper(&self, want: &BTreeMap<PathBuf, Node>) -> Result<(), String> {
        let (upper, mut problems) = self.read_upper();
        let mut all = vec![upper];
        all.extend(self.layers.iter().cloned());
        problems.extend(redundant_whiteouts(&all));
        let f = fold(&all);
        for p in &f.broken {
            problems.push(format!("{}: a redirect the union refuses", p.display()));
        }
        for (p, data) in &f.data {
            if data.is_none() {
                problems.push(format!("{}: a metacopy file with no data below", p.display()));
            }
        }
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

pub(super) fn code(e: unionfs::Errno) -> i32 {
    e.code()
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
    /// See `Fixture::rw_upper_fds`; kept across remounts.
    rw_upper_fds: bool,
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
            rw_upper_fds: false,
        }
    }

    /// Opens upper files read-write whatever an open asks for, as the FUSE adapter does with
    /// passthrough or the writeback cache.
    pub fn set_rw_upper_fds(&mut self, on: bool) {
        self.rw_upper_fds = on;
        self.u().set_rw_upper_fds(on);
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
        self.u().set_rw_upper_fds(self.rw_upper_fds);
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
        let fh = self.u().open(ino, libc::O_WRONLY).map_err(code)?;
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
        self.u()
            .setxattr(&Default::default(), ino, OsStr::new(XATTR), value, 0)
            .map_err(code)
    }

    pub fn remove_xattr(&mut self, p: &Path) -> Result<(), i32> {
        let (ino, _) = self.walk(p)?;
        self.u().removexattr(ino, OsStr::new(XATTR)).map_err(code)
    }

    pub fn open_write(&mut self, slot: u8, p: &Path) -> Result<(), i32> {
        self.close(slot);
        let ino = self.walk_file(p)?;
        let fh = self.u().open(ino, libc::O_WRONLY).map_err(code)?;
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
        self.u().unlink(parent, name).map_err(code)
    }

    pub fn rmdir(&mut self, p: &Path) -> Result<(), i32> {
        let (dir, name) = split(p);
        let parent = self.walk_dir(dir)?;
        self.lookup_last(parent, name)?;
        self.u().rmdir(parent, name).map_err(code)
    }

    pub fn rename(&mut self, from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
        let (d1, n1) = split(from);
        let (d2, n2) = split(to);
        let p1 = self.walk_dir(d1)?;
        let p2 = self.walk_dir(d2)?;
        self.lookup_last(p1, n1)?;
        self.lookup_last(p2, n2)?;
        self.u().rename(p1, n1, p2, n2, flags).map_err(code)
    }

    /// Reads a whole file through a fresh read-only handle.
    pub fn read_file(&mut self, p: &Path) -> Result<Vec<u8>, i32> {
        let (ino, _) = self.walk(p)?;
        self.read_ino(ino)
    }

    pub fn read_ino(&self, ino: u64) -> Result<Vec<u8>, i32> {
        let fh = self.u().open(ino, libc::O_RDONLY).map_err(code)?;
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
            Err(e) if e == unionfs::Errno::ENODATA => Ok(None),
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
