//! Property tests: random lower layers and random operation sequences run on `unionfs::Union`
//! and on the reference model of `model/mod.rs`. After every step the errno must be the model's
//! and the whole view (names, types, data, link targets, modes, `user.x`, inode numbers) must be
//! the model's, both through the running union and through a fresh one over the same
//! directories (what a remount would show). The upper must be a valid layer that, folded over
//! the lowers by the model's own rules, shows the same view; the lowers must not change at all.

mod model;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use model::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use unionfs::WhiteoutStyle;

/// One step. Generated with [`PathGen`] paths, resolved against the model to plain paths just
/// before it runs (so that most operations hit existing names).
#[derive(Clone, Debug)]
enum Op<P = PathBuf> {
    /// `open(O_CREAT | O_EXCL | O_WRONLY)`, write, close.
    CreateFile {
        path: P,
        mode: u32,
        data: Vec<u8>,
    },
    /// `open(O_WRONLY)` of an existing file (copy-up), `pwrite`, close.
    WriteFile {
        path: P,
        offset: u64,
        data: Vec<u8>,
    },
    Truncate {
        path: P,
        len: u64,
    },
    Mkdir {
        path: P,
        mode: u32,
    },
    Unlink {
        path: P,
    },
    Rmdir {
        path: P,
    },
    Rename {
        from: P,
        to: P,
        flags: u32,
    },
    Symlink {
        path: P,
        target: String,
    },
    Link {
        from: P,
        to: P,
    },
    Chmod {
        path: P,
        mode: u32,
    },
    SetXattr {
        path: P,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: P,
    },
    /// `open(O_WRONLY)` kept open in a slot (closing the slot's previous handle).
    Open {
        slot: u8,
        path: P,
    },
    /// `pwrite` through the handle in a slot (nothing if it is empty).
    WriteHandle {
        slot: u8,
        offset: u64,
        data: Vec<u8>,
    },
    /// `ftruncate` through the handle in a slot.
    TruncateHandle {
        slot: u8,
        len: u64,
    },
    Close {
        slot: u8,
    },
    /// Drop the union and open a new one over the same directories.
    Remount,
    /// The kernel forgets every node: the next operation starts from an empty node table
    /// (otherwise it runs with every node of the last tree read still referenced).
    DropCaches,
    /// Read and compare the whole view now (with `Checks::Sparse`; otherwise every step is
    /// followed by one anyway).
    Check,
}

impl<P> Op<P> {
    fn map_paths<Q>(&self, f: impl Fn(&P) -> Q) -> Op<Q> {
        match self {
            Op::CreateFile { path, mode, data } => Op::CreateFile {
                path: f(path),
                mode: *mode,
                data: data.clone(),
            },
            Op::WriteFile { path, offset, data } => Op::WriteFile {
                path: f(path),
                offset: *offset,
                data: data.clone(),
            },
            Op::Truncate { path, len } => Op::Truncate {
                path: f(path),
                len: *len,
            },
            Op::Mkdir { path, mode } => Op::Mkdir {
                path: f(path),
                mode: *mode,
            },
            Op::Unlink { path } => Op::Unlink { path: f(path) },
            Op::Rmdir { path } => Op::Rmdir { path: f(path) },
            Op::Rename { from, to, flags } => Op::Rename {
                from: f(from),
                to: f(to),
                flags: *flags,
            },
            Op::Symlink { path, target } => Op::Symlink {
                path: f(path),
                target: target.clone(),
            },
            Op::Link { from, to } => Op::Link {
                from: f(from),
                to: f(to),
            },
            Op::Chmod { path, mode } => Op::Chmod {
                path: f(path),
                mode: *mode,
            },
            Op::SetXattr { path, value } => Op::SetXattr {
                path: f(path),
                value: value.clone(),
            },
            Op::RemoveXattr { path } => Op::RemoveXattr { path: f(path) },
            Op::Open { slot, path } => Op::Open {
                slot: *slot,
                path: f(path),
            },
            Op::WriteHandle { slot, offset, data } => Op::WriteHandle {
                slot: *slot,
                offset: *offset,
                data: data.clone(),
            },
            Op::TruncateHandle { slot, len } => Op::TruncateHandle { slot: *slot, len: *len },
            Op::Close { slot } => Op::Close { slot: *slot },
            Op::Remount => Op::Remount,
            Op::DropCaches => Op::DropCaches,
            Op::Check => Op::Check,
        }
    }
}

