//! `commit`: one tar entry each: headers (numeric owners, mtimes clamped), an object's data,
//! symlink target or device numbers, its xattrs as PAX records, hard links as links to the
//! first name, and the empty files that are whiteouts and opaque markers in OCI layers.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags, Stat};
use tar::{EntryType, Header};

use super::{Committer, Tar};
use crate::layers::listing::{Entry, is_dir};
use crate::layers::place::Place;
use crate::layers::{LayerError, Observer, Result};
use crate::sys;

fn tar_err(p: PathBuf) -> impl Fn(io::Error) -> LayerError {
    move |e| LayerError::io(p.clone(), e)
}

impl Committer<'_> {
    fn mtime(&self, st: &Stat) -> u64 {
        let t = st.st_mtime;
        let t = match self.opts.clamp_mtime {
            Some(c) if t > c => c,
            _ => t,
        };
        t.max(0) as u64
    }

    fn header(&self, st: &Stat, ty: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(st.st_uid as u64);
        h.set_gid(st.st_gid as u64);
        h.set_mtime(self.mtime(st));
        h.set_size(0);
        h
    }

    /// An empty marker file (`.wh.X` or `.wh..wh..opq`) at `path`, dated like its directory.
    pub(super) fn marker<W: Write>(&mut self, tar: &mut Tar<W>, path: &[u8], dir_st: &Stat) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime(dir_st));
        h.set_size(0);
        let upper = self.stack.upper()?;
        tar.append_data(&mut h, OsStr::from_bytes(path), io::empty())
            .map_err(tar_err(upper.at(path)))?;
        self.entries += 1;
        Ok(())
    }

    /// One real object at tar path `path` (entry `e` of the directory `src`); a regular file's
    /// data is read from `data` when given (a metacopy file's lower file).
    pub(super) fn object<W: Write>(
        &mut self,
        tar: &mut Tar<W>,
        path: &[u8],
        src: Source<'_>,
        e: &Entry,
        data: Option<File>,
    ) -> Result<()> {
        let upper = self.stack.upper()?;
        let at = upper.at(path);
        let st = &e.st;
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Socket {
            self.sockets.push(path.to_vec());
            return Ok(());
        }
        let (xattrs, dir) = match src {
            Source::Upper(dir) => (pax_xattrs(&at, dir, &e.name)?, Some(dir)),
            Source::Lower(place) => {
                let xs = place.xattrs(&e.name).map_err(|err| LayerError::io(&at, err))?;
                (pax_records(&at, xs)?, place.fd())
            }
        };
        // Hard links: the first name carries the object, the others link to it.
        if !is_dir(st) && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let mut h = self.header(st, EntryType::Link);
                tar.append_link(&mut h, OsStr::from_bytes(path), OsStr::from_bytes(first))
                    .map_err(tar_err(at))?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, path.to_vec());
        }
        if !xattrs.is_empty() {
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(tar_err(at.clone()))?;
        }
        self.body(tar, path, dir, e, data)?;
        self.entries += 1;
        Ok(())
    }

    /// The header (and data) of the object `e` of `dir` at tar path `path`. Without `dir` (a
    /// directory of an image layer) only what a header carries can be written.
    fn body<W: Write>(
        &mut self,
        tar: &mut Tar<W>,
        path: &[u8],
        dir: Option<BorrowedFd<'_>>,
        e: &Entry,
        data: Option<File>,
    ) -> Result<()> {
        let at = self.stack.upper()?.at(path);
        let st = &e.st;
        let ft = FileType::from_raw_mode(st.st_mode);
        let p = OsStr::from_bytes(path);
        let dir = || dir.ok_or_else(|| LayerError::invalid(&at, "no data to read for it in an image layer"));
        match ft {
            FileType::Directory => {
                let mut h = self.header(st, EntryType::Directory);
                tar.append_data(&mut h, p, io::empty()).map_err(tar_err(at))?;
            }
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(dir()?, e.name.as_os_str(), Vec::new())
                    .map_err(|err| LayerError::io(&at, err))?;
                let mut h = self.header(st, EntryType::Symlink);
                tar.append_link(&mut h, p, OsStr::from_bytes(link.as_bytes()))
                    .map_err(tar_err(at))?;
            }
            FileType::RegularFile => {
                let file = match data {
                    Some(f) => f,
                    None => File::from(
                        sys::open_at(dir()?, &e.name, OFlags::RDONLY | OFlags::NOATIME)
                            .map_err(|err| LayerError::io(&at, err))?,
                    ),
                };
                let mut h = self.header(st, EntryType::Regular);
                h.set_size(st.st_size as u64);
                let r = ExactReader {
                    inner: file,
                    left: st.st_size as u64,
                    obs: self.obs,
                };
                tar.append_data(&mut h, p, r).map_err(tar_err(at))?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                let ty = match ft {
                    FileType::CharacterDevice => EntryType::Char,
                    FileType::BlockDevice => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut h = self.header(st, ty);
                if ty != EntryType::Fifo {
                    h.set_device_major(rustix::fs::major(st.st_rdev))
                        .map_err(tar_err(at.clone()))?;
                    h.set_device_minor(rustix::fs::minor(st.st_rdev))
                        .map_err(tar_err(at.clone()))?;
                }
                tar.append_data(&mut h, p, io::empty()).map_err(tar_err(at))?;
            }
            _ => return Err(LayerError::invalid(&at, "unknown file type")),
        }
        Ok(())
    }
}

/// Where an object written into the layer is read from.
pub(super) enum Source<'a> {
    /// An entry of this upper directory (or of the hard-link index).
    Upper(BorrowedFd<'a>),
    /// An entry of this lower directory: a directory the upper does not have, on the way to
    /// names that show a copy from the hard-link index.
    Lower(&'a Place),
}

/// The PAX records for the xattrs of `dir/name` (private ones left out: kernel metacopy and
/// redirect markers among them, whose meaning the caller has followed).
fn pax_xattrs(at: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> Result<BTreeMap<String, Vec<u8>>> {
    let target = sys::Target::Entry(dir, name);
    let names = target.list_xattrs().map_err(|err| LayerError::io(at, err))?;
    let mut xattrs = Vec::with_capacity(names.len());
    for n in names {
        if let Some(v) = target.get_xattr(&n).map_err(|err| LayerError::io(at, err))? {
            xattrs.push((n, v));
        }
    }
    pax_records(at, xattrs)
}

/// The PAX records for `xattrs` (private ones left out).
fn pax_records(at: &Path, xattrs: Vec<(OsString, Vec<u8>)>) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (n, v) in xattrs {
        if crate::format::xattrs::is_private(&n) {
            continue;
        }
        let key = n
            .to_str()
            .ok_or_else(|| LayerError::invalid(at, format!("xattr name {n:?} is not UTF-8")))?;
        out.insert(format!("SCHILY.xattr.{key}"), v);
    }
    Ok(out)
}

/// Reads exactly `left` bytes: a file that shrank while being read is an error (the tar
/// header already promised its size), one that grew is cut at that size.
struct ExactReader<'a> {
    inner: File,
    left: u64,
    obs: &'a dyn Observer,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.obs.cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being committed",
            ));
        }
        self.left -= n as u64;
        self.obs.bytes(n as u64);
        Ok(n)
    }
}
