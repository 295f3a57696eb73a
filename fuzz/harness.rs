//! The comparison harness shared by the `union_ops` fuzz target and `tests/fuzz_regressions.rs`:
//! one operation sequence run on `unionfs::Union` (through `model::Driver`) and on the reference
//! model (`model::View`), with the whole state compared after the steps that ask for it.
//!
//! It mirrors `run_case` of `tests/union_props.rs` (which lives in a test binary and cannot be
//! shared), always with exact errnos: a difference the kernel would hide through a mount is still
//! a divergence for a direct library user.
//!
//! The including crate must declare the model at its root as `mod model;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::*;
use unionfs::WhiteoutStyle;

/// One step, with plain paths.
#[derive(Clone, Debug)]
pub enum Op {
    CreateFile { path: PathBuf, mode: u32, data: Vec<u8> },
    WriteFile { path: PathBuf, offset: u64, data: Vec<u8> },
    Truncate { path: PathBuf, len: u64 },
    Mkdir { path: PathBuf, mode: u32 },
    Unlink { path: PathBuf },
    Rmdir { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf, flags: u32 },
    Symlink { path: PathBuf, target: String },
    Link { from: PathBuf, to: PathBuf },
    Chmod { path: PathBuf, mode: u32 },
    SetXattr { path: PathBuf, value: Vec<u8> },
    RemoveXattr { path: PathBuf },
    Open { slot: u8, path: PathBuf },
    WriteHandle { slot: u8, offset: u64, data: Vec<u8> },
    TruncateHandle { slot: u8, len: u64 },
    Close { slot: u8 },
    Remount,
    DropCaches,
    Check,
}

/// How often the whole state is checked (as in `tests/union_props.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checks {
    Every,
    Sparse,
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

const LOWER_ATIMES: Atimes = Atimes::FilesAndDirs;
const MTIMES: Mtimes = Mtimes::All;

/// Everything that must hold between two operations (as `check_state` of `union_props.rs`).
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

/// Runs one case; `steps` are resolved to operations against the model one by one. `Err`
/// describes the first divergence, with the operations as they actually ran.
pub fn run_case<T>(
    lowers: &[(Layer, Encoding)],
    style: WhiteoutStyle,
    checks: Checks,
    steps: &[T],
    resolve: impl Fn(&View, &T) -> Op,
) -> Result<(), String> {
    let mut fx = Fixture::new(lowers);
    fx.style = style;
    let lowers_before = fx.snapshot_lowers(LOWER_ATIMES);
    let mut model = View::from_layers(&fx.layers);
    let mut ids = Identity::default();
    let mut d = fx.mount();
    if rustix::process::geteuid().is_root() {
        d.ctx.uid = 1000;
        d.ctx.gid = 1000;
        model.creator = (1000, 1000);
    }
    let context = |ran: &[Op], e: String| {
        format!("{e}\nlowers: {lowers:?}\nstyle: {style:?}, checks: {checks:?}\noperations run: {ran:?}")
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
        let want_r = want.map_err(|f| f.errno);
        if want_r != got {
            let vfs = matches!(want, Err(f) if f.vfs);
            let e = format!(
                "{op:?}: model says {}, union says {}{}",
                errno_name(&want_r),
                errno_name(&got),
                if vfs {
                    " (the kernel answers this one itself through a mount)"
                } else {
                    ""
                }
            );
            return Err(context(&ran, e));
        }
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

/// Replays fixed operations (for regression tests): panics with the divergence.
pub fn replay(lowers: Vec<(Layer, Encoding)>, style: WhiteoutStyle, checks: Checks, ops: Vec<Op>) {
    if let Err(e) = run_case(&lowers, style, checks, &ops, |_, op| op.clone()) {
        panic!("{e}");
    }
}

pub fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

pub fn is_marker(path: &Path) -> bool {
    is_reserved(split(path).1)
}
