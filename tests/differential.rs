//! Differential test: the same random operations through the kernel's overlayfs and through
//! unionfs, over the same read-only lower layers, must give the same results and the same trees.
//!
//! Each case generates 2–3 small lower layers whose names overlap (files, directories, symlinks,
//! FIFOs, char 0/0 whiteouts, `trusted.overlay.opaque` directories, `user.*` xattrs — the formats
//! both implementations read), mounts a kernel overlay (upper `u1`) and unionfs (upper `u2`) on
//! them, and applies a seeded random sequence of operations to both. After each operation the
//! outcome (Ok or errno) and the whole view (names, kinds, contents, modes, symlink targets, xattrs)
//! must match. Overlayfs refuses to rename lower or merged directories (EXDEV) where unionfs must
//! succeed: that case is replayed on the kernel side as `mv` does (copy the tree, then delete it).
//! At the end both are unmounted and remounted and compared again, the kernel also reads unionfs's
//! upper as a layer (it must be a valid overlayfs upper), and the lowers must be unchanged.
//!
//! Needs root (kernel overlay mounts). Knobs: `UNIONFS_DIFF_CASES` (default 20),
//! `UNIONFS_DIFF_OPS` (operations per case, default 40), `UNIONFS_DIFF_SEED` (first seed; with
//! `UNIONFS_DIFF_CASES=1` replays one case). For example
//! `UNIONFS_DIFF_CASES=500 cargo test --release --test differential`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Entry, KernelOverlay, Mount, Rng, Tree, all_xattrs};
use rustix::fs::{CWD, FileType, Mode, RenameFlags, XattrFlags};

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const FILE_MODES: [u32; 10] = [0o644, 0o644, 0o644, 0o600, 0o755, 0o444, 0o400, 0o640, 0o4755, 0o2750];
const DIR_MODES: [u32; 8] = [0o755, 0o755, 0o755, 0o700, 0o555, 0o1777, 0o2775, 0o750];
const XATTR_NAMES: [&str; 2] = ["user.x", "user.y"];
/// The kernel side runs with the features unionfs writes by default: metadata-only copy-up
/// (its metacopy files must read the same, in its upper and in ours read as a lower) and
/// directory redirects.
const KERNEL_OPTS: &str = "metacopy=on,redirect_dir=on,index=off";
/// Name used to re-create a file when it must stop sharing its inode (see [`Op::Unshare`]).
const UNSHARE_TMP: &str = "unshare.tmp";
/// An operation that makes no progress for this long is taken as a hang.
const STUCK: Duration = Duration::from_secs(60);

/// A name from the small set the operations draw from (collisions are the point).
fn random_name(rng: &mut Rng) -> &'static str {
    let name: &&str = rng.pick(&NAMES);
    name
}

/// File contents, described compactly so that an op sequence prints short: `len` bytes of a
/// pattern starting at `fill`.
#[derive(Clone, Copy)]
struct Data {
    len: usize,
    fill: u8,
}

