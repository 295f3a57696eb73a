//! `unionfs commit`: the upper as an OCI image layer (image-spec `layer.md`).
//!
//! A tar, entries in name order (a directory, then its opaque marker if any, then its children):
//! whiteouts as `.wh.NAME` (only for names the image shows), directories the upper made opaque
//! over an image directory as `DIR/.wh..wh..opq`, hard links as tar links (the first name in
//! this order carries the data), xattrs as PAX `SCHILY.xattr.*` records minus the private ones,
//! numeric owners only, no sockets. Markers in every format the mount reads are understood.
//! Reproducible: the same upper gives the same bytes; `clamp_mtime` caps every mtime.
//!
//! Kernel overlayfs uppers (`indirect.rs`): a metacopy file is written with its lower file's
//! data; a redirected directory is written in full (its lower part, wherever the redirect
//! points, merged with the upper's entries), with an opaque marker where the image has a
//! directory at its path, as a layer has no rename.
//!
//! Here: which entries the tar has, in which order (a walk of the upper, with the image looked
//! up beside it); `entries.rs` writes each one; `into_image.rs` stores the layer in an OCI
//! image layout as a new image. The blob's compression and digests are `crate::blob`'s.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use super::indirect;
use super::linked::{IndexCopy, Linked};
use super::listing::{Entry, Listing, is_dir};
use super::lowers::{ImageDir, PathImage};
use super::stack::Stack;
use super::{LayerError, Observer, Result, join};
use crate::blob::{CreateError, LayerWriter, TempFile};
use crate::descent::{Descent, Frame, PathDir};
use crate::format::markers;
use crate::format::markers::Marker;
use crate::sys;

mod entries;
mod into_image;

use entries::Source;
pub use into_image::{HistoryEntry, ImageCommit, commit_to_image, valid_tag};

pub use crate::blob::Compression;

/// How a commit lays out its blob.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlobFormat {
    /// The tar, compressed as [`CommitOptions::compression`] says.
    #[default]
    Plain,
    /// eStargz (gzip, one member per file and chunk, a table of contents: see
    /// `image::estargz`); the compression is gzip whatever `compression` says.
    Estargz,
    /// zstd:chunked (zstd, one frame per file and chunk, a table of contents and a tar-split:
    /// see `image::chunked`); the compression is zstd whatever `compression` says.
    ZstdChunked,
}

/// Options of a commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitOptions {
    pub compression: Compression,
    pub format: BlobFormat,
    /// Every mtime later than this (seconds since the epoch) is written as this.
    pub clamp_mtime: Option<i64>,
}

