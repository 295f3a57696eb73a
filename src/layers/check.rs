//! `unionfs check`: what in an upper (and its workdir) breaks a mount or a commit, and
//! `--repair`, which makes the upper canonical without changing the merged view.
//!
//! Problems found:
//! - leftovers in the workdir (scratch files of a crashed copy-up, a dirty volatile marker);
//! - a name with two markers (a char-device whiteout and a `.wh.` file; an opaque xattr and a
//!   `.wh..wh..opq` file, as fuse-overlayfs writes; a name both present and whited out);
//! - whiteouts and opaque markers in a form the upper's format does not write (`.wh.` entries
//!   in an overlay-format upper, which kernel overlayfs shows as files; char devices in an OCI
//!   one; a foreign opaque xattr);
//! - whiteouts hiding nothing (no lower shows the name, or the directory is opaque);
//! - our origin xattrs (`user.unionfs.origin`) that are malformed or name no lower object;
//! - kernel metacopy/redirect xattrs, which nothing offline can follow (reported only).
//!
//! The upper's format is what most of its markers use: overlay (char devices, opaque xattrs)
//! unless it has only OCI markers. Repair keeps each marker's meaning: a whiteout that hides
//! something keeps hiding it in the canonical form, a name present and whited out becomes an
//! opaque directory (or just the object), a useless whiteout goes.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::listing::{Listing, is_dir, is_kernel_indirect, walk_all};
use super::lowers::{ImageDir, PathImage};
use super::stack::Stack;
use super::{LayerError, Observer, Result, join};
use crate::attr::Kind;
use crate::descent::{Descent, Frame, PathDir};
use crate::format::ino::Numbering;
use crate::format::markers::Marker;
use crate::format::markers::{self, WhiteoutForm};
use crate::format::workdir::{self, WorkdirEntry};
use crate::sys;
use crate::union::hardlinks::{HardlinkIndex, IndexState};

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub workdir: Option<PathBuf>,
    pub repair: bool,
}

/// The marker format an upper uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum UpperFormat {
    /// Char-device whiteouts and this opaque xattr.
    Overlay { opaque_xattr: &'static str },
    /// `.wh.NAME` whiteouts and `.wh..wh..opq` files.
    Oci,
}

impl std::fmt::Display for UpperFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpperFormat::Overlay { opaque_xattr } => write!(f, "overlay (char-device whiteouts, {opaque_xattr}=y)"),
            UpperFormat::Oci => write!(
                f,
                "OCI ({}NAME whiteouts, {})",
                String::from_utf8_lossy(markers::WH_PREFIX),
                markers::OPAQUE_MARKER
            ),
        }
    }
}

/// One problem.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub problem: String,
    /// Fixed by `--repair`.
    pub repaired: bool,
}

/// What a check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    #[serde(serialize_with = "display")]
    pub format: UpperFormat,
    pub problems: Vec<Problem>,
}

fn display<S: serde::Serializer>(f: &UpperFormat, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&f.to_string())
}

impl CheckReport {
    /// Problems left after the run (all of them without `--repair`).
    pub fn remaining(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }
}

/// Checks (and with `repair`, repairs) the upper of `stack` and the workdir.
pub fn check(stack: &Stack, opts: &CheckOptions, obs: &dyn Observer) -> Result<CheckReport> {
    let upper = stack.upper()?;
    let format = detect_format(stack)?;
    let mut c = Checker {
        stack,
        format,
        repair: opts.repair,
        obs,
        problems: Vec::new(),
        unresolved_origins: Vec::new(),
        numbering: Numbering::new(
            std::iter::once(upper.dev)
                .chain(stack.lowers.iter().map(|l| l.dev))
                .collect(),
        ),
    };
    if let Some(w) = &opts.workdir {
        c.workdir(w)?;
    }
    let root = Listing::read(upper.fd(), &upper.path)?;
    let img = stack.image_root()?;
    c.walk(upper.fd(), root, img)?;
    c.origins_pointing_nowhere()?;
    Ok(CheckReport {
        format,
        problems: c.problems,
    })
}