impl Data {
    fn random(rng: &mut Rng) -> Data {
        let len = match rng.below(100) {
            0..5 => 0,
            5..80 => 1 + rng.below(100) as usize,
            80..95 => 4000 + rng.below(1000) as usize,
            _ => 70_000,
        };
        Data {
            len,
            fill: rng.below(26) as u8,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| b'a' + ((i * 7 + self.fill as usize) % 26) as u8)
            .collect()
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B@{}", self.len, self.fill)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[derive(Clone, Copy, Debug, PartialEq)]
enum RenameKind {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: String,
        mode: Oct,
        excl: bool,
        trunc: bool,
        data: Data,
    },
    Write {
        path: String,
        offset: u64,
        data: Data,
    },
    Append {
        path: String,
        data: Data,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Read {
        path: String,
    },
    Mkdir {
        path: String,
        mode: Oct,
    },
    Mkfifo {
        path: String,
        mode: Oct,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        kind: RenameKind,
    },
    Symlink {
        target: String,
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    Chmod {
        path: String,
        mode: Oct,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    /// Not random: before a directory rename that the kernel side must replay as a copy, a file
    /// in that tree that is hard-linked from outside it is replaced, on both sides, by a copy of
    /// itself (a copy breaks such links, a rename keeps them; this takes the question away).
    Unshare {
        path: String,
    },
}

/// A mode, printed in octal.
#[derive(Clone, Copy)]
struct Oct(u32);

impl fmt::Debug for Oct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// What an operation returned: data for reads, else nothing; or an errno.
type Outcome = Result<Option<Vec<u8>>, i32>;

fn show(o: &Outcome) -> String {
    match o {
        Ok(None) => "Ok".into(),
        Ok(Some(d)) => format!("Ok({} bytes)", d.len()),
        Err(e) => format!("Err({})", std::io::Error::from_raw_os_error(*e)),
    }
}

fn io_err(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn rx_err(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

/// Applies `op` under `root`. Opens use O_NONBLOCK so that a FIFO never blocks.
fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    let nb = libc::O_NONBLOCK;
    match op {
        Op::Create {
            path,
            mode,
            excl,
            trunc,
            data,
        } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(mode.0).custom_flags(nb);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true).truncate(*trunc);
            }
            let mut f = o.open(p(path)).map_err(io_err)?;
            f.write_all(&data.bytes()).map_err(io_err)?;
            Ok(None)
        }
        Op::Write { path, offset, data } => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(nb)
                .open(p(path))
                .map_err(io_err)?;
            f.write_all_at(&data.bytes(), *offset).map_err(io_err)?;
            Ok(None)
        }
        Op::Append { path, data } => {
            let mut f = OpenOptions::new()
                .append(true)
                .custom_flags(nb)
                .open(p(path))
                .map_err(io_err)?;
            f.write_all(&data.bytes()).map_err(io_err)?;
            Ok(None)
        }
        Op::Truncate { path, len } => {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(nb)
                .open(p(path))
                .map_err(io_err)?;
            f.set_len(*len).map_err(io_err)?;
            Ok(None)
        }
        Op::Read { path } => {
            let mut f = OpenOptions::new()
                .read(true)
                .custom_flags(nb)
                .open(p(path))
                .map_err(io_err)?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(io_err)?;
            Ok(Some(v))
        }
        Op::Mkdir { path, mode } => {
            fs::DirBuilder::new().mode(mode.0).create(p(path)).map_err(io_err)?;
            Ok(None)
        }
        Op::Mkfifo { path, mode } => {
            rustix::fs::mknodat(CWD, p(path), FileType::Fifo, Mode::from_raw_mode(mode.0), 0).map_err(rx_err)?;
            Ok(None)
        }
        Op::Unlink { path } => fs::remove_file(p(path)).map(|_| None).map_err(io_err),
        Op::Rmdir { path } => fs::remove_dir(p(path)).map(|_| None).map_err(io_err),
        Op::Rename { from, to, kind } => {
            let flags = match kind {
                RenameKind::Plain => RenameFlags::empty(),
                RenameKind::NoReplace => RenameFlags::NOREPLACE,
                RenameKind::Exchange => RenameFlags::EXCHANGE,
            };
            rustix::fs::renameat_with(CWD, p(from), CWD, p(to), flags).map_err(rx_err)?;
            Ok(None)
        }
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path))
            .map(|_| None)
            .map_err(io_err),
        Op::Link { from, to } => fs::hard_link(p(from), p(to)).map(|_| None).map_err(io_err),
        Op::Chmod { path, mode } => fs::set_permissions(p(path), fs::Permissions::from_mode(mode.0))
            .map(|_| None)
            .map_err(io_err),
        Op::SetXattr { path, name, value } => {
            rustix::fs::lsetxattr(p(path), name.as_str(), value.as_bytes(), XattrFlags::empty()).map_err(rx_err)?;
            Ok(None)
        }
        Op::RemoveXattr { path, name } => {
            rustix::fs::lremovexattr(p(path), name.as_str()).map_err(rx_err)?;
            Ok(None)
        }
        Op::Unshare { path } => {
            let src = p(path);
            let md = fs::symlink_metadata(&src).map_err(io_err)?;
            let data = fs::read(&src).map_err(io_err)?;
            let tmp = src.parent().expect("parent").join(UNSHARE_TMP);
            fs::write(&tmp, data).map_err(io_err)?;
            for (name, value) in user_xattrs(&src) {
                rustix::fs::lsetxattr(&tmp, name.as_os_str(), &value, XattrFlags::empty()).map_err(rx_err)?;
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io_err)?;
            fs::rename(&tmp, &src).map_err(io_err)?;
            Ok(None)
        }
    }
}

fn user_xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    all_xattrs(p)
        .into_iter()
        .filter(|(n, _)| n.starts_with("user."))
        .map(|(n, v)| (OsString::from(n), v))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// `mv` across filesystems, for the kernel side of a directory rename it refuses with EXDEV.

enum NodeKind {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Fifo,
}

struct Node {
    rel: PathBuf,
    kind: NodeKind,
    mode: u32,
    xattrs: Vec<(OsString, Vec<u8>)>,
    ino: u64,
}

