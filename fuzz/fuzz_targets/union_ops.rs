//! Fuzz target `union_ops`: decodes the input into up to three lower layers (up to twelve
//! entries each) and up to forty operations, runs them on `unionfs::Union` and on the reference
//! model (the `unionfs-model` crate, `tests/model/`), and panics (a crash for libFuzzer) at the
//! first divergence: an errno, the view (names, types, data, modes, xattrs, inode numbers,
//! owners, mtimes), the view after a remount, the upper's on-disk format, the lowers, the workdir
//! or the node table. One case in four instead starts from a crafted upper (redirect and
//! metacopy markers aimed outside the layers, `unionfs_model::hostile`) and checks that nothing
//! outside the layers is ever shown and each entry is the model's or an allowed error.
//!
//! `UNIONFS_FUZZ_SKIP=substr1|substr2` ignores divergences whose message contains one of the
//! substrings (to look past a known finding); it is off by default.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use unionfs::WhiteoutStyle;

use unionfs_model::harness::{Checks, EXACT, Op, Opens, is_marker, run_case};
use unionfs_model::hostile;
use unionfs_model::*;

const MAX_LOWERS: usize = 3;
const MAX_ENTRIES: usize = 12;
const MAX_OPS: usize = 40;
/// Crafted markers in a hostile upper.
const MAX_MARKERS: u8 = 4;

/// Few names, so that layers collide and operations hit existing paths.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const FILE_MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o444];
const DIR_MODES: [u32; 4] = [0o755, 0o700, 0o555, 0o2755];
const ANY_MODES: [u32; 6] = [0o644, 0o600, 0o755, 0o700, 0o555, 0o2755];
const TARGETS: [&str; 4] = ["a", "../b", "/etc/passwd", "c/d"];
const XATTRS: [&[u8]; 3] = [b"lo", b"lower", b""];

fn pick<T: Copy>(v: &[T], i: u8) -> T {
    v[i as usize % v.len()]
}

/// A name: mostly one of [`NAMES`], sometimes the reserved `.wh.a`.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Name(u8);

impl Name {
    fn get(self) -> &'static str {
        if self.0 % 16 == 15 { ".wh.a" } else { pick(&NAMES, self.0) }
    }
    fn plain(self) -> &'static str {
        pick(&NAMES, self.0)
    }
}

#[derive(Arbitrary, Debug)]
struct Data(Vec<u8>);

impl Data {
    fn get(&self) -> Vec<u8> {
        self.0.iter().take(5).map(|b| b"xyz019"[*b as usize % 6]).collect()
    }
}

#[derive(Arbitrary, Debug)]
enum EntryKind {
    File { data: Data, mode: u8, xattr: Option<u8> },
    Dir { mode: u8, xattr: Option<u8>, opaque: bool },
    Symlink { target: u8 },
    /// Only a whiteout for the name.
    Whiteout,
    /// Another name of one of the layer's files.
    HardLink { to: u8 },
}

#[derive(Arbitrary, Debug)]
struct Entry {
    /// Index into the directories of the layer made so far (0 = root).
    parent: u8,
    name: Name,
    kind: EntryKind,
    /// A whiteout next to the entry as well (the entry stays visible).
    whiteout: bool,
}

#[derive(Arbitrary, Debug)]
struct LowerIn {
    enc: u8,
    opaque_root: bool,
    entries: Vec<Entry>,
}

#[derive(Arbitrary, Debug, Clone)]
enum PathIn {
    Existing(u8),
    Child(u8, Name),
    Literal(Vec<Name>),
}

