//! docs/semantics.md, "Mount options": owner mappings (fuse-overlayfs's uidmapping=,
//! gidmapping=, squash_to_*; the README's table) through real mounts, with fuse-overlayfs 1.10
//! over identical layers as the oracle for direct use, and Podman's case (layers whose owners it
//! has shifted already, mapping passed along) shown as the kernel driver shows them.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn owners(root: &Path, names: &[&str]) -> Vec<(String, u32, u32)> {
    names
        .iter()
        .map(|n| {
            let m = lstat(&root.join(n));
            (n.to_string(), m.uid(), m.gid())
        })
        .collect()
}

/// A foreground unionfs mount in the fuse-overlayfs form with extra `-o` options.
fn compat_mount(l: &Layers, opts: &str) -> Mount {
    let o = format!(
        "lowerdir={},upperdir={},workdir={},{opts}",
        l.lower_arg(),
        l.upper.display(),
        l.work.display()
    );
    let args: Vec<OsString> = vec!["-f".into(), "-o".into(), o.into(), l.mnt.clone().into()];
    Mount::start(&args, &l.mnt)
}

/// fuse-overlayfs over a copy of `l`'s lower (a mount guard that unmounts on drop).
struct FuseOverlayfs {
    mnt: PathBuf,
    upper: PathBuf,
    child: Option<std::process::Child>,
}