/// Pre-order snapshot of the tree at `p`.
fn capture(p: &Path, rel: &Path, out: &mut Vec<Node>) {
    let md = fs::symlink_metadata(p).expect("lstat for copy");
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File(fs::read(p).expect("read for copy"))
    } else if ft.is_symlink() {
        NodeKind::Symlink(fs::read_link(p).expect("readlink for copy"))
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        panic!("unexpected file type at {}", p.display())
    };
    let xattrs = if ft.is_symlink() { Vec::new() } else { user_xattrs(p) };
    out.push(Node {
        rel: rel.to_path_buf(),
        kind,
        mode: md.mode() & 0o7777,
        xattrs,
        ino: md.ino(),
    });
    if ft.is_dir() {
        for n in list_dir(p) {
            capture(&p.join(&n), &rel.join(&n), out);
        }
    }
}

/// Re-creates a captured tree at `dst`, keeping hard links that are inside it.
fn restore(dst: &Path, nodes: &[Node]) {
    let mut linked: HashMap<u64, PathBuf> = HashMap::new();
    for n in nodes {
        let p = if n.rel.as_os_str().is_empty() {
            dst.to_path_buf()
        } else {
            dst.join(&n.rel)
        };
        match &n.kind {
            NodeKind::Dir => fs::create_dir(&p).expect("mkdir for copy"),
            NodeKind::File(data) => {
                if let Some(first) = linked.get(&n.ino) {
                    fs::hard_link(first, &p).expect("link for copy");
                    continue;
                }
                fs::write(&p, data).expect("write for copy");
                linked.insert(n.ino, p.clone());
            }
            NodeKind::Symlink(t) => {
                std::os::unix::fs::symlink(t, &p).expect("symlink for copy");
                continue;
            }
            NodeKind::Fifo => {
                rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).expect("mkfifo for copy")
            }
        }
        for (name, value) in &n.xattrs {
            rustix::fs::lsetxattr(&p, name.as_os_str(), value, XattrFlags::empty()).expect("setxattr for copy");
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(n.mode)).expect("chmod for copy");
    }
}

fn remove_tree(p: &Path) {
    let md = fs::symlink_metadata(p).expect("lstat for delete");
    if md.is_dir() {
        for n in list_dir(p) {
            remove_tree(&p.join(n));
        }
        fs::remove_dir(p).expect("rmdir");
    } else {
        fs::remove_file(p).expect("rm");
    }
}

/// Files in the trees at `roots` that share their inode with a name outside those trees.
fn linked_from_outside(base: &Path, roots: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for r in roots {
        let mut nodes = Vec::new();
        capture(&base.join(r), Path::new(""), &mut nodes);
        let mut count: HashMap<u64, u64> = HashMap::new();
        for n in &nodes {
            if matches!(n.kind, NodeKind::File(_)) {
                *count.entry(n.ino).or_default() += 1;
            }
        }
        for n in &nodes {
            if matches!(n.kind, NodeKind::File(_)) {
                let rel = join(r, &n.rel.to_string_lossy());
                let rel = rel.trim_end_matches('/');
                let nlink = fs::symlink_metadata(base.join(rel)).expect("lstat").nlink();
                if nlink > count[&n.ino] {
                    out.push(rel.to_string());
                }
            }
        }
    }
    out
}

/// What `mv FROM TO` (or an exchange) does when rename(2) says EXDEV: copy, then delete.
fn emulate_rename(root: &Path, from: &str, to: &str, kind: RenameKind) -> Outcome {
    let (src, dst) = (root.join(from), root.join(to));
    if kind == RenameKind::Exchange {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        capture(&src, Path::new(""), &mut a);
        capture(&dst, Path::new(""), &mut b);
        remove_tree(&src);
        remove_tree(&dst);
        restore(&dst, &a);
        restore(&src, &b);
        return Ok(None);
    }
    if let Ok(md) = fs::symlink_metadata(&dst) {
        // rename(2) has already refused a non-directory target (ENOTDIR) before overlayfs said EXDEV.
        assert!(md.is_dir(), "EXDEV for a directory onto a non-directory");
        if !list_dir(&dst).is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        fs::remove_dir(&dst).map_err(io_err)?;
    }
    let mut a = Vec::new();
    capture(&src, Path::new(""), &mut a);
    remove_tree(&src);
    restore(&dst, &a);
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Random lowers and random operations.

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn random_target(rng: &mut Rng) -> String {
    // Relative and without "..": following it never leaves the mount.
    let mut t = rng.pick(&NAMES).to_string();
    if rng.chance(30) {
        t = join(&t, random_name(rng));
    }
    t
}

fn gen_layer(rng: &mut Rng, root: &Path, rel: &str, depth: u32) {
    for name in &NAMES[..4] {
        let r = join(rel, name);
        let p = root.join(&r);
        match rng.below(100) {
            0..30 => {}
            30..55 => {
                fs::write(&p, Data::random(rng).bytes()).expect("write lower");
                if rng.chance(20) {
                    rustix::fs::lsetxattr(&p, *rng.pick(&XATTR_NAMES), b"lower", XattrFlags::empty()).expect("xattr");
                }
                fs::set_permissions(&p, fs::Permissions::from_mode(*rng.pick(&FILE_MODES))).expect("chmod");
            }
            55..78 if depth < 2 => {
                fs::create_dir(&p).expect("mkdir lower");
                gen_layer(rng, root, &r, depth + 1);
                if rng.chance(15) {
                    rustix::fs::lsetxattr(&p, "trusted.overlay.opaque", b"y", XattrFlags::empty()).expect("opaque");
                }
                if rng.chance(15) {
                    rustix::fs::lsetxattr(&p, *rng.pick(&XATTR_NAMES), b"lowerdir", XattrFlags::empty())
                        .expect("xattr");
                }
                fs::set_permissions(&p, fs::Permissions::from_mode(*rng.pick(&DIR_MODES))).expect("chmod");
            }
            55..86 => std::os::unix::fs::symlink(random_target(rng), &p).expect("symlink lower"),
            86..97 => rustix::fs::mknodat(
                CWD,
                &p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0),
                rustix::fs::makedev(0, 0),
            )
            .expect("whiteout"),
            _ => rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o644), 0).expect("fifo"),
        }
    }
}

