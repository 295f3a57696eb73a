//! What the comparisons with kernel overlayfs share: our three data paths, kernel overlayfs over
//! a test's layers, layers other users can reach, and transcripts of commands.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The ways unionfs is mounted in these tests: FUSE passthrough (root's default), the daemon
/// serving file data with the kernel's writeback cache (every mount without passthrough), and
/// without it (write-through).
pub(crate) const MODES: [(&str, &[&str]); 3] = [
    ("passthrough", &[]),
    ("no-passthrough", &["--no-passthrough"]),
    ("write-through", &["--no-passthrough", "--no-writeback-cache"]),
];

/// `lowerdir=…,upperdir=…,workdir=…` for `l`'s layers (kernel overlayfs's and our `-o` form).
pub(crate) fn layer_options(l: &Layers) -> String {
    let lower = l
        .lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    format!(
        "lowerdir={lower},upperdir={},workdir={}",
        l.upper.display(),
        l.work.display()
    )
}

/// Kernel overlayfs over `l`'s layers with extra mount options (`opts`, may be empty).
pub(crate) fn kernel_overlay(l: &Layers, opts: &str) -> KernelOverlay {
    let mut o = layer_options(l);
    if !opts.is_empty() {
        o = format!("{o},{opts}");
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&l.mnt)
        .output()
        .expect("spawn mount");
    assert!(
        out.status.success(),
        "mount -t overlay -o {o}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    KernelOverlay { mnt: l.mnt.clone() }
}

/// Layers reachable by other users, filled by `fill`.
pub(crate) fn layers(fill: impl Fn(&Layers)) -> Layers {
    let l = Layers::new(1);
    l.open_to_all();
    fill(&l);
    l
}

/// Runs `prog args` and returns its status, stdout and stderr with `strip` removed.
pub(crate) fn run(prog: &str, args: &[&OsStr], strip: &Path) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text = format!(
        "{} {}{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.replace(&format!("{}/", strip.display()), "")
}

pub(crate) fn append(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    OpenOptions::new().append(true).open(p)?.write_all(data)
}
