//! Independent test suites: runs `scripts/suites.sh` (pjdfstest, fsx and fio with O_DIRECT and
//! data verification, on a unionfs mount with and without passthrough and on a kernel overlayfs
//! mount of the same layers as the reference) against the binary under test, and fails if the
//! script fails. The script installs pjdfstest and fsx with `cargo install` the first time; fio is
//! Debian's package (scripts/setup.sh).
//!
//! Needs root (kernel overlayfs, pjdfstest's user switching, FUSE); skipped otherwise. Knobs:
//! `FSX_OPS` (operations per fsx run, default 20000), `FSX_SEED`, `UNIONFS_SUITES=0` to skip
//! (outside strict mode: `UNIONFS_STRICT=1`, as CI runs, fails every skip).

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn pjdfstest_fsx_and_fio_match_kernel_overlayfs() {
    if !common::require_root("kernel overlayfs, pjdfstest's user switching")
        || !common::require(Path::new("/dev/fuse").exists(), "/dev/fuse (the fuse module)")
    {
        return;
    }
    let off = std::env::var("UNIONFS_SUITES").is_ok_and(|v| v == "0");
    if !common::require(!off, "the suites, which UNIONFS_SUITES=0 turned off") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/suites.sh");
    // The script's output goes straight to the terminal (not captured), so that CI logs show
    // its summary table also when it passes.
    let status = Command::new("bash")
        .arg(&script)
        .env("UNIONFS_BIN", env!("CARGO_BIN_EXE_unionfs"))
        .status()
        .expect("run scripts/suites.sh");
    assert!(
        status.success(),
        "scripts/suites.sh failed ({status}); its output is above"
    );
}
