//! docs/architecture.md, "FUSE facts the code relies on": what the kernel asks the daemon per
//! operation, counted from the daemon's own log of the requests it receives (fuser's debug
//! lines, one per request). A count that grows back means every such operation pays a round
//! trip again: set-ID bits are ours to drop (FUSE_HANDLE_KILLPRIV_V2), so a write does not
//! make the kernel ask `security.capability` each time, and a chown needs no GETATTR first.

use std::ffi::OsString;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::as_user::*;
use crate::common::*;

/// A foreground mount of `l` logging every request it receives to `log`.
fn logged_mount(l: &Layers, log: &Path, extra: &[&str]) -> Mount {
    let mut args: Vec<OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--lower".into(),
        l.lower_arg().into(),
        "--upper".into(),
        l.upper.clone().into(),
        "--workdir".into(),
        l.work.clone().into(),
        "--log".into(),
        log.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.push(l.mnt.clone().into());
    Mount::start_with_env(&args, &l.mnt, &[("UNIONFS_LOG", "fuser=debug")])
}

/// Marks a point in the request log: a lookup of a name nobody has.
fn mark(m: &Mount, name: &str) {
    assert!(std::fs::symlink_metadata(m.path(name)).is_err());
}

/// The requests logged between the lookups of the marks `from` and `to`, as opcode names
/// with their arguments (e.g. `GETXATTR name "security.capability"`), each with the inode it
/// is for. The daemon logs a request when it reads it, before answering: everything the
/// kernel sent synchronously for the operations between the two marks is in the log once the
/// second mark's lookup has been answered.
fn requests_between(log: &Path, from: &str, to: &str) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(log).expect("read the daemon's log");
    let reqs: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| l.split_once(") ino 0x").map(|(_, r)| r))
        .filter_map(|r| {
            let (ino, op) = r.split_once(' ')?;
            let op = op.split(" thread=").next().unwrap_or(op);
            Some((u64::from_str_radix(ino, 16).ok()?, op.to_string()))
        })
        .collect();
    let at = |name: &str| {
        reqs.iter()
            .position(|(_, r)| r.starts_with("LOOKUP") && r.contains(&format!("\"{name}\"")))
            .unwrap_or_else(|| panic!("mark {name} not in the request log:\n{text}"))
    };
    reqs[at(from) + 1..at(to)].to_vec()
}

fn count(reqs: &[(u64, String)], prefix: &str) -> usize {
    reqs.iter().filter(|(_, r)| r.starts_with(prefix)).count()
}

/// How many requests of each opcode, for messages.
fn summary(reqs: &[(u64, String)]) -> std::collections::BTreeMap<&str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, r) in reqs {
        *m.entry(r.split(' ').next().unwrap_or("")).or_default() += 1;
    }
    m
}

const CAPS: &str = "GETXATTR name \"security.capability\"";

/// 200 writes of 4 KiB to an open file, through `m`.
fn write_200(path: &PathBuf) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for i in 0..200u64 {
        f.write_all_at(&[b'w'; 4096], i * 4096).unwrap();
    }
}

#[test]
fn writes_ask_nothing_about_capabilities_per_write_served_or_passed_through() {
    if !require_root("FUSE passthrough needs a root daemon") {
        return;
    }
    for (mode, extra) in [
        ("passthrough", &[][..]),
        ("served", &["--no-passthrough", "--no-writeback-cache"][..]),
    ] {
        let l = Layers::new(1);
        l.put(0, "keep", b"k");
        let log = l.dir.path().join("requests.log");
        let m = logged_mount(&l, &log, extra);
        std::fs::write(m.path("f"), b"").unwrap();
        mark(&m, "mark-a");
        write_200(&m.path("f"));
        mark(&m, "mark-b");
        let reqs = requests_between(&log, "mark-a", "mark-b");
        assert!(
            count(&reqs, CAPS) <= 1,
            "{mode}: the kernel asked security.capability {} times for 200 writes: {:?}",
            count(&reqs, CAPS),
            summary(&reqs)
        );
        let writes = count(&reqs, "WRITE");
        match mode {
            "passthrough" => assert_eq!(writes, 0, "{mode}: writes reached the daemon: {:?}", summary(&reqs)),
            _ => assert_eq!(writes, 200, "{mode}: {:?}", summary(&reqs)),
        }
        assert_eq!(std::fs::metadata(l.up("f")).unwrap().len(), 200 * 4096);
        assert_eq!(m.unmount(), Some(0));
    }
}