/// A path as generated: most pick from what the view shows at the time the step runs.
#[derive(Clone, Debug)]
enum PathGen {
    /// One of the visible paths.
    Existing(Index),
    /// A name in one of the visible directories (or the root).
    Child(Index, String),
    /// Any path of 1 to 3 components.
    Literal(PathBuf),
}

impl PathGen {
    fn resolve(&self, m: &View) -> PathBuf {
        match self {
            PathGen::Existing(i) => {
                let all: Vec<&PathBuf> = m.names.keys().collect();
                if all.is_empty() {
                    PathBuf::from(NAMES[0])
                } else {
                    all[i.index(all.len())].clone()
                }
            }
            PathGen::Child(i, name) => {
                let mut dirs = vec![PathBuf::new()];
                dirs.extend(m.names.keys().filter(|p| m.get(p).is_some_and(Node::is_dir)).cloned());
                i.get(&dirs).join(name)
            }
            PathGen::Literal(p) => p.clone(),
        }
    }
}

fn apply_model(m: &mut View, op: &Op) -> Outcome {
    match op {
        Op::CreateFile { path, mode, data } => m.create_file(path, *mode, data),
        Op::WriteFile { path, offset, data } => m.write_file(path, *offset, data),
        Op::Truncate { path, len } => m.truncate(path, *len),
        Op::Mkdir { path, mode } => m.mkdir(path, *mode),
        Op::Unlink { path } => m.unlink(path),
        Op::Rmdir { path } => m.rmdir(path),
        Op::Rename { from, to, flags } => m.rename(from, to, *flags),
        Op::Symlink { path, target } => m.symlink(path, target.as_bytes()),
        Op::Link { from, to } => m.link(from, to),
        Op::Chmod { path, mode } => m.chmod(path, *mode),
        Op::SetXattr { path, value } => m.set_xattr(path, value),
        Op::RemoveXattr { path } => m.remove_xattr(path),
        Op::Open { slot, path } => m.open_write(*slot, path),
        Op::WriteHandle { slot, offset, data } => m.write_handle(*slot, *offset, data),
        Op::TruncateHandle { slot, len } => m.truncate_handle(*slot, *len),
        Op::Close { slot } => {
            m.close(*slot);
            Ok(())
        }
        // Unmounting needs every file closed.
        Op::Remount => {
            m.close_all();
            Ok(())
        }
        Op::DropCaches | Op::Check => Ok(()),
    }
}

fn apply_union(d: &mut Driver, op: &Op) -> Result<(), i32> {
    match op {
        Op::CreateFile { path, mode, data } => d.create_file(path, *mode, data),
        Op::WriteFile { path, offset, data } => d.write_file(path, *offset, data),
        Op::Truncate { path, len } => d.truncate(path, *len),
        Op::Mkdir { path, mode } => d.mkdir(path, *mode),
        Op::Unlink { path } => d.unlink(path),
        Op::Rmdir { path } => d.rmdir(path),
        Op::Rename { from, to, flags } => d.rename(from, to, *flags),
        Op::Symlink { path, target } => d.symlink(path, target.as_bytes()),
        Op::Link { from, to } => d.link(from, to),
        Op::Chmod { path, mode } => d.chmod(path, *mode),
        Op::SetXattr { path, value } => d.set_xattr(path, value),
        Op::RemoveXattr { path } => d.remove_xattr(path),
        Op::Open { slot, path } => d.open_write(*slot, path),
        Op::WriteHandle { slot, offset, data } => d.write_handle(*slot, *offset, data),
        Op::TruncateHandle { slot, len } => d.truncate_handle(*slot, *len),
        Op::Close { slot } => {
            d.close(*slot);
            Ok(())
        }
        Op::Remount => {
            d.remount();
            Ok(())
        }
        Op::DropCaches | Op::Check => Ok(()),
    }
}

