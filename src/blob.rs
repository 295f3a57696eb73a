//! Blobs as OCI content-addresses them: written under a temporary name and renamed into place
//! (a reader never sees half a file under the name it asked for), named by their sha256
//! digest, and compressed as a layer's media type says. `unionfs commit` writes its layer
//! through [`LayerWriter`] into a [`TempFile`]; `unionfs import` reads archives through
//! [`Compression::decoder`]; image writing (`image::write`) stores blobs through the same.
//!
//! Everything here fails with plain `io::Error`s (or [`CreateError`]): the caller knows what the
//! file is called for the user, and which side of a copy failed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// How a blob (a layer's tar) is compressed. (Also stored in image catalogs, `image::store`:
/// the variants keep their order.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The compression a stream's first bytes (up to 4) say: gzip's and zstd's magic numbers,
    /// anything else is taken as uncompressed.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// What `r` holds, decompressed. Gzip streams of several members (as `pigz` and
    /// concatenated files make) are read to the end.
    pub fn decoder<'a, R: BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::Decoder::with_buffer(r)?),
        })
    }
}

/// `sha256:HEX`, the form OCI names content by.
fn digest_string(d: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 2 * d.len());
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `sha256:HEX` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    digest_string(&Sha256::digest(bytes))
}

/// `sha256:HEX` of what `h` was fed.
pub fn digest_of(h: Sha256) -> String {
    digest_string(&h.finalize())
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    sha: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            sha: Sha256::new(),
            n: 0,
        }
    }

    /// `sha256:HEX` of what was written so far.
    pub fn digest(&self) -> String {
        digest_string(&self.sha.clone().finalize())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// A compressing writer; [`Encoder::finish`] writes the stream's end.
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    /// Same input, same bytes out: blobs are named by their digest, so a layer committed twice
    /// must be one blob.
    pub fn new(c: Compression, w: W) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(w),
            // A fixed header (no name, mtime 0): the same tar gives the same blob.
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(w, flate2::Compression::default()),
            ),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(w, 3)?),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// What a layer blob is called by: the digest of its tar (the image config's DiffID) and of
/// the blob as written (the manifest's digest), and their sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    /// `sha256:HEX` of the blob as written (equal to `diff_id` without compression).
    pub digest: String,
    /// Bytes of the blob as written.
    pub size: u64,
}

/// A layer blob being written: a tar goes in, compressed as asked on its way to `W`, both ends
/// hashed.
pub struct LayerWriter<W: Write> {
    tar: Hashing<Encoder<Hashing<W>>>,
}

impl<W: Write> Write for LayerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tar.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tar.flush()
    }
}

impl<W: Write> LayerWriter<W> {
    pub fn new(c: Compression, out: W) -> io::Result<LayerWriter<W>> {
        Ok(LayerWriter {
            tar: Hashing::new(Encoder::new(c, Hashing::new(out))?),
        })
    }

    /// Ends the compressed stream and flushes `out`; the digests, and `out`.
    pub fn finish(self) -> io::Result<(LayerDigests, W)> {
        let diff_id = self.tar.digest();
        let tar_size = self.tar.len();
        let mut blob = self.tar.into_inner().finish()?;
        blob.flush()?;
        let digests = LayerDigests {
            diff_id,
            tar_size,
            digest: blob.digest(),
            size: blob.len(),
        };
        Ok((digests, blob.into_inner()))
    }
}

/// Why a [`TempFile`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("not a file name")]
    NotAFileName,
    #[error("is a directory")]
    IsADirectory,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A file being written under a temporary name beside its destination (so the rename stays on
/// one filesystem); removed unless persisted, so an error or an interruption leaves nothing.
pub struct TempFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `.NAME.unionfs-tmp.PID` beside `dest` (refused if it exists: another writer).
    pub fn create(dest: &Path) -> Result<TempFile, CreateError> {
        let name = dest.file_name().ok_or(CreateError::NotAFileName)?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if dest.is_dir() {
            return Err(CreateError::IsADirectory);
        }
        let mut tn = OsString::from(".");
        tn.push(name);
        tn.push(format!(".unionfs-tmp.{}", std::process::id()));
        let tmp = dir.join(tn);
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        Ok(TempFile {
            tmp,
            dest: dest.to_path_buf(),
            file: Some(file),
        })
    }

    /// The file, to write to.
    pub fn file(&self) -> io::Result<File> {
        match &self.file {
            Some(f) => f.try_clone(),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Syncs the data and renames the file into place.
    pub fn persist(self) -> io::Result<()> {
        let dest = self.dest.clone();
        self.persist_as(&dest)
    }

    /// Syncs the data and renames the file to `dest` (on the same filesystem: a blob's name is
    /// its digest, known only once it is written).
    pub fn persist_as(mut self, dest: &Path) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        std::fs::rename(&self.tmp, dest)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_blob_is_named_by_both_digests_and_reads_back() {
        let tar = b"not really a tar, but bytes all the same".repeat(100);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut w = LayerWriter::new(c, Vec::new()).expect("writer");
            w.write_all(&tar).expect("write");
            let (d, blob) = w.finish().expect("finish");
            assert_eq!(d.diff_id, digest(&tar), "{c:?}");
            assert_eq!(d.tar_size, tar.len() as u64, "{c:?}");
            assert_eq!((d.digest.clone(), d.size), (digest(&blob), blob.len() as u64), "{c:?}");
            assert_eq!(d.digest == d.diff_id, c == Compression::None, "{c:?}");
            assert_eq!(Compression::sniff(&blob[..4]), c, "{c:?}");
            let mut back = Vec::new();
            c.decoder(&blob[..])
                .expect("decoder")
                .read_to_end(&mut back)
                .expect("read");
            assert_eq!(back, tar, "{c:?}");
        }
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_temp_file_is_there_only_once_persisted() {
        let t = tempfile::tempdir().expect("tmp");
        let dest = t.path().join("out");
        let f = TempFile::create(&dest).expect("create");
        f.file().expect("file").write_all(b"x").expect("write");
        drop(f);
        assert_eq!(
            std::fs::read_dir(t.path()).expect("list").count(),
            0,
            "dropped: nothing left"
        );
        let f = TempFile::create(&dest).expect("create");
        f.file().expect("file").write_all(b"x").expect("write");
        f.persist().expect("persist");
        assert_eq!(std::fs::read(&dest).expect("read"), b"x");
        assert_eq!(std::fs::read_dir(t.path()).expect("list").count(), 1);
        assert!(matches!(TempFile::create(t.path()), Err(CreateError::IsADirectory)));
        assert!(matches!(
            TempFile::create(Path::new("/")),
            Err(CreateError::NotAFileName)
        ));
    }
}