/// Paths that exist in the view now, sorted, split into all / files / dirs.
struct Paths {
    all: Vec<String>,
    files: Vec<String>,
    dirs: Vec<String>,
}

impl Paths {
    fn of(t: &Tree) -> Paths {
        let mut p = Paths {
            all: Vec::new(),
            files: Vec::new(),
            dirs: vec![String::new()],
        };
        for (k, e) in &t.entries {
            let s = k.to_string_lossy().into_owned();
            match e {
                Entry::File { .. } => p.files.push(s.clone()),
                Entry::Dir { .. } => p.dirs.push(s.clone()),
                _ => {}
            }
            p.all.push(s);
        }
        p
    }

    fn random(&self, rng: &mut Rng) -> String {
        let mut s = rng.pick(&NAMES).to_string();
        for _ in 0..rng.below(3) {
            s = join(&s, random_name(rng));
        }
        s
    }

    fn any(&self, rng: &mut Rng) -> String {
        if !self.all.is_empty() && rng.chance(75) {
            rng.pick(&self.all).clone()
        } else {
            self.random(rng)
        }
    }

    /// Like [`Paths::any`], now and then the mount root itself.
    fn any_or_root(&self, rng: &mut Rng) -> String {
        if rng.chance(5) { String::new() } else { self.any(rng) }
    }

    fn file(&self, rng: &mut Rng) -> String {
        if !self.files.is_empty() && rng.chance(80) {
            rng.pick(&self.files).clone()
        } else {
            self.any(rng)
        }
    }

    fn dir(&self, rng: &mut Rng) -> String {
        if self.dirs.len() > 1 && rng.chance(75) {
            rng.pick(&self.dirs[1..]).clone()
        } else {
            self.any(rng)
        }
    }

    /// A name in an existing directory (which may or may not exist yet).
    fn fresh(&self, rng: &mut Rng) -> String {
        if rng.chance(90) {
            join(rng.pick(&self.dirs).as_str(), random_name(rng))
        } else {
            self.random(rng)
        }
    }
}

