//! docs/semantics.md, "Mount options", through real mounts, one subject a module.

use std::path::{Path, PathBuf};

use crate::common::*;

mod idmap;
mod mount8;
mod vfs;

/// Our binary at a path without a dot (mount(8) hands `fuse.PATH` to mount.fuse3 only then): a
/// symlink in the test's directory. Not a copy: a copy just written may be held open for writing
/// by a sibling test's fork for a moment, and its exec (by mount.fuse3's shell) then fails with
/// ETXTBSY.
fn helper_binary(l: &Layers) -> PathBuf {
    let dir = l.dir.path().join("bin");
    std::fs::create_dir_all(&dir).expect("mkdir bin");
    let p = dir.join("unionfs");
    std::os::unix::fs::symlink(bin(), &p).expect("symlink the binary");
    assert!(!p.to_string_lossy().contains('.'), "{} has a dot", p.display());
    p
}

/// Whether mount(8) can mount a union here (root, and mount.fuse3), through [`require`].
fn require_mount8() -> bool {
    let helper = Path::new("/sbin/mount.fuse3").exists() || Path::new("/usr/sbin/mount.fuse3").exists();
    require_root("mount(8)")
        && require(
            helper,
            "mount.fuse3 (Debian package fuse3; scripts/setup.sh installs it)",
        )
}