/// The upper's format: overlay if any marker is in overlay form (or there are none), else OCI.
fn detect_format(stack: &Stack) -> Result<UpperFormat> {
    let upper = stack.upper()?;
    let (mut overlay, mut oci) = (0u64, 0u64);
    let mut trusted = false;
    let mut user = false;
    walk_all(upper.fd(), &upper.path, b"", &mut |rel, dir, _, e| {
        match e {
            None => {
                let xs = markers::opaque_xattrs_set(dir).map_err(|err| LayerError::io(upper.at(rel), err))?;
                for x in xs {
                    overlay += 1;
                    trusted |= x == markers::OVERLAY_OPAQUE_XATTRS[0];
                    user |= x == markers::OVERLAY_OPAQUE_XATTRS[1];
                }
            }
            Some(e) => match &e.kind {
                Marker::Whiteout {
                    form: WhiteoutForm::Oci,
                    ..
                }
                | Marker::OpaqueFile => oci += 1,
                Marker::Whiteout { .. } => overlay += 1,
                Marker::Object => {}
            },
        }
        Ok(())
    })?;
    if overlay == 0 && oci > 0 {
        return Ok(UpperFormat::Oci);
    }
    let opaque_xattr = if trusted || (!user && sys::has_cap_sys_admin()) {
        markers::OVERLAY_OPAQUE_XATTRS[0]
    } else {
        markers::OVERLAY_OPAQUE_XATTRS[1]
    };
    Ok(UpperFormat::Overlay { opaque_xattr })
}

/// An upper directory on the check's path: its subdirectories still to check.
struct Checked {
    dir: PathDir,
    listing: Listing,
    /// Names a whiteout of this directory hides (which cuts the merge below them).
    hidden: HashSet<OsString>,
    /// Whether the view merges it with `old`.
    merge: bool,
    /// The image's directory at this path.
    old: PathImage,
    next: std::ops::Range<usize>,
    rel_len: usize,
}

impl Frame for Checked {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.park()?;
        self.old.park(&child.old)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        self.dir.unpark(child.dir.fd()?)?;
        self.old.unpark(&child.old)
    }
}

struct Checker<'a> {
    stack: &'a Stack,
    format: UpperFormat,
    repair: bool,
    obs: &'a dyn Observer,
    problems: Vec<Problem>,
    /// Origins that name no object at their own path: (where, entry dir path, name, xattr, value).
    unresolved_origins: Vec<(PathBuf, Vec<u8>, OsString, &'static str, u64)>,
    /// The mount's inode numbering (`format::ino`), upper first.
    numbering: Numbering,
}

fn form_name(f: WhiteoutForm) -> &'static str {
    match f {
        WhiteoutForm::CharDevice => "a char-device 0/0 whiteout",
        WhiteoutForm::Oci => "an OCI .wh. whiteout",
        WhiteoutForm::Xattr => "a zero-size file with an overlay whiteout xattr",
    }
}

