//! Podman with unionfs as its overlay driver's mount_program, against Podman's kernel overlay
//! driver on the same image in the same test: a container created with `--uidmap` shows the
//! same owners (`podman mount`), the same changes give the same `podman diff` (fuse-overlayfs as
//! mount_program the reference, the kernel driver's own diff checked too), and `podman commit`
//! gives an image whose tree, read back through a container of it, is the same. As root, and as
//! a plain user (rootless Podman against the rootless kernel driver, containers mounted and read
//! inside `podman unshare`). Trees are read with `tar` where the mount is visible. Skipped (a
//! failure in strict mode) only where Podman cannot run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::podman::{Podman, require_podman};
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
    put("meta/m", b"owner changes only\n");
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
                       echo appended >> data/a2; chmod 600 meta/m";

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
    "C /meta",
    "C /meta/m",
    "C /olddir",
    "D /data/a",
    "D /gone/y",
    "D /olddir/z",
];

/// A file's content as a tree shows it: short text as it is, anything longer summarised.
fn describe(data: &[u8]) -> String {
    if data.len() > 256 {
        format!("{} bytes, {:016x}", data.len(), fnv(data))
    } else {
        String::from_utf8_lossy(data).into_owned()
    }
}

/// path -> "uid:gid mode kind content" for every entry of a tar stream of a tree (GNU tar,
/// `--numeric-owner`, made with `-C DIR .`). A hard link gets the line of the name it links to.
fn tar_tree(stream: &[u8]) -> BTreeMap<PathBuf, String> {
    let strip = |p: &Path| -> PathBuf { p.strip_prefix(".").unwrap_or(p).components().collect() };
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(stream);
    for e in ar.entries().expect("a tar stream") {
        let mut e = e.expect("a tar entry");
        let rel = strip(&e.path().expect("entry path"));
        if rel.as_os_str().is_empty() {
            continue;
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        if kind.is_hard_link() {
            let target = strip(&e.link_name().expect("link name").expect("a hard link's target"));
            let line = out
                .get(&target)
                .cloned()
                .unwrap_or_else(|| format!("link to missing {}", target.display()));
            out.insert(rel, line);
            continue;
        }
        let (k, content) = if kind.is_dir() {
            ("d", String::new())
        } else if kind.is_symlink() {
            let target = e.link_name().expect("link name").unwrap_or_default();
            ("l", target.display().to_string())
        } else if kind.is_file() {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read a tar entry");
            ("f", describe(&data))
        } else {
            ("?", format!("{kind:?}"))
        };
        let line = format!(
            "{}:{} {:o} {k} {content}",
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mode().unwrap() & 0o7777
        );
        out.insert(rel, line);
    }
    out
}

/// Runs `script` where the store's containers mount (rootless: inside `podman unshare`); its
/// stdout. `"$@"` in the script is the store's podman command.
fn in_mount_ns(p: &Podman, script: &str) -> Vec<u8> {
    let o = p.in_mount_ns(&format!("set -e; {script}"));
    assert!(
        o.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// The tree of container `name`, mounted with `podman mount` (as `ls -ln` shows owners).
fn mounted_tree(p: &Podman, name: &str) -> BTreeMap<PathBuf, String> {
    tar_tree(&in_mount_ns(
        p,
        &format!("m=$(\"$@\" mount {name}); tar --numeric-owner -C \"$m\" -cf - .; \"$@\" umount {name} >/dev/null"),
    ))
}

/// What one store does with the image: the owners a `--uidmap` container shows, its diff
/// after the changes, and the tree of the image committed from it.
struct Outcome {
    owners: BTreeMap<PathBuf, String>,
    diff: Vec<String>,
    committed: BTreeMap<PathBuf, String>,
}

/// Imports the image, creates a container with `--uidmap MAP --gidmap MAP` and reads its tree,
/// makes CHANGES in another container, diffs and commits it, and reads the committed image
/// back through a container of it. `Err`: the import failed (why Podman cannot run here).
fn exercise(p: &Podman, tar: &Path, map: &str) -> Result<Outcome, String> {
    let o = p.try_run(&["import", &tar.to_string_lossy(), "localhost/unionfs-bb:1"]);
    if !o.status.success() {
        return Err(format!("podman import: {}", String::from_utf8_lossy(&o.stderr)));
    }
    p.run(&[
        "create",
        "--name",
        "mapped",
        "--uidmap",
        map,
        "--gidmap",
        map,
        "localhost/unionfs-bb:1",
        "/bin/sh",
    ]);
    let owners = mounted_tree(p, "mapped");
    p.run(&["create", "--name", "plain", "localhost/unionfs-bb:1", "/bin/sh"]);
    in_mount_ns(
        p,
        &format!("m=$(\"$@\" mount plain); sh -c '{CHANGES}' sh \"$m\"; \"$@\" umount plain >/dev/null"),
    );
    let mut diff: Vec<String> = p.run(&["diff", "plain"]).lines().map(str::to_string).collect();
    diff.sort();
    p.run(&["commit", "plain", "localhost/unionfs-bb:changed"]);
    p.run(&["create", "--name", "check", "localhost/unionfs-bb:changed", "/bin/sh"]);
    let committed = mounted_tree(p, "check");
    Ok(Outcome {
        owners,
        diff,
        committed,
    })
}

/// `podman diff` after CHANGES with the kernel driver, which reads the container's upper
/// (containers/storage's overlay diff): the directory removed and made again is opaque there,
/// so it is `D /olddir` with `A /olddir/new` and no word on its old child, and a directory that
/// was only copied up to hold a changed file (`keep`) is not listed. The same as root and
/// rootless.
const KERNEL_DIFF: &[&str] = &[
    "A /data/a3",
    "A /data/renamed",
    "A /olddir/new",
    "C /data",
    "C /data/a2",
    "C /gone",
    "C /keep/x",
    "C /meta/m",
    "D /data/a",
    "D /gone/y",
    "D /olddir",
];

/// What unionfs as mount_program must give, the kernel driver (and fuse-overlayfs as
/// mount_program, where installed) being the references; `notes` is the owner the `--uidmap`
/// container shows for `home/u/notes` (uid 1000 in the image).
fn compare(kernel: &Outcome, ours: &Outcome, fuse_overlayfs: Option<&Outcome>, notes: &str, what: &str) {
    // The kernel driver's answers are what a user of Podman sees; they are also checked.
    assert_eq!(
        kernel
            .owners
            .get(Path::new("home/u/notes"))
            .map(|s| s.split(' ').next().unwrap()),
        Some(notes),
        "{what}: the kernel driver's owner of home/u/notes in the --uidmap container"
    );
    assert_eq!(kernel.diff, KERNEL_DIFF, "{what}: the kernel driver's podman diff");
    let d = differences(&ours.owners, &kernel.owners);
    assert!(
        d.is_empty(),
        "{what}: owners of a --uidmap container, ours vs kernel: {d:#?}"
    );
    // With a mount_program Podman diffs by comparing the mounted trees, with the kernel driver
    // by reading the upper (an opaque directory is then "D", not "C" with its old children
    // "D"): the reference for our diff is Podman with fuse-overlayfs, whose diff it runs the same
    // way.
    if let Some(fo) = fuse_overlayfs {
        assert_eq!(
            ours.diff, fo.diff,
            "{what}: podman diff, unionfs against fuse-overlayfs as mount_program"
        );
    }
    assert_eq!(ours.diff, MOUNT_PROGRAM_DIFF, "{what}: podman diff");
    // One difference, where we are right and the kernel driver is not: `data/renamed` is a name
    // of the same file as `data/a2`, so a write through `a2` shows through it. Kernel overlayfs
    // (Podman mounts it without index=on) copied the renamed name up alone and broke the link.
    let d = differences(&ours.committed, &kernel.committed);
    assert_eq!(d.len(), 1, "{what}: the committed image's tree, ours vs kernel: {d:#?}");
    let name = |t: &BTreeMap<PathBuf, String>, n: &str| t.get(Path::new(n)).cloned().unwrap_or_default();
    assert_eq!(name(&kernel.committed, "data/renamed"), "0:0 644 f first name\n");
    for n in ["data/renamed", "data/a2", "data/a3"] {
        assert_eq!(
            name(&ours.committed, n),
            "0:0 644 f first name\nappended\n",
            "{what}: {n}: hard links kept through the commit"
        );
    }
    for (n, want) in [
        ("keep/x", "0:0 644 f kept\nmore\n"),
        ("olddir/new", "0:0 644 f new\n"),
        ("home/u/notes", "1000:1000 644 f mine\n"),
        // A metadata-only change (metacopy stays off in this form unless asked for).
        ("meta/m", "0:0 600 f owner changes only\n"),
    ] {
        assert_eq!(name(&ours.committed, n), want, "{what}: {n} in the committed image");
    }
    for n in ["gone/y", "olddir/z", "data/a"] {
        assert_eq!(
            name(&ours.committed, n),
            "",
            "{what}: {n} is gone from the committed image"
        );
    }
}

/// fuse-overlayfs as mount_program (the reference for `podman diff`), where installed: else,
/// through [`require`], the comparison with it is left out.
fn fuse_overlayfs() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/fuse-overlayfs");
    require(
        p.exists(),
        "/usr/bin/fuse-overlayfs (Debian package fuse-overlayfs; scripts/setup.sh installs it)",
    )
    .then_some(p)
}

#[test]
fn podman_with_unionfs_matches_the_kernel_driver_as_root() {
    if !require_podman() || !require_root("Podman's rootful store") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("unionfs-podman-image")
        .tempdir()
        .unwrap();
    let tar = image_tar(dir.path());
    const MAP: &str = "0:100000:65536";
    let kernel = exercise(&Podman::new(None), &tar, MAP).expect("podman with the kernel driver");
    let ours = exercise(&Podman::new(Some(bin())), &tar, MAP).expect("podman with unionfs as mount_program");
    let fo =
        fuse_overlayfs().map(|mp| exercise(&Podman::new(Some(mp)), &tar, MAP).expect("podman with fuse-overlayfs"));
    compare(&kernel, &ours, fo.as_ref(), "101000:101000", "as root");
}

/// Rootless Podman's plain user (uid, gid, home), with the subordinate id ranges the
/// container's map needs; scripts/setup.sh makes all of it.
fn rootless_user() -> (u32, u32, PathBuf) {
    let a = account(PODMAN_USER);
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let ids: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{}:", a.name)))
            .filter_map(|range| range.split(':').nth(1)?.parse::<u64>().ok())
            .sum();
        assert!(
            ids >= 65536,
            "{} has {ids} subordinate ids in {f}, the test needs 65536: run scripts/setup.sh (as root) first",
            a.name
        );
    }
    (a.uid, a.gid, a.home)
}

/// Rootless: the same with stores of a plain user, containers mounted inside `podman unshare`
/// (where rootless `podman mount` works), against Podman's rootless kernel overlay driver
/// (unprivileged overlayfs in the user namespace). The user namespace holds the user's 65536
/// subordinate ids plus the user itself, so the container's map is `0:1:65536` (root's
/// `0:100000:65536` does not fit): Podman leaves the image's layer unshifted and passes the map
/// to the mount_program as `uidmapping=`/`gidmapping=`, which unionfs must apply to show the
/// owners the kernel driver shows (uid 1000 as 1001).
#[test]
fn podman_with_unionfs_matches_the_kernel_driver_rootless() {
    if !require_podman() || !require_root("switching to the plain user") {
        return;
    }
    let user = rootless_user();
    assert_dev_fuse_for_everyone();
    let dir = tempfile::Builder::new()
        .prefix("unionfs-podman-image")
        .tempdir()
        .unwrap();
    let tar = image_tar(dir.path());
    // The binary must be reachable by the user.
    let exe = dir.path().join("unionfs");
    std::fs::copy(bin(), &exe).unwrap();
    for p in [dir.path(), &tar] {
        let _ = Command::new("chmod").args(["a+rx"]).arg(p).status();
    }
    const MAP: &str = "0:1:65536";
    let store = |mp: Option<PathBuf>| Podman::rootless(mp, user.clone());
    let kernel = match exercise(&store(None), &tar, MAP) {
        Ok(o) => o,
        Err(why) => {
            require(false, &format!("rootless Podman, which cannot run here: {why}"));
            return;
        }
    };
    let ours = exercise(&store(Some(exe)), &tar, MAP).expect("rootless Podman with unionfs as mount_program");
    let fo =
        fuse_overlayfs().map(|mp| exercise(&store(Some(mp)), &tar, MAP).expect("rootless Podman with fuse-overlayfs"));
    compare(&kernel, &ours, fo.as_ref(), "1001:1001", "rootless");
}
