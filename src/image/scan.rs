//! The one pass over a layer blob that makes its catalog: decompress, read the tar, hash.
//!
//! The same pass checks the blob against its digest and the tar against its DiffID (a blob
//! that does not match is refused before anything of it is shown), leaves restart points in
//! the decompressed stream (`gzip.rs`, `zstd.rs`), and hashes every file's data in
//! [`CHUNK`]-sized pieces, so every byte a read serves later can be checked first.

use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::catalog::{Builder, CHUNK, Catalog, Data, Entry, S_IFDIR, S_IFLNK, S_IFREG};
use super::gzip;
use super::layout::{Compression, LayerDesc};
use super::source::Blob;
use super::tee::Tee;
use super::zstd::{self as zst, Frame};

/// What a scan produced.
pub struct Scanned {
    pub catalog: Catalog,
    /// Length of the decompressed stream (the tar).
    pub stream_len: u64,
    /// gzip restart points with their windows.
    pub gzip_points: Vec<(gzip::Point, Vec<u8>)>,
    /// zstd frame starts.
    pub zstd_frames: Vec<Frame>,
}

/// Progress of a scan.
pub trait Progress: Sync {
    /// Layer `n` of `count` (`digest`) is being opened (scanned if it has no catalog yet).
    fn layer(&self, _n: usize, _count: usize, _digest: &str) {}
    /// The blob `digest` (`what` it is: `config`, `layer 2/5`) is being fetched from a registry
    /// (its bytes follow).
    fn fetch(&self, _what: &str, _digest: &str) {}
    /// `n` more bytes of the blob read (or fetched).
    fn blob_bytes(&self, _n: u64) {}
    /// One more tar entry.
    fn entry(&self) {}
}

/// The decompressor the blob's media type calls for.
enum Decompress<R: Read> {
    None(R),
    Gzip(Box<gzip::Scanner<R>>),
    Zstd(zst::Scanner<R>),
}

impl<R: Read> Read for Decompress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decompress::None(r) => r.read(buf),
            Decompress::Gzip(r) => r.read(buf),
            Decompress::Zstd(r) => r.read(buf),
        }
    }
}

/// Catalogs the layer `desc` from its table of contents, without reading its stream (the
/// table and every piece it points to are checked against their digests instead).
pub fn from_toc(blob: &Blob, desc: &LayerDesc) -> Result<Scanned, ImageError> {
    let (toc, data_end) = super::toc::read(blob, desc)?;
    Ok(Scanned {
        catalog: super::toc::catalog(&toc, blob.path(), data_end)?,
        stream_len: 0,
        gzip_points: Vec::new(),
        zstd_frames: Vec::new(),
    })
}

/// Scans the layer `desc` whose blob is at `blob`.
pub fn scan(blob: &Path, desc: &LayerDesc, progress: &dyn Progress) -> Result<Scanned, ImageError> {
    let f = std::fs::File::open(blob).map_err(|e| ImageError::io(blob, e))?;
    scan_from(f, blob, desc, progress)
}

/// [`scan`] of the blob's bytes as `r` gives them (a download on its way to the cache, which
/// is then fetched and indexed in one pass); `blob` names it in messages. `r` is read to its
/// end.
pub fn scan_from(r: impl Read, blob: &Path, desc: &LayerDesc, progress: &dyn Progress) -> Result<Scanned, ImageError> {
    let raw = ProgressReader { r, progress };
    std::thread::scope(|s| {
        let raw = Tee::new(s, std::io::BufReader::with_capacity(1 << 17, raw));
        let dec = match desc.compression {
            Compression::None => Decompress::None(raw),
            Compression::Gzip => Decompress::Gzip(Box::new(gzip::Scanner::new(raw))),
            Compression::Zstd => Decompress::Zstd(
                zst::Scanner::new(raw, Frame { input: 0, out: 0 }).map_err(|e| ImageError::io(blob, e))?,
            ),
        };
        let mut tar_stream = Tee::new(s, dec);
        let catalog = read_tar(&mut tar_stream, progress).map_err(|e| corrupt_or_io(blob, e))?;
        // The DiffID covers the whole stream, past the tar's end blocks.
        std::io::copy(&mut tar_stream, &mut std::io::sink()).map_err(|e| corrupt_or_io(blob, e))?;
        let (dec, stream_len, diff_id) = tar_stream.finish().map_err(|e| ImageError::io(blob, e))?;
        let (mut raw, gzip_points, zstd_frames) = match dec {
            Decompress::None(r) => (r, Vec::new(), Vec::new()),
            Decompress::Gzip(g) => {
                let (r, points) = g.into_parts();
                (r, points, Vec::new())
            }
            Decompress::Zstd(z) => {
                let (r, frames) = z.into_parts();
                (r, Vec::new(), frames)
            }
        };
        std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| ImageError::io(blob, e))?;
        let (_, _, digest) = raw.finish().map_err(|e| ImageError::io(blob, e))?;
        if digest != desc.digest {
            return Err(ImageError::corrupt(
                blob,
                format!("its digest is {digest}, the manifest says {}", desc.digest),
            ));
        }
        if diff_id != desc.diff_id {
            return Err(ImageError::corrupt(
                blob,
                format!("its DiffID is {diff_id}, the image config says {}", desc.diff_id),
            ));
        }
        Ok(Scanned {
            catalog,
            stream_len,
            gzip_points,
            zstd_frames,
        })
    })
}

