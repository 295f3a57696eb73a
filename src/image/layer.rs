//! One image layer, read in place: its catalog answers every question about names and
//! attributes; file data comes from the blob (straight from an uncompressed tar, or
//! decompressed from the nearest restart point) or from the content cache, and every piece is
//! checked against the sha256 the catalog recorded before a byte of it is returned.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::cache::{ContentCache, LastPiece};
use super::catalog::{CHUNK, Data, Entry, Part};
use super::gzip;
use super::layout::{Compression, LayerDesc};
use super::scan::{self, Progress};
use super::source::{Blob, RemoteRef};
use super::store::{self, StoreError, Stored};
use super::zstd::{self as zst, Frame};

/// Directories kept decoded in memory per layer (the rest are read again from the catalog).
const DIR_CACHE: usize = 256;
/// Table-of-contents pieces at least this long are kept decoded in the content cache.
const KEEP_DECODED: u64 = 256 << 10;
/// Live decompressors kept per layer, positioned where the last read stopped.
const CURSORS: usize = 4;

/// Reads a blob from an offset on, through `pread`.
pub struct BlobReader {
    file: Arc<std::fs::File>,
    pos: u64,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A decompressor positioned somewhere in the layer's stream.
enum Cursor {
    Gzip(Box<gzip::Resumed<BlobReader>>),
    Zstd(zst::Scanner<BlobReader>),
}

impl Cursor {
    fn position(&self) -> u64 {
        match self {
            Cursor::Gzip(g) => g.position(),
            Cursor::Zstd(z) => z.position(),
        }
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Cursor::Gzip(g) => g.read(buf),
            Cursor::Zstd(z) => z.read(buf),
        }
    }
}

/// An open image layer.
pub struct ImageLayer {
    pub digest: String,
    blob_path: PathBuf,
    blob: Blob,
    store: Stored,
    dirs: Mutex<VecDeque<(u32, Arc<Vec<Entry>>)>>,
    cursors: Mutex<Vec<Cursor>>,
    cache: Arc<ContentCache>,
}

/// A failure to read a layer, with what to log: the layer and the cause.
#[derive(Debug, thiserror::Error)]
#[error("layer {digest}: {what}")]
pub struct LayerReadError {
    pub digest: String,
    pub what: String,
}

impl ImageLayer {
    /// Opens the layer `desc` of the layout `layout`, with its catalog from `cache_dir` (made by
    /// scanning the blob when there is none, or it is damaged). Two mounts making the same
    /// catalog at once: one scans, the other waits and uses its result.
    ///
    /// With `remote` (a registry image), a layer with a table of contents whose blob is not in
    /// the layout is read lazily: its table and then the chunks that reads need are fetched by
    /// range requests.
    pub fn open(
        layout: &Path,
        desc: &LayerDesc,
        cache_dir: &Path,
        cache: Arc<ContentCache>,
        remote: Option<&RemoteRef>,
        progress: &dyn Progress,
    ) -> Result<ImageLayer, ImageError> {
        let blob_path = super::layout::blob_path(layout, &desc.digest)?;
        let blob = match remote {
            Some(r) if super::toc::kind_of(desc).is_some() && !blob_path.is_file() => {
                Blob::remote(r.clone(), &desc.digest, desc.size, r.0.describe().into(), cache_dir)
                    .map_err(|e| ImageError::io(super::source::partial_path(cache_dir, &desc.digest), e))?
            }
            _ => {
                let blob = Blob::open(&blob_path).map_err(|e| ImageError::io(&blob_path, e))?;
                let file = blob.file().map(Arc::clone);
                let blob_len = file
                    .as_deref()
                    .map(std::fs::File::metadata)
                    .transpose()
                    .map_err(|e| ImageError::io(&blob_path, e))?
                    .map_or(0, |m| m.len());
                if blob_len != desc.size {
                    return Err(ImageError::corrupt(
                        &blob_path,
                        format!("{blob_len} bytes, the manifest says {}", desc.size),
                    ));
                }
                // Last use, for `unionfs cache prune` (a layout's blobs are not the cache's
                // to touch).
                if let (true, Some(f)) = (blob_path.starts_with(cache_dir), file) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                blob
            }
        };
        let cat = store::path_of(cache_dir, &desc.digest);
        let store = open_or_build(&cat, &blob, desc, progress)?;
        store.touch();
        let blob_path = blob.path().to_path_buf();
        Ok(ImageLayer {
            digest: desc.digest.clone(),
            blob_path,
            blob,
            store,
            dirs: Mutex::new(VecDeque::new()),
            cursors: Mutex::new(Vec::new()),
            cache,
        })
    }

