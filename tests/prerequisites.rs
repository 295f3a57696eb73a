//! What the rest of the suite stands on: strict mode (`UNIONFS_STRICT=1`, as scripts/test.sh
//! and CI run) turns a missing prerequisite into a failure that names it; the test accounts are
//! the ones scripts/setup.sh creates, and no test creates an account or changes the machine's
//! set-up itself (tests that did raced each other on a fresh machine).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PROBE: &str = "missing_prerequisite_probe";
const PROBE_MISSING: &str = "the probe's prerequisite, which never exists";

/// Not a test of its own: what a test with a missing prerequisite does, run by
/// [`strict_mode_fails_a_missing_prerequisite_and_names_it`].
#[test]
#[ignore = "helper: run by strict_mode_fails_a_missing_prerequisite_and_names_it"]
fn missing_prerequisite_probe() {
    if !require(false, PROBE_MISSING) {
        return;
    }
    panic!("require(false, ..) returned true");
}

/// The probe run in this test binary with `UNIONFS_STRICT` set to `strict`: its exit status
/// and its output.
fn run_probe(strict: &str) -> (bool, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", PROBE, "--ignored", "--nocapture", "--test-threads=1"])
        .env("UNIONFS_STRICT", strict)
        .output()
        .expect("run the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn strict_mode_fails_a_missing_prerequisite_and_names_it() {
    let (ok, out) = run_probe("1");
    assert!(
        !ok && out.contains("1 failed") && out.contains(&format!("missing prerequisite: {PROBE_MISSING}")),
        "strict: the probe must fail naming what is missing:\n{out}"
    );
    let (ok, out) = run_probe("0");
    assert!(
        ok && out.contains("1 passed") && out.contains(&format!("SKIPPED {PROBE}: {PROBE_MISSING}")),
        "not strict: the probe must say it skipped, and pass:\n{out}"
    );
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The value of the bash assignment `name=...` in scripts/setup.sh (an array's words).
fn setup_sh_value(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("scripts/setup.sh")).expect("read scripts/setup.sh");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in scripts/setup.sh"));
    let words = line.trim_start_matches('(').trim_end_matches(')');
    words.split_whitespace().map(str::to_string).collect()
}

#[test]
fn setup_sh_creates_the_accounts_the_tests_look_up() {
    assert_eq!(
        setup_sh_value("TEST_ACCOUNTS"),
        ACCOUNTS,
        "scripts/setup.sh vs tests/common"
    );
    assert_eq!(setup_sh_value("PODMAN_ACCOUNT"), [PODMAN_USER]);
}

/// The lines of `file` (`/etc/subuid` or `/etc/subgid`) that give `name` ids.
fn subid_ranges(file: &str, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let prefix = format!("{name}:");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// What scripts/setup.sh made is there: every account once, with its own home directory, the
/// Podman user with exactly one range of 65536 subordinate uids and gids (the others with none),
/// and /dev/fuse usable by every user.
#[test]
fn the_test_accounts_are_set_up() {
    if !require_root("the test accounts (scripts/setup.sh creates them as root)") {
        return;
    }
    for name in ACCOUNTS {
        let a = account(name);
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let lines = passwd.lines().filter(|l| l.starts_with(&format!("{name}:"))).count();
        assert_eq!(lines, 1, "{name} in /etc/passwd");
        assert_eq!(a.home, PathBuf::from(format!("/home/{name}")), "{name}'s home");
        let md = std::os::unix::fs::MetadataExt::uid(&lstat(&a.home));
        assert_eq!(md, a.uid, "{name}'s home belongs to {name}: run scripts/setup.sh");
        for file in ["/etc/subuid", "/etc/subgid"] {
            let ranges = subid_ranges(file, name);
            if name == PODMAN_USER {
                assert!(
                    ranges.len() == 1 && ranges[0].ends_with(":65536"),
                    "{name} in {file}: {ranges:?}; run scripts/setup.sh"
                );
            } else {
                assert_eq!(ranges, Vec::<String>::new(), "{name} needs no range in {file}");
            }
        }
    }
    assert_dev_fuse_for_everyone();
}

/// Every test source file below `tests/` (test binaries, their modules and the test crates;
/// this one left out: it names what it looks for).
fn test_sources() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![repo().join("tests")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir below tests") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests/prerequisites.rs") {
                let text = std::fs::read_to_string(&p).expect("read a test source");
                out.push((p, text));
            }
        }
    }
    assert!(out.len() > 40, "found only {} test sources below tests/", out.len());
    out
}

/// No test creates or changes accounts, subordinate ids or /dev/fuse (scripts/setup.sh does,
/// once, before any test runs), and every skip goes through `common::require`.
#[test]
fn no_test_sets_up_the_machine_or_skips_on_its_own() {
    let tools = [
        "useradd", "adduser", "usermod", "groupadd", "userdel", "groupmod", "chpasswd",
    ];
    let sets_up = |line: &str| {
        tools.iter().any(|t| line.contains(t))
            || line.contains("fuse.conf")
            || (line.contains("/dev/fuse")
                && ["set_permissions", "set_mode", "chmod"]
                    .iter()
                    .any(|c| line.contains(c)))
            || (line.contains("/etc/sub") && line.contains("write"))
    };
    let mut found = Vec::new();
    for (p, text) in test_sources() {
        for (i, line) in text.lines().enumerate() {
            let own_skip = line.to_lowercase().contains("eprintln!(\"skip") && !p.ends_with("common/src/prereq.rs");
            if own_skip || sets_up(line) {
                found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "set-up or skips outside scripts/setup.sh and require:\n{}",
        found.join("\n")
    );
}