/// A read error of the decompressed stream is corruption (or truncation) of the blob, unless
/// the filesystem failed.
fn corrupt_or_io(blob: &Path, e: std::io::Error) -> ImageError {
    match e.kind() {
        std::io::ErrorKind::Other | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => {
            ImageError::corrupt(blob, e.to_string())
        }
        _ if e.raw_os_error().is_none() => ImageError::corrupt(blob, e.to_string()),
        _ => ImageError::io(blob, e),
    }
}

struct ProgressReader<'a, R> {
    r: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(buf)?;
        self.progress.blob_bytes(k as u64);
        Ok(k)
    }
}

/// Reads every entry of the tar stream `r` into a catalog.
fn read_tar(r: &mut impl Read, progress: &dyn Progress) -> std::io::Result<Catalog> {
    let mut builder = Builder::default();
    // One buffer for the whole layer: a fresh 1 MiB per file (most are a few KiB) cost page
    // faults and the allocator's returns of memory to the kernel, a tenth of a scan.
    let mut buf = vec![0u8; CHUNK as usize];
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries()? {
        let mut entry = entry?;
        progress.entry();
        let path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Link {
            let target = entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default();
            builder.link(&path, &target).map_err(std::io::Error::other)?;
            continue;
        }
        let Some(mut e) = attributes(&mut entry)? else { continue };
        if e.mode & 0o170000 == S_IFREG {
            let offset = entry.raw_file_position();
            let header = entry.raw_header_position();
            let chunks = hash_chunks(&mut entry, &mut buf)?;
            e.data = match (kind, e.size) {
                (_, 0) => Data::None,
                (tar::EntryType::GNUSparse, _) => Data::Extract { header, chunks },
                _ => Data::Stream { offset, chunks },
            };
        }
        builder.add(&path, e).map_err(std::io::Error::other)?;
    }
    Ok(builder.finish())
}

/// The sha256 of each [`CHUNK`] of an entry's data.
fn hash_chunks(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let k = r.read(&mut buf[filled..])?;
            if k == 0 {
                break;
            }
            filled += k;
        }
        if filled == 0 {
            return Ok(out);
        }
        out.push(Sha256::digest(&buf[..filled]).into());
        if filled < buf.len() {
            return Ok(out);
        }
    }
}

/// The attributes an extractor gives the object of a tar entry; none for entry types that make
/// nothing (global headers, ...).
pub(crate) fn attributes<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<Option<Entry>> {
    let h = entry.header();
    let fmt = match h.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => S_IFREG,
        tar::EntryType::Directory => S_IFDIR,
        tar::EntryType::Symlink => S_IFLNK,
        tar::EntryType::Char => 0o020000,
        tar::EntryType::Block => 0o060000,
        tar::EntryType::Fifo => 0o010000,
        _ => return Ok(None),
    };
    let mut e = Entry {
        name: Box::default(),
        ino: 0,
        mode: fmt | (h.mode()? & 0o7777),
        uid: h.uid()? as u32,
        gid: h.gid()? as u32,
        size: if fmt == S_IFREG { entry.size() } else { 0 },
        mtime: (h.mtime()? as i64, 0),
        rdev: 0,
        nlink: 1,
        target: None,
        xattrs: Vec::new(),
        dir: None,
        data: Data::None,
    };
    if fmt == 0o020000 || fmt == 0o060000 {
        let (maj, min) = (h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0));
        e.rdev = rustix::fs::makedev(maj, min);
    }
    if fmt == S_IFLNK {
        e.target = entry.link_name_bytes().map(|c| c.into_owned().into_boxed_slice());
        e.size = e.target.as_ref().map_or(0, |t| t.len() as u64);
    }
    apply_pax(entry, &mut e)?;
    Ok(Some(e))
}

/// PAX records that override the header (uid, gid, fractional mtime) and carry xattrs.
fn apply_pax<R: Read>(entry: &mut tar::Entry<'_, R>, e: &mut Entry) -> std::io::Result<()> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(());
    };
    for x in exts {
        let x = x?;
        let key = x.key_bytes();
        let val = x.value_bytes();
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            e.xattrs.push((name.into(), val.into()));
            continue;
        }
        let num = || std::str::from_utf8(val).ok().map(str::trim);
        match key {
            b"uid" => e.uid = num().and_then(|v| v.parse().ok()).unwrap_or(e.uid),
            b"gid" => e.gid = num().and_then(|v| v.parse().ok()).unwrap_or(e.gid),
            b"mtime" => {
                if let Some(t) = num().and_then(parse_pax_time) {
                    e.mtime = t;
                }
            }
            _ => {}
        }
    }
    e.xattrs.sort();
    Ok(())
}

/// `1700000000.123456789` (or `-1.5`) → (seconds, nanoseconds).
pub(crate) fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let s: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: u32 = digits.parse().ok()?;
    if sec.starts_with('-') && ns > 0 {
        return Some((s - 1, 1_000_000_000 - ns));
    }
    Some((s, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_their_fraction() {
        assert_eq!(parse_pax_time("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
