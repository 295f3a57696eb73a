//! A private Podman store for tests: `--root`/`--runroot` in a temporary directory, the overlay
//! driver with or without unionfs as its mount_program. Dropping it unmounts and removes what it
//! made (only under its own directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Podman {
    pub dir: tempfile::TempDir,
    /// unionfs as the overlay driver's mount_program; `None`: the kernel driver.
    pub mount_program: Option<PathBuf>,
    /// Run as this plain user (rootless Podman), with its environment.
    pub user: Option<(u32, u32, PathBuf)>,
}

impl Podman {
    pub fn new(mount_program: Option<PathBuf>) -> Podman {
        Podman {
            dir: tempfile::Builder::new()
                .prefix("unionfs-podman")
                .tempdir()
                .expect("tempdir"),
            mount_program,
            user: None,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = match &self.user {
            Some((uid, gid, home)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .args(["--", "podman"])
                    .env("HOME", home)
                    .env("XDG_RUNTIME_DIR", self.dir.path().join("xdg"));
                c
            }
            None => Command::new("podman"),
        };
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .arg("--storage-driver")
            .arg("overlay")
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .stdin(Stdio::null());
        if let Some(mp) = &self.mount_program {
            c.arg("--storage-opt")
                .arg(format!("overlay.mount_program={}", mp.display()));
        }
        c
    }

    /// Runs `podman ARGS`; its output, whether it succeeded or not.
    pub fn try_run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn podman")
    }

    /// Runs `podman ARGS`, which must succeed; its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let o = self.try_run(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["umount", "-a", "-f"]).output();
        let _ = self.cmd().args(["rm", "-a", "-f"]).output();
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(mp) = line.split(' ').nth(4) {
                if mp.starts_with(&root) {
                    let _ = Command::new("umount").arg("-l").arg(mp).status();
                }
            }
        }
    }
}

/// Where Podman cannot run here, why (a test then says so and checks nothing).
pub fn podman_unavailable() -> Option<String> {
    match Command::new("podman").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "podman --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!(
            "podman cannot start ({e}); scripts/setup.sh installs it where apt-get works"
        )),
    }
}
