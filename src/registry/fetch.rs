//! The cache's blob store, `CACHE/blobs/sha256/HEX`, filled from the registry: content-addressed
//! and shared by every mount and image, so a blob already there is never fetched again.
//!
//! A blob is streamed to a temporary file, hashed on the way, and renamed into place only when
//! its sha256 and size are those of its descriptor: a blob in the store is whole and right or
//! absent. Two processes fetching the same blob take turns on a per-blob lock (`flock` on
//! `CACHE/blobs/locks/HEX`); the second finds it in place and fetches nothing.
//!
//! A layer with a table of contents is not fetched whole: [`range`] gets its table and the
//! chunks reads need (`lazy.rs`), each checked against its digest by the reader.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ureq::http::StatusCode;

use super::Session;
use super::client::{Client, Failure};
use crate::blob::Hashing;
use crate::image::ImageError;
use crate::image::layout::{self, LayerDesc};
use crate::image::scan::{self, Progress, Scanned};
use crate::image::store;

/// The blob `digest` (of `size` bytes when known) in the store of `cache`, fetched first when
/// it is not there yet.
pub fn ensure(
    s: &mut Session,
    cache: &Path,
    digest: &str,
    size: Option<u64>,
    progress: &dyn Progress,
) -> Result<PathBuf, ImageError> {
    fetch(s, cache, digest, size, None, progress)
}

/// [`ensure`] for the layer `desc`, and its catalog made from the same download when there is
/// none yet: the blob is decompressed and indexed as it arrives (one pass instead of a fetch
/// and then a read of the whole blob), and kept only if it and its tar match their digests.
pub fn ensure_indexed(
    s: &mut Session,
    cache: &Path,
    desc: &LayerDesc,
    progress: &dyn Progress,
) -> Result<PathBuf, ImageError> {
    fetch(s, cache, &desc.digest, Some(desc.size), Some(desc), progress)
}

/// [`ensure`], indexing the layer `index` on the way when it has no catalog.
fn fetch(
    s: &mut Session,
    cache: &Path,
    digest: &str,
    size: Option<u64>,
    index: Option<&LayerDesc>,
    progress: &dyn Progress,
) -> Result<PathBuf, ImageError> {
    let path = layout::blob_path(cache, digest)?;
    if present(&path, size) {
        touch(&path);
        return Ok(path);
    }
    if !digest.starts_with("sha256:") {
        return Err(s.error(format!("blob {digest}: only sha256 digests are supported")));
    }
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    let locks = cache.join("blobs").join("locks");
    let dir = path.parent().unwrap_or(cache).to_path_buf();
    let cat = index.map(|d| store::path_of(cache, &d.digest));
    let mut dirs = vec![locks.clone(), dir.clone()];
    dirs.extend(cat.as_ref().and_then(|c| c.parent()).map(Path::to_path_buf));
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| ImageError::io(d, e))?;
    }
    let _lock = crate::image::lock_file(&locks.join(hex))?;
    // The catalog's lock too: a mount of the same layer from a layout may be scanning it.
    let _cat_lock = cat
        .as_ref()
        .map(|c| crate::image::lock_file(&c.with_extension("lock")))
        .transpose()?;
    // Someone else may have fetched it while this process waited for the lock.
    if present(&path, size) {
        return Ok(path);
    }
    // A catalog made meanwhile (from a layout's copy of the layer) needs no second scan.
    let index = index.zip(cat).filter(|(_, c)| !c.is_file());
    let tmp = dir.join(format!(".tmp.{}.{hex}", std::process::id()));
    let r = match index {
        Some((desc, cat)) => download_indexed(s, desc, &tmp, &path, progress).and_then(|scanned| {
            store::write(&cat, &desc.digest, &desc.diff_id, desc.compression, &scanned)
                .map_err(|e| ImageError::io(&cat, e))
        }),
        None => download(s, digest, size, &tmp, progress),
    }
    .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| ImageError::io(&path, e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| path)
}

