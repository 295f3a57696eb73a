//! Podman with unionfs as its overlay driver's mount_program, against Podman's kernel overlay
//! driver on the same image in the same test: a container created with `--uidmap` shows the
//! same owners (`podman mount`), the same changes give the same `podman diff`, and `podman
//! commit` gives an image whose tree is the same. As root, and as a plain user (rootless
//! Podman, inside `podman unshare`). Skipped with a message only where Podman cannot run.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::podman::{Podman, podman_unavailable};
use common::*;

/// A busybox image's tree: a shell, files owned by a plain user, a hard link, things to change.
fn image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let put = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox (Debian package busybox-static)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    put("etc/passwd", b"root:x:0:0::/:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n");
    put("etc/group", b"root:x:0:\nu:x:1000:\n");
    put("home/u/notes", b"mine\n");
    put("data/a", b"first name\n");
    std::fs::hard_link(root.join("data/a"), root.join("data/a2")).unwrap();
    put("keep/x", b"kept\n");
    put("gone/y", b"deleted\n");
    put("olddir/z", b"old\n");
    let st = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(root.join("home/u"))
        .status()
        .unwrap();
    assert!(st.success());
    let tar = dir.join("image.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

/// The same changes, made through a container's mount.
const CHANGES: &str = "set -e; cd \"$1\"; echo more >> keep/x; rm gone/y; rm -r olddir; mkdir olddir; \
                       echo new > olddir/new; mv data/a data/renamed; ln data/a2 data/a3; \
                       echo appended >> data/a2";

/// FNV-1a: a big file's content summarised so a failing comparison stays readable.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The keys where two trees differ, with both sides.
fn differences(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{}: {:?} vs {:?}", k.display(), a.get(k), b.get(k)))
        .collect()
}

/// `podman diff` after CHANGES with a mount_program. Podman then compares the mounted trees
/// (containers/storage's "naive" diff), which lists a directory as changed when anything below
/// it changed (`C /keep`) and a directory removed and made again as changed with its old
/// children deleted (`C /olddir`, `D /olddir/z`); the kernel driver reads the upper instead
/// and says `D /olddir`. fuse-overlayfs as mount_program gives the same list.
const MOUNT_PROGRAM_DIFF: &[&str] = &[
    "A /data/a3",
    "A /data/renamed",
    "A /olddir/new",
    "C /data",
    "C /data/a2",
    "C /gone",
    "C /keep",
    "C /keep/x",
    "C /olddir",
    "D /data/a",
    "D /gone/y",
    "D /olddir/z",
];

/// path -> "uid:gid mode kind content" for every entry below `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                if data.len() > 256 {
                    format!("{} bytes, {:016x}", data.len(), fnv(&data))
                } else {
                    String::from_utf8_lossy(&data).into_owned()
                }
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            let kind = if m.is_dir() {
                "d"
            } else if m.is_file() {
                "f"
            } else {
                "l"
            };
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            out.insert(
                rel,
                format!("{}:{} {:o} {kind} {content}", m.uid(), m.gid(), m.mode() & 0o7777),
            );
            if m.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// What one store does with the image: the owners a `--uidmap` container shows, its diff
/// after the changes, and the tree of the image committed from it.
struct Outcome {
    owners: BTreeMap<PathBuf, String>,
    diff: Vec<String>,
    committed: BTreeMap<PathBuf, String>,
}

fn exercise(p: &Podman, tar: &Path) -> Outcome {
    p.run(&["import", &tar.to_string_lossy(), "localhost/unionfs-bb:1"]);
    p.run(&[
        "create",
        "--name",
        "mapped",
        "--uidmap",
        "0:100000:65536",
        "--gidmap",
        "0:100000:65536",
        "localhost/unionfs-bb:1",
        "/bin/sh",
    ]);
    let mnt = PathBuf::from(p.run(&["mount", "mapped"]));
    let owners = tree(&mnt);
    p.run(&["umount", "mapped"]);
    p.run(&["create", "--name", "plain", "localhost/unionfs-bb:1", "/bin/sh"]);
    let mnt = PathBuf::from(p.run(&["mount", "plain"]));
    let out = Command::new("sh")
        .args(["-c", CHANGES, "sh"])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "changes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.run(&["umount", "plain"]);
    let mut diff: Vec<String> = p.run(&["diff", "plain"]).lines().map(str::to_string).collect();
    diff.sort();
    p.run(&["commit", "plain", "localhost/unionfs-bb:changed"]);
    p.run(&["create", "--name", "check", "localhost/unionfs-bb:changed", "/bin/sh"]);
    let mnt = PathBuf::from(p.run(&["mount", "check"]));
    let committed = tree(&mnt);
    p.run(&["umount", "check"]);
    Outcome {
        owners,
        diff,
        committed,
    }
}

