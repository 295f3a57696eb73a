//! Findings of the `union_ops` fuzz target (`fuzz/`), each shrunk to a minimal case and kept as a
//! test. They run through the fuzz target's own comparison (`unionfs_model::harness`: the same
//! checks as `run_case` of `props.rs`, with exact errnos) against the reference model.

use unionfs::WhiteoutStyle;
use unionfs_model::harness::{Checks, Op, p, replay};
use unionfs_model::*;

/// `renameat2(a, ".wh.a", RENAME_EXCHANGE)` with no `.wh.a` (a reserved name is never visible)
/// is ENOENT on Linux (the exchange target must exist, checked before any name rule);
/// `Union::rename` answers EINVAL: it refuses the reserved target name before it sees that the
/// exchange has nothing to swap with. Through a mount the kernel's own lookup of the target
/// answers ENOENT first, so only library users see it. Found by `union_ops` (17 crash inputs
/// in a 35-minute run, all this one, also as `rename(x, "a/.wh.a", RENAME_EXCHANGE)`).
#[test]
fn regression_fuzz_exchange_with_missing_whiteout_name_is_enoent() {
    replay(
        vec![(layer(&[("a", file(b"x"))]), Encoding::Oci)],
        WhiteoutStyle::Overlay,
        Checks::Every,
        vec![Op::Rename {
            from: p("a"),
            to: p(".wh.a"),
            flags: RENAME_EXCHANGE,
        }],
    );
}