/// Streams the layer's blob into `tmp` while scanning it (see [`ensure_indexed`]).
fn download_indexed(
    s: &mut Session,
    desc: &LayerDesc,
    tmp: &Path,
    label: &Path,
    progress: &dyn Progress,
) -> Result<Scanned, ImageError> {
    let digest = &desc.digest;
    let body = blob_get(s, digest)?.into_body().into_reader();
    // The scan reports progress, and checks the blob's digest and its tar's DiffID; the size is
    // checked here.
    let mut saving = Saving::new(body, tmp, Some(desc.size), None)?;
    let scanned = match scan::scan_from(&mut saving, label, desc, progress) {
        Ok(scanned) => scanned,
        Err(e) => {
            // A blob that is not what its digest says is the cause to report, not the tar
            // error its damage made: the rest is read to know.
            let _ = std::io::copy(&mut saving, &mut std::io::sink());
            let _ = saving.out.flush();
            let mut hashed = Hashing::new(std::io::sink());
            std::fs::File::open(tmp)
                .and_then(|mut f| std::io::copy(&mut f, &mut hashed))
                .map_err(|e| ImageError::io(tmp, e))?;
            if hashed.digest() != *digest {
                return Err(s.error(format!(
                    "blob {digest} is corrupt: the registry sent {} bytes whose digest is {}",
                    saving.got,
                    hashed.digest()
                )));
            }
            return Err(s.error(e.to_string()));
        }
    };
    if saving.got != desc.size {
        return Err(s.error(format!(
            "blob {digest} is corrupt: the registry sent {} bytes, the manifest says {}",
            saving.got, desc.size
        )));
    }
    saving.sync()?;
    Ok(scanned)
}

/// A download read through, written to `tmp` on the way. More than `limit` bytes is refused
/// (a registry that sends more than the blob); a failed write names the file.
struct Saving<'a, R> {
    body: R,
    out: std::io::BufWriter<std::fs::File>,
    tmp: &'a Path,
    got: u64,
    limit: Option<u64>,
    /// Told of every piece when nothing else reading the download reports progress.
    progress: Option<&'a dyn Progress>,
}

impl<'a, R: Read> Saving<'a, R> {
    fn new(body: R, tmp: &'a Path, limit: Option<u64>, progress: Option<&'a dyn Progress>) -> Result<Self, ImageError> {
        let file = std::fs::File::create(tmp).map_err(|e| ImageError::io(tmp, e))?;
        Ok(Saving {
            body,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            got: 0,
            limit,
            progress,
        })
    }

    /// Writes out what is buffered and makes the file durable.
    fn sync(self) -> Result<(), ImageError> {
        let f = self
            .out
            .into_inner()
            .map_err(|e| ImageError::io(self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| ImageError::io(self.tmp, e))
    }
}

impl<R: Read> Read for Saving<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.body.read(buf)?;
        self.got += n as u64;
        if let Some(limit) = self.limit.filter(|&l| self.got > l) {
            return Err(std::io::Error::other(format!(
                "the registry sent more than the blob's {limit} bytes"
            )));
        }
        self.out
            .write_all(&buf[..n])
            .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", self.tmp.display())))?;
        if let Some(p) = self.progress {
            p.blob_bytes(n as u64);
        }
        Ok(n)
    }
}

/// Marks a blob of the store used now (its mtime: what `unionfs cache prune` and the cache's
/// size limit go by).
pub fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

fn present(path: &Path, size: Option<u64>) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && size.is_none_or(|n| m.len() == n))
}

/// The answer to a GET of the whole blob `digest`, if it is the blob (200).
fn blob_get(s: &mut Session, digest: &str) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
    let resp = s
        .client()?
        .get(&format!("blobs/{digest}"), None, None)
        .map_err(|e| s.error(format!("blob {digest}: {e}")))?;
    match resp.status() {
        StatusCode::OK => Ok(resp),
        StatusCode::NOT_FOUND => Err(s.error(format!("blob {digest} not found (404)"))),
        st => Err(s.error(format!("blob {digest}: the registry answered HTTP {}", st.as_u16()))),
    }
}

