//! docs/semantics.md, "Mount options" (the README's "Mount options" is the table): the generic
//! VFS options the kernel's FUSE mount honours (nodev, nosuid, noexec, sync, dirsync, lazytime)
//! take effect on a unionfs mount as on a kernel overlay mount given the same options, in the
//! mount's flags and in behaviour, through `unionfs mount -o` and through mount(8); options
//! that cannot apply to a FUSE union mount with one warning line each; a made-up option is
//! refused with one line and exit status 2, and nothing is created.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{helper_binary, require_mount8};
use crate::common::*;

/// The generic VFS options every mount here gets.
const VFS: &str = "nodev,nosuid,noexec,sync,dirsync,lazytime";

/// (per-mount options, the filesystem's options) of the topmost mount at `mnt`, from
/// /proc/self/mountinfo.
fn mount_options(mnt: &Path) -> (Vec<String>, Vec<String>) {
    let want = std::fs::canonicalize(mnt).expect("canonical mountpoint");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(&*want.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} is not mounted", want.display()));
    let per_mount = line.split(' ').nth(5).unwrap_or_default();
    let fs = line
        .split(" - ")
        .nth(1)
        .and_then(|t| t.split(' ').nth(2))
        .unwrap_or_default();
    let split = |s: &str| s.split(',').map(str::to_string).collect();
    (split(per_mount), split(fs))
}

/// Layers whose bottom lower holds a program (`bin/prog`, a copy of /bin/true) and a device
/// node (`dev/null`, char 1:3), plus an upper, workdir and mountpoint for kernel overlayfs.
fn fixture() -> (Layers, PathBuf, PathBuf, PathBuf) {
    let l = Layers::new(1);
    l.mkdir(0, "bin");
    l.mkdir(0, "dev");
    std::fs::copy("/bin/true", l.lower(0, "bin/prog")).expect("copy /bin/true");
    let st = Command::new("mknod")
        .arg(l.lower(0, "dev/null"))
        .args(["c", "1", "3"])
        .status()
        .expect("mknod");
    assert!(st.success(), "mknod");
    let k = |n: &str| {
        let p = l.dir.path().join(n);
        std::fs::create_dir(&p).expect("mkdir");
        p
    };
    let (ku, kw, km) = (k("kupper"), k("kwork"), k("kmnt"));
    (l, ku, kw, km)
}

/// What the mount at `mnt` lets a program do: (running `bin/prog`, opening `dev/null`), each
/// `None` when it worked, else the errno.
fn behaviour(mnt: &Path) -> (Option<i32>, Option<i32>) {
    let exec = match Command::new(mnt.join("bin/prog")).status() {
        Ok(st) => {
            assert!(st.success(), "bin/prog ran and failed: {st}");
            None
        }
        Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
    };
    let open = std::fs::File::open(mnt.join("dev/null"))
        .err()
        .map(|e| e.raw_os_error().unwrap_or(-1));
    (exec, open)
}

/// The options of [`VFS`] show in the mount's flags (nodev, nosuid, noexec per mount; sync,
/// dirsync, lazytime on the filesystem) and act: exec and device opens fail with EACCES.
fn assert_vfs_in_effect(what: &str, mnt: &Path) {
    let (per_mount, fs) = mount_options(mnt);
    for o in ["nodev", "nosuid", "noexec"] {
        assert!(per_mount.iter().any(|x| x == o), "{what}: {o} not in {per_mount:?}");
    }
    for o in ["sync", "dirsync", "lazytime"] {
        assert!(fs.iter().any(|x| x == o), "{what}: {o} not in {fs:?}");
    }
    let eacces = Some(libc::EACCES);
    assert_eq!(behaviour(mnt), (eacces, eacces), "{what}: exec and device open");
}

/// Runs `unionfs umount MNT` on drop if something is still mounted there (mounts made in the
/// background, by `unionfs mount` or mount(8)).
struct Unmount<'a>(&'a Path, &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.1) {
            let ok = Command::new(self.0)
                .arg("umount")
                .arg(self.1)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                unmount_dir(self.1);
            }
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn vfs_options_take_effect_as_on_kernel_overlayfs() {
    if !require_root("mounts, device nodes and kernel overlayfs") {
        return;
    }
    let (l, ku, kw, km) = fixture();
    // Without the options, the program runs and the device opens (root's default: dev, suid).
    let m = l.mount(&[]);
    assert_eq!(behaviour(&m.mnt), (None, None), "a mount without options");
    let (per_mount, fs) = mount_options(&m.mnt);
    assert!(
        !per_mount.iter().any(|o| o == "noexec" || o == "nodev"),
        "{per_mount:?}"
    );
    assert!(!fs.iter().any(|o| o == "sync" || o == "lazytime"), "{fs:?}");
    drop(m);

    let m = l.mount(&["-o", VFS]);
    assert_vfs_in_effect("unionfs mount -o", &m.mnt);
    let k = KernelOverlay::mount_with(&l.lowers, Some((&ku, &kw)), &km, VFS).expect("kernel overlayfs");
    assert_vfs_in_effect("kernel overlayfs", &k.mnt);
    assert_eq!(behaviour(&m.mnt), behaviour(&k.mnt));
    drop(k);
    // The view is still the union's, and writes land in the upper (sync is a mode, not a
    // refusal).
    std::fs::write(m.path("new"), b"synced").expect("write through a sync mount");
    drop(m);
    assert_eq!(std::fs::read(l.up("new")).expect("upper file"), b"synced");
}