    /// The blob's own attributes (what a stat of the layer's objects is modelled on).
    pub fn blob_stat(&self) -> std::io::Result<rustix::fs::Stat> {
        // A lazy layer has no blob here: its catalog stands in.
        match self.blob.file() {
            Some(f) => Ok(rustix::fs::fstat(&**f)?),
            None => Ok(rustix::fs::fstat(&self.store.file)?),
        }
    }

    /// Whether the layer's chunks are fetched from a registry as reads need them.
    pub fn is_lazy(&self) -> bool {
        self.blob.file().is_none()
    }

    /// The layer's root directory entry.
    pub fn root(&self) -> &Entry {
        &self.store.meta.root
    }

    /// The length of the layer's tar, when the catalog was made by reading it (a layer indexed
    /// from its table of contents never had its stream read).
    pub fn tar_len(&self) -> Option<u64> {
        Some(self.store.meta.stream_len).filter(|&n| n > 0)
    }

    /// The blob file, for the readers of a whole stream (a lazy layer has only table-of-contents
    /// pieces, read by range).
    fn local_file(&self) -> Result<Arc<std::fs::File>, LayerReadError> {
        self.blob
            .file()
            .map(Arc::clone)
            .ok_or_else(|| self.err("a lazy layer has no stream to read"))
    }

    fn err(&self, what: impl Into<String>) -> LayerReadError {
        LayerReadError {
            digest: self.digest.clone(),
            what: what.into(),
        }
    }