/// Streams the blob into `tmp`, checking its sha256 and size.
fn download(
    s: &mut Session,
    digest: &str,
    size: Option<u64>,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let body = blob_get(s, digest)?.into_body().into_reader();
    let mut saving = Saving::new(body, tmp, size, Some(progress))?;
    let mut hashed = Hashing::new(std::io::sink());
    std::io::copy(&mut saving, &mut hashed).map_err(|e| s.error(format!("blob {digest}: the transfer failed: {e}")))?;
    let actual = hashed.digest();
    if actual != digest || size.is_some_and(|want| want != saving.got) {
        return Err(s.error(format!(
            "blob {digest} is corrupt: the registry sent {} bytes whose digest is {actual}",
            saving.got
        )));
    }
    saving.sync()
}

/// Bytes `from..from + len` of the blob `digest`, by one range request: what lazy reads of a
/// layer are made of. The registry must answer 206 with exactly those bytes; a whole blob
/// (200) or a short or long answer is refused, never cut to size. The bytes are not checked
/// here: the caller knows the digest of the piece it asked for (a table of contents entry).
pub fn range(s: &mut Session, digest: &str, from: u64, len: u64) -> Result<Vec<u8>, ImageError> {
    let r = range_of(s.client()?, digest, from, len, None);
    r.map_err(|e| s.error(format!("blob {digest} bytes {from}+{len}: {}", e.why)))
}

/// Why a range was not had (the caller names the blob and the range), and whether asking again
/// may help (the registry unreachable or failing for now, the transfer cut) or not (it does not
/// serve ranges, or not this blob).
#[derive(Debug)]
pub struct RangeError {
    pub why: String,
    pub transient: bool,
}

/// [`range`] through `client`, the exchange given up after `timeout`.
pub fn range_of(
    client: &Client,
    digest: &str,
    from: u64,
    len: u64,
    timeout: Option<std::time::Duration>,
) -> Result<Vec<u8>, RangeError> {
    let fail = |why: String, transient: bool| RangeError { why, transient };
    let last = from
        .checked_add(len)
        .and_then(|end| end.checked_sub(1))
        .ok_or_else(|| fail("an empty or impossible range".into(), false))?;
    let mut resp = client
        .get_within(&format!("blobs/{digest}"), None, Some((from, last)), timeout)
        .map_err(|e| {
            let transient = matches!(e, Failure::Unreachable(_));
            fail(e.to_string(), transient)
        })?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        let st = resp.status();
        let transient = st.is_server_error() || st == StatusCode::TOO_MANY_REQUESTS;
        let why = format!("the registry answered HTTP {}, not a range (206)", st.as_u16());
        return Err(fail(why, transient));
    }
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(len.saturating_add(1))
        .read_to_vec()
        .map_err(|e| fail(e.to_string(), true))?;
    if bytes.len() as u64 != len {
        // A transfer cut short looks the same as a registry that sends too little: ask again.
        return Err(fail(format!("the registry sent {} bytes", bytes.len()), true));
    }
    Ok(bytes)
}

/// Keeps `bytes`, already checked to hash to `digest`, in the store (a manifest fetched by
/// tag, so that a later open by digest needs no registry).
pub fn keep(cache: &Path, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let path = layout::blob_path(cache, digest)?;
    // Compared whole (it is small): a damaged copy of the same size is replaced.
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(cache);
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    let tmp = dir.join(format!(".tmp.{}.{hex}", std::process::id()));
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e| ImageError::io(&path, e))
}

/// A small blob (a config) read whole and checked against its digest, fetched first when the
/// store lacks it; a damaged copy in the store is fetched again once.
pub fn read_small(
    s: &mut Session,
    cache: &Path,
    digest: &str,
    size: u64,
    progress: &dyn Progress,
) -> Result<Vec<u8>, ImageError> {
    let path = ensure(s, cache, digest, Some(size), progress)?;
    match layout::read_blob(cache, digest) {
        Err(ImageError::Corrupt { .. }) => {
            tracing::warn!("{}: damaged; fetched again", path.display());
            std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?;
            ensure(s, cache, digest, Some(size), progress)?;
            layout::read_blob(cache, digest)
        }
        r => r,
    }
}
