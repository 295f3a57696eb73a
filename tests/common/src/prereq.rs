//! Prerequisites: every skip goes through [`require`], which fails the test instead under
//! strict mode (`UNIONFS_STRICT=1`, as scripts/test.sh and CI run the suite).

use std::process::{Command, Stdio};

/// Whether a missing prerequisite fails the test (`UNIONFS_STRICT=1`, as `scripts/test.sh` and
/// CI run the suite) instead of skipping it: with output capture a skip is invisible and counts
/// as a pass, so only a strict run proves that every test ran.
pub fn strict() -> bool {
    std::env::var("UNIONFS_STRICT").is_ok_and(|v| v == "1")
}

/// The one gate every skip goes through: `ok` is whether the prerequisite is there, `missing`
/// says what is missing and how to get it. Returns `ok`; when it is false, strict mode panics
/// naming `missing`, otherwise the test says "SKIPPED" and the caller returns (or leaves out
/// the part that needs it).
#[track_caller]
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if strict() {
        panic!("UNIONFS_STRICT=1: {test}: missing prerequisite: {missing}");
    }
    eprintln!("SKIPPED {test}: {missing} (UNIONFS_STRICT=1 makes this a failure)");
    false
}

/// Whether we run as root, through [`require`]; `why` says what needs it.
#[track_caller]
pub fn require_root(why: &str) -> bool {
    require(
        rustix::process::geteuid().is_root(),
        &format!("root ({why}); run the suite as root, as scripts/test.sh and CI do"),
    )
}

/// Whether `prog` is on `PATH`, through [`require`]; `package` is the Debian package that has it.
#[track_caller]
pub fn require_program(prog: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(
        found,
        &format!("{prog} (Debian package {package}; scripts/setup.sh installs it)"),
    )
}

/// Panics, naming the fix, unless `/dev/fuse` is usable by every user (as desktop
/// distributions ship it; `scripts/setup.sh` makes it so): plain users mount through it.
#[track_caller]
pub fn assert_dev_fuse_for_everyone() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/fuse").map(|m| m.permissions().mode());
    assert!(
        mode.as_ref().is_ok_and(|m| m & 0o666 == 0o666),
        "/dev/fuse is not readable and writable by every user ({mode:?}): run scripts/setup.sh (as root) first"
    );
}
