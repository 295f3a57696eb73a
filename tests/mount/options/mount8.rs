//! docs/semantics.md, "Mount options", through mount(8), fstab and mount.fuse3 (the README's
//! "With mount(8), fstab and systemd"): `mount -t fuse.unionfs SOURCE MNT -o lowerdir=..` runs
//! `unionfs SOURCE MNT -o OPTIONS`; the source names the mount (unless `fsname=` does), `ro`
//! gives a read-only view of the whole union (upper included), and mount(8)'s own options in
//! fstab lines (noauto, x-systemd.*, ...) are accepted silently.

use std::path::Path;
use std::process::Command;

use super::{helper_binary, require_mount8};
use crate::common::*;
use crate::reference::{kernel_overlay, layer_options};

/// Unmounts with `unionfs umount` (which waits for the daemon mount.fuse3 started) on drop.
struct HelperMount<'a> {
    bin: &'a Path,
    mnt: &'a Path,
}

impl Drop for HelperMount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.mnt) {
            let ok = Command::new(self.bin)
                .arg("umount")
                .arg(self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(self.mnt).status();
            }
        }
    }
}

fn mount_cmd(args: &[&str]) -> std::process::Output {
    Command::new("mount").args(args).output().expect("run mount")
}

/// (source, fstype, options) of the mount at `mnt`.
fn findmnt(mnt: &Path) -> (String, String, String) {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE,FSTYPE,OPTIONS"])
        .arg(mnt)
        .output()
        .expect("findmnt");
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let f: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(f.len(), 3, "findmnt said: {s}");
    (f[0].to_string(), f[1].to_string(), f[2].to_string())
}

