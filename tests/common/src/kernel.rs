//! Guards for mounts the kernel makes for a test: a kernel overlayfs mount (the reference the
//! differential tests compare with) and a size-limited tmpfs. Dropping a guard unmounts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::is_mounted;

/// A kernel overlayfs mount (needs root), the reference for differential tests. Dropping it
/// unmounts (lazily if busy).
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay` with `lowers` (top first); with `upper_work` = `(upper, workdir)` it is
    /// writable, without it a read-only union. Returns mount(8)'s complaint on failure.
    pub fn mount(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, mnt: &Path) -> Result<KernelOverlay, String> {
        KernelOverlay::mount_with(lowers, upper_work, mnt, "")
    }

    /// [`KernelOverlay::mount`] with more mount options (`nodev,noexec,...`; empty for none).
    pub fn mount_with(
        lowers: &[PathBuf],
        upper_work: Option<(&Path, &Path)>,
        mnt: &Path,
        extra: &str,
    ) -> Result<KernelOverlay, String> {
        let lower = lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = format!("lowerdir={lower}");
        if let Some((upper, work)) = upper_work {
            opts.push_str(&format!(",upperdir={},workdir={}", upper.display(), work.display()));
        }
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t overlay -o {opts} {}: {}",
                mnt.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(KernelOverlay { mnt: mnt.to_path_buf() })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts now (lazily if the mount is busy).
    pub fn unmount(self) {}
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        unmount_dir(&self.mnt);
    }
}

/// Unmounts whatever is mounted at `dir` (lazily if it is busy); nothing if nothing is.
pub fn unmount_dir(dir: &Path) {
    if is_mounted(dir) {
        let ok = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

/// A size-limited tmpfs mounted at a directory; dropping it unmounts (lazily).
pub struct TmpfsGuard {
    pub dir: PathBuf,
}

impl TmpfsGuard {
    pub fn mount(dir: &Path, size: &str) -> TmpfsGuard {
        std::fs::create_dir_all(dir).expect("mkdir tmpfs dir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("spawn mount");
        assert!(st.success(), "mount tmpfs at {}", dir.display());
        TmpfsGuard { dir: dir.to_path_buf() }
    }
}

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
