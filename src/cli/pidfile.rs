//! Pid files, so `unionfs umount` can find and wait for the daemon serving a mountpoint.
//!
//! One file per canonical mountpoint: `/run/unionfs/<escaped mountpoint>.pid` for root,
//! `$XDG_RUNTIME_DIR/unionfs/...` or `/tmp/unionfs-<uid>/...` for other users. It holds
//! `<pid> <start time>\n<mountpoint>\n`; the start time (from /proc/PID/stat) guards against a
//! reused pid. The daemon writes it once mounted and removes it when it exits.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A daemon process: pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Daemon {
    pub pid: u32,
    start: u64,
}

impl Daemon {
    /// This process.
    pub fn current() -> io::Result<Daemon> {
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| io::Error::other("cannot read /proc/self/stat"))?;
        Ok(Daemon { pid, start })
    }

    /// Whether the process still runs (a zombie counts as gone).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Start time of a live (non-zombie) process, field 22 of /proc/PID/stat.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further.
    fields.nth(18)?.parse().ok()
}

/// The directories pid files may live in, preferred first.
fn dirs() -> Vec<PathBuf> {
    let uid = rustix::process::geteuid();
    let mut v = Vec::new();
    if uid.is_root() {
        v.push(PathBuf::from("/run/unionfs"));
    } else if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        v.push(PathBuf::from(x).join("unionfs"));
    }
    v.push(PathBuf::from(format!("/tmp/unionfs-{}", uid.as_raw())));
    v
}

/// The file name for a canonical mountpoint: systemd-style escaping (`/` → `-`, other bytes
/// outside `[A-Za-z0-9_.]` → `\xNN`), shortened with a hash when too long.
fn file_name(mountpoint: &Path) -> String {
    let b = mountpoint.as_os_str().as_bytes();
    let trimmed = b.strip_prefix(b"/").unwrap_or(b);
    let mut s = String::new();
    for (i, &c) in trimmed.iter().enumerate() {
        match c {
            b'/' => s.push('-'),
            b'.' if i > 0 => s.push('.'),
            c if c.is_ascii_alphanumeric() || c == b'_' => s.push(c as char),
            c => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    if s.len() > 200 {
        // FNV-1a: stable across builds, unlike std's hasher.
        let h = b.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &c| {
            (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        s.truncate(180);
        s.push_str(&format!("-{h:016x}"));
    }
    s.push_str(".pid");
    s
}

/// The pid file of the running daemon; removed on drop (only if it is still ours).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    me: Daemon,
}

impl PidFile {
    /// Writes the pid file for `mountpoint` (canonical), replacing a stale one.
    pub fn create(mountpoint: &Path) -> io::Result<PidFile> {
        let me = Daemon::current()?;
        let mut last = io::Error::other("no directory for pid files");
        for dir in dirs() {
            match write_in(&dir, mountpoint, me) {
                Ok(path) => return Ok(PidFile { path, me }),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it still names this process (a later daemon on the same mountpoint
    /// may have replaced it).
    pub fn remove(&self) {
        if read_file(&self.path) == Some(self.me) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Whether `dir` is a real directory of ours that nobody else can write to (it may be in /tmp).
fn dir_is_safe(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw() && m.mode() & 0o022 == 0)
}

fn write_in(dir: &Path, mountpoint: &Path, me: Daemon) -> io::Result<PathBuf> {
    let mode = if rustix::process::geteuid().is_root() {
        0o755
    } else {
        0o700
    };
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)?;
    if !dir_is_safe(dir) {
        return Err(io::Error::other(format!(
            "{} is not a directory owned by us and writable only by us",
            dir.display()
        )));
    }
    let path = dir.join(file_name(mountpoint));
    let tmp = dir.join(format!(".{}.{}.tmp", file_name(mountpoint), me.pid));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    let mut text = format!("{} {}\n", me.pid, me.start).into_bytes();
    text.extend_from_slice(mountpoint.as_os_str().as_bytes());
    text.push(b'\n');
    let r = f.write_all(&text).and_then(|()| fs::rename(&tmp, &path));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| path)
}

fn read_file(path: &Path) -> Option<Daemon> {
    let text = fs::read_to_string(path).ok()?;
    let mut f = text.lines().next()?.split_whitespace();
    let pid = f.next()?.parse().ok()?;
    let start = f.next()?.parse().ok()?;
    Some(Daemon { pid, start })
}

/// The live daemon serving `mountpoint` (canonical), if its pid file is found.
pub fn find(mountpoint: &Path) -> Option<Daemon> {
    let name = file_name(mountpoint);
    for d in dirs().into_iter().filter(|d| dir_is_safe(d)) {
        let path = d.join(&name);
        match read_file(&path) {
            Some(daemon) if daemon.alive() => return Some(daemon),
            // Left behind by a daemon that was killed.
            Some(_) => {
                let _ = fs::remove_file(&path);
            }
            None => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_bounded() {
        assert_eq!(file_name(Path::new("/")), "-.pid");
        assert_eq!(file_name(Path::new("/mnt/a b/c-d")), "mnt-a\\x20b-c\\x2dd.pid");
        assert_eq!(file_name(Path::new("/.x/y.z")), "\\x2ex-y.z.pid");
        let long = PathBuf::from(format!("/{}", "a/".repeat(300)));
        let n = file_name(&long);
        assert!(n.len() < 255 && n.ends_with(".pid"));
        assert_ne!(n, file_name(&PathBuf::from(format!("/{}", "a/".repeat(301)))));
    }

    #[test]
    fn own_process_is_alive() {
        let me = Daemon::current().unwrap();
        assert!(me.alive());
        assert!(
            !Daemon {
                pid: me.pid,
                start: me.start + 1
            }
            .alive()
        );
    }
}
