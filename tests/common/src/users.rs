//! The test accounts that scripts/setup.sh creates (tests only look them up), and running a
//! program as one of them.

use std::path::PathBuf;
use std::process::Command;

/// The test accounts, one per role. `scripts/setup.sh` creates exactly these (as root, once,
/// before any test runs; its list must match, which `tests/prerequisites.rs` checks); tests
/// only look them up, so that no two tests ever race to create one.
pub const ACCOUNTS: [&str; 4] = [USER_A, USER_B, ROOTLESS_USER, PODMAN_USER];
/// A plain user acting on root's mounts (permissions, ACLs, set-id bits, layer tools).
pub const USER_A: &str = "unionfs-user-a";
/// A second plain user, where a test needs two.
pub const USER_B: &str = "unionfs-user-b";
/// A plain user that mounts itself through fusermount3 (rootless mounts).
pub const ROOTLESS_USER: &str = "unionfs-rootless-user";
/// Rootless Podman's user: a home directory and one subordinate uid and gid range of 65536.
pub const PODMAN_USER: &str = "unionfs-podman-user";

/// A test account as `getent passwd` shows it.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks up the test account `name` (one of [`ACCOUNTS`]); panics, naming it and the fix, when
/// it is missing: accounts are created by `scripts/setup.sh`, never by a test.
#[track_caller]
pub fn account(name: &'static str) -> Account {
    assert!(
        ACCOUNTS.contains(&name),
        "{name} is not one of the test accounts {ACCOUNTS:?}"
    );
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .expect("run getent");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let f: Vec<&str> = line.split(':').collect();
    assert!(
        out.status.success() && f.len() == 7,
        "the test account {name} is missing: run scripts/setup.sh (as root) first"
    );
    Account {
        name,
        uid: f[2].parse().expect("uid"),
        gid: f[3].parse().expect("gid"),
        home: PathBuf::from(f[5]),
    }
}

/// uid and gid of the test account `name` (see [`account`]).
#[track_caller]
pub fn user(name: &'static str) -> (u32, u32) {
    let a = account(name);
    (a.uid, a.gid)
}

/// Runs `prog args` as `uid:gid` with no supplementary groups.
pub fn run_as(uid: u32, gid: u32, prog: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(prog)
        .args(args)
        // Not the test's own directory, which may be closed to the user.
        .current_dir("/")
        .output()
        .expect("run setpriv")
}
