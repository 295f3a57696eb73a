//! `unionfs import`: an OCI layer tar (plain, gzip or zstd) applied as a new layer directory
//! that can serve as a lower. Whiteouts (`.wh.NAME`) become char-device 0/0 whiteouts and
//! opaque markers (`.wh..wh..opq`) the opaque xattr, as the mount writes them; hard links and
//! xattrs are kept.
//!
//! Hostile archives are refused before anything can leave the target: absolute paths, `..`,
//! entries below a symlink or a non-directory, hard links to names outside the archive (or
//! not yet extracted, or to directories), duplicate entries, device nodes without CAP_MKNOD,
//! char devices 0/0 (they would read as whiteouts), private union xattrs. Every directory is
//! also reached one name at a time from the layer's root with `O_NOFOLLOW` (never `..`; a hard
//! link's target directory with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`) and every object
//! created with `O_EXCL`/`*at` calls that do not follow symlinks, so the kernel enforces the
//! same. On any refusal or error (or Ctrl-C) what was written is removed again.
//!
//! An archive may be of any depth, and its paths add up to its depth squared: what was made is
//! kept as a tree of names and the importer works from the directory of the last entry
//! (`import/tree.rs`), so an entry costs what its path differs from the last one.
//!
//! Here: the archive's entries, checked and made one by one (`parent_dir`, `entry`); beside it
//! `archive.rs` (opening it, compressed or not), `paths.rs` (an entry's path, normalized and
//! refused), `objects.rs` (files, hard links, special files), `whiteouts.rs` (whiteouts and
//! opaque directories, made at the end), `meta.rs` (owner, mode, xattrs and times; directories'
//! last) and `tree.rs` (what was made, by name).

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::Mode;
use tar::EntryType;

use self::archive::open_archive;
use self::meta::{DirMeta, Meta};
use self::paths::{normalize, split_last};
use self::tree::{Cursor, Tree};
use super::{LayerError, Observer, Result};
use crate::format::markers;
use crate::sys;

mod archive;
mod meta;
mod objects;
mod paths;
mod tree;
mod whiteouts;

/// What an import wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    /// Objects created (files, directories, links, ...), markers not included.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    Dir,
    /// A directory created only because an entry below it came first.
    ImplicitDir,
    File,
    Symlink,
    Other,
    Marker,
}

/// Applies the layer tar `archive` as the new layer directory `dir` (created; it must not
/// exist or be empty).
pub fn import(archive: &Path, dir: &Path, obs: &dyn Observer) -> Result<ImportSummary> {
    let created = match std::fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => {
            let mut rd = std::fs::read_dir(dir).map_err(|e| LayerError::io(dir, e))?;
            if rd.next().is_some() {
                return Err(LayerError::invalid(dir, "exists and is not empty"));
            }
            false
        }
        Ok(_) => return Err(LayerError::invalid(dir, "exists and is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).map_err(|e| LayerError::io(dir, e))?;
            true
        }
        Err(e) => return Err(LayerError::io(dir, e)),
    };
    let root = sys::open_dir_path(dir).map_err(|e| LayerError::io(dir, e))?;
    let reader = open_archive(archive, obs);
    let cursor = Cursor::new(root.as_fd()).map_err(|e| LayerError::io(dir, e));
    let result = reader.and_then(|r| {
        let mut imp = Importer {
            archive,
            root: root.as_fd(),
            tree: Tree::new(),
            at: cursor?,
            whiteouts: Vec::new(),
            opaques: Vec::new(),
            root_meta: None,
            mknod_ok: rustix::thread::capabilities(None)
                .map(|c| c.effective.contains(rustix::thread::CapabilitySet::MKNOD))
                .unwrap_or(false),
            privileged: sys::privileged(),
            root_user: rustix::process::geteuid().is_root(),
            summary: ImportSummary::default(),
            obs,
        };
        imp.run(r)?;
        Ok(imp.summary)
    });
    match result {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = sys::remove_tree_contents(root.as_fd());
            drop(root);
            if created {
                let _ = std::fs::remove_dir(dir);
            }
            Err(if obs.cancelled() { LayerError::Interrupted } else { e })
        }
    }
}

