//! Which upper a hard-link index belongs to.
//!
//! The index (`hardlinks.rs`) lives in the workdir, which outlives the upper: CI sandboxes throw
//! the upper away after each job and mount a fresh one with the same (often default) workdir,
//! and a workdir can be handed to another upper by mistake. An index entry is a hard link to a
//! copy in the upper it was made for; linked into any other upper it shows data that upper
//! never had. So the index records the identity of its upper, and a mount uses it only for
//! that upper.
//!
//! An upper's identity is a random id kept in an xattr on its root (`trusted.unionfs.upper` when
//! the daemon is privileged, `user.unionfs.upper` otherwise; both are private to the union),
//! together with the root's inode number and birth time. The id tells a fresh upper (no id yet)
//! from the old one even when the filesystem hands the old root's inode number to the new
//! directory; the inode number and birth time tell a copy (`cp -a`, `rsync -X` and `tar
//! --xattrs` carry the id along) from the original, whose inodes the index entries are. Moving
//! the upper (a rename) keeps all three. Where the upper's filesystem stores no xattrs, the
//! birth time alone must tell a fresh upper, and where it has none either, no index is trusted
//! across mounts.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, StatxFlags, XattrFlags};
use rustix::io::Errno as RErrno;

use crate::sys::Target;

/// The id's xattr, by privilege (see the module comment).
const ID_XATTRS: [&str; 2] = ["user.unionfs.upper", "trusted.unionfs.upper"];

/// An upper directory's identity, recorded in the index it owns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct UpperIdentity {
    /// The random id on the upper's root; none where the filesystem refuses xattrs.
    id: Option<[u8; 16]>,
    ino: u64,
    /// The root's birth time (seconds, nanoseconds), where the filesystem records one.
    btime: Option<(i64, u32)>,
}

impl UpperIdentity {
    /// The identity of the upper whose root is open as `root`, giving the upper an id if it has none yet (`privileged`: in the `trusted.*` namespace).
    pub fn establish(root: BorrowedFd<'_>, privileged: bool) -> rustix::io::Result<UpperIdentity> {
        let mut ident = UpperIdentity::read(root)?;
        if ident.id.is_none() {
            let mut id = [0u8; 16];
            rustix::rand::getrandom(&mut id[..], rustix::rand::GetRandomFlags::empty())?;
            let attr = ID_XATTRS[usize::from(privileged)];
            match Target::Fd(root).set_xattr(OsStr::new(attr), &id, XattrFlags::CREATE) {
                Ok(()) => ident.id = Some(id),
                // No xattrs here: the inode number and birth time must do.
                Err(RErrno::NOTSUP | RErrno::PERM | RErrno::ACCESS) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ident)
    }

    /// The identity of the upper whose root is open as `root`, as it is (nothing is written).
    pub fn read(root: BorrowedFd<'_>) -> rustix::io::Result<UpperIdentity> {
        let mut id = None;
        for attr in ID_XATTRS {
            match Target::Fd(root).get_xattr(OsStr::new(attr)) {
                Ok(Some(v)) => {
                    id = <[u8; 16]>::try_from(v.as_slice()).ok();
                    break;
                }
                // Absent, or a namespace this process may not read.
                Ok(None) | Err(RErrno::NOTSUP | RErrno::PERM | RErrno::ACCESS) => {}
                Err(e) => return Err(e),
            }
        }
        let st = rustix::fs::statx(
            root.as_fd(),
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::INO | StatxFlags::BTIME,
        )?;
        let btime = StatxFlags::from_bits_retain(st.stx_mask)
            .contains(StatxFlags::BTIME)
            .then_some((st.stx_btime.tv_sec, st.stx_btime.tv_nsec));
        Ok(UpperIdentity {
            id,
            ino: st.stx_ino,
            btime,
        })
    }

    /// Whether an index recorded for `self` may be used with the upper `now`: the same upper,
    /// told apart from a fresh or copied one (see the module comment).
    pub fn owns(&self, now: &UpperIdentity) -> bool {
        self == now && (self.id.is_some() || self.btime.is_some())
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Option<UpperIdentity> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .ok()
            .map(|(o, _)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &std::path::Path) -> std::os::fd::OwnedFd {
        rustix::fs::open(
            p,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open dir")
    }

    #[test]
    fn an_upper_keeps_its_identity_and_a_fresh_one_differs() {
        let t = tempfile::tempdir().expect("tempdir");
        let u = t.path().join("u");
        std::fs::create_dir(&u).expect("mkdir");
        let first = UpperIdentity::establish(open(&u).as_fd(), false).expect("establish");
        let again = UpperIdentity::establish(open(&u).as_fd(), false).expect("again");
        assert!(first.owns(&again), "{first:?} vs {again:?}");
        assert_eq!(UpperIdentity::decode(&first.encode()), Some(first.clone()));
        // Moved: still the same upper.
        let moved = t.path().join("moved");
        std::fs::rename(&u, &moved).expect("mv");
        assert!(first.owns(&UpperIdentity::read(open(&moved).as_fd()).expect("read")));
        // Removed and made again, even if the filesystem reuses the inode number.
        std::fs::remove_dir(&moved).expect("rmdir");
        std::fs::create_dir(&u).expect("mkdir again");
        let fresh = UpperIdentity::establish(open(&u).as_fd(), false).expect("fresh");
        assert!(!first.owns(&fresh));
    }

    #[test]
    fn a_copy_that_carries_the_id_along_is_another_upper() {
        let t = tempfile::tempdir().expect("tempdir");
        let (u, c) = (t.path().join("u"), t.path().join("c"));
        std::fs::create_dir(&u).expect("mkdir");
        std::fs::create_dir(&c).expect("mkdir");
        let orig = UpperIdentity::establish(open(&u).as_fd(), false).expect("establish");
        let id = orig.id.expect("tmp stores user xattrs");
        Target::Open(open(&c).as_fd())
            .set_xattr(OsStr::new(ID_XATTRS[0]), &id, XattrFlags::empty())
            .expect("copy the id like cp -a");
        let copy = UpperIdentity::read(open(&c).as_fd()).expect("read");
        assert_eq!(copy.id, orig.id);
        assert!(!orig.owns(&copy));
    }
}
