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

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use tar::EntryType;

use self::tree::{Cursor, ROOT, Tree};
use super::{LayerError, Observer, Result};
use crate::blob::Compression;
use crate::format::markers;
use crate::sys;

mod tree;

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

/// What an entry's header says about its object.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// A directory's metadata, applied once everything below it exists.
pub(crate) struct DirMeta {
    meta: Meta,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Reads the archive's compression from its first bytes.
fn open_archive<'a>(path: &Path, obs: &'a dyn Observer) -> Result<Box<dyn Read + 'a>> {
    let mut f = File::open(path).map_err(|e| LayerError::io(path, e))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LayerError::io(path, e)),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec());
    let counted = Counting {
        inner: head.chain(f),
        obs,
    };
    let r = BufReader::with_capacity(1 << 20, counted);
    Compression::sniff(&magic[..got])
        .decoder(r)
        .map_err(|e| LayerError::io(path, e))
}

struct Counting<'a, R> {
    inner: R,
    obs: &'a dyn Observer,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.obs.cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        let n = self.inner.read(buf)?;
        self.obs.bytes(n as u64);
        Ok(n)
    }
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
            privileged: sys::has_cap_sys_admin(),
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

/// Splits an archive path into normal components; refuses absolute paths and `..`.
fn components(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The normal names of the archive path `raw` joined by '/' (what [`components`] gives,
/// joined). `known` is a path of normal names (the directory the importer is in): where `raw`
/// starts with it, only the rest is looked at, as paths of deep archives are long.
fn normalize(raw: &[u8], known: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("absolute path");
    }
    let body = raw.strip_prefix(b"./").unwrap_or(raw);
    let k = match body.strip_prefix(known) {
        Some([b'/', ..]) if !known.is_empty() => known.len(),
        _ => 0,
    };
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..k]);
    for c in body[k..].split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..'"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// `rel` split at its last '/': (parent, name).
fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