impl FuseOverlayfs {
    /// None, through [`require`] (the test then checks the expected owners only), where
    /// fuse-overlayfs is not installed.
    fn start(lower: &Path, base: &Path, opts: &str) -> Option<FuseOverlayfs> {
        if !require_program("fuse-overlayfs", "fuse-overlayfs") {
            return None;
        }
        let (upper, work, mnt) = (base.join("fo-upper"), base.join("fo-work"), base.join("fo-mnt"));
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        let o = format!(
            "lowerdir={},upperdir={},workdir={},{opts}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let child = Command::new("fuse-overlayfs")
            .args(["-f", "-o", &o])
            .arg(&mnt)
            .spawn()
            .expect("start fuse-overlayfs");
        let g = FuseOverlayfs {
            mnt: mnt.clone(),
            upper,
            child: Some(child),
        };
        for _ in 0..500 {
            if is_mounted(&mnt) {
                return Some(g);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("fuse-overlayfs did not mount");
    }
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(c) = self.child.take() {
            wait_or_kill(c, std::time::Duration::from_secs(10));
        }
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("chown");
}

fn layer_with_owners() -> Layers {
    let l = Layers::new(1);
    l.open_to_all();
    l.put(0, "a", b"a");
    l.put(0, "b", b"b");
    l.put(0, "c", b"c");
    chown(&l.lower(0, "a"), 0, 0);
    chown(&l.lower(0, "b"), 1, 1);
    chown(&l.lower(0, "c"), 70000, 70000);
    l
}

#[test]
fn uid_and_gid_mappings_show_and_store_owners_as_fuse_overlayfs_does() {
    if !require_root("owners other than our own") {
        return;
    }
    let opts = "uidmapping=0:1000:1:1:110000:65536,gidmapping=0:1000:1:1:110000:65536";
    let l = layer_with_owners();
    let sc = Scenario::new(&l);
    let m = compat_mount(&l, opts);
    let ours = owners(&m.mnt, &["a", "b"]);
    assert_eq!(
        ours,
        vec![("a".into(), 1000, 1000), ("b".into(), 110000, 110000)],
        "the man page's example"
    );
    if let Some(fo) = FuseOverlayfs::start(&l.lowers[0], l.dir.path(), opts) {
        assert_eq!(owners(&fo.mnt, &["a", "b"]), ours, "fuse-overlayfs shows the same");
    }
    // An owner given through the view is stored unshifted, and shown as given.
    let out = Command::new("chown")
        .arg("110005:1000")
        .arg(m.path("a"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((lstat(&m.path("a")).uid(), lstat(&m.path("a")).gid()), (110005, 1000));
    assert_eq!(
        (lstat(&l.up("a")).uid(), lstat(&l.up("a")).gid()),
        (6, 0),
        "stored as the layers carry owners"
    );
    sc.ending(m)
        .view(|root| assert_eq!(lstat(&root.join("a")).uid(), 110005, "after remount"))
        .remount_with(&["-o", opts])
        .end();
}

#[test]
fn squash_options_show_every_owner_as_the_given_id() {
    if !require_root("owners other than our own") {
        return;
    }
    let l = layer_with_owners();
    for (opts, want) in [
        ("squash_to_root", (0, 0)),
        ("squash_to_root,squash_to_uid=7,squash_to_gid=8", (7, 8)),
    ] {
        let m = compat_mount(&l, opts);
        let ours = owners(&m.mnt, &["a", "b", "c"]);
        assert!(ours.iter().all(|(_, u, g)| (*u, *g) == want), "{opts}: {ours:?}");
        if let Some(fo) = FuseOverlayfs::start(&l.lowers[0], l.dir.path(), opts) {
            assert_eq!(
                owners(&fo.mnt, &["a", "b", "c"]),
                ours,
                "{opts}: fuse-overlayfs shows the same"
            );
        }
        drop(m);
        // What is stored stays as it was.
        assert_eq!(lstat(&l.lower(0, "b")).uid(), 1);
    }
}

#[test]
fn layers_shifted_already_are_shown_as_the_kernel_driver_shows_them() {
    if !require_root("owners other than our own") {
        return;
    }
    // As Podman prepares a container with --uidmap 0:100000:65536: the layer's owners shifted
    // to the container's range, and the mapping passed along anyway. (Two lowers: kernel
    // overlayfs needs two for a read-only union.)
    let l = Layers::new(2);
    l.open_to_all();
    l.put(0, "etc/passwd", b"root:x:0:0::/:/bin/sh\n");
    l.put(0, "home/u/f", b"f");
    for p in ["", "etc", "etc/passwd", "home"] {
        chown(&l.lower(0, p), 100000, 100000);
    }
    chown(&l.lower(0, "home/u"), 101000, 101000);
    chown(&l.lower(0, "home/u/f"), 101000, 101000);
    std::fs::set_permissions(&l.lowers[0], std::fs::Permissions::from_mode(0o755)).unwrap();
    let ko_mnt = l.dir.path().join("kmnt");
    std::fs::create_dir(&ko_mnt).unwrap();
    let ko = KernelOverlay::mount(&l.lowers, None, &ko_mnt).expect("kernel overlayfs");
    let want = owners(&ko.mnt, &["etc", "etc/passwd", "home/u", "home/u/f"]);
    let m = compat_mount(&l, "uidmapping=:0:100000:65536,gidmapping=:0:100000:65536");
    assert_eq!(owners(&m.mnt, &["etc", "etc/passwd", "home/u", "home/u/f"]), want);
    // A container process (uid 100000 as the daemon sees it) creates a file: stored as the
    // kernel driver would store it.
    let out = run_as(
        100000,
        100000,
        "/bin/sh",
        &["-c".as_ref(), "echo x > \"$0\"/home/new".as_ref(), m.mnt.as_os_str()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lstat(&l.up("home/new")).uid(), 100000);
}

/// The man page's mappings: stored 0 is shown as 1000, stored 1.. as 110000...
const MAN_PAGE_MAPPINGS: &str = "uidmapping=0:1000:1:1:110000:65536,gidmapping=0:1000:1:1:110000:65536";

/// What is made and changed through the view, each step as a caller (view ids) with a script run
/// in the mount's `pub`: callers whose ids the mappings cover, a mixed one, and root's chowns.
const MAPPED_CHANGES: &[(u32, u32, &str)] = &[
    (
        110005,
        110005,
        "echo x > f; mkdir -p d/sub; echo y > d/sub/g; ln -s f l; mkfifo p; ln f hard",
    ),
    (1000, 1000, "echo r > r; mkdir rd"),
    (110005, 1000, "touch mixed"),
    // The owner of a lower file (stored 2:2) writes to it: copied up, owner kept.
    (110001, 110001, "echo more >> theirs"),
    (
        0,
        0,
        "chown 110007:1000 f; chown -h 1000:110009 l; chgrp 110003 d; chown 110000:110000 rd; \
         chown 110001:110002 old",
    ),
];

/// An owner: uid, gid.
type Owner = (u32, u32);

/// Every name the changes touch, with the owner it must end with: as the view shows it, and as
/// the upper stores it (unshifted).
const MAPPED_WANT: &[(&str, Owner, Owner)] = &[
    ("pub/f", (110007, 1000), (8, 0)),         // made by 110005, chowned by root
    ("pub/hard", (110007, 1000), (8, 0)),      // the same file
    ("pub/d", (110005, 110003), (6, 4)),       // made by 110005, chgrp'ed
    ("pub/d/sub", (110005, 110005), (6, 6)),   // made by 110005 in its own directory
    ("pub/d/sub/g", (110005, 110005), (6, 6)), // likewise
    ("pub/l", (1000, 110009), (0, 10)),        // a symlink chowned itself (chown -h)
    ("pub/p", (110005, 110005), (6, 6)),       // a fifo
    ("pub/r", (1000, 1000), (0, 0)),           // made by 1000: stored as 0
    ("pub/rd", (110000, 110000), (1, 1)),      // made by 1000, chowned
    ("pub/mixed", (110005, 1000), (6, 0)),     // made by 110005:1000
    ("pub/theirs", (110001, 110001), (2, 2)),  // copied up by its owner's write
    ("pub/old", (110001, 110002), (2, 3)),     // copied up by root's chown
];

fn apply_mapped_changes(mnt: &Path, what: &str) {
    for (uid, gid, script) in MAPPED_CHANGES {
        let script = format!("set -e; cd \"$0\"/pub; {script}");
        let out = run_as(
            *uid,
            *gid,
            "/bin/sh",
            &["-c".as_ref(), script.as_ref(), mnt.as_os_str()],
        );
        assert!(
            out.status.success(),
            "{what}: `{script}` as {uid}:{gid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Files, directories, a symlink, a fifo and a hard link made through a view with the man page's
/// mappings by callers the mappings cover, then chowned: the view shows the caller's (or the
/// given) owner and the upper stores it unshifted; a lower file copied up keeps its stored owner
/// or takes the given one. fuse-overlayfs 1.10 with the same options over an identical layer,
/// doing the same, is the oracle (both what it shows and what its upper stores); the expected
/// owners are also spelled out. (A caller no mapping covers, such as root here, is left out:
/// fuse-overlayfs stores the overflow id 65534 for it, unionfs the caller's id as it is.)
#[test]
fn objects_made_and_chowned_through_mappings_are_shown_mapped_and_stored_unshifted() {
    if !require_root("owners other than our own") {
        return;
    }
    let l = Layers::new(1);
    l.open_to_all();
    l.mkdir(0, "pub");
    std::fs::set_permissions(l.lower(0, "pub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    l.put(0, "pub/old", b"old\n");
    l.put(0, "pub/theirs", b"theirs\n");
    chown(&l.lower(0, "pub/old"), 1, 1);
    chown(&l.lower(0, "pub/theirs"), 2, 2);
    std::fs::set_permissions(l.lower(0, "pub/theirs"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let sc = Scenario::new(&l);
    let names: Vec<&str> = MAPPED_WANT.iter().map(|w| w.0).collect();
    let want_view: Vec<(String, u32, u32)> = MAPPED_WANT.iter().map(|(n, v, _)| (n.to_string(), v.0, v.1)).collect();
    let want_stored: Vec<(String, u32, u32)> = MAPPED_WANT.iter().map(|(n, _, s)| (n.to_string(), s.0, s.1)).collect();

    let m = compat_mount(&l, MAN_PAGE_MAPPINGS);
    apply_mapped_changes(&m.mnt, "unionfs");
    let ours = owners(&m.mnt, &names);
    let ours_stored = owners(&l.upper, &names);
    if let Some(fo) = FuseOverlayfs::start(&l.lowers[0], l.dir.path(), MAN_PAGE_MAPPINGS) {
        apply_mapped_changes(&fo.mnt, "fuse-overlayfs");
        assert_eq!(ours, owners(&fo.mnt, &names), "owners shown: unionfs vs fuse-overlayfs");
        assert_eq!(
            ours_stored,
            owners(&fo.upper, &names),
            "owners stored in the upper: unionfs vs fuse-overlayfs"
        );
    }
    assert_eq!(ours, want_view, "owners shown through the mapped view");
    assert_eq!(ours_stored, want_stored, "owners stored in the upper (unshifted)");
    // What is stored is read back through the mappings the same way.
    sc.ending(m)
        .view(|root| assert_eq!(owners(root, &names), want_view, "after remount"))
        .remount_with(&["-o", MAN_PAGE_MAPPINGS])
        .end();
}
