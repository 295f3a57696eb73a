//! The workdir's layout: what unionfs keeps there, and what kernel overlayfs keeps in its own,
//! as `unionfs check` reads them; and where the workdir is when none is given.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Our scratch directory: objects being built, emptied at every mount.
pub const SCRATCH: &str = "unionfs";
/// The whiteout device new whiteouts are hard links to.
pub const SHARED_WHITEOUT: &str = "unionfs-whiteout";
/// The hard-link index (see `hardlink.rs`), kept across mounts.
pub const INDEX_DIR: &str = "unionfs-index";
/// The file in the index that says which upper it belongs to (see `upper_id.rs`).
pub const INDEX_OWNER: &str = "owner";

/// The workdir of an upper when none is given: `.unionfs-work.NAME` beside it. The name is the
/// upper's as it is (not necessarily UTF-8), so the mount and the layer tools find the same one.
pub fn default_for(upper: &Path) -> PathBuf {
    let mut name = OsString::from(".unionfs-work.");
    name.push(upper.file_name().unwrap_or(std::ffi::OsStr::new("upper")));
    upper.parent().unwrap_or(Path::new("/")).join(name)
}

/// containers/storage's layout: an upper named `diff` has its workdir `work` beside it.
pub fn podman_for(upper: &Path) -> Option<PathBuf> {
    (upper.file_name()? == "diff").then(|| upper.parent().unwrap_or(Path::new("/")).join("work"))
}

/// What an entry at the top of a workdir is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkdirEntry {
    /// Scratch space (ours, or kernel overlayfs's `work`), emptied at mount.
    Scratch {
        kernel: bool,
    },
    /// Our shared whiteout device.
    SharedWhiteout,
    /// Our hard-link index.
    Index,
    /// Kernel overlayfs's inode index (`index=on`).
    KernelIndex,
    /// Kernel overlayfs's incompatibility markers (`incompat/volatile`).
    KernelIncompat,
    Other,
}

/// Classifies the entry `name` at the top of a workdir (a directory if `dir`).
pub fn classify(name: &[u8], dir: bool) -> WorkdirEntry {
    match (name, dir) {
        (n, true) if n == SCRATCH.as_bytes() => WorkdirEntry::Scratch { kernel: false },
        (b"work", true) => WorkdirEntry::Scratch { kernel: true },
        (n, false) if n == SHARED_WHITEOUT.as_bytes() => WorkdirEntry::SharedWhiteout,
        (n, true) if n == INDEX_DIR.as_bytes() => WorkdirEntry::Index,
        (b"index", true) => WorkdirEntry::KernelIndex,
        (b"incompat", true) => WorkdirEntry::KernelIncompat,
        _ => WorkdirEntry::Other,
    }
}

/// Inside kernel overlayfs's `incompat`: a volatile mount not unmounted cleanly.
pub fn is_volatile_marker(name: &[u8]) -> bool {
    name == b"volatile"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn the_default_workdir_keeps_a_name_that_is_not_utf8() {
        let upper = Path::new(std::ffi::OsStr::from_bytes(b"/x/up\xffper"));
        let w = default_for(upper);
        assert_eq!(w.as_os_str().as_bytes(), b"/x/.unionfs-work.up\xffper");
        assert_eq!(podman_for(Path::new("/s/l/diff")), Some(PathBuf::from("/s/l/work")));
        assert_eq!(podman_for(Path::new("/s/l/upper")), None);
    }
}