struct Importer<'a> {
    archive: &'a Path,
    root: BorrowedFd<'a>,
    /// What the archive made, by name.
    tree: Tree,
    /// The directory the last entry went into.
    at: Cursor,
    /// (parent directory, hidden name)
    whiteouts: Vec<(usize, Vec<u8>)>,
    /// Directories to mark opaque: (path, node).
    opaques: Vec<(Vec<u8>, usize)>,
    root_meta: Option<DirMeta>,
    mknod_ok: bool,
    privileged: bool,
    root_user: bool,
    summary: ImportSummary,
    obs: &'a dyn Observer,
}

impl Importer<'_> {
    fn refuse(&self, entry: &[u8], why: impl std::fmt::Display) -> LayerError {
        LayerError::invalid(
            self.archive,
            format!(
                "entry '{}': {why}; refused, nothing was imported",
                String::from_utf8_lossy(entry)
            ),
        )
    }

    fn fail(&self, entry: &[u8], e: impl Into<io::Error>) -> LayerError {
        let e: io::Error = e.into();
        LayerError::invalid(
            self.archive,
            format!("entry '{}': {e}; nothing was imported", String::from_utf8_lossy(entry)),
        )
    }

    fn run(&mut self, r: Box<dyn Read + '_>) -> Result<()> {
        let mut ar = tar::Archive::new(r);
        let entries = ar.entries().map_err(|e| LayerError::io(self.archive, e))?;
        for entry in entries {
            if self.obs.cancelled() {
                return Err(LayerError::Interrupted);
            }
            let mut entry = entry.map_err(|e| LayerError::invalid(self.archive, format!("not a valid tar: {e}")))?;
            self.obs.entry();
            self.entry(&mut entry)?;
        }
        self.finish()
    }

    /// Goes to the directory `parent` (a path of names), creating missing ones; refuses to go
    /// below anything that is not a directory made by this archive. The directory is reached
    /// from the last one, one name at a time and never through a symlink (`O_NOFOLLOW`), so
    /// the walk costs what the two paths differ by, however deep they are.
    fn parent_dir(&mut self, entry: &[u8], parent: &[u8]) -> Result<()> {
        let mut end = self.at.up_to_common(parent).map_err(|e| self.fail(entry, e))?;
        while end < parent.len() {
            let start = if parent[end] == b'/' { end + 1 } else { end };
            end = parent[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(parent.len(), |i| start + i);
            let (p, name) = (&parent[..end], &parent[start..end]);
            let here = self.at.id();
            let known = self.tree.child(here, name).map(|c| (c, self.tree.node(c).made));
            let id = match known {
                Some((c, Some(Made::Dir | Made::ImplicitDir))) => c,
                Some((_, Some(Made::Symlink))) => {
                    return Err(self.refuse(entry, format!("is below the symlink '{}'", String::from_utf8_lossy(p))));
                }
                Some((_, Some(Made::Marker))) => {
                    return Err(self.refuse(
                        entry,
                        format!("is below the whiteout marker '{}'", String::from_utf8_lossy(p)),
                    ));
                }
                Some((_, Some(_))) => {
                    return Err(self.refuse(
                        entry,
                        format!("is below the non-directory '{}'", String::from_utf8_lossy(p)),
                    ));
                }
                Some((_, None)) | None => {
                    let fd = self.at.fd().map_err(|e| self.fail(entry, e))?;
                    rustix::fs::mkdirat(fd, OsStr::from_bytes(name), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.fail(entry, e))?;
                    let id = self.tree.add(here, name);
                    self.tree.node_mut(id).made = Some(Made::ImplicitDir);
                    id
                }
            };
            self.at.enter(name, id).map_err(|e| self.fail(entry, e))?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let rel = normalize(&raw, self.at.rel()).map_err(|why| self.refuse(&raw, why))?;
        let h = e.header().clone();
        let ty = h.entry_type();
        if matches!(
            ty,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let meta = Meta {
            mode: h.mode().map_err(|err| self.fail(&raw, err))?,
            uid: h.uid().map_err(|err| self.fail(&raw, err))?,
            gid: h.gid().map_err(|err| self.fail(&raw, err))?,
            mtime: h.mtime().map_err(|err| self.fail(&raw, err))? as i64,
        };
        if rel.is_empty() {
            return self.root_entry(&raw, ty, meta);
        }
        let (parent, name) = split_last(&rel);
        // What the archive made at this path so far (found by name, going nowhere).
        let known = self
            .at
            .resolve(&self.tree, parent)
            .and_then(|p| self.tree.child(p, name));
        if known.is_some_and(|n| self.tree.node(n).explicit) {
            return Err(self.refuse(&raw, "duplicate entry"));
        }
        if name.starts_with(markers::WH_PREFIX) {
            return self.marker_entry(&raw, ty, parent, name);
        }
        // Xattrs first: a refusal must come before anything is created.
        let mut xattrs = self.pax_xattrs(&raw, e)?;
        let before = known.and_then(|n| self.tree.node(n).made);
        match before {
            Some(Made::ImplicitDir) if ty == EntryType::Directory => {}
            Some(_) => return Err(self.refuse(&raw, "duplicate entry")),
            None => {}
        }
        self.parent_dir(&raw, parent)?;
        let dir = self.at.fd().map_err(|err| self.fail(&raw, err))?;
        let n = OsStr::from_bytes(name);
        let mut dir_meta = None;
        let made = match ty {
            EntryType::Directory => {
                if before != Some(Made::ImplicitDir) {
                    rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700)).map_err(|err| self.fail(&raw, err))?;
                }
                let xattrs = std::mem::take(&mut xattrs);
                dir_meta = Some(Box::new(DirMeta { meta, xattrs }));
                Made::Dir
            }
            EntryType::Regular | EntryType::Continuous => self.make_file(dir, n, &raw, e)?,
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&raw, "a symlink without a target"))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, n).map_err(|err| self.fail(&raw, err))?;
                Made::Symlink
            }
            EntryType::Link => self.hard_link(dir, n, &raw, e)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.make_special(dir, n, &raw, &h)?,
            other => return Err(self.refuse(&raw, format!("unsupported entry type {other:?}"))),
        };
        if made != Made::Dir && ty != EntryType::Link {
            self.owner_mode_times(dir, n, &raw, made, meta, &xattrs)?;
        }
        let id = self.tree.add(self.at.id(), name);
        let node = self.tree.node_mut(id);
        node.made = Some(made);
        node.explicit = true;
        if dir_meta.is_some() {
            node.meta = dir_meta;
        }
        self.summary.entries += 1;
        Ok(())
    }

    /// The archive's root ("./"): its metadata goes on the layer's root.
    fn root_entry(&mut self, raw: &[u8], ty: EntryType, meta: Meta) -> Result<()> {
        if ty != EntryType::Directory {
            return Err(self.refuse(raw, "the root entry is not a directory"));
        }
        if self.root_meta.is_some() {
            return Err(self.refuse(raw, "duplicate entry"));
        }
        self.root_meta = Some(DirMeta {
            meta,
            xattrs: Vec::new(),
        });
        Ok(())
    }

    /// The entry's `SCHILY.xattr.*` PAX records; private union xattrs are refused.
    fn pax_xattrs<R: Read>(&self, raw: &[u8], e: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>> {
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().map_err(|err| self.fail(raw, err))? {
            for ext in exts {
                let ext = ext.map_err(|err| self.fail(raw, err))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    if crate::format::xattrs::is_private(OsStr::new(x)) {
                        return Err(self.refuse(raw, format!("carries the private union xattr {x}")));
                    }
                    xattrs.push((x.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(xattrs)
    }
}
