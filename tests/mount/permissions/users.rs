//! docs/semantics.md, "Permissions and ACLs": two plain users (`unionfs-user-a`,
//! `unionfs-user-b`: scripts/setup.sh makes them) act through a root mount (allow_other +
//! default_permissions): they can do exactly what the modes allow and nothing more, on upper and
//! lower-resident files alike; a refused operation copies nothing up; a write by a non-owner
//! clears the setuid bit. Lowers unchanged, mounts torn down.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;

type User = (u32, u32);

fn users() -> (User, User) {
    (user(USER_A), user(USER_B))
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, u: User) {
    std::os::unix::fs::lchown(p, Some(u.0), Some(u.1)).unwrap();
}

/// Runs `sh -c script sh ARGS…` as `u` (no supplementary groups, C locale).
fn sh_as(u: User, script: &str, args: &[&Path]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", u.0))
        .arg(format!("--regid={}", u.1))
        .arg("--clear-groups")
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args.iter().map(|p| p.as_os_str()))
        .env("LC_ALL", "C")
        .output()
        .expect("run setpriv")
}

#[track_caller]
fn ok(u: User, script: &str, args: &[&Path]) -> String {
    let out = sh_as(u, script, args);
    assert!(
        out.status.success(),
        "as uid {}: `{script}` {args:?} failed: {}",
        u.0,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The script must fail, with `why` ("Permission denied" = EACCES, "Operation not permitted" =
/// EPERM) in its complaint.
#[track_caller]
fn refused(u: User, script: &str, args: &[&Path], why: &str) {
    let out = sh_as(u, script, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "as uid {}: `{script}` {args:?} was allowed", u.0);
    assert!(
        err.contains(why),
        "as uid {}: `{script}` {args:?}: wanted {why:?}, got {err:?}",
        u.0
    );
}

const EACCES: &str = "Permission denied";

const EPERM: &str = "Operation not permitted";

/// Reading: allowed files read, 0600 root files refused with EACCES, directories without x
/// refused; nothing is copied up by any of it.
#[test]
fn users_read_what_modes_allow_and_nothing_else() {
    let (a, _b) = users();
    let l = Layers::new(1);
    l.open_to_all();
    l.put(0, "pub/readable", b"readable");
    l.put(0, "pub/secret", b"secret");
    chmod(&l.lower(0, "pub/secret"), 0o600);
    l.put(0, "closed/inside", b"inside");
    chmod(&l.lower(0, "closed"), 0o700);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::write(m.path("upper_secret"), b"upper secret").unwrap();
    chmod(&m.path("upper_secret"), 0o600);
    assert_eq!(ok(a, r#"cat "$1""#, &[&m.path("pub/readable")]), "readable");
    refused(a, r#"cat "$1""#, &[&m.path("pub/secret")], EACCES);
    refused(a, r#"cat "$1""#, &[&m.path("upper_secret")], EACCES);
    refused(a, r#"ls "$1""#, &[&m.path("closed")], EACCES);
    refused(a, r#"cat "$1""#, &[&m.path("closed/inside")], EACCES);
    // Writing a root 0644 file, creating in a root 0755 dir, deleting there: refused.
    refused(a, r#"echo x >> "$1""#, &[&m.path("pub/readable")], EACCES);
    refused(a, r#": > "$1""#, &[&m.path("pub/new")], EACCES);
    refused(a, r#"rm -f "$1""#, &[&m.path("pub/readable")], EACCES);
    refused(
        a,
        r#"mv "$1" "$2""#,
        &[&m.path("pub/readable"), &m.path("pub/moved")],
        EACCES,
    );
    refused(a, r#"chmod 666 "$1""#, &[&m.path("pub/readable")], EPERM);
    refused(a, r#"chown "$(id -u)" "$1""#, &[&m.path("pub/readable")], EPERM);
    refused(a, r#"touch -c -d 2001-01-01 "$1""#, &[&m.path("pub/readable")], EPERM);
    sc.ending(m)
        .view(|root| {
            assert_eq!(std::fs::read(root.join("pub/readable")).unwrap(), b"readable");
            assert_eq!(names(&root.join("pub")), ["readable", "secret"]);
        })
        .upper(|up| {
            assert!(!exists_raw(&up.join("pub")), "a refused operation copied something up");
            assert!(!exists_raw(&up.join("closed")));
        })
        .end();
}

/// Owners write and delete their own (lower-resident) files; another user cannot write, delete,
/// rename, chmod or chown them in a 0755 directory, and none of that copies anything up.
#[test]
fn users_write_own_files_but_not_others() {
    let (a, b) = users();
    let l = Layers::new(1);
    l.open_to_all();
    l.put(0, "home_a/own", b"own\n");
    l.put(0, "home_a/untouched", b"untouched\n");
    chown(&l.lower(0, "home_a"), a);
    chown(&l.lower(0, "home_a/own"), a);
    chown(&l.lower(0, "home_a/untouched"), a);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let own = m.path("home_a/own");
    let untouched = m.path("home_a/untouched");
    // B against A's files (lower-resident, not yet copied up).
    refused(b, r#"echo b >> "$1""#, &[&untouched], EACCES);
    refused(b, r#": > "$1""#, &[&untouched], EACCES);
    refused(b, r#"rm -f "$1""#, &[&untouched], EACCES);
    refused(b, r#"mv "$1" "$2""#, &[&untouched, &m.path("home_a/stolen")], EACCES);
    refused(b, r#": > "$1""#, &[&m.path("home_a/b_file")], EACCES);
    refused(b, r#"chmod 777 "$1""#, &[&untouched], EPERM);
    refused(b, r#"chown "$(id -u)" "$1""#, &[&untouched], EPERM);
    refused(b, r#"chmod 777 "$1""#, &[&m.path("home_a")], EPERM);
    assert!(!exists_raw(&l.up("home_a")), "refused operations copied something up");
    // A writes its own files (copy-up under default_permissions) and creates new ones.
    ok(a, r#"echo more >> "$1""#, &[&own]);
    ok(a, r#"echo new > "$1/new" && chmod 600 "$1/new""#, &[&m.path("home_a")]);
    ok(a, r#"chmod 640 "$1""#, &[&own]);
    // A cannot give its file away.
    refused(a, r#"chown 0 "$1""#, &[&own], EPERM);
    // B against A's files now that they are in the upper.
    refused(b, r#"echo b >> "$1""#, &[&own], EACCES);
    refused(b, r#"cat "$1""#, &[&own], EACCES);
    refused(b, r#"cat "$1""#, &[&m.path("home_a/new")], EACCES);
    refused(b, r#"rm -f "$1""#, &[&own], EACCES);
    refused(b, r#"chmod 777 "$1""#, &[&own], EPERM);
    assert!(
        !exists_raw(&l.up("home_a/untouched")),
        "a refused operation copied untouched up"
    );
    let check = |root: &Path| {
        assert_eq!(std::fs::read(root.join("home_a/own")).unwrap(), b"own\nmore\n");
        let md = lstat(&root.join("home_a/own"));
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (a.0, a.1, 0o640));
        let md = lstat(&root.join("home_a/new"));
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (a.0, a.1, 0o600));
        assert_eq!(std::fs::read(root.join("home_a/untouched")).unwrap(), b"untouched\n");
        assert_eq!(names(&root.join("home_a")), ["new", "own", "untouched"]);
    };
    let m = sc.ending(m).view(check).remount();
    // A deletes its own lower-resident file: a whiteout, and B still cannot recreate it.
    ok(a, r#"rm "$1""#, &[&untouched]);
    refused(b, r#": > "$1""#, &[&untouched], EACCES);
    sc.ending(m)
        .view(|root| assert_eq!(names(&root.join("home_a")), ["new", "own"]))
        .end();
}

/// In a sticky 1777 directory: others may write a world-writable file but not delete or rename
/// it; owners may. Holds for lower-resident and upper files, and refusals copy nothing up.
#[test]
fn users_cannot_delete_others_files_in_a_sticky_directory() {
    let (a, b) = users();
    let l = Layers::new(1);
    l.open_to_all();
    l.mkdir(0, "tmp");
    chmod(&l.lower(0, "tmp"), 0o1777);
    l.put(0, "tmp/a_lower", b"a lower\n");
    chown(&l.lower(0, "tmp/a_lower"), a);
    chmod(&l.lower(0, "tmp/a_lower"), 0o666);
    l.put(0, "tmp/a_lower2", b"a lower 2\n");
    chown(&l.lower(0, "tmp/a_lower2"), a);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let tmp = m.path("tmp");
    assert_eq!(lstat(&tmp).mode() & 0o7777, 0o1777);
    ok(a, r#"echo a > "$1/a_upper" && chmod 666 "$1/a_upper""#, &[&tmp]);
    for n in ["a_lower", "a_lower2", "a_upper"] {
        let p = m.path(&format!("tmp/{n}"));
        refused(b, r#"rm -f "$1""#, &[&p], EPERM);
        refused(b, r#"mv "$1" "$1.b""#, &[&p], EPERM);
    }
    assert!(!exists_raw(&l.up("tmp/a_lower")) && !exists_raw(&l.up("tmp/a_lower2")));
    // Replacing A's file by renaming over it is refused too.
    ok(b, r#"echo b > "$1/b_file""#, &[&tmp]);
    refused(b, r#"mv "$1/b_file" "$1/a_lower2""#, &[&tmp], EPERM);
    // Writing a world-writable file of A's is allowed (copy-up), the owner stays A.
    ok(b, r#"echo b >> "$1/a_lower""#, &[&tmp]);
    let md = lstat(&m.path("tmp/a_lower"));
    assert_eq!((md.uid(), md.mode() & 0o7777), (a.0, 0o666));
    // B deletes its own file; A deletes its own files.
    ok(b, r#"rm "$1/b_file""#, &[&tmp]);
    ok(a, r#"rm "$1/a_lower2" "$1/a_upper""#, &[&tmp]);
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(&root.join("tmp")), ["a_lower"]);
            assert_eq!(std::fs::read(root.join("tmp/a_lower")).unwrap(), b"a lower\nb\n");
            assert_eq!(lstat(&root.join("tmp")).mode() & 0o7777, 0o1777);
        })
        .end();
}

/// A write by a non-owner to a setuid (and setgid, group-executable) file clears those bits,
/// for a lower-resident file (copy-up) and for an upper one; the change survives a remount.
#[test]
fn write_by_non_owner_clears_setuid() {
    let (a, b) = users();
    let l = Layers::new(1);
    l.open_to_all();
    l.mkdir(0, "bin");
    chmod(&l.lower(0, "bin"), 0o777);
    l.put(0, "bin/suid_lower", b"#!/bin/sh\n");
    chown(&l.lower(0, "bin/suid_lower"), a);
    chmod(&l.lower(0, "bin/suid_lower"), 0o4777);
    l.put(0, "bin/sgid_lower", b"#!/bin/sh\n");
    chown(&l.lower(0, "bin/sgid_lower"), a);
    chmod(&l.lower(0, "bin/sgid_lower"), 0o6777);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    ok(
        a,
        r#"printf '#!/bin/sh\n' > "$1" && chmod 4777 "$1""#,
        &[&m.path("bin/suid_upper")],
    );
    assert_eq!(lstat(&m.path("bin/suid_upper")).mode() & 0o7777, 0o4777);
    assert_eq!(lstat(&m.path("bin/suid_lower")).mode() & 0o7777, 0o4777);
    for n in ["suid_lower", "sgid_lower", "suid_upper"] {
        ok(b, r#"echo 'echo pwned' >> "$1""#, &[&m.path(&format!("bin/{n}"))]);
    }
    let check = |root: &Path| {
        for n in ["suid_lower", "sgid_lower", "suid_upper"] {
            let md = lstat(&root.join(format!("bin/{n}")));
            assert_eq!(
                md.mode() & 0o6000,
                0,
                "{n}: setuid/setgid kept after a write by another user (mode {:o})",
                md.mode() & 0o7777
            );
            assert_eq!(md.mode() & 0o777, 0o777, "{n}");
            assert_eq!(md.uid(), a.0, "{n}: owner changed");
            assert_eq!(
                std::fs::read(root.join(format!("bin/{n}"))).unwrap(),
                b"#!/bin/sh\necho pwned\n"
            );
        }
    };
    sc.ending(m)
        .view(check)
        .after(|| {
            for n in ["suid_lower", "sgid_lower", "suid_upper"] {
                assert_eq!(lstat(&l.up(&format!("bin/{n}"))).mode() & 0o6000, 0, "{n} in the upper");
            }
        })
        .end();
}