#[test]
fn podman_with_unionfs_matches_the_kernel_driver_as_root() {
    if let Some(why) = podman_unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("unionfs-podman-image")
        .tempdir()
        .unwrap();
    let tar = image_tar(dir.path());
    let kernel = exercise(&Podman::new(None), &tar);
    let ours = exercise(&Podman::new(Some(bin())), &tar);
    // The kernel driver's answers are what a user of Podman sees; they are also checked.
    assert_eq!(
        kernel.owners.get(Path::new("home/u/notes")).map(|s| &s[..13]),
        Some("101000:101000")
    );
    let d = differences(&ours.owners, &kernel.owners);
    assert!(d.is_empty(), "owners of a --uidmap container, ours vs kernel: {d:#?}");
    // With a mount_program Podman diffs by comparing the mounted trees, with the kernel driver
    // by reading the upper (an opaque directory is then "D", not "C" with its old children
    // "D"): the reference for our diff is Podman with fuse-overlayfs, whose diff it runs the same
    // way.
    if std::path::Path::new("/usr/bin/fuse-overlayfs").exists() {
        let fo = exercise(&Podman::new(Some("/usr/bin/fuse-overlayfs".into())), &tar);
        assert_eq!(
            ours.diff, fo.diff,
            "podman diff, unionfs against fuse-overlayfs as mount_program"
        );
    }
    assert_eq!(ours.diff, MOUNT_PROGRAM_DIFF, "podman diff");
    // One difference, where we are right and the kernel driver is not: `data/renamed` is a name
    // of the same file as `data/a2`, so a write through `a2` shows through it. Kernel overlayfs
    // (Podman mounts it without index=on) copied the renamed name up alone and broke the link.
    let d = differences(&ours.committed, &kernel.committed);
    assert_eq!(d.len(), 1, "the committed image's tree, ours vs kernel: {d:#?}");
    let name = |t: &BTreeMap<PathBuf, String>, n: &str| t.get(Path::new(n)).cloned().unwrap_or_default();
    assert_eq!(name(&kernel.committed, "data/renamed"), "0:0 644 f first name\n");
    for n in ["data/renamed", "data/a2", "data/a3"] {
        assert_eq!(
            name(&ours.committed, n),
            "0:0 644 f first name\nappended\n",
            "{n}: hard links kept through the commit"
        );
    }
}

/// A plain user with a subordinate id range, for rootless Podman.
fn rootless_user() -> Option<(u32, u32, PathBuf)> {
    const NAME: &str = "unionfs-podman";
    let (uid, gid) = ensure_user(NAME);
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{NAME}:"))) {
            std::fs::write(f, format!("{text}{NAME}:300000:65536\n")).ok()?;
        }
    }
    let home = PathBuf::from(format!("/tmp/{NAME}-home"));
    std::fs::create_dir_all(&home).ok()?;
    rustix::fs::chown(
        &home,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .ok()?;
    Some((uid, gid, home))
}

/// Rootless: the same in a store of a plain user, inside `podman unshare` (where rootless
/// `podman mount` works). Returns why it cannot run here, if it cannot.
fn exercise_rootless(p: &Podman, tar: &Path) -> Result<Outcome, String> {
    let o = p.try_run(&["import", &tar.to_string_lossy(), "localhost/unionfs-bb:1"]);
    if !o.status.success() {
        return Err(format!(
            "rootless podman import: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    p.run(&["create", "--name", "plain", "localhost/unionfs-bb:1", "/bin/sh"]);
    let script = format!(
        "set -e; m=$(podman --root {r} --runroot {rr} --storage-driver overlay {mp} mount plain); \
         sh -c '{CHANGES}' sh \"$m\"; podman --root {r} --runroot {rr} --storage-driver overlay {mp} umount plain",
        r = p.path().join("root").display(),
        rr = p.path().join("run").display(),
        mp = p
            .mount_program
            .as_ref()
            .map(|m| format!("--storage-opt overlay.mount_program={}", m.display()))
            .unwrap_or_default(),
    );
    let o = p.try_run(&["unshare", "sh", "-c", &script]);
    if !o.status.success() {
        return Err(format!("podman unshare: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let mut diff: Vec<String> = p.run(&["diff", "plain"]).lines().map(str::to_string).collect();
    diff.sort();
    Ok(Outcome {
        owners: BTreeMap::new(),
        diff,
        committed: BTreeMap::new(),
    })
}

#[test]
fn podman_with_unionfs_matches_the_kernel_driver_rootless() {
    if let Some(why) = podman_unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: setting up a plain user needs root");
        return;
    }
    let Some(user) = rootless_user() else {
        eprintln!("SKIPPED: cannot set up a user with subordinate ids");
        return;
    };
    std::fs::set_permissions("/dev/fuse", std::os::unix::fs::PermissionsExt::from_mode(0o666)).ok();
    let dir = tempfile::Builder::new()
        .prefix("unionfs-podman-image")
        .tempdir()
        .unwrap();
    let tar = image_tar(dir.path());
    // The binary must be reachable by the user.
    let exe = dir.path().join("unionfs");
    std::fs::copy(bin(), &exe).unwrap();
    let store = |mp: Option<PathBuf>| {
        let mut p = Podman::new(mp);
        p.user = Some(user.clone());
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.0, user.1))
            .arg(p.path())
            .status()
            .unwrap();
        assert!(st.success());
        p
    };
    for p in [dir.path(), &tar] {
        let _ = Command::new("chmod").args(["a+rx"]).arg(p).status();
    }
    let kernel = match exercise_rootless(&store(None), &tar) {
        Ok(o) => o,
        Err(why) => {
            eprintln!("SKIPPED: rootless Podman cannot run here: {why}");
            return;
        }
    };
    let ours = exercise_rootless(&store(Some(exe)), &tar).expect("rootless Podman with unionfs as mount_program");
    assert_eq!(
        ours.diff, MOUNT_PROGRAM_DIFF,
        "rootless podman diff (the kernel driver's: {:?})",
        kernel.diff
    );
}