#[test]
fn mount_t_fuse_unionfs_mounts_names_and_serves_the_union() {
    if !require_mount8() {
        return;
    }
    let l = Layers::new(2);
    l.put(0, "top", b"from lower0");
    l.put(1, "top", b"hidden");
    l.put(1, "bottom", b"from lower1");
    let bin = helper_binary(&l);
    let opts = layer_options(&l);
    let fstype = format!("fuse.{}", bin.display());
    let mnt = l.mnt.to_string_lossy().into_owned();
    let out = mount_cmd(&["-t", &fstype, "my-union", &mnt, "-o", &opts]);
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    let g = HelperMount { bin: &bin, mnt: &l.mnt };
    assert_eq!(findmnt(&l.mnt).0, "my-union", "the source names the mount");
    assert_eq!(std::fs::read(l.mnt.join("top")).unwrap(), b"from lower0");
    assert_eq!(std::fs::read(l.mnt.join("bottom")).unwrap(), b"from lower1");
    std::fs::write(l.mnt.join("new"), b"written").unwrap();
    drop(g);
    assert!(!is_mounted(&l.mnt));
    assert_eq!(std::fs::read(l.up("new")).unwrap(), b"written");

    // -o ro with an upper: the whole union, upper included, read-only; fsname= names it.
    let ro = format!("{opts},ro,fsname=named-union");
    let out = mount_cmd(&["-t", &fstype, "ignored-source", &mnt, "-o", &ro]);
    assert!(
        out.status.success(),
        "mount ro: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _g = HelperMount { bin: &bin, mnt: &l.mnt };
    let (source, _, options) = findmnt(&l.mnt);
    assert_eq!(source, "named-union");
    assert!(options.split(',').any(|o| o == "ro"), "options {options}");
    assert_eq!(
        std::fs::read(l.mnt.join("new")).unwrap(),
        b"written",
        "the upper is part of the view"
    );
    assert_eq!(std::fs::read(l.mnt.join("top")).unwrap(), b"from lower0");
    let err = std::fs::write(l.mnt.join("other"), b"x").expect_err("a read-only union");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(!exists_raw(&l.up("other")));
}

#[test]
fn an_fstab_line_mounts_the_union() {
    if !require_mount8() {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "etc/motd", b"hello");
    let bin = helper_binary(&l);
    let fstab = l.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a union of one layer\nunion-from-fstab {} fuse.{} \
             noauto,x-systemd.requires=local-fs.target,lowerdir={},upperdir={},workdir={} 0 0\n",
            l.mnt.display(),
            bin.display(),
            l.lowers[0].display(),
            l.upper.display(),
            l.work.display()
        ),
    )
    .unwrap();
    let mnt = l.mnt.to_string_lossy().into_owned();
    let out = mount_cmd(&["-T", &fstab.to_string_lossy(), &mnt]);
    assert!(
        out.status.success(),
        "mount from fstab: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _g = HelperMount { bin: &bin, mnt: &l.mnt };
    assert_eq!(findmnt(&l.mnt).0, "union-from-fstab");
    assert_eq!(std::fs::read(l.mnt.join("etc/motd")).unwrap(), b"hello");
    // mount(8)'s own options produced no warning line in the daemon's start.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mount -o remount,ro|rw` (mount(8) runs our program again through mount.fuse3) and
/// `unionfs remount --ro|--rw`: writes fail with EROFS while read-only, as on kernel overlayfs
/// remounted the same way, and work again after; going read-only with a file open for writing
/// is refused (EBUSY), as for any filesystem.
#[test]
fn remount_read_only_and_back_through_mount8_and_unionfs() {
    if !require_mount8() {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "f", b"lower");
    let bin = helper_binary(&l);
    let opts = layer_options(&l);
    let mnt = l.mnt.to_string_lossy().into_owned();
    let out = mount_cmd(&["-t", &format!("fuse.{}", bin.display()), "src", &mnt, "-o", &opts]);
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    let _g = HelperMount { bin: &bin, mnt: &l.mnt };
    let write = |name: &str| err_code(std::fs::write(l.mnt.join(name), b"x"));
    let ro = |want: bool, how: &str| {
        let opts = findmnt(&l.mnt).2;
        assert_eq!(opts.split(',').any(|o| o == "ro"), want, "{how}: options {opts}");
    };
    // A file open for writing keeps the union writable.
    let held = std::fs::OpenOptions::new()
        .append(true)
        .open(l.mnt.join("f"))
        .expect("open");
    let out = mount_cmd(&["-o", "remount,ro", &mnt]);
    assert!(
        !out.status.success(),
        "remount,ro with a file open for writing succeeded"
    );
    drop(held);

    let out = mount_cmd(&["-o", "remount,ro", &mnt]);
    assert!(
        out.status.success(),
        "remount,ro: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ro(true, "remount,ro");
    assert_eq!(write("new"), Some(libc::EROFS));
    assert_eq!(std::fs::read(l.mnt.join("f")).expect("read"), b"lower");
    let out = mount_cmd(&["-o", "remount,rw", &mnt]);
    assert!(
        out.status.success(),
        "remount,rw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ro(false, "remount,rw");
    assert_eq!(write("new"), None);

    let unionfs = |arg: &str| {
        Command::new(bin.as_path())
            .args(["remount", arg, &mnt])
            .output()
            .expect("run")
    };
    assert!(unionfs("--ro").status.success());
    ro(true, "unionfs remount --ro");
    assert_eq!(write("other"), Some(libc::EROFS));
    assert!(unionfs("--rw").status.success());
    ro(false, "unionfs remount --rw");
    assert_eq!(write("other"), None);
    assert!(l.up("new").exists() && l.up("other").exists());

    // The same on kernel overlayfs, for the errno.
    let k = Layers::new(1);
    let kmnt = k.mnt.to_string_lossy().into_owned();
    let ko = kernel_overlay(&k, "");
    let out = mount_cmd(&["-o", "remount,ro", &kmnt]);
    let kernel = err_code(std::fs::write(k.mnt.join("new"), b"x"));
    drop(ko);
    assert!(
        out.status.success(),
        "kernel overlay remount,ro: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kernel, Some(libc::EROFS));
}

/// A second mount(8) mount of a source whose upper a live mount holds: one line from mount(8),
/// nothing mounted (docs/semantics.md, "One mount per upper").
#[test]
fn a_second_mount8_mount_of_the_same_upper_is_refused_in_one_line() {
    if !require_mount8() {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "f", b"lower");
    let bin = helper_binary(&l);
    let opts = layer_options(&l);
    let fstype = format!("fuse.{}", bin.display());
    let mnt = l.mnt.to_string_lossy().into_owned();
    let out = mount_cmd(&["-t", &fstype, "src", &mnt, "-o", &opts]);
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    let _g = HelperMount { bin: &bin, mnt: &l.mnt };
    let second = l.dir.path().join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let out = mount_cmd(&["-t", &fstype, "src", &second.to_string_lossy(), "-o", &opts]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second mount of the same upper succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("in use") && err.contains(&*l.upper.to_string_lossy()),
        "{err}"
    );
    assert!(!is_mounted(&second));
}
