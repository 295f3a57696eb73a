//! The comparison harness of the property test (`tests/union/props.rs`), the `union_ops` fuzz
//! target and `tests/union/fuzz_regressions.rs`: one operation sequence run on `unionfs::Union`
//! (through [`Driver`]) and on the reference model ([`View`]), with the errno of every step and
//! the whole state compared after the steps that ask for it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::*;
use unionfs::WhiteoutStyle;

/// One step. The property test generates steps with its own path type and resolves them against
/// the model to plain paths just before they run (so that most operations hit existing names).
#[derive(Clone, Debug)]
pub enum Op<P = PathBuf> {
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
    pub fn map_paths<Q>(&self, f: impl Fn(&P) -> Q) -> Op<Q> {
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

pub fn apply_model(m: &mut View, op: &Op) -> Outcome {
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

pub fn apply_union(d: &mut Driver, op: &Op) -> Result<(), i32> {
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
pub struct Strictness {
    /// Errnos the kernel decides itself must match too.
    pub kernel_errnos: bool,
}

/// The property test: errnos that only direct library users see (the kernel answers them itself
/// through a mount) are logged, not failed, unless `UNIONFS_STRICT_ERRNO=1`.
pub fn from_env() -> Strictness {
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| v == "1");
    Strictness {
        kernel_errnos: set("UNIONFS_STRICT_ERRNO"),
    }
}

/// Regression replays and fuzzing: everything exact.
pub const EXACT: Strictness = Strictness { kernel_errnos: true };

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
pub enum Checks {
    /// After every operation (the tree read holds every node until the end of the next one).
    Every,
    /// Only at `Op::Check`, after a remount and at the end; in between, each operation runs
    /// with the nodes the previous one looked up, and nothing refreshes them (errnos are still
    /// compared after every operation).
    Sparse,
}

/// Runs one case: `steps` are resolved to operations against the model one by one. `Err`
/// describes the first divergence, with the operations as they actually ran.
/// How the union opens upper files for the harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opens {
    /// With the access each open asks for (the daemon without passthrough or writeback cache).
    AsAsked,
    /// Read-write whatever the open asks for, one fd able to serve every open of an object:
    /// the shape the FUSE adapter uses with passthrough or the writeback cache
    /// (`Union::set_rw_upper_fds`).
    ReadWriteUpper,
}

#[allow(clippy::too_many_arguments)]
pub fn run_case<T>(
    lowers: &[(Layer, Encoding)],
    style: WhiteoutStyle,
    checks: Checks,
    opens: Opens,
    strict: Strictness,
    steps: &[T],
    resolve: impl Fn(&View, &T) -> Op,
) -> Result<(), String> {
    let mut fx = Fixture::new(lowers);
    fx.style = style;
    fx.rw_upper_fds = opens == Opens::ReadWriteUpper;
    let lowers_before = fx.snapshot_lowers(LOWER_ATIMES);
    let mut model = View::from_layers(&fx.layers);
    let mut ids = Identity::default();
    let mut d = fx.mount();
    // Callers other than the daemon's user: what they create must be theirs (docs/semantics.md, Permissions).
    if rustix::process::geteuid().is_root() {
        d.ctx.uid = 1000;
        d.ctx.gid = 1000;
        model.creator = (1000, 1000);
    }
    let context = |ran: &[Op], e: String| {
        format!(
            "{e}\nlowers: {lowers:?}\nstyle: {style:?}, checks: {checks:?}, opens: {opens:?}\noperations run: {ran:#?}"
        )
    };
    check_state(&fx, &mut d, &model, &mut ids, &lowers_before, true)
        .map_err(|e| context(&[], format!("before any operation: {e}")))?;
    let mut ran: Vec<Op> = Vec::new();
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

/// Replays fixed operations (for regression tests) with exact errnos: panics with the divergence.
pub fn replay(lowers: Vec<(Layer, Encoding)>, style: WhiteoutStyle, checks: Checks, ops: Vec<Op>) {
    for opens in [Opens::AsAsked, Opens::ReadWriteUpper] {
        if let Err(e) = run_case(&lowers, style, checks, opens, EXACT, &ops, |_, op| op.clone()) {
            panic!("{e}");
        }
    }
}

pub fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

pub fn is_marker(path: &Path) -> bool {
    is_reserved(split(path).1)
}