fn errno_name(r: &Result<(), i32>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => std::io::Error::from_raw_os_error(*e).to_string(),
    }
}

thread_local! {
    /// Errno differences where the kernel would have answered before calling the library
    /// (reported once each, see `compare_outcome`).
    static MASKED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// How strict a run is.
#[derive(Clone, Copy)]
struct Strictness {
    /// Errnos the kernel decides itself must match too.
    kernel_errnos: bool,
}

/// The property test: errnos that only direct library users see (the kernel answers them itself
/// through a mount) are logged, not failed, unless `UNIONFS_STRICT_ERRNO=1`.
fn from_env() -> Strictness {
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| v == "1");
    Strictness {
        kernel_errnos: set("UNIONFS_STRICT_ERRNO"),
    }
}

/// Regression replays: everything exact.
const EXACT: Strictness = Strictness { kernel_errnos: true };

fn compare_outcome(op: &Op, want: Outcome, got: Result<(), i32>, strict: Strictness) -> Result<(), String> {
    let want_r = want.map_err(|f| f.errno);
    if want_r == got {
        return Ok(());
    }
    // Through a mount the kernel answers these from its own dentries and never asks us, so a
    // different answer from the library is only visible to direct library users. Such cases are
    // pinned by `regression_*` tests; here they would hide every deeper bug behind them.
    if let Err(f) = want {
        if f.vfs && !strict.kernel_errnos {
            let kind = format!("{op:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string();
            let key = format!(
                "{kind}: kernel says {}, library says {}",
                errno_name(&want_r),
                errno_name(&got)
            );
            MASKED.with(|m| {
                if m.borrow_mut().insert(key.clone()) {
                    eprintln!("note (masked by the kernel): {key}");
                }
            });
            return Ok(());
        }
    }
    Err(format!(
        "model says {}, union says {}",
        errno_name(&want_r),
        errno_name(&got)
    ))
}

/// The lowers must not change at all, not even the atime of a file or directory.
const LOWER_ATIMES: Atimes = Atimes::FilesAndDirs;

/// Every object the view did not change keeps its lower mtime, directories included (a copy-up
/// into a directory is not a change of it).
const MTIMES: Mtimes = Mtimes::All;

/// Everything that must hold between two operations.
fn check_state(
    fx: &Fixture,
    d: &mut Driver,
    model: &View,
    ids: &mut Identity,
    lowers_before: &[BTreeMap<PathBuf, String>],
    keep_cache: bool,
) -> Result<(), String> {
    let seen = d.read_tree();
    if !keep_cache {
        d.end_op();
    }
    let seen = seen?;
    compare_view(model, &seen, ids)?;
    check_mtimes(model, &seen, MTIMES)?;
    let fresh = read_fresh(&fx.second_config()).map_err(|e| format!("remounted: {e}"))?;
    compare_view(model, &fresh, ids).map_err(|e| format!("remounted: {e}"))?;
    check_mtimes(model, &fresh, MTIMES).map_err(|e| format!("remounted: {e}"))?;
    let left = fx.workdir_leftovers();
    if !left.is_empty() {
        return Err(format!("workdir not empty between operations: {left:?}"));
    }
    fx.check_upper(&model.contents())?;
    for (i, (before, after)) in lowers_before.iter().zip(fx.snapshot_lowers(LOWER_ATIMES)).enumerate() {
        let diff = diff_snapshots(before, &after);
        if !diff.is_empty() {
            return Err(format!("lower layer {i} changed:\n{}", diff.join("\n")));
        }
    }
    Ok(())
}

/// How often the whole state is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checks {
    /// After every operation (the tree read holds every node until the end of the next one).
    Every,
    /// Only at `Op::Check`, after a remount and at the end; in between, each operation runs
    /// with the nodes the previous one looked up, and nothing refreshes them (errnos are still
    /// compared after every operation).
    Sparse,
}

