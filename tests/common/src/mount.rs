//! The mount guard: a foreground `unionfs mount` daemon this process started, torn down
//! (unmounted, the daemon reaped or killed by its PID) when the guard is dropped, also when a
//! test panics; and what tests do to such a daemon (remount, kill, look at its workdir).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Layers, lower_arg};

/// Our binary (never the bare name: Debian's unionfs-fuse owns /usr/bin/unionfs): the one cargo
/// builds beside the test binaries' `deps/` directory before it runs them.
pub fn bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("unionfs"))
            .unwrap_or_else(|| panic!("no directory above {}", exe.display()));
        assert!(
            bin.is_file(),
            "{} is missing: the test binary {} runs from cargo's deps/ directory, and cargo builds \
             the unionfs binary beside it",
            bin.display(),
            exe.display()
        );
        bin
    })
    .clone()
}

/// Whether `p` is a mount point right now.
pub fn is_mounted(p: &Path) -> bool {
    let want = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    unionfs::mountinfo::topmost_at(&want).is_some()
}

/// A running unionfs daemon serving a mount. Dropping it unmounts (lazily) and reaps the daemon.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
}

impl Mount {
    /// `unionfs mount --foreground` of `lowers` (top first), with an (upper, workdir) or
    /// read-only, plus `extra` arguments, at `mnt`.
    pub fn unionfs(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, extra: &[&str], mnt: &Path) -> Mount {
        let mut args: Vec<OsString> = vec![
            "mount".into(),
            "--foreground".into(),
            "--lower".into(),
            lower_arg(lowers),
        ];
        if let Some((upper, work)) = upper_work {
            args.extend(["--upper".into(), upper.into(), "--workdir".into(), work.into()]);
        }
        args.extend(extra.iter().map(OsString::from));
        args.push(mnt.into());
        Mount::start(&args, mnt)
    }

    /// Starts `unionfs ARGS` (a foreground mount) and waits until `mnt` is mounted.
    pub fn start(args: &[OsString], mnt: &Path) -> Mount {
        Mount::start_with_env(args, mnt, &[])
    }

    /// [`Mount::start`] with `env` added to the daemon's environment.
    pub fn start_with_env(args: &[OsString], mnt: &Path, env: &[(&str, &str)]) -> Mount {
        let mut cmd = Command::new(bin());
        cmd.args(args).envs(env.iter().copied());
        Mount::start_command(cmd, mnt)
    }

    /// [`Mount::start`] for a mount that first reads a lot (indexing multi-GiB image layers):
    /// waits up to `wait` for it to appear.
    pub fn start_slow(args: &[OsString], mnt: &Path, wait: Duration) -> Mount {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Mount::start_command_within(cmd, mnt, wait)
    }

    /// Starts `cmd` (the daemon in the foreground, set up as the caller likes) and waits for
    /// its mount at `mnt`.
    pub fn start_command(cmd: Command, mnt: &Path) -> Mount {
        Mount::start_command_within(cmd, mnt, Duration::from_secs(20))
    }

    fn start_command_within(mut cmd: Command, mnt: &Path, wait: Duration) -> Mount {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unionfs");
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + wait;
        while !is_mounted(mnt) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    m.child = None;
                    panic!("unionfs exited before mounting: {st}");
                }
            }
            assert!(Instant::now() < deadline, "mount did not appear at {}", mnt.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Unmounts and waits for the daemon; returns its exit status code.
    pub fn unmount(mut self) -> Option<i32> {
        self.teardown()
    }

    fn teardown(&mut self) -> Option<i32> {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let code = wait_or_kill(self.child.take()?, Duration::from_secs(15));
        // A daemon that mounted while we waited (a slow first mount given up on) and was then
        // killed leaves a dead mount behind: detach it too.
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        code
    }
}

/// Waits up to `timeout` for `child` (a daemon we started) to exit and returns its exit code;
/// past the timeout it is killed (only that process) and the result is None.
pub fn wait_or_kill(mut child: Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The daemon of `m` is alive and the mount answers a lookup, a readdir and a small write.
pub fn assert_healthy(m: &Mount) {
    assert!(daemon_alive(m), "daemon died");
    std::fs::read_dir(&m.mnt)
        .expect("readdir root")
        .for_each(|e| drop(e.expect("entry")));
    let probe = m.path("health-probe");
    std::fs::write(&probe, b"ok").expect("write probe");
    assert_eq!(std::fs::read(&probe).expect("read the probe back"), b"ok");
    std::fs::remove_file(&probe).expect("remove the probe");
}

/// Unmounts `m`, asserting the daemon exits 0, and mounts the same layers again with `extra`.
pub fn remount(l: &Layers, m: Mount, extra: &[&str]) -> Mount {
    assert_eq!(m.unmount(), Some(0), "unionfs must exit 0 on unmount");
    l.mount(extra)
}

/// Sends SIGKILL to the daemon this guard started (only that PID).
pub fn kill9(m: &Mount) {
    let pid = m.pid().expect("daemon pid") as i32;
    let pid = rustix::process::Pid::from_raw(pid).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9 daemon");
}

/// Whether the daemon of `m` is still running (not exited, not a zombie).
pub fn daemon_alive(m: &Mount) -> bool {
    let Some(pid) = m.pid() else { return false };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the command name in parentheses.
            let state = s.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z')) | Some(Some('X')) | None)
        }
        Err(_) => false,
    }
}

/// Entries left in the workdir's `unionfs/` scratch directory (missing dir counts as empty).
pub fn workdir_leftovers(work: &Path) -> Vec<String> {
    match std::fs::read_dir(work.join("unionfs")) {
        Ok(rd) => rd
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}