    /// Directory `id`, sorted by name.
    pub fn dir(&self, id: u32) -> Result<Arc<Vec<Entry>>, LayerReadError> {
        if let Some(d) = self
            .dirs
            .lock()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, d)| Arc::clone(d))
        {
            return Ok(d);
        }
        let d = Arc::new(
            self.store
                .dir(id)
                .map_err(|e| self.err(format!("catalog {}: {e}", self.store.path.display())))?,
        );
        let mut c = self.dirs.lock();
        if c.len() >= DIR_CACHE {
            c.pop_front();
        }
        c.push_back((id, Arc::clone(&d)));
        Ok(d)
    }

    /// The entry `name` of directory `id`.
    pub fn lookup(&self, id: u32, name: &[u8]) -> Result<Option<Entry>, LayerReadError> {
        let d = self.dir(id)?;
        Ok(d.binary_search_by(|e| (*e.name).cmp(name)).ok().map(|i| d[i].clone()))
    }

    /// Where the data of `path` (relative to the layer's root) lies in the blob, for a prefetch.
    pub fn data_ranges(&self, path: &[u8]) -> super::prefetch::Lookup {
        use super::prefetch::Lookup;
        let mut dir = match self.root().dir {
            Some(d) => d,
            None => return Lookup::Absent,
        };
        let mut parts = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .peekable();
        while let Some(c) = parts.next() {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(c);
            if matches!(self.lookup(dir, &wh), Ok(Some(_))) {
                return Lookup::Hidden;
            }
            let Ok(Some(e)) = self.lookup(dir, c) else {
                return Lookup::Absent;
            };
            if parts.peek().is_none() {
                return Lookup::Here(match &e.data {
                    Data::Parts(ps) => ps
                        .iter()
                        .filter(|p| p.digest.is_some())
                        .map(|p| (p.blob_offset, p.blob_len))
                        .collect(),
                    _ => Vec::new(),
                });
            }
            match e.dir {
                Some(d) => dir = d,
                None => return Lookup::Absent,
            }
        }
        Lookup::Absent
    }

    /// Makes `len` bytes at `offset` of a lazy layer's blob present (fetched if missing).
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<(), LayerReadError> {
        self.blob
            .prefetch(offset, len)
            .map_err(|e| self.err(format!("{} bytes {offset}+{len}: {e}", self.blob_path.display())))
    }

    /// Reads up to `buf.len()` bytes of the file `e` at `offset`.
    pub fn read(&self, e: &Entry, offset: u64, buf: &mut [u8]) -> Result<usize, LayerReadError> {
        self.read_with(e, offset, buf, &LastPiece::default())
    }

    /// [`Self::read`] for a reader that keeps the piece it used last in `last`.
    pub fn read_with(&self, e: &Entry, offset: u64, buf: &mut [u8], last: &LastPiece) -> Result<usize, LayerReadError> {
        let end = e.size.min(offset.saturating_add(buf.len() as u64));
        let mut pos = offset;
        while pos < end {
            let n = match &e.data {
                Data::None => break,
                Data::Stream { offset: at, chunks } => {
                    self.copy_from_chunk(e, chunks, (pos, end), buf, offset, last, |k, len| {
                        self.stream_piece(at + k * CHUNK, len)
                    })?
                }
                Data::Extract { header, chunks } => {
                    self.copy_from_chunk(e, chunks, (pos, end), buf, offset, last, |k, len| {
                        self.extract_piece(*header, k * CHUNK, len)
                    })?
                }
                Data::Parts(parts) => self.copy_from_part(parts, (pos, end), buf, offset, last)?,
            };
            if n == 0 {
                break;
            }
            pos += n as u64;
        }
        Ok((pos - offset) as usize)
    }

    /// Copies from the [`CHUNK`] piece holding `pos` into `buf` (which starts at `base`), getting
    /// the piece from the content cache or `fetch(k, len)` and checking it against `chunks`.
    #[allow(clippy::too_many_arguments)]
    fn copy_from_chunk(
        &self,
        e: &Entry,
        chunks: &[[u8; 32]],
        (pos, end): (u64, u64),
        buf: &mut [u8],
        base: u64,
        last: &LastPiece,
        fetch: impl Fn(u64, usize) -> Result<Vec<u8>, LayerReadError>,
    ) -> Result<usize, LayerReadError> {
        let k = pos / CHUNK;
        let want = chunks
            .get(k as usize)
            .ok_or_else(|| self.err("a file's data is past its last piece"))?;
        let len = (e.size - k * CHUNK).min(CHUNK) as usize;
        let piece = self.piece(want, last, true, || fetch(k, len))?;
        let from = (pos - k * CHUNK) as usize;
        let n = ((end - pos) as usize).min(piece.len() - from);
        let at = (pos - base) as usize;
        buf[at..at + n].copy_from_slice(&piece[from..from + n]);
        Ok(n)
    }

    fn copy_from_part(
        &self,
        parts: &[Part],
        (pos, end): (u64, u64),
        buf: &mut [u8],
        base: u64,
        last: &LastPiece,
    ) -> Result<usize, LayerReadError> {
        let i = parts.partition_point(|p| p.file_offset + p.len <= pos);
        let Some(p) = parts.get(i).filter(|p| p.file_offset <= pos) else {
            return Err(self.err("a file's data is past its last piece"));
        };
        let piece = match &p.digest {
            // A small piece decodes faster than the content cache makes a file for it; a big
            // one (eStargz's 4 MiB) is worth keeping decoded for random reads.
            Some(d) => self
                .piece(d, last, p.len >= KEEP_DECODED, || self.part_piece(p))
                .inspect_err(|_| {
                    // A bad copy of the blob's bytes (a registry that sent wrong ones) is not
                    // kept: the next read asks again.
                    self.blob.forget();
                })?,
            None => Arc::new(vec![0u8; p.len as usize]),
        };
        let from = (pos - p.file_offset) as usize;
        let n = ((end - pos) as usize).min(piece.len() - from);
        let at = (pos - base) as usize;
        buf[at..at + n].copy_from_slice(&piece[from..from + n]);
        Ok(n)
    }

    /// The piece whose sha256 is `want`: from the content cache (if `cached`), or made by
    /// `make` and checked.
    fn piece(
        &self,
        want: &[u8; 32],
        last: &LastPiece,
        cached: bool,
        make: impl FnOnce() -> Result<Vec<u8>, LayerReadError>,
    ) -> Result<Arc<Vec<u8>>, LayerReadError> {
        if let Some(b) = last.get(want) {
            return Ok(b);
        }
        if let Some(b) = cached.then(|| self.cache.get(want)).flatten() {
            last.set(want, &b);
            return Ok(b);
        }
        let b = make()?;
        if Sha256::digest(&b)[..] != want[..] {
            return Err(self.err(format!(
                "{}: data does not match the catalog's checksum (the blob changed since it was indexed?)",
                self.blob_path.display()
            )));
        }
        if cached {
            self.cache.put(want, &b);
        }
        let b = Arc::new(b);
        last.set(want, &b);
        Ok(b)
    }

    /// `len` bytes at `at` in the decompressed stream.
    fn stream_piece(&self, at: u64, len: usize) -> Result<Vec<u8>, LayerReadError> {
        let mut out = vec![0u8; len];
        if self.store.meta.compression == Compression::None {
            self.blob
                .read_exact_at(&mut out, at)
                .map_err(|e| self.err(format!("{}: {e}", self.blob_path.display())))?;
            return Ok(out);
        }
        let mut cur = self.cursor_at(at)?;
        let r = skip_to(&mut cur, at).and_then(|()| cur.read_exact(&mut out));
        r.map_err(|e| self.err(format!("{}: {e}", self.blob_path.display())))?;
        let mut c = self.cursors.lock();
        if c.len() >= CURSORS {
            c.remove(0);
        }
        c.push(cur);
        Ok(out)
    }

    /// A decompressor at or before `at` (a live one if one is close, else from the nearest
    /// restart point).
    fn cursor_at(&self, at: u64) -> Result<Cursor, LayerReadError> {
        let meta = &self.store.meta;
        let restart = match meta.compression {
            Compression::Gzip => {
                let i = meta.gzip_points.partition_point(|p| p.out <= at).saturating_sub(1);
                meta.gzip_points.get(i).map(|p| p.out)
            }
            _ => {
                let i = meta.zstd_frames.partition_point(|f| f.out <= at).saturating_sub(1);
                meta.zstd_frames.get(i).map(|f| f.out)
            }
        }
        .ok_or_else(|| self.err("no restart point in the catalog"))?;
        {
            let mut c = self.cursors.lock();
            if let Some(i) = c.iter().position(|cur| (restart..=at).contains(&cur.position())) {
                return Ok(c.swap_remove(i));
            }
        }
        let file = self.local_file()?;
        let reader = |input: u64| BlobReader {
            file: Arc::clone(&file),
            pos: input,
        };
        let blob_err = |e: &dyn std::fmt::Display| self.err(format!("{}: {e}", self.blob_path.display()));
        match meta.compression {
            Compression::Gzip => {
                let i = meta.gzip_points.partition_point(|p| p.out <= at).saturating_sub(1);
                let p = &meta.gzip_points[i];
                let window = match p.window {
                    Some(w) => {
                        let span = meta.windows.get(w as usize).ok_or_else(|| self.err("window missing"))?;
                        self.store.record(span).map_err(|e| self.err(format!("catalog: {e}")))?
                    }
                    None => Vec::new(),
                };
                let g = gzip::Resumed::new(reader(p.input), p, &window).map_err(|e| blob_err(&e))?;
                Ok(Cursor::Gzip(Box::new(g)))
            }
            _ => {
                let i = meta.zstd_frames.partition_point(|f| f.out <= at).saturating_sub(1);
                let f: Frame = meta.zstd_frames[i];
                let z = zst::Scanner::new(reader(f.input), f).map_err(|e| blob_err(&e))?;
                Ok(Cursor::Zstd(z))
            }
        }
    }

    /// `len` bytes at `file_offset` of the tar entry whose first header is at `header`.
    fn extract_piece(&self, header: u64, file_offset: u64, len: usize) -> Result<Vec<u8>, LayerReadError> {
        let blob_err = |e: std::io::Error| self.err(format!("{}: {e}", self.blob_path.display()));
        let mut out = vec![0u8; len];
        let stream: Box<dyn Read> = if self.store.meta.compression == Compression::None {
            Box::new(BlobReader {
                file: self.local_file()?,
                pos: header,
            })
        } else {
            let mut cur = self.cursor_at(header)?;
            skip_to(&mut cur, header).map_err(blob_err)?;
            Box::new(cur)
        };
        let mut ar = tar::Archive::new(stream);
        let mut entries = ar.entries().map_err(blob_err)?;
        let mut entry = entries
            .next()
            .ok_or_else(|| self.err("no tar entry where the catalog says"))?
            .map_err(blob_err)?;
        std::io::copy(&mut (&mut entry).take(file_offset), &mut std::io::sink()).map_err(blob_err)?;
        entry.read_exact(&mut out).map_err(blob_err)?;
        Ok(out)
    }

    /// A table-of-contents piece: its own compressed frame (zstd) or member (gzip).
    fn part_piece(&self, p: &Part) -> Result<Vec<u8>, LayerReadError> {
        let blob_err = |e: &dyn std::fmt::Display| {
            let (at, len) = (p.blob_offset, p.blob_len);
            self.err(format!("{} bytes {at}+{len}: {e}", self.blob_path.display()))
        };
        let mut raw = vec![0u8; p.blob_len as usize];
        self.blob
            .read_exact_at(&mut raw, p.blob_offset)
            .map_err(|e| blob_err(&e))?;
        let take = |dec: &mut dyn Read| -> std::io::Result<Vec<u8>> {
            std::io::copy(&mut dec.take(p.skip), &mut std::io::sink())?;
            let mut out = vec![0u8; p.len as usize];
            dec.read_exact(&mut out)?;
            Ok(out)
        };
        match self.store.meta.compression {
            Compression::Gzip => take(&mut flate2::read::GzDecoder::new(&raw[..])),
            // A decoder context costs more to make than a small file's chunk costs to decode:
            // each request thread keeps one.
            Compression::Zstd => ZSTD_CONTEXT.with_borrow_mut(|ctx| match ctx {
                Some(ctx) => {
                    // A read that failed mid-frame leaves the context there.
                    ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                        .map_err(|c| std::io::Error::other(zstd::zstd_safe::get_error_name(c)))?;
                    take(&mut zstd::stream::read::Decoder::with_context(&raw[..], ctx))
                }
                None => Err(std::io::Error::other("no zstd decoder context")),
            }),
            Compression::None => take(&mut &raw[..]),
        }
        .map_err(|e| blob_err(&e))
    }
}

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::try_create());
}