/// Runs one case: `steps` are resolved to operations against the model one by one. `Err`
/// describes the first divergence, with the operations as they actually ran.
fn run_case<T>(
    lowers: &[(Layer, Encoding)],
    style: WhiteoutStyle,
    checks: Checks,
    strict: Strictness,
    steps: &[T],
    resolve: impl Fn(&View, &T) -> Op,
) -> Result<(), String> {
    let mut fx = Fixture::new(lowers);
    fx.style = style;
    let lowers_before = fx.snapshot_lowers(LOWER_ATIMES);
    let mut model = View::from_layers(&fx.layers);
    let mut ids = Identity::default();
    let mut d = fx.mount();
    // Callers other than the daemon's user: what they create must be theirs (SPEC, Permissions).
    if rustix::process::geteuid().is_root() {
        d.ctx.uid = 1000;
        d.ctx.gid = 1000;
        model.creator = (1000, 1000);
    }
    check_state(&fx, &mut d, &model, &mut ids, &lowers_before, true)
        .map_err(|e| format!("before any operation: {e}"))?;
    let mut ran: Vec<Op> = Vec::new();
    let context = |ran: &[Op], e: String| format!("{e}\noperations run: {ran:#?}");
    for step in steps {
        let op = resolve(&model, step);
        ran.push(op.clone());
        let want = apply_model(&mut model, &op);
        let got = apply_union(&mut d, &op);
        let check_now = checks == Checks::Every || matches!(op, Op::Remount | Op::Check);
        if check_now {
            d.end_op();
        } else {
            d.end_op_keeping();
        }
        compare_outcome(&op, want, got, strict).map_err(|e| context(&ran, format!("{op:?}: {e}")))?;
        ids.retain_live(&model);
        if !check_now {
            continue;
        }
        let keep_cache = !matches!(op, Op::DropCaches);
        check_state(&fx, &mut d, &model, &mut ids, &lowers_before, keep_cache)
            .map_err(|e| context(&ran, format!("after {op:?}: {e}")))?;
    }
    check_state(&fx, &mut d, &model, &mut ids, &lowers_before, false)
        .map_err(|e| context(&ran, format!("at the end: {e}")))?;
    d.close_all();
    d.forget_all();
    let live = d.u().live_nodes();
    if live != 1 {
        let e = format!("{live} nodes live after every lookup was forgotten (want 1, the root)");
        return Err(context(&ran, e));
    }
    Ok(())
}

// ---- generators --------------------------------------------------------------------------------

/// Few names, so that layers collide and operations hit existing paths.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(String::from)
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&b"xyz019"[..]), 0..6)
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(&[0o644, 0o600, 0o755, 0o444][..])
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(&[0o755, 0o700, 0o555, 0o2755][..])
}

fn xattr() -> impl Strategy<Value = Option<Vec<u8>>> {
    const VALUES: [&[u8]; 3] = [b"lo", b"lower", b""];
    prop::option::weighted(0.2, prop::sample::select(&VALUES[..]).prop_map(<[u8]>::to_vec))
}

fn target() -> impl Strategy<Value = String> {
    prop::sample::select(&["a", "../b", "/etc/passwd", "c/d"][..]).prop_map(String::from)
}