#[test]
fn a_chown_is_one_setattr_and_still_clears_setuid() {
    if !require_root("chown to another user") {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "lower-suid", b"#!/bin/sh\n");
    std::fs::set_permissions(l.lower(0, "lower-suid"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    let log = l.dir.path().join("requests.log");
    let m = logged_mount(&l, &log, &[]);
    std::fs::write(m.path("upper-suid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(m.path("upper-suid"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    for n in ["lower-suid", "upper-suid"] {
        lstat(&m.path(n));
    }
    mark(&m, "mark-a");
    for n in ["lower-suid", "upper-suid"] {
        std::os::unix::fs::chown(m.path(n), Some(1234), Some(1234)).unwrap();
    }
    mark(&m, "mark-b");
    let reqs = requests_between(&log, "mark-a", "mark-b");
    assert_eq!(count(&reqs, "SETATTR"), 2, "{reqs:?}");
    assert_eq!(count(&reqs, "GETATTR"), 0, "a GETATTR before a chown: {reqs:?}");
    for n in ["lower-suid", "upper-suid"] {
        // Linux's chown clears setuid, and setgid of a group-executable file, even for root.
        let md = lstat(&m.path(n));
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 1234, 0o755), "{n}");
        let up = lstat(&l.up(n));
        assert_eq!((up.uid(), up.mode() & 0o7777), (1234, 0o755), "{n} in the upper");
    }
    assert_eq!(lstat(&l.lower(0, "lower-suid")).mode() & 0o7777, 0o6755);
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_write_through_passthrough_by_another_user_clears_setuid_in_the_upper() {
    if !require_root("FUSE passthrough needs a root daemon") {
        return;
    }
    let user = user(USER_A);
    let l = Layers::new(1);
    l.put(0, "keep", b"k");
    let m = l.mount(&[]);
    std::fs::write(m.path("prog"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(m.path("prog"), std::fs::Permissions::from_mode(0o6777)).unwrap();
    act_ok(user, "write", &m.path("prog"), &m.path("keep"));
    // The kernel wrote the data itself (passthrough) and left the bits to us.
    assert_eq!(lstat(&l.up("prog")).mode() & 0o7777, 0o777);
    assert_eq!(lstat(&m.path("prog")).mode() & 0o7777, 0o777);
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn creating_a_file_asks_for_no_attributes_of_it() {
    if !require_root("FUSE passthrough needs a root daemon") {
        return;
    }
    for extra in [&[][..], &["--no-passthrough"][..]] {
        let l = Layers::new(1);
        l.put(0, "keep", b"k");
        let log = l.dir.path().join("requests.log");
        let m = logged_mount(&l, &log, extra);
        std::fs::create_dir(m.path("d")).unwrap();
        let d_ino = lstat(&m.path("d")).ino();
        mark(&m, "mark-a");
        for i in 0..20 {
            std::fs::write(m.path(&format!("d/f{i}")), b"data").unwrap();
        }
        mark(&m, "mark-b");
        let reqs = requests_between(&log, "mark-a", "mark-b");
        assert_eq!(count(&reqs, "CREATE"), 20, "{extra:?}: {:?}", summary(&reqs));
        // The directory's own attributes are refreshed after each create (the kernel drops
        // them when it changes), the new files' never: their CREATE reply is kept.
        let of_files: Vec<_> = reqs
            .iter()
            .filter(|(ino, r)| r.starts_with("GETATTR") && *ino != d_ino && *ino != 1)
            .collect();
        assert!(of_files.is_empty(), "{extra:?}: GETATTRs of new files: {of_files:?}");
        for i in 0..20 {
            let md = lstat(&m.path(&format!("d/f{i}")));
            assert_eq!((md.len(), md.mtime()), (4, lstat(&l.up(&format!("d/f{i}"))).mtime()));
        }
        assert_eq!(m.unmount(), Some(0));
    }
}
