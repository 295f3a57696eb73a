//! A private Podman store for tests: `--root`/`--runroot` in a temporary directory, the overlay
//! driver with or without unionfs as its mount_program, as root or as a plain user (rootless
//! Podman). Dropping it unmounts and removes what it made (only under its own directory) and,
//! rootless, ends the pause process that holds the store's user namespace.

use std::ffi::OsString;
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

    /// A store of the plain user `user` (uid, gid, home): the directory is the user's, with a
    /// runtime directory of its own (`XDG_RUNTIME_DIR`), so the pause process rootless Podman
    /// starts records its pid there and is this store's alone (ended on drop).
    pub fn rootless(mount_program: Option<PathBuf>, user: (u32, u32, PathBuf)) -> Podman {
        use std::os::unix::fs::PermissionsExt;
        let mut p = Podman::new(mount_program);
        let xdg = p.xdg();
        std::fs::create_dir(&xdg).expect("mkdir XDG_RUNTIME_DIR");
        std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).expect("chmod XDG_RUNTIME_DIR");
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.0, user.1))
            .arg(p.path())
            .status()
            .expect("chown");
        assert!(st.success(), "chown the store to the user");
        p.user = Some(user);
        p
    }

    fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    /// Podman's global options for this store (what follows `podman`).
    pub fn global_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--root".into(),
            self.dir.path().join("root").into(),
            "--runroot".into(),
            self.dir.path().join("run").into(),
            "--storage-driver".into(),
            "overlay".into(),
            "--events-backend".into(),
            "none".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
        ];
        if let Some(mp) = &self.mount_program {
            v.push("--storage-opt".into());
            v.push(format!("overlay.mount_program={}", mp.display()).into());
        }
        v
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
                    .env("XDG_RUNTIME_DIR", self.xdg())
                    // Podman chdirs to where it was started: the test's own directory (a
                    // checkout in a private temporary directory, as CI clones it) may be closed
                    // to the user.
                    .current_dir(home);
                c
            }
            None => Command::new("podman"),
        };
        c.args(self.global_args()).stdin(Stdio::null());
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

    /// Runs `sh -c SCRIPT` where this store's containers can be mounted and their mounts seen:
    /// as root directly, rootless inside `podman unshare` (the store's user namespace). In the
    /// script `"$@"` is this store's podman command (`"$@" mount NAME`).
    pub fn in_mount_ns(&self, script: &str) -> Output {
        let mut c = if self.user.is_some() {
            let mut c = self.cmd();
            c.args(["unshare", "sh"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.stdin(Stdio::null());
            c
        };
        c.args(["-c", script, "sh", "podman"])
            .args(self.global_args())
            .output()
            .expect("spawn a script in the store's mount namespace")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The pause process rootless Podman started for this store (from its runtime directory).
    fn pause_pid(&self) -> Option<rustix::process::Pid> {
        let (uid, _, _) = self.user.as_ref()?;
        let text = std::fs::read_to_string(self.xdg().join("libpod/tmp/pause.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        // Still the user's process (not a pid used again since).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()?;
        (owner == *uid).then(|| rustix::process::Pid::from_raw(pid))?
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["umount", "-a", "-f"]).output();
        let _ = self.cmd().args(["rm", "-a", "-f"]).output();
        for m in unionfs::mountinfo::table().into_iter().rev() {
            if m.mountpoint.starts_with(self.dir.path()) {
                let _ = Command::new("umount").arg("-l").arg(&m.mountpoint).status();
            }
        }
        if let Some(pid) = self.pause_pid() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// Whether Podman runs here, through [`crate::require`] (a test without it checks nothing, so
/// strict mode fails it).
pub fn require_podman() -> bool {
    match podman_unavailable() {
        None => true,
        Some(why) => crate::require(false, &why),
    }
}

/// Where Podman cannot run here, why.
fn podman_unavailable() -> Option<String> {
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