impl PathIn {
    fn resolve(&self, m: &View) -> PathBuf {
        match self {
            PathIn::Existing(i) => {
                let all: Vec<&PathBuf> = m.names.keys().collect();
                if all.is_empty() {
                    PathBuf::from(NAMES[0])
                } else {
                    all[*i as usize % all.len()].clone()
                }
            }
            PathIn::Child(i, name) => {
                let mut dirs = vec![PathBuf::new()];
                dirs.extend(m.names.keys().filter(|p| m.get(p).is_some_and(Node::is_dir)).cloned());
                dirs[*i as usize % dirs.len()].join(name.get())
            }
            PathIn::Literal(v) => {
                let mut p: PathBuf = v.iter().take(3).map(|n| n.get()).collect();
                if p.as_os_str().is_empty() {
                    p = PathBuf::from(NAMES[0]);
                }
                p
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum OpIn {
    CreateFile { path: PathIn, mode: u8, data: Vec<u8> },
    WriteFile { path: PathIn, offset: u8, data: Vec<u8> },
    Truncate { path: PathIn, len: u8 },
    Mkdir { path: PathIn, mode: u8 },
    Unlink { path: PathIn },
    Rmdir { path: PathIn },
    Rename { from: PathIn, to: PathIn, flags: u8 },
    Symlink { path: PathIn, target: u8 },
    Link { from: PathIn, to: PathIn },
    Chmod { path: PathIn, mode: u8 },
    SetXattr { path: PathIn, value: Vec<u8> },
    RemoveXattr { path: PathIn },
    Open { slot: u8, path: PathIn },
    WriteHandle { slot: u8, offset: u8, data: Vec<u8> },
    TruncateHandle { slot: u8, len: u8 },
    Close { slot: u8 },
    Remount,
    DropCaches,
    Check,
}

fn data(v: &[u8]) -> Vec<u8> {
    Data(v.to_vec()).get()
}

impl OpIn {
    fn resolve(&self, m: &View) -> Op {
        let r = |p: &PathIn| p.resolve(m);
        match self {
            OpIn::CreateFile { path, mode, data: d } => Op::CreateFile { path: r(path), mode: pick(&FILE_MODES, *mode), data: data(d) },
            OpIn::WriteFile { path, offset, data: d } => Op::WriteFile { path: r(path), offset: u64::from(offset % 8), data: data(d) },
            OpIn::Truncate { path, len } => Op::Truncate { path: r(path), len: u64::from(len % 12) },
            OpIn::Mkdir { path, mode } => Op::Mkdir { path: r(path), mode: pick(&DIR_MODES, *mode) },
            OpIn::Unlink { path } => Op::Unlink { path: r(path) },
            OpIn::Rmdir { path } => Op::Rmdir { path: r(path) },
            OpIn::Rename { from, to, flags } => Op::Rename {
                from: r(from),
                to: r(to),
                flags: pick(&[0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE], *flags),
            },
            OpIn::Symlink { path, target } => Op::Symlink { path: r(path), target: pick(&TARGETS, *target).to_string() },
            OpIn::Link { from, to } => Op::Link { from: r(from), to: r(to) },
            OpIn::Chmod { path, mode } => Op::Chmod { path: r(path), mode: pick(&ANY_MODES, *mode) },
            OpIn::SetXattr { path, value } => Op::SetXattr { path: r(path), value: data(value) },
            OpIn::RemoveXattr { path } => Op::RemoveXattr { path: r(path) },
            OpIn::Open { slot, path } => Op::Open { slot: slot % 2, path: r(path) },
            OpIn::WriteHandle { slot, offset, data: d } => Op::WriteHandle { slot: slot % 2, offset: u64::from(offset % 8), data: data(d) },
            OpIn::TruncateHandle { slot, len } => Op::TruncateHandle { slot: slot % 2, len: u64::from(len % 12) },
            OpIn::Close { slot } => Op::Close { slot: slot % 2 },
            OpIn::Remount => Op::Remount,
            OpIn::DropCaches => Op::DropCaches,
            OpIn::Check => Op::Check,
        }
    }
}

/// Builds a well-formed layer: every entry's parent is a directory of the same layer.
fn build_layer(l: &LowerIn) -> (Layer, Encoding) {
    let mut layer = Layer::new();
    let mut dirs = vec![PathBuf::new()];
    if l.opaque_root {
        layer.insert(PathBuf::from(OPQ), file(b""));
    }
    for e in l.entries.iter().take(MAX_ENTRIES) {
        let parent = dirs[e.parent as usize % dirs.len()].clone();
        let path = parent.join(e.name.plain());
        let wh = e.whiteout || matches!(e.kind, EntryKind::Whiteout);
        if layer.contains_key(&path) {
            continue;
        }
        let node = match &e.kind {
            EntryKind::File { data, mode, xattr } => Some(Node::File {
                data: data.get(),
                mode: pick(&FILE_MODES, *mode),
                xattr: xattr.map(|x| pick(&XATTRS, x).to_vec()),
            }),
            EntryKind::Dir { mode, xattr, opaque } => {
                dirs.push(path.clone());
                if *opaque {
                    layer.insert(opaque_path(&path), file(b""));
                }
                Some(Node::Dir { mode: pick(&DIR_MODES, *mode), xattr: xattr.map(|x| pick(&XATTRS, x).to_vec()) })
            }
            EntryKind::Symlink { target } => Some(symlink(pick(&TARGETS, *target))),
            EntryKind::Whiteout => None,
            EntryKind::HardLink { to } => {
                let files: Vec<PathBuf> = layer
                    .iter()
                    .filter(|(p, v)| matches!(v, Node::File { .. }) && !is_marker(p))
                    .map(|(p, _)| p.clone())
                    .collect();
                if files.is_empty() {
                    continue;
                }
                Some(Node::HardLink { to: files[*to as usize % files.len()].clone() })
            }
        };
        if wh {
            layer.insert(whiteout_path(&path), file(b""));
        }
        if let Some(n) = node {
            layer.insert(path, n);
        }
    }
    let enc = pick(&[Encoding::Oci, Encoding::Overlay, Encoding::XattrWhiteouts], l.enc);
    // Whiteout devices need root.
    let enc = if enc == Encoding::Overlay && !rustix::process::geteuid().is_root() { Encoding::Oci } else { enc };
    (layer, enc)
}

#[derive(Debug)]
struct Case {
    /// Crafted markers for the initial upper (`unionfs_model::hostile`): a case with some runs
    /// the hostile checks instead of the model comparison.
    hostile: Vec<(u8, u8, u8)>,
    lowers: Vec<(Layer, Encoding)>,
    style: WhiteoutStyle,
    checks: Checks,
    opens: Opens,
    ops: Vec<OpIn>,
}

fn decode(bytes: &[u8]) -> arbitrary::Result<Case> {
    let mut u = Unstructured::new(bytes);
    let n_lowers = 1 + u.int_in_range(0..=MAX_LOWERS as u8 - 1)? as usize;
    let mut lowers = Vec::new();
    for _ in 0..n_lowers {
        let l: LowerIn = u.arbitrary()?;
        lowers.push(build_layer(&l));
    }
    // One case in four plants a crafted upper.
    let hostile = if u.ratio(1u8, 4u8)? {
        let n = 1 + u.int_in_range(0..=MAX_MARKERS - 1)?;
        (0..n).map(|_| u.arbitrary()).collect::<arbitrary::Result<_>>()?
    } else {
        Vec::new()
    };
    let style = if u.arbitrary::<bool>()? { WhiteoutStyle::Oci } else { WhiteoutStyle::Overlay };
    let checks = if u.ratio(3u8, 10u8)? { Checks::Sparse } else { Checks::Every };
    let opens = if u.arbitrary::<bool>()? { Opens::ReadWriteUpper } else { Opens::AsAsked };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        ops.push(u.arbitrary::<OpIn>()?);
    }
    Ok(Case {
        hostile,
        lowers,
        style,
        checks,
        opens,
        ops,
    })
}

fn skips() -> &'static [String] {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("UNIONFS_FUZZ_SKIP")
            .map(|v| v.split('|').filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(mut case) = decode(bytes) else { return };
    let r = if case.hostile.is_empty() {
        run_case(&case.lowers, case.style, case.checks, case.opens, EXACT, &case.ops, |m, op| op.resolve(m))
    } else {
        let upper = hostile::plant(&mut case.lowers, &case.hostile);
        hostile::run_hostile(&case.lowers, &upper, case.style, &case.ops, |m, op| op.resolve(m))
    };
    if let Err(e) = r {
        if skips().iter().any(|s| e.contains(s.as_str())) {
            return;
        }
        panic!("union and model diverge: {e}");
    }
});