fn mount8(bin: &Path, l: &Layers, workdir: &Path, extra: &str) -> Output {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{extra}",
        l.lowers[0].display(),
        l.upper.display(),
        workdir.display()
    );
    Command::new("mount")
        .arg("-t")
        .arg(format!("fuse.{}", bin.display()))
        .arg("opts-union")
        .arg(&l.mnt)
        .args(["-o", &opts])
        .output()
        .expect("run mount")
}

#[test]
fn vfs_options_through_mount8_take_effect_as_on_kernel_overlayfs() {
    if !require_mount8() {
        return;
    }
    let (l, ku, kw, km) = fixture();
    let bin = helper_binary(&l);
    let out = mount8(&bin, &l, &l.work, &format!("{VFS},dax=never"));
    let _g = Unmount(&bin, &l.mnt);
    assert!(out.status.success(), "mount: {}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end(),
        "unionfs: warning: ignoring option 'dax=never': DAX maps a virtio-fs host's memory window; \
         a union of directories has none",
        "one warning line, for dax=never only"
    );
    assert_vfs_in_effect("mount -t fuse.unionfs", &l.mnt);
    let k = KernelOverlay::mount_with(&l.lowers, Some((&ku, &kw)), &km, VFS).expect("kernel overlayfs");
    assert_vfs_in_effect("kernel overlayfs", &k.mnt);
    assert_eq!(behaviour(&l.mnt), behaviour(&k.mnt));
}

#[test]
fn options_that_cannot_apply_mount_with_one_warning_each() {
    if !require_root("mounts") {
        return;
    }
    let l = Layers::new(1);
    l.put(0, "f", b"lower");
    let b = bin();
    let out = Command::new(&b)
        .args(["mount", "--lower", &l.lower_arg(), "--upper"])
        .arg(&l.upper)
        .arg("--workdir")
        .arg(&l.work)
        .args([
            "-o",
            "dax=never,context=\"system_u:object_r:container_file_t:s0:c1,c2\",iversion",
        ])
        .arg(&l.mnt)
        .output()
        .expect("run unionfs");
    let _g = Unmount(&b, &l.mnt);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let selinux = Path::new("/sys/fs/selinux/enforce").exists();
    let want = if selinux { 2 } else { 3 };
    assert_eq!(lines.len(), want, "{err}");
    assert!(
        lines
            .iter()
            .all(|w| w.starts_with("unionfs: warning: ignoring option '")),
        "{err}"
    );
    assert!(lines[0].contains("'dax=never'"), "{err}");
    assert!(lines.last().is_some_and(|w| w.contains("'iversion'")), "{err}");
    if !selinux {
        assert!(lines[1].contains("context=") && lines[1].contains("SELinux"), "{err}");
    }
    assert_eq!(
        std::fs::read(l.mnt.join("f")).expect("read through the mount"),
        b"lower"
    );
}

#[test]
fn a_made_up_option_is_refused_and_nothing_is_created() {
    if !require_mount8() {
        return;
    }
    let l = Layers::new(1);
    let work = l.dir.path().join("new-work");
    let b = bin();
    for (opt, line) in [
        (
            "frobnicate=1",
            "unionfs: unknown mount option 'frobnicate=1' (the README's \"Mount options\" lists what unionfs takes)",
        ),
        (
            "nosymfollow",
            "unionfs: option 'nosymfollow' is not supported: the kernel's FUSE honours MS_NOSYMFOLLOW, \
             but fuser 0.18 cannot pass that flag; refused rather than mounted without it",
        ),
    ] {
        for fg in [false, true] {
            let mut cmd = Command::new(&b);
            cmd.args(["mount", "--lower", &l.lower_arg(), "--upper"])
                .arg(&l.upper)
                .arg("--workdir")
                .arg(&work)
                .args(["-o", &format!("nodev,{opt}")]);
            if fg {
                cmd.arg("--foreground");
            }
            let out = cmd.arg(&l.mnt).output().expect("run unionfs");
            let _g = Unmount(&b, &l.mnt);
            assert_eq!(out.status.code(), Some(2), "{opt}: {}", stderr(&out));
            assert_eq!(stderr(&out).trim_end(), line);
            assert!(
                !is_mounted(&l.mnt) && !work.exists(),
                "{opt}: nothing mounted or created"
            );
        }
    }
    // The same through mount(8): mount fails with our line, nothing is created.
    let helper = helper_binary(&l);
    let out = mount8(&helper, &l, &work, "frobnicate=1");
    let _g = Unmount(&helper, &l.mnt);
    assert!(!out.status.success(), "mount(8) took a made-up option");
    assert!(
        stderr(&out).contains("unknown mount option 'frobnicate=1'"),
        "{}",
        stderr(&out)
    );
    assert!(!is_mounted(&l.mnt) && !work.exists());
}
