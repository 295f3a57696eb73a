//! `check`: the workdir. Scratch files of an interrupted operation, a dirty volatile marker
//! and anything a mount would not expect are leftovers; the hard-link index is state the view
//! depends on, wrong only when made for another upper or holding copies with no name left.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Checker;
use super::repair::remove_any;
use crate::format::markers;
use crate::format::workdir::{self, WorkdirEntry};
use crate::layers::listing::is_dir;
use crate::layers::{LayerError, Result};
use crate::sys;
use crate::union::hardlinks::{HardlinkIndex, IndexState};

impl Checker<'_> {
    /// The workdir `w`, top level first, then inside the directories we know.
    pub(super) fn workdir(&mut self, w: &Path) -> Result<()> {
        let fd = sys::open_dir_path(w).map_err(|e| LayerError::io(w, e))?;
        let mut entries = sys::read_dir(fd.as_fd()).map_err(|e| LayerError::io(w, e))?;
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        for e in entries {
            let p = w.join(&e.name);
            let st = sys::stat_at(fd.as_fd(), &e.name).map_err(|err| LayerError::io(&p, err))?;
            let dir = is_dir(&st);
            match workdir::classify(e.name.as_bytes(), dir) {
                // Our shared whiteout (every whiteout of the upper is a hard link to it).
                WorkdirEntry::SharedWhiteout if markers::is_chr_whiteout(&st) => {}
                // Scratch space (ours; kernel overlayfs's), emptied at mount.
                WorkdirEntry::Scratch { kernel } => {
                    let sub = sys::open_path_dir(fd.as_fd(), &e.name).map_err(|err| LayerError::io(&p, err))?;
                    let mut inner = sys::read_dir(sub.as_fd()).map_err(|err| LayerError::io(&p, err))?;
                    inner.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
                    for i in inner {
                        // Kernel overlayfs keeps one whiteout there to link new whiteouts to.
                        let ist =
                            sys::stat_at(sub.as_fd(), &i.name).map_err(|err| LayerError::io(p.join(&i.name), err))?;
                        if kernel && markers::is_chr_whiteout(&ist) {
                            continue;
                        }
                        let ip = p.join(&i.name);
                        let msg = "leftover in the workdir (scratch of an interrupted operation)".to_string();
                        let subfd = sub.as_fd();
                        let name = i.name.clone();
                        self.problem(ip, msg, Some(&mut || remove_any(subfd, &name)))?;
                    }
                }
                // Kernel overlayfs's inode index (index=on) and our hard-link index: state that
                // the view depends on, not leftovers.
                WorkdirEntry::KernelIndex => {}
                WorkdirEntry::Index => self.hardlink_index(fd.as_fd(), &p)?,
                WorkdirEntry::KernelIncompat => {
                    let sub = sys::open_path_dir(fd.as_fd(), &e.name).map_err(|err| LayerError::io(&p, err))?;
                    let inner = sys::read_dir(sub.as_fd()).map_err(|err| LayerError::io(&p, err))?;
                    for i in inner {
                        let msg = if workdir::is_volatile_marker(i.name.as_bytes()) {
                            concat!(
                                "a volatile kernel overlayfs mount was not unmounted cleanly ",
                                "(the kernel refuses to mount this upper until it is removed)"
                            )
                            .to_string()
                        } else {
                            "leftover in the workdir".to_string()
                        };
                        let subfd = sub.as_fd();
                        let name = i.name.clone();
                        self.problem(p.join(&i.name), msg, Some(&mut || remove_any(subfd, &name)))?;
                    }
                }
                _ => {
                    let wfd = fd.as_fd();
                    let name = e.name.clone();
                    self.problem(
                        p,
                        "leftover in the workdir".to_string(),
                        Some(&mut || remove_any(wfd, &name)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Our hard-link index (at `p` in the workdir `wfd`): made for another upper, or entries
    /// whose copy has no name left in the upper. A mount would remove both before using it.
    pub(super) fn hardlink_index(&mut self, wfd: BorrowedFd<'_>, p: &Path) -> Result<()> {
        let upper = self.stack.upper()?;
        match HardlinkIndex::inspect(wfd, upper.fd()).map_err(|e| LayerError::io(p, e))? {
            IndexState::None => {}
            IndexState::Foreign(n) => {
                let msg = format!(
                    "hard-link index made for another upper than {} (or by an older unionfs): {n} entries the view must not show",
                    upper.path.display()
                );
                self.problem(p.to_path_buf(), msg, Some(&mut || HardlinkIndex::remove_all(wfd)))?;
            }
            IndexState::Owned(_, orphans) => {
                for key in orphans {
                    let msg = "hard-link index entry whose copy has no name left in the upper".to_string();
                    let at = p.join(HardlinkIndex::entry_name(key));
                    self.problem(at, msg, Some(&mut || HardlinkIndex::remove_entry(wfd, key)))?;
                }
            }
        }
        Ok(())
    }
}