/// One entry with, for a directory, its contents relative to it.
fn entry(depth: u32) -> BoxedStrategy<(Node, Layer)> {
    let leaf = prop_oneof![
        4 => (data(), file_mode(), xattr()).prop_map(|(data, mode, xattr)| (Node::File { data, mode, xattr }, Layer::new())),
        1 => target().prop_map(|t| (symlink(&t), Layer::new())),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let dir = (dir_mode(), xattr(), prop::bool::weighted(0.15), dir_entries(depth - 1)).prop_map(
        |(mode, xattr, opaque, mut kids)| {
            if opaque {
                kids.insert(PathBuf::from(OPQ), file(b""));
            }
            (Node::Dir { mode, xattr }, kids)
        },
    );
    prop_oneof![3 => leaf, 2 => dir].boxed()
}

/// The contents of one directory: up to three names, each an entry, a whiteout or both
/// (an entry stays visible next to its own layer's whiteout).
fn dir_entries(depth: u32) -> BoxedStrategy<Layer> {
    let slot = (prop::option::weighted(0.85, entry(depth)), prop::bool::weighted(0.2));
    prop::collection::btree_map(name(), slot, 0..=3)
        .prop_map(|m| {
            let mut out = Layer::new();
            for (n, (e, wh)) in m {
                let p = PathBuf::from(n);
                if e.is_none() || wh {
                    out.insert(whiteout_path(&p), file(b""));
                }
                if let Some((node, kids)) = e {
                    out.extend(kids.into_iter().map(|(k, v)| (p.join(k), v)));
                    out.insert(p, node);
                }
            }
            out
        })
        .boxed()
}

/// A lower layer: a tree of depth up to 3, sometimes an opaque root, sometimes a second hard
/// link to one of its files, whiteouts encoded the OCI or the overlay way.
fn lower() -> impl Strategy<Value = (Layer, Encoding)> {
    (
        dir_entries(2),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.3, any::<(Index, Index, Index)>()),
        prop::sample::select(&[Encoding::Oci, Encoding::Overlay, Encoding::XattrWhiteouts][..]),
    )
        .prop_map(|(mut l, opaque, link, enc)| {
            if opaque {
                l.insert(PathBuf::from(OPQ), file(b""));
            }
            if let Some((f, d, n)) = link {
                add_hard_link(&mut l, f, d, n);
            }
            // Whiteout devices need root.
            let root = rustix::process::geteuid().is_root();
            (
                l,
                if enc == Encoding::Overlay && !root {
                    Encoding::Oci
                } else {
                    enc
                },
            )
        })
}

fn add_hard_link(l: &mut Layer, f: Index, d: Index, n: Index) {
    let is_marker = |p: &Path| is_reserved(split(p).1);
    let files: Vec<PathBuf> = l
        .iter()
        .filter(|(p, v)| matches!(v, Node::File { .. }) && !is_marker(p))
        .map(|(p, _)| p.clone())
        .collect();
    let mut dirs = vec![PathBuf::new()];
    dirs.extend(l.iter().filter(|(_, v)| v.is_dir()).map(|(p, _)| p.clone()));
    if files.is_empty() {
        return;
    }
    let (to, dir) = (f.get(&files).clone(), d.get(&dirs).clone());
    let start = n.index(NAMES.len());
    let free = (0..NAMES.len())
        .map(|i| dir.join(NAMES[(start + i) % NAMES.len()]))
        .find(|p| !l.contains_key(p));
    if let Some(p) = free {
        l.insert(p, Node::HardLink { to });
    }
}

fn path() -> impl Strategy<Value = PathGen> {
    let component = || prop_oneof![30 => name(), 1 => Just(".wh.a".to_string())];
    let literal = prop::collection::vec(component(), 1..=3).prop_map(|v| PathGen::Literal(v.iter().collect()));
    prop_oneof![
        5 => any::<Index>().prop_map(PathGen::Existing),
        3 => (any::<Index>(), component()).prop_map(|(i, n)| PathGen::Child(i, n)),
        2 => literal,
    ]
}