fn ts(sec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    }
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

    /// A whiteout or opaque marker: noted, made at the end (see [`Importer::finish`]).
    fn marker_entry(&mut self, raw: &[u8], ty: EntryType, parent: &[u8], name: &[u8]) -> Result<()> {
        if ty == EntryType::Directory {
            return Err(self.refuse(raw, "a whiteout marker that is a directory"));
        }
        self.parent_dir(raw, parent)?;
        let dir = self.at.id();
        if name == markers::OPAQUE_MARKER.as_bytes() {
            self.opaques.push((parent.to_vec(), dir));
        } else {
            let target = &name[markers::WH_PREFIX.len()..];
            if target.is_empty() {
                return Err(self.refuse(raw, "a whiteout for an empty name"));
            }
            self.whiteouts.push((dir, target.to_vec()));
        }
        let id = self.tree.add(dir, name);
        let node = self.tree.node_mut(id);
        node.made = Some(Made::Marker);
        node.explicit = true;
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

    fn make_file<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        e: &mut tar::Entry<'_, R>,
    ) -> Result<Made> {
        let fd = rustix::fs::openat(
            dir,
            n,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|err| self.fail(raw, err))?;
        let mut f = File::from(fd);
        io::copy(e, &mut f).map_err(|err| self.fail(raw, err))?;
        Ok(Made::File)
    }

    /// A hard link: only to a non-directory this archive made before, by a path inside it.
    fn hard_link<R: Read>(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        e: &mut tar::Entry<'_, R>,
    ) -> Result<Made> {
        let target = e
            .link_name_bytes()
            .ok_or_else(|| self.refuse(raw, "a hard link without a target"))?
            .into_owned();
        let tc = components(&target)
            .map_err(|why| self.refuse(raw, format!("hard link pointing out of the layer ({why})")))?;
        let kind = self
            .tree
            .find(tc.iter().copied())
            .and_then(|id| self.tree.node(id).made);
        match kind {
            Some(Made::File | Made::Symlink | Made::Other) => {}
            Some(Made::Dir | Made::ImplicitDir) => return Err(self.refuse(raw, "hard link to a directory")),
            _ => {
                let t = String::from_utf8_lossy(&target);
                return Err(self.refuse(
                    raw,
                    format!("hard link to '{t}', which the archive did not create before it"),
                ));
            }
        }
        let Some((&tname, tparent)) = tc.split_last() else {
            return Err(self.refuse(raw, "hard link to the root"));
        };
        let tfd = sys::open_dir_beneath(self.root, OsStr::from_bytes(&tparent.join(&b'/')))
            .map_err(|err| self.fail(raw, err))?;
        rustix::fs::linkat(&tfd, OsStr::from_bytes(tname), dir, n, AtFlags::empty())
            .map_err(|err| self.fail(raw, err))?;
        // A hard link shares the inode: no metadata of its own.
        Ok(kind.unwrap_or(Made::Other))
    }

    /// A FIFO, or a device node (refused without CAP_MKNOD, and 0/0, which reads as a whiteout).
    fn make_special(&self, dir: BorrowedFd<'_>, n: &OsStr, raw: &[u8], h: &tar::Header) -> Result<Made> {
        let ty = h.entry_type();
        let (ft, rdev) = if ty == EntryType::Fifo {
            (FileType::Fifo, 0)
        } else {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            if ty == EntryType::Char && major == 0 && minor == 0 {
                return Err(self.refuse(raw, "character device 0/0 (it would read as a whiteout)"));
            }
            if !self.mknod_ok {
                return Err(self.refuse(raw, "device node, and this process may not create them (no CAP_MKNOD)"));
            }
            let ft = if ty == EntryType::Char {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            (ft, rustix::fs::makedev(major, minor))
        };
        rustix::fs::mknodat(dir, n, ft, Mode::from_raw_mode(0o600), rdev).map_err(|err| self.fail(raw, err))?;
        Ok(Made::Other)
    }

    fn owner_mode_times(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        made: Made,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        self.set_meta(dir, n, made, meta, xattrs)
            .map_err(|f| self.meta_failure(raw, f))
    }

    /// Why [`Importer::set_meta`] failed, as the refusal or failure of the entry `raw`.
    fn meta_failure(&self, raw: &[u8], f: MetaFailure) -> LayerError {
        match f {
            MetaFailure::OwnerRange => self.refuse(raw, "owner out of range"),
            MetaFailure::Io(e) => self.fail(raw, e),
        }
    }

    /// Owner, mode, xattrs and times of `dir/n` (the entry's path is named by the caller, only
    /// when this fails: it costs a deep directory its depth).
    fn set_meta(
        &self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        made: Made,
        meta: Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> std::result::Result<(), MetaFailure> {
        let (Ok(uid), Ok(gid)) = (u32::try_from(meta.uid), u32::try_from(meta.gid)) else {
            return Err(MetaFailure::OwnerRange);
        };
        let r = rustix::fs::chownat(
            dir,
            n,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        match r {
            Ok(()) => {}
            // Unprivileged: the files stay ours.
            Err(rustix::io::Errno::PERM) if !self.root_user => {}
            Err(err) => return Err(MetaFailure::Io(err)),
        }
        if made != Made::Symlink {
            rustix::fs::chmodat(dir, n, Mode::from_raw_mode(meta.mode & 0o7777), AtFlags::empty())
                .map_err(MetaFailure::Io)?;
        }
        // After the owner change (which drops file capabilities) and the mode (which would
        // rewrite an ACL's mask).
        let target = sys::Target::Entry(dir, n);
        for (k, v) in xattrs {
            match target.set_xattr(OsStr::new(k), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM) if !self.root_user => {}
                Err(err) => return Err(MetaFailure::Io(err)),
            }
        }
        let t = Timestamps {
            last_access: ts(meta.mtime),
            last_modification: ts(meta.mtime),
        };
        rustix::fs::utimensat(dir, n, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(MetaFailure::Io)
    }

    /// Markers, then directory metadata (each directory after everything below it, so that
    /// a directory made unsearchable cannot stop what is below it from getting its own).
    fn finish(&mut self) -> Result<()> {
        self.make_whiteouts()?;
        let mut opaques = std::mem::take(&mut self.opaques);
        opaques.sort();
        opaques.dedup();
        for (d, id) in opaques {
            self.at.go_to(&self.tree, id).map_err(|e| self.fail(&d, e))?;
            let fd = self.at.fd().map_err(|e| self.fail(&d, e))?;
            markers::mark_opaque(fd, false, self.privileged).map_err(|e| self.fail(&d, e))?;
            self.summary.opaque_dirs += 1;
        }
        self.dir_metadata()
    }

    /// The whiteouts noted, in archive order.
    fn make_whiteouts(&mut self) -> Result<()> {
        for (parent, target) in std::mem::take(&mut self.whiteouts) {
            // The path, for messages only (it costs a deep directory its depth).
            let path = |tree: &Tree| {
                let mut p = tree.path(parent);
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&target);
                p
            };
            self.at
                .go_to(&self.tree, parent)
                .map_err(|e| self.fail(&path(&self.tree), e))?;
            let n = OsStr::from_bytes(&target);
            let hidden = self.tree.child(parent, &target);
            match hidden.map(|c| (c, self.tree.node(c).made)) {
                // The same layer has the name: a whiteout only hides the layers below, which for a
                // directory is opacity and for anything else is what replacing it does anyway.
                Some((c, Some(Made::Dir | Made::ImplicitDir))) => {
                    self.opaques.push((path(&self.tree), c));
                    continue;
                }
                Some((_, Some(_))) => continue,
                Some((_, None)) | None => {}
            }
            let pfd = self.at.fd().map_err(|e| self.fail(&path(&self.tree), e))?;
            match markers::make_device(pfd, n) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM | rustix::io::Errno::OPNOTSUPP) => {
                    markers::make_oci_whiteout(pfd, n).map_err(|e| self.fail(&path(&self.tree), e))?
                }
                Err(e) => return Err(self.fail(&path(&self.tree), e)),
            }
            self.summary.whiteouts += 1;
        }
        Ok(())
    }

    /// Every directory's metadata, the root's last: the tree is walked depth first and each
    /// directory done on the way back up, from its parent.
    fn dir_metadata(&mut self) -> Result<()> {
        self.at.go_to(&self.tree, ROOT).map_err(|e| self.fail(b"", e))?;
        let mut stack: Vec<(usize, usize)> = vec![(ROOT, 0)];
        while let Some((id, next)) = stack.last_mut() {
            let node = self.tree.node(*id);
            if let Some(&c) = node.children.get(*next) {
                *next += 1;
                let child = self.tree.node(c);
                if matches!(child.made, Some(Made::Dir | Made::ImplicitDir)) || !child.children.is_empty() {
                    let name = child.name.clone();
                    self.at.enter(&name, c).map_err(|e| self.fail(&self.tree.path(c), e))?;
                    stack.push((c, 0));
                }
                continue;
            }
            let done = *id;
            stack.pop();
            if done == ROOT {
                if let Some(d) = self.root_meta.take() {
                    let fd = self.at.fd().map_err(|e| self.fail(b"", e))?;
                    self.owner_mode_times(fd, OsStr::new("."), b"", Made::Dir, d.meta, &d.xattrs)?;
                }
                continue;
            }
            self.at.leave().map_err(|e| self.fail(&self.tree.path(done), e))?;
            if let Some(d) = self.tree.node_mut(done).meta.take() {
                let fd = self.at.fd().map_err(|e| self.fail(&self.tree.path(done), e))?;
                let n = OsStr::from_bytes(&self.tree.node(done).name);
                self.set_meta(fd, n, Made::Dir, d.meta, &d.xattrs)
                    .map_err(|f| self.meta_failure(&self.tree.path(done), f))?;
            }
        }
        Ok(())
    }
}

/// Why [`Importer::set_meta`] failed.
enum MetaFailure {
    OwnerRange,
    Io(rustix::io::Errno),
}

#[cfg(test)]
mod tests {
    use super::{components, normalize};

    #[test]
    fn paths_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], &b"b"[..]]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn normalize_joins_what_components_gives_with_or_without_a_known_start() {
        for raw in [
            &b"./a//b/"[..],
            b"a/b/c",
            b"a/./b/",
            b"./",
            b".",
            b"a/b/./c//d/",
            b"a/bc/d",
            b"a/b",
            b"./a/b/c",
        ] {
            let want = components(raw).unwrap().join(&b'/');
            for known in [&b""[..], b"a", b"a/b", b"a/bc", b"x"] {
                assert_eq!(normalize(raw, known).unwrap(), want, "{raw:?} from {known:?}");
            }
        }
        for raw in [&b"/etc/passwd"[..], b"a/../../x", b"..", b"a/b/.."] {
            assert!(components(raw).is_err());
            for known in [&b""[..], b"a", b"a/b"] {
                assert!(normalize(raw, known).is_err(), "{raw:?} from {known:?}");
            }
        }
    }
}
