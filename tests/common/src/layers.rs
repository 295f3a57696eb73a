//! Layer fixtures: lower directories, an upper, a workdir and a mountpoint in one temporary
//! directory, written to and looked at raw (not through a mount).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::{Mount, Tree};

/// A temporary set of directories: `lower0..lowerN` (lower0 on top), `upper`, `work`, `mnt`.
pub struct Layers {
    pub dir: tempfile::TempDir,
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Layers {
    pub fn new(n_lowers: usize) -> Layers {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-test")
            .tempdir()
            .expect("tempdir");
        let lowers: Vec<PathBuf> = (0..n_lowers).map(|i| dir.path().join(format!("lower{i}"))).collect();
        for l in &lowers {
            std::fs::create_dir(l).expect("mkdir lower");
        }
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let mnt = dir.path().join("mnt");
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).expect("mkdir");
        }
        Layers {
            dir,
            lowers,
            upper,
            work,
            mnt,
        }
    }

    /// Writes `content` at `rel` in lower `i`, creating parents.
    pub fn put(&self, i: usize, rel: &str, content: &[u8]) {
        let p = self.lowers[i].join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
        std::fs::write(p, content).expect("write lower file");
    }

    pub fn mkdir(&self, i: usize, rel: &str) {
        std::fs::create_dir_all(self.lowers[i].join(rel)).expect("mkdir -p");
    }

    /// `--lower` argument, top first.
    pub fn lower_arg(&self) -> String {
        lower_arg(&self.lowers).to_string_lossy().into_owned()
    }

    /// Mounts with the upper and workdir, plus `extra` arguments.
    pub fn mount(&self, extra: &[&str]) -> Mount {
        Mount::unionfs(&self.lowers, Some((&self.upper, &self.work)), extra, &self.mnt)
    }

    /// Snapshot of every lower layer, to prove they were not modified.
    pub fn snapshot_lowers(&self) -> Vec<Tree> {
        self.lowers.iter().map(|l| Tree::read_raw(l)).collect()
    }
}

/// `a:b:c` for `--lower`.
pub fn lower_arg(lowers: &[PathBuf]) -> OsString {
    let v: Vec<String> = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    OsString::from(v.join(":"))
}

impl Layers {
    /// Path of `rel` in lower `i` (raw, not through the mount).
    pub fn lower(&self, i: usize, rel: &str) -> PathBuf {
        self.lowers[i].join(rel)
    }

    /// Path of `rel` in the upper (raw, not through the mount).
    pub fn up(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }

    /// Makes the temporary directory reachable by other users (tempdirs are 0700).
    pub fn open_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    }
}
