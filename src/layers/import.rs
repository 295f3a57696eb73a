//! `unionfs import`: an OCI layer tar (plain, gzip or zstd) applied as a new layer directory
//! that can serve as a lower. Whiteouts (`.wh.NAME`) become char-device 0/0 whiteouts and
//! opaque markers (`.wh..wh..opq`) the opaque xattr, as the mount writes them; hard links and
//! xattrs are kept.
//!
//! Hostile archives are refused before anything can leave the target: absolute paths, `..`,
//! entries below a symlink or a non-directory, hard links to names outside the archive (or
//! not yet extracted, or to directories), duplicate entries, device nodes without CAP_MKNOD,
//! char devices 0/0 (they would read as whiteouts), private union xattrs. Every directory is
//! also opened with `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS` and every object created with
//! `O_EXCL`/`*at` calls that do not follow symlinks, so the kernel enforces the same. On any
//! refusal or error (or Ctrl-C) what was written is removed again.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use tar::EntryType;

use super::{LayerError, Observer, Result};
use crate::sys;
use crate::union::whiteout;

/// What an import wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportSummary {
    /// Objects created (files, directories, links, ...), markers not included.
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
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
struct DirMeta {
    path: Vec<u8>,
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
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::Decoder::with_buffer(r).map_err(|e| LayerError::io(path, e))?),
        _ => Box::new(r),
    })
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
    let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| LayerError::io(dir, e))?;
    let reader = open_archive(archive, obs);
    let result = reader.and_then(|r| {
        let mut imp = Importer {
            archive,
            root: root.as_fd(),
            made: HashMap::new(),
            explicit: HashSet::new(),
            dirs: Vec::new(),
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
    made: HashMap<Vec<u8>, Made>,
    explicit: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    /// (parent, hidden name)
    whiteouts: Vec<(Vec<u8>, Vec<u8>)>,
    opaques: Vec<Vec<u8>>,
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

    /// Opens the directory `parent` (components), creating missing ones; refuses to go below
    /// anything that is not a directory made by this archive.
    fn parent_dir(&mut self, entry: &[u8], parent: &[&[u8]]) -> Result<OwnedFd> {
        let mut p: Vec<u8> = Vec::new();
        for c in parent {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(c);
            match self.made.get(&p) {
                Some(Made::Dir | Made::ImplicitDir) => {}
                Some(Made::Symlink) => {
                    return Err(self.refuse(entry, format!("is below the symlink '{}'", String::from_utf8_lossy(&p))));
                }
                Some(Made::Marker) => {
                    return Err(self.refuse(
                        entry,
                        format!("is below the whiteout marker '{}'", String::from_utf8_lossy(&p)),
                    ));
                }
                Some(_) => {
                    return Err(self.refuse(
                        entry,
                        format!("is below the non-directory '{}'", String::from_utf8_lossy(&p)),
                    ));
                }
                None => {
                    let (pp, name) = match p.iter().rposition(|&b| b == b'/') {
                        Some(i) => (&p[..i], &p[i + 1..]),
                        None => (&b""[..], &p[..]),
                    };
                    let pfd =
                        sys::open_dir_beneath(self.root, OsStr::from_bytes(pp)).map_err(|e| self.fail(entry, e))?;
                    rustix::fs::mkdirat(&pfd, OsStr::from_bytes(name), Mode::from_raw_mode(0o755))
                        .map_err(|e| self.fail(entry, e))?;
                    self.made.insert(p.clone(), Made::ImplicitDir);
                }
            }
        }
        sys::open_dir_beneath(self.root, OsStr::from_bytes(&p)).map_err(|e| self.fail(entry, e))
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let comps = components(&raw).map_err(|why| self.refuse(&raw, why))?;
        let rel: Vec<u8> = comps.join(&b'/');
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
        let Some((&name, parent)) = comps.split_last() else {
            return self.root_entry(&raw, ty, meta);
        };
        if !self.explicit.insert(rel.clone()) {
            return Err(self.refuse(&raw, "duplicate entry"));
        }
        if name.starts_with(whiteout::WH_PREFIX) {
            return self.marker_entry(&raw, ty, &rel, name, parent);
        }
        // Xattrs first: a refusal must come before anything is created.
        let mut xattrs = self.pax_xattrs(&raw, e)?;
        match self.made.get(&rel) {
            Some(Made::ImplicitDir) if ty == EntryType::Directory => {}
            Some(_) => return Err(self.refuse(&raw, "duplicate entry")),
            None => {}
        }
        let pfd = self.parent_dir(&raw, parent)?;
        let (dir, n) = (pfd.as_fd(), OsStr::from_bytes(name));
        let made = match ty {
            EntryType::Directory => {
                if self.made.get(&rel) != Some(&Made::ImplicitDir) {
                    rustix::fs::mkdirat(dir, n, Mode::from_raw_mode(0o700)).map_err(|err| self.fail(&raw, err))?;
                }
                let xattrs = std::mem::take(&mut xattrs);
                self.dirs.push(DirMeta {
                    path: rel.clone(),
                    meta,
                    xattrs,
                });
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
            EntryType::Link => return self.hard_link(dir, n, &raw, rel, e),
            EntryType::Char | EntryType::Block | EntryType::Fifo => self.make_special(dir, n, &raw, &h)?,
            other => return Err(self.refuse(&raw, format!("unsupported entry type {other:?}"))),
        };
        self.made.insert(rel, made);
        self.summary.entries += 1;
        if made != Made::Dir {
            self.owner_mode_times(dir, n, &raw, made, meta, &xattrs)?;
        }
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
            path: Vec::new(),
            meta,
            xattrs: Vec::new(),
        });
        Ok(())
    }

    /// A whiteout or opaque marker: noted, made at the end (see [`Importer::finish`]).
    fn marker_entry(&mut self, raw: &[u8], ty: EntryType, rel: &[u8], name: &[u8], parent: &[&[u8]]) -> Result<()> {
        if ty == EntryType::Directory {
            return Err(self.refuse(raw, "a whiteout marker that is a directory"));
        }
        drop(self.parent_dir(raw, parent)?);
        let prel: Vec<u8> = parent.join(&b'/');
        if name == whiteout::OPAQUE_MARKER.as_bytes() {
            self.opaques.push(prel);
        } else {
            let target = &name[whiteout::WH_PREFIX.len()..];
            if target.is_empty() {
                return Err(self.refuse(raw, "a whiteout for an empty name"));
            }
            self.whiteouts.push((prel, target.to_vec()));
        }
        self.made.insert(rel.to_vec(), Made::Marker);
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
                    if whiteout::is_private_xattr(OsStr::new(x)) {
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
        &mut self,
        dir: BorrowedFd<'_>,
        n: &OsStr,
        raw: &[u8],
        rel: Vec<u8>,
        e: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let target = e
            .link_name_bytes()
            .ok_or_else(|| self.refuse(raw, "a hard link without a target"))?
            .into_owned();
        let tc = components(&target)
            .map_err(|why| self.refuse(raw, format!("hard link pointing out of the layer ({why})")))?;
        let kind = self.made.get(&tc.join(&b'/')).copied();
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
        self.made.insert(rel, kind.unwrap_or(Made::Other));
        self.summary.entries += 1;
        // A hard link shares the inode: no metadata of its own.
        Ok(())
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
        let (Ok(uid), Ok(gid)) = (u32::try_from(meta.uid), u32::try_from(meta.gid)) else {
            return Err(self.refuse(raw, "owner out of range"));
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
            Err(err) => return Err(self.fail(raw, err)),
        }
        if made != Made::Symlink {
            rustix::fs::chmodat(dir, n, Mode::from_raw_mode(meta.mode & 0o7777), AtFlags::empty())
                .map_err(|err| self.fail(raw, err))?;
        }
        // After the owner change (which drops file capabilities) and the mode (which would
        // rewrite an ACL's mask).
        let target = sys::Target::Entry(dir, n);
        for (k, v) in xattrs {
            match target.set_xattr(OsStr::new(k), v, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM) if !self.root_user => {}
                Err(err) => return Err(self.fail(raw, err)),
            }
        }
        let t = Timestamps {
            last_access: ts(meta.mtime),
            last_modification: ts(meta.mtime),
        };
        rustix::fs::utimensat(dir, n, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(|err| self.fail(raw, err))?;
        Ok(())
    }

    /// Markers, then directory metadata (deepest first, so children do not touch it again).
    fn finish(&mut self) -> Result<()> {
        let whiteouts = std::mem::take(&mut self.whiteouts);
        for (parent, target) in whiteouts {
            let mut p = parent.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&target);
            let pfd = sys::open_dir_beneath(self.root, OsStr::from_bytes(&parent)).map_err(|e| self.fail(&p, e))?;
            let n = OsStr::from_bytes(&target);
            match self.made.get(&p) {
                // The same layer has the name: a whiteout only hides the layers below, which for a
                // directory is opacity and for anything else is what replacing it does anyway.
                Some(Made::Dir | Made::ImplicitDir) => {
                    self.opaques.push(p.clone());
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            match whiteout::make_device(pfd.as_fd(), n) {
                Ok(()) => {}
                Err(rustix::io::Errno::PERM | rustix::io::Errno::OPNOTSUPP) => {
                    whiteout::make_oci_whiteout(pfd.as_fd(), n).map_err(|e| self.fail(&p, e))?
                }
                Err(e) => return Err(self.fail(&p, e)),
            }
            self.summary.whiteouts += 1;
        }
        let mut opaques = std::mem::take(&mut self.opaques);
        opaques.sort();
        opaques.dedup();
        for d in opaques {
            let fd = sys::open_dir_beneath(self.root, OsStr::from_bytes(&d)).map_err(|e| self.fail(&d, e))?;
            whiteout::mark_opaque(fd.as_fd(), false, self.privileged).map_err(|e| self.fail(&d, e))?;
            self.summary.opaque_dirs += 1;
        }
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
        dirs.extend(self.root_meta.take());
        for d in dirs {
            let (parent, name) = match d.path.iter().rposition(|&b| b == b'/') {
                Some(i) => (&d.path[..i], &d.path[i + 1..]),
                None => (&b""[..], &d.path[..]),
            };
            let (pfd, n) = if d.path.is_empty() {
                (
                    sys::open_dir_beneath(self.root, OsStr::new("")).map_err(|e| self.fail(&d.path, e))?,
                    OsStr::new("."),
                )
            } else {
                (
                    sys::open_dir_beneath(self.root, OsStr::from_bytes(parent)).map_err(|e| self.fail(&d.path, e))?,
                    OsStr::from_bytes(name),
                )
            };
            self.owner_mode_times(pfd.as_fd(), n, &d.path, Made::Dir, d.meta, &d.xattrs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn paths_are_checked() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], &b"b"[..]]);
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
