//! The on-disk side: writing layers, reading an upper back, snapshots of the lowers.

use super::*;

pub(super) fn set_xattr_path(path: &Path, name: &str, value: &[u8]) {
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

pub(super) fn chmod(path: &Path, mode: u32) {
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
        if !is_reserved(name) || is_pseudo(name) {
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
            // Markers of other entries, set once those exist.
            Node::File { .. } if is_pseudo(name) && name != OPQ => {}
            // A metacopy file as the union or the kernel makes it: its size as a hole.
            Node::File { data, mode, xattr } if layer.contains_key(&metacopy_path(p)) => {
                fs::File::create(&full)
                    .and_then(|f| f.set_len(data.len() as u64))
                    .expect("write metacopy file");
                if let Some(v) = xattr {
                    set_xattr_path(&full, XATTR, v);
                }
                chmod(&full, *mode);
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
    write_markers(root, layer);
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

/// The redirect and metacopy xattrs of a layer's pseudo-entries ([`REDIRECT`], [`METACOPY`]),
/// in their `user.overlay.*` form, which the union reads privileged or not.
fn write_markers(root: &Path, layer: &Layer) {
    for (p, node) in layer {
        let (dir, name) = split(p);
        let Node::File { data, .. } = node else { continue };
        if name == REDIRECT {
            set_xattr_path(&root.join(dir), "user.overlay.redirect", data);
        } else if let Some(of) = name.as_bytes().strip_prefix(METACOPY.as_bytes()) {
            let target = root.join(dir).join(OsStr::from_bytes(of));
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_symlink()) {
                // Linux refuses user.* xattrs on symlinks: only trusted.* can mark one.
                if rustix::process::geteuid().is_root() {
                    set_xattr_path(&target, "trusted.overlay.metacopy", data);
                }
            } else {
                set_xattr_path(&target, "user.overlay.metacopy", data);
            }
        }
    }
}

/// Every path below `root` ("" for the root itself), parents first.
pub(super) fn walk_disk(root: &Path) -> Vec<PathBuf> {
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

pub(super) fn open_noatime(dir: &OwnedFd, name: &OsStr, dirflag: bool) -> rustix::io::Result<OwnedFd> {
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

pub(super) fn snapshot_dir(
    root: &Path,
    rel: &Path,
    dir: &OwnedFd,
    atimes: Atimes,
    out: &mut BTreeMap<PathBuf, String>,
) {
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

pub(super) fn describe(st: &rustix::fs::Stat, full: &Path, content: String, atimes: Atimes) -> String {
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
                if let Some(v) = marker(&full, REDIRECT_XATTRS) {
                    layer.insert(redirect_path(&p), file(&v));
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
                if let Some(v) = marker(&full, METACOPY_XATTRS) {
                    layer.insert(metacopy_path(&p), file(&v));
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

const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];
const METACOPY_XATTRS: [&str; 2] = ["trusted.overlay.metacopy", "user.overlay.metacopy"];

/// The value of the first of `xattrs` that `full` carries.
fn marker(full: &Path, xattrs: [&str; 2]) -> Option<Vec<u8>> {
    xattrs.iter().find_map(|x| get_xattr_path(full, x))
}

/// Whiteouts in the upper (layer 0 of `layers`) that hide nothing: no lower layer merged into
/// their directory has that name (docs/semantics.md: "only in the upper and nothing below: plain unlink";
/// "no whiteouts inside an opaque directory").
pub fn redundant_whiteouts(layers: &[Layer]) -> Vec<String> {
    let f = fold(layers);
    let mut out = Vec::new();
    for p in layers[0].keys() {
        let (dir, name) = split(p);
        if !is_reserved(name) || is_pseudo(name) {
            continue;
        }
        let hidden = OsStr::from_bytes(&name.as_bytes()[WH.len()..]);
        let below = match f
            .dirs
            .iter()
            .find(|(_, v)| v.first().is_some_and(|(l, at)| *l == 0 && at == dir))
        {
            Some((_, v)) => &v[1..],
            None => &[],
        };
        if !below
            .iter()
            .any(|(l, at)| layers[*l].contains_key(&at.join(hidden)) || layers[*l].contains_key(&at.join(name)))
        {
            out.push(format!(
                "{}: whiteout with nothing below it to hide",
                dir.join(hidden).display()
            ));
        }
    }
    out
}
