//! docs/semantics.md, "Permissions and ACLs", through real mounts: default_permissions with the
//! real owner and mode; as root, what a caller creates belongs to the caller, and the daemon's
//! privilege never leaks. Other users act through `setpriv`.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn sh_as(uid: u32, gid: u32, script: &str, args: &[&Path]) -> std::process::Output {
    let mut a: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new(script), OsStr::new("sh")];
    a.extend(args.iter().map(|p| p.as_os_str()));
    run_as(uid, gid, "sh", &a)
}

#[test]
fn objects_created_by_a_caller_belong_to_the_caller() {
    let (uid, gid) = user(USER_A);
    let l = Layers::new(1);
    l.open_to_all();
    l.mkdir(0, "pub");
    chmod(&l.lower(0, "pub"), 0o777);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let out = sh_as(
        uid,
        gid,
        r#"touch "$1/f" && mkdir "$1/d" && ln -s f "$1/s" && mkfifo "$1/p" && echo hi > "$1/d/g""#,
        &[&m.path("pub")],
    );
    assert!(
        out.status.success(),
        "as {uid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = |root: &Path| {
        for p in ["pub/f", "pub/d", "pub/s", "pub/p", "pub/d/g"] {
            let md = lstat(&root.join(p));
            assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {p} in {}", root.display());
        }
        // The copied-up parent keeps its own owner.
        assert_eq!(lstat(&root.join("pub")).uid(), 0);
    };
    sc.ending(m).both(check).end();
}

#[test]
fn a_plain_user_cannot_write_a_root_file() {
    let (uid, gid) = user(USER_A);
    let l = Layers::new(1);
    l.open_to_all();
    l.put(0, "rootfile", b"root data");
    chmod(&l.lower(0, "rootfile"), 0o644);
    l.put(0, "dir/inner", b"i");
    chmod(&l.lower(0, "dir"), 0o755);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    // Reading is allowed by the mode.
    let out = sh_as(uid, gid, r#"cat "$1""#, &[&m.path("rootfile")]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"root data");
    // Writing, truncating, chmod, unlink, create in a root 0755 dir: all refused.
    let denied = [
        (r#"echo x >> "$1""#, "append", "Permission denied"),
        (r#": > "$1""#, "truncate", "Permission denied"),
        (r#"chmod 666 "$1""#, "chmod", "Operation not permitted"),
        (r#"rm -f "$1""#, "unlink in a root dir", "Permission denied"),
        (r#"touch "$1.new""#, "create in a root dir", "Permission denied"),
        (r#"mv "$1" "$1.moved""#, "rename in a root dir", "Permission denied"),
    ];
    for (script, what, want) in denied {
        let out = sh_as(uid, gid, script, &[&m.path("rootfile")]);
        assert!(!out.status.success(), "{what} as a plain user must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{what}: expected {want}, got {err}");
    }
    let out = sh_as(uid, gid, r#"touch "$1/new""#, &[&m.path("dir")]);
    assert!(!out.status.success(), "create in root's 0755 subdir must fail");
    // The failed attempts changed nothing, not even by copying up.
    assert!(!exists_raw(&l.up("rootfile")), "a refused write must not copy up");
    assert_eq!(std::fs::read(m.path("rootfile")).unwrap(), b"root data");
    assert_eq!(lstat(&m.path("rootfile")).mode() & 0o7777, 0o644);
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["dir", "rootfile"]);
            assert_eq!(std::fs::read(root.join("rootfile")).unwrap(), b"root data");
        })
        .end();
}

#[test]
fn a_plain_user_writes_what_it_owns_and_mode_bits_are_enforced() {
    let (uid, gid) = user(USER_A);
    let l = Layers::new(1);
    l.open_to_all();
    l.put(0, "mine", b"old");
    std::os::unix::fs::chown(l.lower(0, "mine"), Some(uid), Some(gid)).unwrap();
    chmod(&l.lower(0, "mine"), 0o600);
    l.put(0, "secret", b"s");
    chmod(&l.lower(0, "secret"), 0o600);
    l.put(0, "grp", b"g");
    std::os::unix::fs::chown(l.lower(0, "grp"), Some(0), Some(gid)).unwrap();
    chmod(&l.lower(0, "grp"), 0o660);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    // The view reports the real owner and mode.
    let md = lstat(&m.path("mine"));
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (uid, gid, 0o600));
    let out = sh_as(uid, gid, r#"printf new > "$1""#, &[&m.path("mine")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sh_as(uid, gid, r#"cat "$1""#, &[&m.path("secret")]);
    assert!(!out.status.success(), "root's 0600 file must not be readable by others");
    // Group membership comes from the caller: --clear-groups keeps only the primary gid.
    let out = sh_as(uid, gid, r#"printf G >> "$1""#, &[&m.path("grp")]);
    assert!(
        out.status.success(),
        "group-writable file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sh_as(uid, gid + 1, r#"printf X >> "$1""#, &[&m.path("grp")]);
    assert!(!out.status.success(), "other group must not write");
    let check = |root: &Path| {
        assert_eq!(std::fs::read(root.join("mine")).unwrap(), b"new");
        assert_eq!(std::fs::read(root.join("grp")).unwrap(), b"gG");
        let md = lstat(&root.join("mine"));
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (uid, gid, 0o600));
    };
    sc.ending(m).view(check).end();
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let (uid, gid) = user(USER_A);
    let l = Layers::new(1);
    l.open_to_all();
    l.mkdir(0, "shared");
    std::os::unix::fs::chown(l.lower(0, "shared"), Some(0), Some(4242)).unwrap();
    chmod(&l.lower(0, "shared"), 0o2777);
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let out = sh_as(uid, gid, r#"touch "$1/f" && mkdir "$1/d""#, &[&m.path("shared")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let check = |root: &Path| {
        let f = lstat(&root.join("shared/f"));
        assert_eq!((f.uid(), f.gid()), (uid, 4242), "{}", root.display());
        let d = lstat(&root.join("shared/d"));
        assert_eq!((d.uid(), d.gid()), (uid, 4242));
        assert!(d.mode() & 0o2000 != 0, "subdirectories inherit setgid");
    };
    sc.ending(m).both(check).end();
}