fn op() -> impl Strategy<Value = Op<PathGen>> {
    let flags = prop_oneof![3 => Just(0), 1 => Just(RENAME_NOREPLACE), 1 => Just(RENAME_EXCHANGE)];
    let any_mode = prop::sample::select(&[0o644, 0o600, 0o755, 0o700, 0o555, 0o2755][..]);
    prop_oneof![
        3 => (path(), file_mode(), data()).prop_map(|(path, mode, data)| Op::CreateFile { path, mode, data }),
        3 => (path(), 0..8u64, data()).prop_map(|(path, offset, data)| Op::WriteFile { path, offset, data }),
        1 => (path(), 0..12u64).prop_map(|(path, len)| Op::Truncate { path, len }),
        3 => (path(), dir_mode()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        2 => path().prop_map(|path| Op::Unlink { path }),
        2 => path().prop_map(|path| Op::Rmdir { path }),
        4 => (path(), path(), flags).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        1 => (path(), target()).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (path(), any_mode).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), data()).prop_map(|(path, value)| Op::SetXattr { path, value }),
        1 => path().prop_map(|path| Op::RemoveXattr { path }),
        2 => (0..2u8, path()).prop_map(|(slot, path)| Op::Open { slot, path }),
        2 => (0..2u8, 0..8u64, data()).prop_map(|(slot, offset, data)| Op::WriteHandle { slot, offset, data }),
        1 => (0..2u8, 0..12u64).prop_map(|(slot, len)| Op::TruncateHandle { slot, len }),
        1 => (0..2u8).prop_map(|slot| Op::Close { slot }),
        1 => Just(Op::Remount),
        1 => Just(Op::DropCaches),
        1 => Just(Op::Check),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer hunt; 128 keeps the suite well under a minute.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        // Integration tests have no lib.rs beside them, so the default (SourceParallel) finds no
        // place to keep failing cases: keep them in tests/union_props.proptest-regressions.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn union_matches_model(
        lowers in prop::collection::vec(lower(), 1..=3),
        style in prop::sample::select(&[WhiteoutStyle::Overlay, WhiteoutStyle::Oci][..]),
        checks in prop_oneof![7 => Just(Checks::Every), 3 => Just(Checks::Sparse)],
        ops in prop::collection::vec(op(), 1..25),
    ) {
        if let Err(e) = run_case(&lowers, style, checks, from_env(), &ops, |m, op| op.map_paths(|p| p.resolve(m))) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ---- regressions (shrunk cases of bugs found by the property test) -----------------------------

fn replay(lowers: Vec<(Layer, Encoding)>, ops: Vec<Op>) {
    if let Err(e) = run_case(&lowers, WhiteoutStyle::Overlay, Checks::Every, EXACT, &ops, |_, op| {
        op.clone()
    }) {
        panic!("{e}");
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The harness itself on a fixed three-layer stack (a whiteout hiding a lower file, an opaque
/// directory, a directory over a file, a hard link), across a remount.
#[test]
fn fixed_stack_matches_model() {
    let l0 = layer(&[
        ("a", dir()),
        ("a/x", file(b"top")),
        (".wh.b", file(b"")),
        ("c", file(b"c0")),
    ]);
    let l1 = layer(&[
        ("a", dir()),
        ("a/y", file(b"mid")),
        ("a/.wh..wh..opq", file(b"")),
        ("b", file(b"hidden")),
        ("d", file(b"d1")),
        ("e", Node::HardLink { to: p("d") }),
    ]);
    let l2 = layer(&[
        ("a", dir()),
        ("a/z", file(b"hidden by opaque")),
        ("c", dir()),
        ("c/q", file(b"")),
    ]);
    let enc = if rustix::process::geteuid().is_root() {
        Encoding::Overlay
    } else {
        Encoding::Oci
    };
    replay(
        vec![(l0, Encoding::Oci), (l1, enc), (l2, Encoding::Oci)],
        vec![Op::Remount],
    );
}

/// Copy-up of a symlink (here for a refused setxattr, then for a rename) keeps its inode
/// number across remounts. Fixed in c27b473 (the origin is now recorded where a symlink can
/// carry it); found by `union_matches_model`.
#[test]
fn regression_symlink_keeps_ino_after_copy_up_and_remount() {
    replay(
        vec![(layer(&[("c", symlink("a"))]), Encoding::Oci)],
        vec![
            Op::SetXattr {
                path: p("c"),
                value: vec![],
            },
            Op::Remount,
            Op::Rename {
                from: p("c"),
                to: p("d"),
                flags: 0,
            },
            Op::Remount,
        ],
    );
}

/// A hard link to a symlink was listed by readdir as a regular file while lookup said symlink
/// (`NewObject::kind` answered `Kind::File` for every `Link`). Fixed in b0d1275; found by
/// `union_matches_model`.
#[test]
fn regression_hard_link_to_symlink_lists_as_file() {
    replay(
        vec![(layer(&[("a", symlink("a"))]), Encoding::Oci)],
        vec![Op::Link {
            from: p("a"),
            to: p("b"),
        }],
    );
}

/// Renaming a directory whose lower subdirectory holds a file with several names (here both
/// names are there; the other may be anywhere, even hidden) fails with ESTALE, leaving a
/// half-done copy-up, when the kernel holds no reference to that subdirectory: `copy_up_tree`
/// resolves `a/s` with no kernel lookups and copies `a/s/x` up; its `link_siblings` walks to
/// every name of the file through `a/s` and then prunes the nodes it walked, `a/s` included;
/// the next `resolve_child(a/s, "y")` of `copy_up_tree` answers ESTALE. Fixed by pinning nodes during internal walks.
#[test]
fn regression_rename_dir_with_hard_linked_lower_files() {
    let l = layer(&[
        ("a", dir()),
        ("a/s", dir()),
        ("a/s/x", file(b"1")),
        ("a/s/y", Node::HardLink { to: p("a/s/x") }),
    ]);
    replay(
        vec![(l, Encoding::Oci)],
        vec![
            Op::DropCaches,
            Op::Rename {
                from: p("a"),
                to: p("b"),
                flags: 0,
            },
        ],
    );
}

/// `renameat2(a, a, RENAME_NOREPLACE)` is EEXIST on Linux; `Union::rename` answers Ok because
/// it returns early for identical names before its NOREPLACE check. Through a mount the kernel
/// answers first, so only library users see it. Fixed.
#[test]
fn regression_rename_onto_itself_with_noreplace_is_eexist() {
    replay(
        vec![(layer(&[("a", file(b"x"))]), Encoding::Oci)],
        vec![Op::Rename {
            from: p("a"),
            to: p("a"),
            flags: RENAME_NOREPLACE,
        }],
    );
}

/// `link(dir, existing)` is EEXIST on Linux (the name is checked before the type of the
/// source); `Union::link` answers EPERM. Masked by the kernel through a mount. Fixed.
#[test]
fn regression_link_of_dir_onto_existing_name_is_eexist() {
    replay(
        vec![(layer(&[("d", dir()), ("f", file(b"x"))]), Encoding::Oci)],
        vec![Op::Link {
            from: p("d"),
            to: p("f"),
        }],
    );
}

/// `rename(missing, ".wh.x")` is ENOENT (the source is looked up first); `Union::rename`
/// checks the target name first and answers EINVAL. Masked by the kernel through a mount. Fixed.
#[test]
fn regression_rename_of_missing_name_to_whiteout_name_is_enoent() {
    replay(
        vec![(layer(&[]), Encoding::Oci)],
        vec![Op::Rename {
            from: p("x"),
            to: p(".wh.x"),
            flags: 0,
        }],
    );
}