fn gen_op(rng: &mut Rng, t: &Tree) -> Op {
    let p = Paths::of(t);
    match rng.below(129) {
        0..12 => Op::Create {
            path: if rng.chance(70) { p.fresh(rng) } else { p.any(rng) },
            mode: Oct(*rng.pick(&FILE_MODES)),
            excl: rng.chance(30),
            trunc: rng.chance(50),
            data: Data::random(rng),
        },
        12..22 => {
            let path = p.file(rng);
            let len = t.entries.get(Path::new(&path)).map_or(0, |e| match e {
                Entry::File { data, .. } => data.len() as u64,
                _ => 0,
            });
            Op::Write {
                path,
                offset: rng.below(len + 100),
                data: Data::random(rng),
            }
        }
        22..27 => Op::Append {
            path: p.file(rng),
            data: Data::random(rng),
        },
        27..33 => Op::Truncate {
            path: p.file(rng),
            len: *rng.pick(&[0, 1, 10, 100, 5000, 100_000]),
        },
        33..37 => Op::Read { path: p.any(rng) },
        37..47 => Op::Mkdir {
            path: p.fresh(rng),
            mode: Oct(*rng.pick(&DIR_MODES)),
        },
        47..49 => Op::Mkfifo {
            path: p.fresh(rng),
            mode: Oct(0o644),
        },
        49..59 => Op::Unlink { path: p.any(rng) },
        59..66 => Op::Rmdir { path: p.dir(rng) },
        66..84 => {
            let from = if rng.chance(50) { p.dir(rng) } else { p.any(rng) };
            let to = if rng.chance(50) { p.any(rng) } else { p.fresh(rng) };
            let kind = match rng.below(100) {
                0..70 => RenameKind::Plain,
                70..85 => RenameKind::NoReplace,
                _ => RenameKind::Exchange,
            };
            Op::Rename { from, to, kind }
        }
        84..90 => Op::Symlink {
            target: random_target(rng),
            path: p.fresh(rng),
        },
        90..97 => Op::Link {
            from: p.file(rng),
            to: p.fresh(rng),
        },
        97..105 => Op::Chmod {
            path: p.any_or_root(rng),
            mode: Oct(if rng.chance(50) {
                *rng.pick(&FILE_MODES)
            } else {
                *rng.pick(&DIR_MODES)
            }),
        },
        105..121 => Op::SetXattr {
            path: p.any_or_root(rng),
            name: rng.pick(&XATTR_NAMES).to_string(),
            value: format!("v{}", rng.below(100)),
        },
        _ => Op::RemoveXattr {
            path: p.any_or_root(rng),
            name: rng.pick(&XATTR_NAMES).to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing views.

fn short_entry(e: Option<&Entry>) -> String {
    match e {
        None => "(absent)".into(),
        Some(Entry::File { data, mode }) => {
            let head: String = String::from_utf8_lossy(&data[..data.len().min(24)]).into_owned();
            format!("file {mode:o} {} bytes {head:?}", data.len())
        }
        Some(Entry::Dir { mode }) => format!("dir {mode:o}"),
        Some(Entry::Symlink { target }) => format!("symlink -> {}", target.display()),
        Some(Entry::Other { kind, mode, rdev }) => format!("{kind} {mode:o} rdev {rdev}"),
    }
}

/// Differences between two views, one line each; empty when equal.
fn tree_diff(k: &Tree, u: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<_> = k.entries.keys().chain(u.entries.keys()).collect();
    for key in keys {
        let (a, b) = (k.entries.get(key), u.entries.get(key));
        if a != b {
            out.push(format!(
                "  {}: kernel {} | unionfs {}",
                key.display(),
                short_entry(a),
                short_entry(b)
            ));
        }
    }
    let keys: std::collections::BTreeSet<_> = k.xattrs.keys().chain(u.xattrs.keys()).collect();
    for key in keys {
        let (a, b) = (k.xattrs.get(key), u.xattrs.get(key));
        if a != b {
            out.push(format!("  {} xattrs: kernel {a:?} | unionfs {b:?}", key.display()));
        }
    }
    out
}

/// Every xattr name (all namespaces) on every path: private ones must be hidden in both.
fn xattr_names(root: &Path, t: &Tree) -> BTreeMap<PathBuf, Vec<OsString>> {
    let mut out = BTreeMap::new();
    for (k, e) in &t.entries {
        if matches!(e, Entry::Symlink { .. }) {
            continue;
        }
        let names: Vec<OsString> = all_xattrs(&root.join(k)).into_keys().map(OsString::from).collect();
        if !names.is_empty() {
            out.insert(k.clone(), names);
        }
    }
    out
}

/// Compares the two views; returns the differences.
fn compare_views(kroot: &Path, uroot: &Path) -> (Tree, Vec<String>) {
    let k = read_kernel_view(kroot);
    let u = read_view(uroot, "unionfs");
    let mut diff = tree_diff(&k, &u);
    if diff.is_empty() {
        let (kx, ux) = (xattr_names(kroot, &k), xattr_names(uroot, &u));
        if kx != ux {
            diff.push(format!("  xattr names: kernel {kx:?} | unionfs {ux:?}"));
        }
    }
    let (kr, ur) = (root_meta(kroot), root_meta(uroot));
    if kr != ur {
        diff.push(format!("  mount root (mode, xattrs): kernel {kr:?} | unionfs {ur:?}"));
    }
    (k, diff)
}

/// Mode and xattrs of the mount root itself (a `Tree` holds only what is below it).
fn root_meta(root: &Path) -> (String, Vec<(OsString, Vec<u8>)>) {
    let md = fs::symlink_metadata(root).expect("lstat mount root");
    let xs = all_xattrs(root)
        .into_iter()
        .map(|(n, v)| (OsString::from(n), v))
        .collect();
    (format!("{:o}", md.mode() & 0o7777), xs)
}

/// Compares the kernel's view of its own upper (`kroot`) with the kernel's view of unionfs's
/// upper used as a layer (`uroot`). unionfs's private `user.unionfs.*` / `trusted.unionfs.*`
/// metadata (which the spec lets it write) shows there as ordinary xattrs and is left out.
fn compare_kernel_views(kroot: &Path, uroot: &Path) -> Vec<String> {
    let private = |n: &OsString| {
        let n = n.to_string_lossy();
        n.starts_with("user.unionfs.") || n.starts_with("trusted.unionfs.")
    };
    let k = read_kernel_view(kroot);
    let mut u = read_kernel_view(uroot);
    for xs in u.xattrs.values_mut() {
        xs.retain(|n, _| !private(n));
    }
    u.xattrs.retain(|_, xs| !xs.is_empty());
    let mut diff = tree_diff(&k, &u);
    if diff.is_empty() {
        let kx = xattr_names(kroot, &k);
        let mut ux = xattr_names(uroot, &u);
        for names in ux.values_mut() {
            names.retain(|n| !private(n));
        }
        ux.retain(|_, names| !names.is_empty());
        if kx != ux {
            diff.push(format!("  xattr names: kernel {kx:?} | unionfs {ux:?}"));
        }
    }
    diff
}

/// Names in `dir` that lstat finds. Overlayfs passes readdir of a directory that exists in one
/// lower only straight to that lower, whiteouts included (lookup then says ENOENT): such names are
/// not part of the view.
fn list_dir(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| !matches!(fs::symlink_metadata(dir.join(n)), Err(e) if e.kind() == std::io::ErrorKind::NotFound))
        .collect();
    names.sort();
    names
}

/// Like `Tree::read` of the kernel's view, less the whiteouts it leaks (see [`list_dir`]).
fn read_kernel_view(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, t: &mut Tree) {
        for n in list_dir(dir) {
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let mode = md.mode() & 0o7777;
            let e = if ft.is_dir() {
                Entry::Dir { mode }
            } else if ft.is_file() {
                Entry::File {
                    data: fs::read(&p).expect("read"),
                    mode,
                }
            } else if ft.is_symlink() {
                Entry::Symlink {
                    target: fs::read_link(&p).expect("readlink"),
                }
            } else {
                let kind = if ft.is_char_device() {
                    "chr"
                } else if ft.is_block_device() {
                    "blk"
                } else if ft.is_fifo() {
                    "fifo"
                } else {
                    "sock"
                };
                Entry::Other {
                    kind: kind.into(),
                    mode,
                    rdev: md.rdev(),
                }
            };
            let xs: BTreeMap<OsString, Vec<u8>> = user_xattrs(&p).into_iter().collect();
            if !xs.is_empty() {
                t.xattrs.insert(rel.clone(), xs);
            }
            t.entries.insert(rel, e);
            if ft.is_dir() {
                walk(root, &p, t);
            }
        }
    }
    let mut t = Tree::default();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walk(root, root, &mut t))) {
        Ok(()) => t,
        Err(e) => panic!("reading the kernel overlay view: {}", panic_text(&e)),
    }
}