impl Checker<'_> {
    fn report(&mut self, path: PathBuf, problem: String, repaired: bool) {
        self.problems.push(Problem {
            path,
            problem,
            repaired,
        });
    }

    /// Runs `fix` when repairing; the problem counts as repaired when it succeeded.
    fn problem(
        &mut self,
        path: PathBuf,
        problem: String,
        fix: Option<&mut dyn FnMut() -> rustix::io::Result<()>>,
    ) -> Result<()> {
        let mut repaired = false;
        if self.repair {
            if let Some(fix) = fix {
                fix().map_err(|e| {
                    LayerError::invalid(
                        &path,
                        format!("repair of \"{problem}\" failed: {}", std::io::Error::from(e)),
                    )
                })?;
                repaired = true;
            }
        }
        self.report(path, problem, repaired);
        Ok(())
    }

    fn workdir(&mut self, w: &Path) -> Result<()> {
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
    fn hardlink_index(&mut self, wfd: BorrowedFd<'_>, p: &Path) -> Result<()> {
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

    /// The upper's tree from its root (`fd`, listed as `listing`), whose image directory is
    /// `img`: depth first, the path kept on the heap (`descent.rs`): a tree may be of any depth.
    fn walk(&mut self, fd: BorrowedFd<'_>, listing: Listing, img: ImageDir) -> Result<()> {
        let upper = self.stack.upper()?;
        let io = |rel: &[u8], e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let mut rel: Vec<u8> = Vec::new();
        let merge = !listing.marks.opaque;
        let start = PathDir::dup(fd).map_err(|e| io(&rel, e))?;
        let first = self.dir(&rel, start, listing, merge, Some(img))?;
        let mut path = Descent::new(first);
        loop {
            let Some(top) = path.last_mut() else {
                return Ok(());
            };
            let Some(i) = top.next.next() else {
                path.pop().map_err(|e| io(&rel, e))?;
                if let Some(up) = path.last() {
                    rel.truncate(up.rel_len);
                }
                continue;
            };
            if let Some((sub, below)) = self.subdir(&rel, top, i)? {
                rel = sub;
                path.push(below).map_err(|e| io(&rel, e))?;
            }
        }
    }

    /// Checks the upper directory `rel` (open as `dir`, listed as `listing`) and returns it as a
    /// frame of the walk, to go into its subdirectories; `old` is the image's directory at this
    /// path, which the view merges with it when `merge`.
    fn dir(
        &mut self,
        rel: &[u8],
        dir: PathDir,
        listing: Listing,
        merge: bool,
        old: Option<ImageDir>,
    ) -> Result<Checked> {
        let upper = self.stack.upper()?;
        if self.obs.cancelled() {
            return Err(LayerError::Interrupted);
        }
        let here = upper.at(rel);
        let fd = dir.fd().map_err(|e| LayerError::io(&here, e))?;
        let merge_img = if merge { old.as_ref() } else { None };
        self.opaque_forms(&here, fd, &listing)?;
        self.whiteouts(rel, fd, &listing, merge_img)?;
        self.objects(rel, fd, &listing, old.as_ref())?;
        // Re-read after repairs: they may have changed markers.
        let listing = if self.repair {
            Listing::read(fd, &here)?
        } else {
            listing
        };
        let hidden = listing
            .whiteout_targets()
            .into_iter()
            .map(|n| n.to_os_string())
            .collect();
        Ok(Checked {
            next: 0..listing.entries.len(),
            dir,
            listing,
            hidden,
            merge,
            old: PathImage::new(old),
            rel_len: rel.len(),
        })
    }

    /// Entry `i` of the directory `here` (at `rel`): if it is a subdirectory, checks it and
    /// returns it with its path, to go into next.
    fn subdir(&mut self, rel: &[u8], here: &Checked, i: usize) -> Result<Option<(Vec<u8>, Checked)>> {
        let upper = self.stack.upper()?;
        let Some(e) = here.listing.entries.get(i).filter(|e| e.is_dir()) else {
            return Ok(None);
        };
        let fd = here.dir.fd().map_err(|err| LayerError::io(upper.at(rel), err))?;
        let path = join(rel, &e.name);
        let at = upper.at(&path);
        let sfd = sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(&at, err))?;
        let sl = Listing::read(sfd.as_fd(), &at)?;
        let old = here.old.get().map_err(|err| LayerError::io(upper.at(rel), err))?;
        let found_old = match old {
            Some(o) => o.lookup(self.stack, rel, &e.name, true)?,
            None => None,
        };
        let old_dir = found_old.and_then(|f| f.dir);
        let cut = sl.marks.opaque || here.hidden.contains(&e.name);
        let child_merge = here.merge && !cut && old_dir.is_some();
        let below = self.dir(&path, PathDir::new(sfd), sl, child_merge, old_dir)?;
        Ok(Some((path, below)))
    }

    /// The whiteouts of the upper directory `rel`, grouped by the name they hide.
    fn whiteouts(&mut self, rel: &[u8], fd: BorrowedFd<'_>, listing: &Listing, merge: Option<&ImageDir>) -> Result<()> {
        let mut groups: BTreeMap<OsString, Vec<(OsString, WhiteoutForm)>> = BTreeMap::new();
        for e in &listing.entries {
            if let Marker::Whiteout { target, form } = &e.kind {
                groups.entry(target.clone()).or_default().push((e.name.clone(), *form));
            }
        }
        for (target, forms) in &groups {
            self.obs.entry();
            if listing.object_names().contains(target.as_os_str()) {
                self.present_and_whited_out(rel, fd, listing, merge, target, forms)?;
                continue;
            }
            let hides = match merge {
                Some(m) => m.lookup(self.stack, rel, target, false)?.is_some(),
                None => false,
            };
            if hides {
                self.whiteout_forms(rel, fd, target, forms)?;
            } else {
                self.useless_whiteout(rel, fd, merge.is_none(), target, forms)?;
            }
        }
        Ok(())
    }

    /// `target` is an object of the upper directory and whited out there too: the whiteout only
    /// cuts the merge, which for a directory over an image directory is opacity.
    fn present_and_whited_out(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        listing: &Listing,
        merge: Option<&ImageDir>,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let found = match merge {
            Some(m) => m.lookup(self.stack, rel, target, false)?,
            None => None,
        };
        let obj_is_dir = listing.entries.iter().any(|e| e.name == target && e.is_dir());
        let make_opaque = obj_is_dir && found.as_ref().is_some_and(|f| is_dir(&f.st));
        let format = self.format;
        let mut fix = || -> rustix::io::Result<()> {
            if make_opaque {
                let cfd = sys::open_path_dir(fd, target)?;
                set_opaque(cfd.as_fd(), format, has_opaque_file(cfd.as_fd())?)?;
            }
            for (n, _) in forms {
                remove_any(fd, n)?;
            }
            Ok(())
        };
        let msg = format!("present and whited out ({}) in the same layer", names.join(", "));
        self.problem(tpath, msg, Some(&mut fix))
    }

    /// A whiteout that hides nothing (`in_cut`: the directory hides the lowers anyway).
    fn useless_whiteout(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        in_cut: bool,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let why = if in_cut {
            "whiteout in a directory that hides the lowers anyway (opaque or new)"
        } else {
            "whiteout hiding nothing (no lower layer shows this name)"
        };
        let mut fix = || -> rustix::io::Result<()> {
            for (n, _) in forms {
                remove_any(fd, n)?;
            }
            Ok(())
        };
        self.problem(tpath, format!("{why} ({})", names.join(", ")), Some(&mut fix))
    }

    /// A whiteout that hides something: one marker, in the upper's form.
    fn whiteout_forms(
        &mut self,
        rel: &[u8],
        fd: BorrowedFd<'_>,
        target: &OsStr,
        forms: &[(OsString, WhiteoutForm)],
    ) -> Result<()> {
        let tpath = self.stack.upper()?.at(&join(rel, target));
        let names: Vec<String> = forms.iter().map(|(n, _)| n.to_string_lossy().into_owned()).collect();
        let canonical = match self.format {
            UpperFormat::Overlay { .. } => WhiteoutForm::CharDevice,
            UpperFormat::Oci => WhiteoutForm::Oci,
        };
        let foreign: Vec<&(OsString, WhiteoutForm)> = forms.iter().filter(|(_, f)| *f != canonical).collect();
        if foreign.is_empty() && forms.len() == 1 {
            return Ok(());
        }
        let msg = if forms.len() > 1 {
            format!("a name with {} whiteout markers ({})", forms.len(), names.join(", "))
        } else if canonical == WhiteoutForm::CharDevice && forms[0].1 == WhiteoutForm::Oci {
            format!(
                "{} in an overlay-format upper (kernel overlayfs shows it as a file)",
                form_name(forms[0].1)
            )
        } else {
            format!("{} in an {} upper", form_name(forms[0].1), self.format)
        };
        let has_canonical = forms.iter().any(|(_, f)| *f == canonical);
        let mut fix = || -> rustix::io::Result<()> {
            // Markers at the name itself go first, so the canonical one can take it.
            for (n, f) in forms {
                if *f != canonical && *f != WhiteoutForm::Oci {
                    remove_any(fd, n)?;
                }
            }
            if !has_canonical {
                match canonical {
                    WhiteoutForm::CharDevice => markers::make_device(fd, target)?,
                    _ => markers::make_oci_whiteout(fd, target)?,
                }
            }
            for (n, f) in forms {
                if *f != canonical && *f == WhiteoutForm::Oci {
                    remove_any(fd, n)?;
                }
            }
            Ok(())
        };
        self.problem(tpath, msg, Some(&mut fix))
    }

    /// The objects of the upper directory `rel`: origins and kernel-only xattrs.
    fn objects(&mut self, rel: &[u8], fd: BorrowedFd<'_>, listing: &Listing, old: Option<&ImageDir>) -> Result<()> {
        let upper = self.stack.upper()?;
        for e in &listing.entries {
            if e.kind != Marker::Object {
                continue;
            }
            self.obs.entry();
            let path = join(rel, &e.name);
            let at = upper.at(&path);
            let t = sys::Target::Entry(fd, &e.name);
            let xs = t.list_xattrs().map_err(|err| LayerError::io(&at, err))?;
            for x in &xs {
                if is_kernel_indirect(x) {
                    self.report(
                        at.clone(),
                        format!(
                            "kernel overlayfs {} (part of the object lives elsewhere; \
                             unionfs and commit cannot follow it)",
                            x.to_string_lossy()
                        ),
                        false,
                    );
                }
            }
            let kind = Kind::from_mode(e.st.st_mode);
            let ox = crate::format::xattrs::origin(kind);
            if xs.iter().any(|x| x.as_bytes() == ox.as_bytes()) {
                self.origin(rel, fd, &e.name, ox, old)?;
            }
        }
        Ok(())
    }

    /// Opaque markers of the directory `fd`: one, in the upper's form.
    fn opaque_forms(&mut self, here: &Path, fd: BorrowedFd<'_>, listing: &Listing) -> Result<()> {
        let xs = markers::opaque_xattrs_set(fd).map_err(|e| LayerError::io(here, e))?;
        let file = listing.entries.iter().any(|e| e.kind == Marker::OpaqueFile);
        let mut forms: Vec<String> = xs.iter().map(|x| format!("{x}=y")).collect();
        if file {
            forms.push(markers::OPAQUE_MARKER.to_string());
        }
        if forms.is_empty() {
            return Ok(());
        }
        let canonical = match self.format {
            UpperFormat::Overlay { opaque_xattr } => format!("{opaque_xattr}=y"),
            UpperFormat::Oci => markers::OPAQUE_MARKER.to_string(),
        };
        if forms.len() == 1 && forms[0] == canonical {
            return Ok(());
        }
        let msg = if forms.len() > 1 {
            format!("opaque directory with {} markers ({})", forms.len(), forms.join(", "))
        } else if file {
            format!(
                "opaque marker {} in an overlay-format upper (kernel overlayfs shows it as a file)",
                markers::OPAQUE_MARKER
            )
        } else {
            format!("opaque marker {} in an {} upper", forms[0], self.format)
        };
        let format = self.format;
        let mut fix = || set_opaque(fd, format, file);
        self.problem(here.to_path_buf(), msg, Some(&mut fix))
    }

    /// An origin xattr `ox` on the entry `name` of `dir` (upper directory `rel`).
    fn origin(
        &mut self,
        rel: &[u8],
        dir: BorrowedFd<'_>,
        name: &OsStr,
        ox: &'static str,
        old: Option<&ImageDir>,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        let at = upper.at(&join(rel, name));
        let Some(v) = sys::get_xattr(dir, name, ox).map_err(|e| LayerError::io(&at, e))? else {
            return Ok(());
        };
        let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) else {
            let mut fix = || remove_xattr(dir, name, ox);
            return self.problem(
                at,
                format!("malformed origin xattr {ox} ({} bytes, not 8)", v.len()),
                Some(&mut fix),
            );
        };
        let value = u64::from_le_bytes(b);
        if let Some(o) = old {
            if let Some(f) = o.lookup(self.stack, rel, name, false)? {
                let layer = o.dirs[f.pos].layer;
                if self.view_ino(layer, f.st.st_ino) == value {
                    return Ok(());
                }
            }
        }
        self.unresolved_origins
            .push((at, rel.to_vec(), name.to_os_string(), ox, value));
        Ok(())
    }

    /// The inode number the mount shows for raw number `raw` of lower `layer`.
    fn view_ino(&self, layer: usize, raw: u64) -> u64 {
        self.numbering.view(layer + 1, raw)
    }

    /// Origins not matching their own path (a renamed copy): one walk of the lowers tells
    /// whether any lower object has that number.
    fn origins_pointing_nowhere(&mut self) -> Result<()> {
        if self.unresolved_origins.is_empty() {
            return Ok(());
        }
        let mut known: HashSet<u64> = HashSet::new();
        for (i, l) in self.stack.lowers.iter().enumerate() {
            known.insert(
                self.view_ino(
                    i,
                    rustix::fs::fstat(l.fd())
                        .map_err(|e| LayerError::io(&l.path, e))?
                        .st_ino,
                ),
            );
            let mut raws = Vec::new();
            walk_all(l.fd(), &l.path, b"", &mut |_, _, _, e| {
                if let Some(e) = e {
                    raws.push(e.st.st_ino);
                }
                Ok(())
            })?;
            for r in raws {
                known.insert(self.view_ino(i, r));
            }
        }
        let upper = self.stack.upper()?;
        for (at, rel, name, ox, value) in std::mem::take(&mut self.unresolved_origins) {
            if known.contains(&value) {
                continue;
            }
            let dfd = sys::open_dir_beneath(upper.fd(), OsStr::from_bytes(&rel)).map_err(|e| LayerError::io(&at, e))?;
            let mut fix = || remove_xattr(dfd.as_fd(), &name, ox);
            self.problem(
                at,
                format!("origin xattr {ox} names inode {value}, which no lower layer has"),
                Some(&mut fix),
            )?;
        }
        Ok(())
    }
}