/// What a commit wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitSummary {
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:HEX` of the blob as written (equal to `diff_id` without compression).
    pub digest: String,
    /// Bytes of the blob as written.
    pub size: u64,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    pub media_type: &'static str,
    /// Tar entries written (whiteouts and opaque markers included).
    pub entries: u64,
    /// Sockets in the upper, which a tar cannot carry (relative paths).
    #[serde(skip)]
    pub skipped_sockets: Vec<Vec<u8>>,
}

/// A committed layer's blob: the summary, and the annotations its descriptor needs (where a
/// table of contents is, and its digest).
pub type Blob = (CommitSummary, Vec<(String, String)>);

/// Writes the upper of `stack` to `out` as `opts` says: [`commit`], or [`commit_indexed`].
pub fn commit_blob<W: Write + Send>(stack: &Stack, opts: &CommitOptions, out: W, obs: &dyn Observer) -> Result<Blob> {
    match opts.format {
        BlobFormat::Plain => commit(stack, opts, out, obs).map(|s| (s, Vec::new())),
        BlobFormat::Estargz | BlobFormat::ZstdChunked => commit_indexed(stack, opts, out, obs),
    }
}

/// What the eStargz and zstd:chunked writers say they wrote, in the terms of a commit.
struct Indexed {
    digest: String,
    size: u64,
    diff_id: String,
    uncompressed_size: u64,
    compression: Compression,
    annotations: Vec<(String, String)>,
}

/// Writes the upper of `stack` to `out` as an eStargz or zstd:chunked layer (as
/// `opts.format` says): the tar [`commit`] makes, cut into gzip members or zstd frames with a
/// table of contents as it is made.
pub fn commit_indexed<W: Write + Send>(
    stack: &Stack,
    opts: &CommitOptions,
    out: W,
    obs: &dyn Observer,
) -> Result<Blob> {
    let plain = CommitOptions {
        compression: Compression::None,
        format: BlobFormat::Plain,
        ..*opts
    };
    // `commit`'s errors are carried through the writer's io::Error and taken out again below.
    let produce = |w: &mut dyn Write| commit(stack, &plain, w, obs).map_err(std::io::Error::other);
    let notes = |a: &[(&str, String)]| a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let r = match opts.format {
        BlobFormat::Estargz => {
            crate::image::estargz::write_with(out, &crate::image::estargz::Options::default(), produce).map(|(s, w)| {
                let i = Indexed {
                    digest: w.digest.clone(),
                    size: w.size,
                    diff_id: w.diff_id.clone(),
                    uncompressed_size: w.uncompressed_size,
                    compression: Compression::Gzip,
                    annotations: notes(&w.annotations()),
                };
                (s, i)
            })
        }
        _ => {
            crate::image::chunked::write_with(out, &crate::image::chunked::Options::default(), produce).map(|(s, w)| {
                let i = Indexed {
                    digest: w.digest.clone(),
                    size: w.size,
                    diff_id: w.diff_id.clone(),
                    uncompressed_size: w.uncompressed_size,
                    compression: Compression::Zstd,
                    annotations: notes(&w.annotations()),
                };
                (s, i)
            })
        }
    };
    match r {
        Ok((mut summary, written)) => {
            // The blob's stream is what the writer made of the tar: its DiffID is the stream's.
            summary.diff_id = written.diff_id;
            summary.digest = written.digest;
            summary.size = written.size;
            summary.tar_size = written.uncompressed_size;
            summary.media_type = written.compression.media_type();
            Ok((summary, written.annotations))
        }
        Err(e) => match e.into_inner().map(|b| b.downcast::<LayerError>()) {
            Some(Ok(layer)) => Err(*layer),
            Some(Err(other)) => Err(LayerError::Output(std::io::Error::other(other))),
            None => Err(LayerError::Output(std::io::Error::other("the layer writer failed"))),
        },
    }
}

/// Writes the upper of `stack` as a layer to `out` (blob bytes, compressed as asked).
pub fn commit<W: Write>(stack: &Stack, opts: &CommitOptions, out: W, obs: &dyn Observer) -> Result<CommitSummary> {
    let failed = Rc::new(RefCell::new(None));
    let out = Watched {
        inner: out,
        failed: Rc::clone(&failed),
    };
    commit_inner(stack, opts, out, obs).map_err(|e| {
        if obs.cancelled() {
            return LayerError::Interrupted;
        }
        // The tar writer reports a full disk while it copies a file as an error of that copy:
        // the output's own failure is the cause to name.
        match failed.borrow_mut().take() {
            Some(out_err) => LayerError::Output(out_err),
            None => e,
        }
    })
}

/// The output, keeping its first write error.
struct Watched<W> {
    inner: W,
    failed: Rc<RefCell<Option<io::Error>>>,
}

impl<W> Watched<W> {
    fn note<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            let mut f = self.failed.borrow_mut();
            if f.is_none() {
                *f = Some(io::Error::new(e.kind(), e.to_string()));
            }
        }
        r
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.note(r)
    }
}

fn commit_inner<W: Write>(stack: &Stack, opts: &CommitOptions, out: W, obs: &dyn Observer) -> Result<CommitSummary> {
    let upper = stack.upper()?;
    let blob = LayerWriter::new(opts.compression, out).map_err(LayerError::Output)?;
    let mut tar = tar::Builder::new(blob);
    let root = Listing::read(upper.fd(), &upper.path)?;
    let img = stack.image_root()?;
    let mut c = Committer {
        stack,
        opts,
        obs,
        links: HashMap::new(),
        entries: 0,
        sockets: Vec::new(),
    };
    // An opaque upper root hides the whole image.
    if root.marks.opaque && !img.dirs.is_empty() {
        let st = rustix::fs::fstat(upper.fd()).map_err(|e| LayerError::io(&upper.path, e))?;
        c.marker(&mut tar, markers::OPAQUE_MARKER.as_bytes(), &st)?;
    }
    let img = if root.marks.opaque { None } else { Some(img) };
    let linked = Linked::find(stack, stack.workdir.as_deref(), obs)?;
    let start = PathDir::dup(upper.fd()).map_err(|e| LayerError::io(&upper.path, e))?;
    let first = c.frame(b"", Some((start, root)), (img, false), &linked)?;
    c.walk(&mut tar, first, &linked)?;
    let blob = tar.into_inner().map_err(LayerError::Output)?;
    let (d, _) = blob.finish().map_err(LayerError::Output)?;
    Ok(CommitSummary {
        diff_id: d.diff_id,
        digest: d.digest,
        size: d.size,
        tar_size: d.tar_size,
        media_type: opts.compression.media_type(),
        entries: c.entries,
        skipped_sockets: c.sockets,
    })
}

/// [`commit`] into the file `path`, written under a temporary name beside it and renamed into
/// place at the end: an error or an interruption leaves no file behind.
pub fn commit_to_file(stack: &Stack, opts: &CommitOptions, path: &Path, obs: &dyn Observer) -> Result<Blob> {
    let tmp = TempFile::create(path).map_err(|e| match e {
        CreateError::Io(e) => LayerError::io(path, e),
        e => LayerError::invalid(path, e.to_string()),
    })?;
    let w = BufWriter::with_capacity(1 << 20, tmp.file().map_err(|e| LayerError::io(path, e))?);
    let blob = commit_blob(stack, opts, w, obs).map_err(|e| match e {
        LayerError::Output(source) => LayerError::io(path, source),
        e => e,
    })?;
    tmp.persist().map_err(|e| LayerError::io(path, e))?;
    Ok(blob)
}

struct Committer<'a> {
    stack: &'a Stack,
    opts: &'a CommitOptions,
    obs: &'a dyn Observer,
    /// (dev, ino) of multiply linked objects → the tar path that carries them.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    sockets: Vec<Vec<u8>>,
}

enum Item<'l> {
    /// Entry `index` of the upper directory's listing; `whited_out`: a whiteout of that
    /// directory names it too (which cuts what the view merges below it).
    Object {
        index: usize,
        whited_out: bool,
    },
    Whiteout,
    /// A name showing a copy from the hard-link index.
    Linked(&'l IndexCopy),
    /// A directory only the image has, leading to such names.
    LowerDir(OsString),
    /// In a directory written in full: an object only its lower part has.
    Lower(OsString),
}

/// A directory on the commit's path: the upper's (with its listing; None where the upper has
/// no such directory), the image's the view merges it with, and its tar entries still to write.
struct Committing<'l> {
    up: Option<(PathDir, Listing)>,
    img: PathImage,
    /// The directory is written in full (a kernel redirect moved its lower part, see
    /// `indirect.rs`): `img` is that lower part, whose every name the layer carries, and the
    /// layer's directory hides whatever the image has at this path.
    full: bool,
    items: std::vec::IntoIter<(Vec<u8>, Item<'l>)>,
    rel_len: usize,
}

impl Frame for Committing<'_> {
    fn park(&mut self, child: &Self) -> rustix::io::Result<()> {
        if let (Some((fd, _)), Some(_)) = (self.up.as_mut(), child.up.as_ref()) {
            fd.park()?;
        }
        self.img.park(&child.img)
    }
    fn unpark(&mut self, child: &Self) -> rustix::io::Result<()> {
        if let (Some((fd, _)), Some((below, _))) = (self.up.as_mut(), child.up.as_ref()) {
            fd.unpark(below.fd()?)?;
        }
        self.img.unpark(&child.img)
    }
}

type Tar<W> = tar::Builder<W>;

impl Committer<'_> {
    /// What goes into the tar for the directory `rel`, by name: the upper's objects, the
    /// whiteouts that hide something in `img`, and the names below that show an index copy.
    fn items<'l>(
        &self,
        rel: &[u8],
        listing: &Listing,
        (img, full): (Option<&ImageDir>, bool),
        linked: &'l Linked,
    ) -> Result<BTreeMap<Vec<u8>, Item<'l>>> {
        let objects = listing.object_names();
        let hidden = listing.whiteout_targets();
        let mut items: BTreeMap<Vec<u8>, Item<'_>> = BTreeMap::new();
        if full {
            for (index, e) in listing.entries.iter().enumerate() {
                if e.kind == Marker::Object {
                    let whited_out = hidden.contains(e.name.as_os_str());
                    items.insert(e.name.as_bytes().to_vec(), Item::Object { index, whited_out });
                }
            }
            if let Some(img) = img {
                for name in img.list(self.stack, rel)?.into_keys() {
                    if !objects.contains(name.as_os_str()) && !hidden.contains(name.as_os_str()) {
                        items.insert(name.as_bytes().to_vec(), Item::Lower(name));
                    }
                }
            }
            return Ok(items);
        }
        for (index, e) in listing.entries.iter().enumerate() {
            match &e.kind {
                Marker::OpaqueFile => {}
                Marker::Object => {
                    let whited_out = hidden.contains(e.name.as_os_str());
                    items.insert(e.name.as_bytes().to_vec(), Item::Object { index, whited_out });
                }
                Marker::Whiteout { target, .. } => {
                    let Some(img) = img else { continue };
                    if objects.contains(target.as_os_str()) {
                        continue;
                    }
                    if img.lookup(self.stack, rel, target, false)?.is_some() {
                        items.insert(markers::oci_name(target).as_bytes().to_vec(), Item::Whiteout);
                    }
                }
            }
        }
        if img.is_some() {
            let (dirs, files) = linked.children(rel);
            for d in dirs {
                if !objects.contains(d.as_os_str()) {
                    items.entry(d.as_bytes().to_vec()).or_insert(Item::LowerDir(d));
                }
            }
            for (n, copy) in files {
                if !objects.contains(n.as_os_str()) {
                    items.insert(n.as_bytes().to_vec(), Item::Linked(copy));
                }
            }
        }
        Ok(items)
    }

    /// The directory `rel` on the commit's path: the upper's (`up`: its fd and listing; None
    /// where the upper has no such directory), the image directory the view merges it with
    /// (None: nothing merges, so no marker is needed and no lower name shows), and the names
    /// below it that show a copy from the hard-link index (`linked`).
    fn frame<'l>(
        &self,
        rel: &[u8],
        up: Option<(PathDir, Listing)>,
        (img, full): (Option<ImageDir>, bool),
        linked: &'l Linked,
    ) -> Result<Committing<'l>> {
        let empty = Listing {
            marks: Default::default(),
            entries: Vec::new(),
        };
        let listing = up.as_ref().map_or(&empty, |(_, l)| l);
        let items: Vec<_> = self
            .items(rel, listing, (img.as_ref(), full), linked)?
            .into_iter()
            .collect();
        Ok(Committing {
            up,
            img: PathImage::new(img),
            full,
            items: items.into_iter(),
            rel_len: rel.len(),
        })
    }

    /// Writes the tree from `first` (the root): each directory's entries in name order, a
    /// directory's children right after it, the path kept on the heap (`descent.rs`): a tree
    /// may be of any depth.
    fn walk<'l, W: Write>(&mut self, tar: &mut Tar<W>, first: Committing<'l>, linked: &'l Linked) -> Result<()> {
        let upper = self.stack.upper()?;
        let io = |rel: &[u8], e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let mut rel: Vec<u8> = Vec::new();
        let mut path = Descent::new(first);
        loop {
            let Some(top) = path.last_mut() else {
                return Ok(());
            };
            let Some((tar_name, item)) = top.items.next() else {
                path.pop().map_err(|e| io(&rel, e))?;
                if let Some(up) = path.last() {
                    rel.truncate(up.rel_len);
                }
                continue;
            };
            if self.obs.cancelled() {
                return Err(LayerError::Interrupted);
            }
            self.obs.entry();
            let p = join(&rel, OsStr::from_bytes(&tar_name));
            if let Some(below) = self.item(tar, (&rel, &p), top, item, linked)? {
                rel = p;
                path.push(below).map_err(|e| io(&rel, e))?;
            }
        }
    }

    /// Writes `item` of the directory `here` (at `rel`) at tar path `path`; a directory to go
    /// into next is returned.
    fn item<'l, W: Write>(
        &mut self,
        tar: &mut Tar<W>,
        (rel, path): (&[u8], &[u8]),
        here: &Committing<'l>,
        item: Item<'l>,
        linked: &'l Linked,
    ) -> Result<Option<Committing<'l>>> {
        let upper = self.stack.upper()?;
        let io = |e: rustix::io::Errno| LayerError::io(upper.at(rel), e);
        let fd = match &here.up {
            Some((fd, listing)) => Some((fd.fd().map_err(io)?, listing)),
            None => None,
        };
        let img = here.img.get().map_err(io)?;
        match item {
            Item::Whiteout => {
                let Some((fd, _)) = fd else { return Ok(None) };
                let dir_st = rustix::fs::fstat(fd).map_err(io)?;
                self.marker(tar, path, &dir_st)?;
            }
            Item::Linked(copy) => {
                let e = Entry {
                    name: copy.name.clone(),
                    st: copy.st,
                    kind: Marker::Object,
                };
                self.object(tar, path, Source::Upper(copy.dir.as_fd()), &e, None)?;
            }
            Item::LowerDir(name) => {
                // A directory the upper does not have, on the way to such names: as the image
                // shows it.
                let Some(img) = img else { return Ok(None) };
                let Some(found) = img.lookup(self.stack, rel, &name, true)? else {
                    return Ok(None);
                };
                let (Some(sub), Some(d)) = (found.dir, img.dirs.get(found.pos)) else {
                    return Ok(None);
                };
                let e = Entry {
                    name,
                    st: found.st,
                    kind: Marker::Object,
                };
                self.object(tar, path, Source::Lower(&d.place), &e, None)?;
                return Ok(Some(self.frame(path, None, (Some(sub), false), linked)?));
            }
            Item::Lower(name) => {
                let Some(img) = img else { return Ok(None) };
                return self.lower_object(tar, (rel, path), img, name, linked);
            }
            Item::Object { index, whited_out } => {
                let Some((fd, listing)) = fd else { return Ok(None) };
                let Some(e) = listing.entries.get(index) else {
                    return Ok(None);
                };
                let at = upper.at(path);
                let redirect = indirect::redirect_at(&indirect::upper_xattr(fd, &e.name), &at)?;
                let data = self.metacopy_data((rel, &at), fd, e, img, redirect.as_ref())?;
                self.object(tar, path, Source::Upper(fd), e, data)?;
                if is_dir(&e.st) {
                    let how = Subdir {
                        cut_by_whiteout: whited_out,
                        full: here.full,
                        redirect,
                    };
                    let below = self.upper_subdir(tar, (rel, path), fd, e, img, how, linked)?;
                    return Ok(Some(below));
                }
            }
        }
        Ok(None)
    }

    /// Below the upper directory `e` (at `path`, an entry of `fd`, the directory `rel`): its
    /// opaque marker if it hides an image directory, then the frame of its children.
    #[allow(clippy::too_many_arguments)]
    fn upper_subdir<'l, W: Write>(
        &mut self,
        tar: &mut Tar<W>,
        (rel, path): (&[u8], &[u8]),
        fd: BorrowedFd<'_>,
        e: &Entry,
        img: Option<&ImageDir>,
        how: Subdir,
        linked: &'l Linked,
    ) -> Result<Committing<'l>> {
        let at = self.stack.upper()?.at(path);
        let sfd = sys::open_path_dir(fd, &e.name).map_err(|err| LayerError::io(&at, err))?;
        let sl = Listing::read(sfd.as_fd(), &at)?;
        let cut = sl.marks.opaque || how.cut_by_whiteout;
        // A redirected directory's lower part is elsewhere: the layer carries all of it.
        let moved = match &how.redirect {
            // The kernel ignores the redirect of an opaque directory.
            Some(r) if !cut => Some(indirect::upper_target_dir(self.stack, img, rel, r, &at)?),
            Some(_) => None,
            None => None,
        };
        // The image's directory here: what a marker must hide, or what merges below.
        let needed = !how.full || (moved.is_none() && !cut);
        let found = match img {
            Some(i) if needed => i.lookup(self.stack, rel, &e.name, true)?,
            _ => None,
        };
        let img_dir = found.and_then(|f| f.dir);
        let up = Some((PathDir::new(sfd), sl));
        if how.full {
            let lower = match moved {
                Some(m) => m,
                None if cut => None,
                None => img_dir,
            };
            return self.frame(path, up, (lower, true), linked);
        }
        if (cut || moved.is_some()) && img_dir.is_some() {
            let mut m = path.to_vec();
            m.push(b'/');
            m.extend_from_slice(markers::OPAQUE_MARKER.as_bytes());
            self.marker(tar, &m, &e.st)?;
        }
        match moved {
            Some(lower) => self.frame(path, up, (lower, true), linked),
            None => self.frame(path, up, (if cut { None } else { img_dir }, false), linked),
        }
    }

    /// The object `name` only the lower part `img` of a directory written in full (at `rel`)
    /// shows, at tar path `path`; a directory to go into next is returned.
    fn lower_object<'l, W: Write>(
        &mut self,
        tar: &mut Tar<W>,
        (rel, path): (&[u8], &[u8]),
        img: &ImageDir,
        name: OsString,
        linked: &'l Linked,
    ) -> Result<Option<Committing<'l>>> {
        let Some(found) = img.lookup(self.stack, rel, &name, true)? else {
            return Ok(None);
        };
        let Some(d) = img.dirs.get(found.pos) else {
            return Ok(None);
        };
        let at = self.stack.lowers[d.layer].at(path);
        // A lower file may be a metacopy file itself (a lower that was an upper).
        let data = if rustix::fs::FileType::from_raw_mode(found.st.st_mode) == rustix::fs::FileType::RegularFile {
            match indirect::metacopy_data(self.stack, Some(img), rel, &name, None, &at)? {
                indirect::Data::File(f, _) => Some(f),
                indirect::Data::Missing(why) => return Err(missing_data(&at, &why)),
            }
        } else {
            None
        };
        let e = Entry {
            name,
            st: found.st,
            kind: Marker::Object,
        };
        self.object(tar, path, Source::Lower(&d.place), &e, data)?;
        match found.dir {
            Some(sub) => Ok(Some(self.frame(path, None, (Some(sub), true), linked)?)),
            None => Ok(None),
        }
    }

    /// For a metacopy file `e` of the upper directory `fd` (at `rel`, lower part `img`), the
    /// lower file that holds its data; None for any other object.
    fn metacopy_data(
        &self,
        (rel, at): (&[u8], &Path),
        fd: BorrowedFd<'_>,
        e: &Entry,
        img: Option<&ImageDir>,
        redirect: Option<&indirect::RedirectAt>,
    ) -> Result<Option<std::fs::File>> {
        let regular = rustix::fs::FileType::from_raw_mode(e.st.st_mode) == rustix::fs::FileType::RegularFile;
        if !regular || !indirect::is_metacopy(&indirect::upper_xattr(fd, &e.name), at)? {
            return Ok(None);
        }
        match indirect::metacopy_data(self.stack, img, rel, &e.name, redirect, at)? {
            indirect::Data::File(f, _) => Ok(Some(f)),
            indirect::Data::Missing(why) => Err(missing_data(at, &why)),
        }
    }
}

/// How an upper subdirectory is written.
struct Subdir {
    /// A whiteout of its parent names it too (which cuts what the view merges below it).
    cut_by_whiteout: bool,
    /// Its parent is written in full.
    full: bool,
    /// Its kernel redirect, if any.
    redirect: Option<indirect::RedirectAt>,
}

/// The error for a metacopy file at `at` whose data cannot be found.
fn missing_data(at: &Path, why: &str) -> LayerError {
    LayerError::invalid(
        at,
        format!("kernel overlayfs metacopy file without its data ({why}); nothing can commit it"),
    )
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::layers::Quiet;

    /// Takes every byte, then fails to flush them. The failure is told apart from the upper's by
    /// its type, which `commit_to_file` turns into the file's name: an upper that happens to be
    /// called `output` keeps its own errors.
    struct FailsToFlush;

    impl Write for FailsToFlush {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("disk gone"))
        }
    }

    #[test]
    fn a_failing_output_is_an_output_error() {
        let t = tempfile::tempdir().expect("tmp");
        let upper = t.path().join("output");
        std::fs::create_dir(&upper).expect("upper");
        std::fs::write(upper.join("f"), b"x").expect("file");
        let stack = Stack::open(&[], Some(&upper)).expect("stack");
        let r = commit(&stack, &CommitOptions::default(), FailsToFlush, &Quiet);
        match r {
            Err(LayerError::Output(e)) => assert_eq!(e.to_string(), "disk gone"),
            other => panic!("want an output error, got {other:?}"),
        }
    }
}