/// Reads and drops bytes until `r` is at `at`.
fn skip_to(cur: &mut Cursor, at: u64) -> std::io::Result<()> {
    let n = at - cur.position();
    std::io::copy(&mut cur.take(n), &mut std::io::sink())?;
    Ok(())
}

/// The catalog at `cat`, checked; made by scanning the blob when missing or damaged. A lock per
/// layer makes concurrent mounts scan once.
fn open_or_build(cat: &Path, blob: &Blob, desc: &LayerDesc, progress: &dyn Progress) -> Result<Stored, ImageError> {
    let usable = |r: Result<Option<Stored>, StoreError>| -> Option<Stored> {
        match r {
            Ok(Some(s)) if s.meta.digest == desc.digest && s.meta.diff_id == desc.diff_id => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("catalog {}: {e}; made again", cat.display());
                None
            }
        }
    };
    if let Some(s) = usable(Stored::open(cat)) {
        return Ok(s);
    }
    let dir = cat.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
    let _lock = super::lock_file(&cat.with_extension("lock"))?;
    if let Some(s) = usable(Stored::open(cat)) {
        return Ok(s);
    }
    let scanned = match super::toc::kind_of(desc) {
        Some(_) => scan::from_toc(blob, desc)?,
        None => scan::scan(blob.path(), desc, progress)?,
    };
    store::write(cat, &desc.digest, &desc.diff_id, desc.compression, &scanned).map_err(|e| ImageError::io(cat, e))?;
    match Stored::open(cat) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(ImageError::invalid(cat, "the catalog just written is gone")),
        Err(e) => Err(ImageError::invalid(cat, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fixture::{self, Item};
    use crate::image::layout;

    struct Quiet;
    impl Progress for Quiet {}

    fn items(big: &[u8]) -> Vec<Vec<u8>> {
        vec![fixture::tar(&[
            Item::Dir("etc/", 0o755),
            Item::File("etc/hello", 0o644, b"hello\n".to_vec()),
            Item::Link("etc/hello2", "etc/hello"),
            Item::Symlink("etc/link", "hello"),
            Item::XattrFile("etc/x", b"xattrs".to_vec(), &[("user.color", b"blue")]),
            Item::File("data/big", 0o600, big.to_vec()),
            Item::File("usr/.wh.gone", 0o644, Vec::new()),
        ])]
    }

    fn open(dir: &Path, cache: &Path) -> Result<ImageLayer, ImageError> {
        let img = layout::open(dir, Some("t"))?;
        let cc = Arc::new(ContentCache::new(cache, 64 << 20));
        ImageLayer::open(dir, &img.layers[0], cache, cc, None, &Quiet)
    }

    fn find(l: &ImageLayer, path: &str) -> Entry {
        let mut dir = 0;
        let mut e = l.root().clone();
        for c in path.split('/') {
            e = l
                .lookup(dir, c.as_bytes())
                .expect("lookup")
                .unwrap_or_else(|| panic!("{path}: no {c}"));
            dir = e.dir.unwrap_or(u32::MAX);
        }
        e
    }

    fn read_all(l: &ImageLayer, e: &Entry, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = l.read(e, out.len() as u64, &mut buf).expect("read");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn every_format_reads_back_what_the_tar_holds() {
        let big = fixture::data(5 << 20, 7);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let t = tempfile::tempdir().expect("tmp");
            let (dir, cache) = (t.path().join("layout"), t.path().join("cache"));
            fixture::layout(&dir, "t", &items(&big), c);
            let l = open(&dir, &cache).expect("open");
            let hello = find(&l, "etc/hello");
            let hello2 = find(&l, "etc/hello2");
            assert_eq!((hello.ino, hello.nlink), (hello2.ino, 2), "{c:?}");
            assert_eq!(read_all(&l, &hello2, 4096), b"hello\n");
            assert_eq!(find(&l, "etc/link").target.as_deref(), Some(&b"hello"[..]));
            let x = find(&l, "etc/x");
            assert_eq!(x.xattrs, vec![(b"user.color".to_vec().into(), b"blue".to_vec().into())]);
            let b = find(&l, "data/big");
            assert_eq!(b.mode & 0o7777, 0o600);
            assert_eq!(read_all(&l, &b, 131_072), big, "{c:?}");
            // A read in the middle, not on a piece boundary, from a fresh layer handle.
            let l2 = open(&dir, &cache).expect("open again (catalog cached)");
            let mut buf = vec![0u8; 3000];
            let n = l2.read(&b, 3_500_123, &mut buf).expect("read");
            assert_eq!(&buf[..n], &big[3_500_123..3_503_123]);
            assert!(find(&l, "usr/.wh.gone").size == 0);
        }
    }

    #[test]
    fn a_damaged_blob_is_refused_and_a_damaged_cache_never_serves_wrong_bytes() {
        let big = fixture::data(3 << 20, 9);
        let t = tempfile::tempdir().expect("tmp");
        let (dir, cache) = (t.path().join("layout"), t.path().join("cache"));
        fixture::layout(&dir, "t", &items(&big), Compression::Gzip);
        let img = layout::open(&dir, Some("t")).expect("image");
        let blob = layout::blob_path(&dir, &img.layers[0].digest).expect("blob");
        let good = std::fs::read(&blob).expect("read blob");
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        std::fs::write(&blob, &bad).expect("corrupt");
        let msg = open(&dir, &cache).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&blob.display().to_string()), "{msg}");
        std::fs::write(&blob, &good[..good.len() - 1]).expect("truncate");
        assert!(open(&dir, &cache).is_err());
        std::fs::write(&blob, &good).expect("restore");
        let l = open(&dir, &cache).expect("open");
        let b = find(&l, "data/big");
        assert_eq!(read_all(&l, &b, 1 << 20), big);
        // Every cached piece changed behind the daemon's back: still the right bytes.
        for f in walk(&cache.join("content")) {
            std::fs::write(&f, b"garbage").expect("damage");
        }
        let l = open(&dir, &cache).expect("open");
        assert_eq!(read_all(&l, &b, 1 << 20), big);
        // The cache removed while open: still the right bytes.
        std::fs::remove_dir_all(&cache).expect("rm cache");
        assert_eq!(read_all(&l, &b, 65536), big);
        // The blob changed after the catalog was made: an error, never other bytes.
        std::fs::remove_dir_all(&cache).ok();
        let l = open(&dir, &cache).expect("open");
        let mut swapped = good.clone();
        let at = swapped.len() - 1000;
        swapped[at] ^= 1;
        std::fs::write(&blob, &swapped).expect("change blob");
        let mut buf = vec![0u8; 1 << 20];
        let r = (0..3).map(|k| l.read(&b, k << 20, &mut buf)).find(|r| r.is_err());
        assert!(r.is_some(), "a read of the changed blob must fail");
    }

    fn walk(d: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