fn has_opaque_file(fd: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    Ok(sys::stat_at_opt(fd, OsStr::new(markers::OPAQUE_MARKER))?.is_some())
}

/// Marks the directory `fd` opaque in the canonical form of `format` only.
fn set_opaque(fd: BorrowedFd<'_>, format: UpperFormat, file: bool) -> rustix::io::Result<()> {
    match format {
        UpperFormat::Overlay { opaque_xattr } => {
            sys::Target::Fd(fd).set_xattr(OsStr::new(opaque_xattr), b"y", rustix::fs::XattrFlags::empty())?;
            markers::remove_opaque_xattrs_except(fd, Some(opaque_xattr))?;
            if file {
                rustix::fs::unlinkat(fd, markers::OPAQUE_MARKER, rustix::fs::AtFlags::empty())?;
            }
        }
        UpperFormat::Oci => {
            if !file {
                markers::mark_opaque(fd, true, false)?;
            }
            markers::remove_opaque_xattrs_except(fd, None)?;
        }
    }
    Ok(())
}

fn remove_xattr(dir: BorrowedFd<'_>, name: &OsStr, x: &str) -> rustix::io::Result<()> {
    match sys::Target::Entry(dir, name).remove_xattr(OsStr::new(x)) {
        Ok(()) | Err(rustix::io::Errno::NODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the entry `name` of `dir`, a whole tree if it is a directory.
fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    sys::remove_entry(dir, name, is_dir(&sys::stat_at(dir, name)?))
}
