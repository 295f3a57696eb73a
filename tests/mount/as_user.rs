//! Acting as another user, for the tests of docs/semantics.md, "Permissions and ACLs" and
//! "Data": data changes run by this test binary re-executed as a plain user (the ignored
//! `helper` test, not a test of its own), and mounts a plain user makes through fusermount3.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::reference::layers;

const OP_VAR: &str = "UNIONFS_POSIX_OP";

const PATH_VAR: &str = "UNIONFS_POSIX_PATH";

const ARG_VAR: &str = "UNIONFS_POSIX_ARG";

/// Runs `op` on `path` (with `arg`) as `user`, in this test binary re-executed as the helper.
fn act_as(user: (u32, u32), op: &str, path: &Path, arg: &Path) -> Output {
    let exe = std::env::current_exe().expect("test binary");
    Command::new("setpriv")
        .arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .arg("--clear-groups")
        .arg("--")
        .arg(exe)
        .args([
            "--exact",
            &helper_name(),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(OP_VAR, op)
        .env(PATH_VAR, path)
        .env(ARG_VAR, arg)
        .stdin(Stdio::null())
        .output()
        .expect("run helper")
}

#[track_caller]
pub(crate) fn act_ok(user: (u32, u32), op: &str, path: &Path, arg: &Path) {
    let out = act_as(user, op, path, arg);
    // "1 passed": the helper ran (a filter that matched nothing would succeed too).
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{op} on {} as uid {}: {}{}",
        path.display(),
        user.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The [`helper`] test's name as libtest knows it (its module path without the crate's name), so
/// that `--exact` runs it and nothing else.
fn helper_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::helper")
}

/// Not a test of its own: the body of [`act_as`], which runs it (ignored otherwise, so that it
/// never counts as a test that passed).
#[test]
#[ignore = "helper: run as another user by act_as"]
fn helper() {
    let Some(op) = std::env::var_os(OP_VAR) else { return };
    let path = PathBuf::from(std::env::var_os(PATH_VAR).expect("path"));
    let arg = PathBuf::from(std::env::var_os(ARG_VAR).unwrap_or_default());
    run_op(op.to_str().expect("op"), &path, &arg);
}

/// One data change of the file `path` (see [`act_as`]).
pub(crate) fn run_op(op: &str, path: &Path, arg: &Path) {
    let open = |flags: i32| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(path)
            .expect("open")
    };
    let falloc = |mode: rustix::fs::FallocateFlags| {
        rustix::fs::fallocate(open(0), mode, 0, 8192).expect("fallocate");
    };
    use rustix::fs::FallocateFlags as F;
    match op {
        "write" => {
            std::os::unix::fs::FileExt::write_at(&open(0), b"w", 0).expect("write");
        }
        "ftruncate" => open(0).set_len(100).expect("ftruncate"),
        "open-trunc" => drop(open(libc::O_TRUNC)),
        "fallocate" => falloc(F::empty()),
        "fallocate-keep-size" => falloc(F::KEEP_SIZE),
        "punch-hole" => falloc(F::PUNCH_HOLE | F::KEEP_SIZE),
        "zero-range" => falloc(F::ZERO_RANGE),
        "copy-range" => {
            let src = std::fs::File::open(arg).expect("open source");
            let (mut a, mut b) = (0u64, 0u64);
            rustix::fs::copy_file_range(&src, Some(&mut a), open(0), Some(&mut b), 10).expect("copy_file_range");
        }
        "mmap-write" => mmap_write_no_msync(&open(0), b"m"),
        _ => panic!("unknown op {op}"),
    }
}

/// uid and gid of [`ROOTLESS_USER`], who mounts through `/dev/fuse` (usable by everyone, as
/// desktop distributions ship it; fusermount3 is setuid root). scripts/setup.sh sets up both.
pub(crate) fn rootless_user() -> (u32, u32) {
    assert_dev_fuse_for_everyone();
    user(ROOTLESS_USER)
}

/// `prog` run as `user` (no supplementary groups, C locale).
fn as_user(user: (u32, u32), prog: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .arg("--clear-groups")
        .arg("--")
        .arg(prog)
        .env("LC_ALL", "C")
        .env("HOME", "/")
        // Not the test's own directory, which may be closed to the user.
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

/// Runs a shell script as `user` (`$1`... are `args`); returns its exit code and its stdout
/// and stderr together.
pub(crate) fn user_sh(user: (u32, u32), script: &str, args: &[&OsStr]) -> (i32, String) {
    let out = as_user(user, "/bin/sh")
        .args(["-c", script, "sh"])
        .args(args)
        .output()
        .expect("run a shell as the user");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[track_caller]
pub(crate) fn user_sh_ok(user: (u32, u32), script: &str, args: &[&OsStr]) -> String {
    let (code, out) = user_sh(user, script, args);
    assert_eq!(code, 0, "as uid {}: `{script}` {args:?}: {out}", user.0);
    out
}

/// Layers filled by `fill`, then handed to `user` (a rootless mount needs its mount point,
/// upper and workdir to be the user's).
pub(crate) fn user_layers(user: (u32, u32), fill: impl Fn(&Layers)) -> Layers {
    let l = layers(fill);
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", user.0, user.1))
        .arg(l.dir.path())
        .status()
        .expect("chown");
    assert!(st.success(), "chown -R the layers");
    l
}

/// A daemon a plain user started (mounting through fusermount3). Dropping it detaches the mount
/// as root and waits for that daemon (killing it, by its pid only, if it hangs).
pub(crate) struct UserMount {
    child: Option<std::process::Child>,
    pub(crate) mnt: PathBuf,
    user: (u32, u32),
}

impl UserMount {
    pub(crate) fn start(user: (u32, u32), l: &Layers, extra: &[&str]) -> UserMount {
        // The binary must be reachable by the user; if a parent directory is private, a copy.
        let mut bin = bin();
        if user_sh(user, "test -x \"$1\"", &[bin.as_os_str()]).0 != 0 {
            let copy = l.dir.path().join("unionfs-bin");
            std::fs::copy(&bin, &copy).expect("copy the binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                .expect("chmod 0755 the copy of the binary");
            bin = copy;
        }
        let child = as_user(user, bin)
            .arg("mount")
            .arg("--foreground")
            .arg("--lower")
            .arg(l.lower_arg())
            .arg("--upper")
            .arg(&l.upper)
            .arg("--workdir")
            .arg(&l.work)
            .args(extra)
            .arg(&l.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unionfs as the user");
        let mut m = UserMount {
            child: Some(child),
            mnt: l.mnt.clone(),
            user,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !is_mounted(&m.mnt) {
            if let Some(Ok(Some(st))) = m.child.as_mut().map(|c| c.try_wait()) {
                m.child = None;
                panic!("unionfs (as uid {}) exited before mounting: {st}", user.0);
            }
            assert!(std::time::Instant::now() < deadline, "no mount at {}", m.mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Unmounts as the user (`fusermount3 -u`); the daemon must then exit 0.
    pub(crate) fn finish(mut self) {
        user_sh_ok(self.user, "fusermount3 -u \"$1\"", &[self.mnt.as_os_str()]);
        let child = self.child.take().expect("daemon");
        assert_eq!(wait_or_kill(child, Duration::from_secs(15)), Some(0), "daemon exit");
    }
}

impl Drop for UserMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(child) = self.child.take() {
            wait_or_kill(child, Duration::from_secs(15));
        }
    }
}