/// `Tree::read`, saying which view failed when it panics (a listed name that lstat cannot find, ...).
fn read_view(root: &Path, which: &str) -> Tree {
    match std::panic::catch_unwind(|| Tree::read(root)) {
        Ok(t) => t,
        Err(e) => panic!("reading the {which} view: {}", panic_text(&e)),
    }
}

fn describe_layer(root: &Path) -> String {
    let t = Tree::read_raw(root);
    let mut s = String::new();
    for (k, e) in &t.entries {
        let xs = t
            .xattrs
            .get(k)
            .map(|x| format!(" {:?}", x.keys().collect::<Vec<_>>()))
            .unwrap_or_default();
        s.push_str(&format!("    {} {}{xs}\n", k.display(), short_entry(Some(e))));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// One case.

/// Shared with the watchdog: when the current step started and the daemon serving it.
struct Progress {
    step_started: Instant,
    daemon: Option<u32>,
    seed: u64,
    fired: bool,
}

struct Case {
    seed: u64,
    log: Vec<String>,
    lowers_desc: String,
}

impl Case {
    fn fail(&self, what: &str) -> String {
        let mut s = format!(
            "\n=== seed {} FAILED: {what}\n  lowers (top first):\n{}",
            self.seed, self.lowers_desc
        );
        s.push_str("  operations (kernel outcome / unionfs outcome):\n");
        for (i, l) in self.log.iter().enumerate() {
            s.push_str(&format!("    {i:3}: {l}\n"));
        }
        s.push_str(&format!(
            "  replay: UNIONFS_DIFF_SEED={} UNIONFS_DIFF_CASES=1 UNIONFS_DIFF_OPS={} cargo test --test differential\n",
            self.seed,
            self.log.len()
        ));
        s
    }
}

fn mount_unionfs(lowers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> Mount {
    Mount::unionfs(lowers, Some((upper, work)), &[], mnt)
}

/// Runs one case; Err carries the failure report.
fn run_case(seed: u64, n_ops: usize, progress: &Arc<Mutex<Progress>>) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let dir = tempfile::Builder::new()
        .prefix("unionfs-diff")
        .tempdir()
        .expect("tempdir");
    let d = |n: &str| {
        let p = dir.path().join(n);
        fs::create_dir(&p).expect("mkdir");
        p
    };
    let n_lowers = 2 + rng.below(2) as usize;
    let lowers: Vec<PathBuf> = (0..n_lowers).map(|i| d(&format!("lower{i}"))).collect();
    let (u1, w1, m1) = (d("u1"), d("w1"), d("m1"));
    let (u2, w2, m2) = (d("u2"), d("w2"), d("m2"));
    let m3 = d("m3");
    for l in &lowers {
        gen_layer(&mut rng, l, "", 0);
    }
    let lowers_before: Vec<Tree> = lowers.iter().map(|l| Tree::read_raw(l)).collect();
    let mut case = Case {
        seed,
        log: Vec::new(),
        lowers_desc: String::new(),
    };
    for (i, l) in lowers.iter().enumerate() {
        case.lowers_desc
            .push_str(&format!("   lower{i}:\n{}", describe_layer(l)));
    }

    let kernel = KernelOverlay::mount_with(&lowers, Some((&u1, &w1)), &m1, KERNEL_OPTS).map_err(|e| case.fail(&e))?;
    let uni = mount_unionfs(&lowers, &u2, &w2, &m2);
    {
        let mut p = progress.lock().unwrap();
        p.daemon = uni.pid();
        p.seed = seed;
        p.step_started = Instant::now();
    }

    let mut step = |case: &mut Case| -> Result<(), String> {
        let (kt, diff) = compare_views(&m1, &m2);
        if !diff.is_empty() {
            return Err(case.fail(&format!("initial views differ:\n{}", diff.join("\n"))));
        }
        let mut kt = kt;
        for _ in 0..n_ops {
            progress.lock().unwrap().step_started = Instant::now();
            let op = gen_op(&mut rng, &kt);
            // Shown if this step panics; replaced by the outcomes below.
            case.log.push(format!("{op:?} => (did not complete)"));
            let k = apply(&m1, &op);
            let expected;
            let u;
            if k == Err(libc::EXDEV) {
                let Op::Rename { from, to, kind } = &op else {
                    *case.log.last_mut().expect("logged") = format!("{op:?} => kernel {}", show(&k));
                    return Err(case.fail("kernel EXDEV outside a rename"));
                };
                let mut roots = vec![from.as_str()];
                if *kind == RenameKind::Exchange {
                    roots.push(to.as_str());
                }
                for path in linked_from_outside(&m1, &roots) {
                    let un = Op::Unshare { path };
                    let (ko, uo) = (apply(&m1, &un), apply(&m2, &un));
                    let at = case.log.len() - 1;
                    case.log.insert(at, format!("{un:?} => {} / {}", show(&ko), show(&uo)));
                    if ko.is_err() || uo != ko {
                        return Err(case.fail("unshare before an EXDEV rename"));
                    }
                }
                u = apply(&m2, &op);
                expected = emulate_rename(&m1, from, to, *kind);
                *case.log.last_mut().expect("logged") =
                    format!("{op:?} => kernel EXDEV, as mv: {} / {}", show(&expected), show(&u));
            } else {
                u = apply(&m2, &op);
                *case.log.last_mut().expect("logged") = format!("{op:?} => {} / {}", show(&k), show(&u));
                expected = k;
            }
            if u != expected {
                return Err(case.fail(&format!("outcome: expected {} got {}", show(&expected), show(&u))));
            }
            let (t, diff) = compare_views(&m1, &m2);
            if !diff.is_empty() {
                return Err(case.fail(&format!("views differ after the last operation:\n{}", diff.join("\n"))));
            }
            kt = t;
        }
        Ok(())
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&mut case)));
    let r = match r {
        Ok(r) => r,
        Err(e) => Err(case.fail(&format!("panic: {}", panic_text(&e)))),
    };
    if let Err(e) = r {
        progress.lock().unwrap().daemon = None;
        return Err(e);
    }

    // Persistence: unmount both, remount both, and let the kernel read unionfs's upper.
    progress.lock().unwrap().step_started = Instant::now();
    drop(kernel);
    let code = uni.unmount();
    progress.lock().unwrap().daemon = None;
    if code != Some(0) {
        return Err(case.fail(&format!("unionfs exited with {code:?} at unmount")));
    }
    let check = |case: &Case| -> Result<(), String> {
        let kernel =
            KernelOverlay::mount_with(&lowers, Some((&u1, &w1)), &m1, KERNEL_OPTS).map_err(|e| case.fail(&e))?;
        let mut upper_as_lower = vec![u2.clone()];
        upper_as_lower.extend(lowers.iter().cloned());
        {
            let kread = KernelOverlay::mount_with(&upper_as_lower, None, &m3, KERNEL_OPTS)
                .map_err(|e| case.fail(&format!("kernel refuses unionfs's upper as a layer: {e}")))?;
            let diff = compare_kernel_views(&m1, &m3);
            if !diff.is_empty() {
                return Err(case.fail(&format!(
                    "kernel overlay reading unionfs's upper (as 'unionfs' below) differs:\n{}",
                    diff.join("\n")
                )));
            }
            drop(kread);
        }
        let uni = mount_unionfs(&lowers, &u2, &w2, &m2);
        progress.lock().unwrap().daemon = uni.pid();
        let (_, diff) = compare_views(&m1, &m2);
        if !diff.is_empty() {
            return Err(case.fail(&format!("views differ after remount:\n{}", diff.join("\n"))));
        }
        drop(kernel);
        let code = uni.unmount();
        progress.lock().unwrap().daemon = None;
        if code != Some(0) {
            return Err(case.fail(&format!("unionfs exited with {code:?} at the second unmount")));
        }
        let after: Vec<Tree> = lowers.iter().map(|l| Tree::read_raw(l)).collect();
        if after != lowers_before {
            let mut d = Vec::new();
            for (a, b) in lowers_before.iter().zip(&after) {
                d.extend(tree_diff(a, b));
                if a.mtimes != b.mtimes {
                    d.push("  (mtimes changed)".into());
                }
            }
            return Err(case.fail(&format!("lower layers changed (before | after):\n{}", d.join("\n"))));
        }
        Ok(())
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&case)));
    progress.lock().unwrap().daemon = None;
    match r {
        Ok(r) => r,
        Err(e) => Err(case.fail(&format!("panic after the operations: {}", panic_text(&e)))),
    }
}

fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "?".into())
}

/// Whether this machine can mount a kernel overlay at all (the reference the test needs).
fn probe_kernel_overlay() -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("unionfs-diff-probe")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let d = |n: &str| {
        let p = dir.path().join(n);
        fs::create_dir(&p).map(|_| p).map_err(|e| e.to_string())
    };
    let (l, u, w, m) = (d("l")?, d("u")?, d("w")?, d("m")?);
    KernelOverlay::mount(&[l], Some((&u, &w)), &m).map(drop)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn same_as_kernel_overlayfs() {
    if !common::require_root("kernel overlay mounts") {
        return;
    }
    if let Err(e) = probe_kernel_overlay() {
        common::require(false, &format!("kernel overlayfs to compare with: {e}"));
        return;
    }
    rustix::process::umask(Mode::from_raw_mode(0o022));
    // Failures are reported with their seed and operations; keep each panic to one line.
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        eprintln!("panic at {loc}: {msg}");
    }));
    let cases = env_u64("UNIONFS_DIFF_CASES", 20);
    let n_ops = env_u64("UNIONFS_DIFF_OPS", 40) as usize;
    let first = env_u64("UNIONFS_DIFF_SEED", 1);

    // A hung operation would hang the test without telling which seed: after STUCK, report and
    // kill the daemon this test started (the hung call then fails with ENOTCONN).
    let progress = Arc::new(Mutex::new(Progress {
        step_started: Instant::now(),
        daemon: None,
        seed: first,
        fired: false,
    }));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (progress, done) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let mut p = progress.lock().unwrap();
                if let Some(pid) = p.daemon {
                    if !p.fired && p.step_started.elapsed() > STUCK {
                        eprintln!(
                            "watchdog: seed {} stuck for {STUCK:?}; killing unionfs pid {pid}",
                            p.seed
                        );
                        p.fired = true;
                        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                    }
                }
            }
        })
    };

    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in first..first + cases {
        progress.lock().unwrap().fired = false;
        if let Err(report) = run_case(seed, n_ops, &progress) {
            if failures.len() < 3 {
                eprintln!("{report}");
            }
            failures.push(seed);
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    eprintln!("differential: {cases} cases x {n_ops} ops in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ from kernel overlayfs; seeds {failures:?}",
        failures.len()
    );
}
