//! A layer's catalog on disk, in the cache directory, keyed by the layer's digest and shared
//! by every mount and image that uses the layer.
//!
//! One file: the directories (each a bincode record), the gzip windows, then the layer's meta
//! record (where each directory and window is, their sha256, the restart points, the root) and a
//! trailer that locates the meta record and gives its sha256. Opening reads and checks only the
//! meta record; a directory or window is read when it is needed and checked against the digest
//! in the meta record, so a cache file changed or cut short behind the daemon's back is noticed
//! before anything of it is used. Files are written under a temporary name and renamed into
//! place, so a crash leaves the old file or none.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::catalog::Entry;
use super::gzip::Point;
use super::layout::Compression;
use super::scan::Scanned;
use super::zstd::Frame;

const MAGIC: &[u8; 8] = b"UFSCAT01";
/// Bumped whenever the format of a catalog file changes: older files are then rebuilt.
const VERSION: u32 = 1;

/// Where a record is in the file, and its sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
    pub sha256: [u8; 32],
}

/// What is kept in memory of an open catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub digest: String,
    pub diff_id: String,
    pub compression: Compression,
    pub stream_len: u64,
    pub root: Entry,
    pub dirs: Vec<Span>,
    pub objects: u64,
    pub gzip_points: Vec<Point>,
    pub windows: Vec<Span>,
    pub zstd_frames: Vec<Frame>,
}

fn encode<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(std::io::Error::other)
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

/// The catalog file of the layer `digest` in the cache directory `cache`.
pub fn path_of(cache: &Path, digest: &str) -> PathBuf {
    cache.join("layers").join(digest.replace(':', "-"))
}

/// Writes the scan of the layer (`digest`, `diff_id`, `compression`) to `path`.
pub fn write(path: &Path, digest: &str, diff_id: &str, compression: Compression, s: &Scanned) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp.{}.{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let r = write_to(&tmp, digest, diff_id, compression, s).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn write_to(tmp: &Path, digest: &str, diff_id: &str, compression: Compression, s: &Scanned) -> std::io::Result<()> {
    let f = std::fs::File::create(tmp)?;
    let mut w = std::io::BufWriter::new(f);
    let mut pos = 0u64;
    let mut put = |w: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8]| -> std::io::Result<Span> {
        w.write_all(bytes)?;
        let span = Span {
            offset: pos,
            len: u32::try_from(bytes.len()).map_err(std::io::Error::other)?,
            sha256: Sha256::digest(bytes).into(),
        };
        pos += bytes.len() as u64;
        Ok(span)
    };
    let mut dirs = Vec::with_capacity(s.catalog.dirs.len());
    for d in &s.catalog.dirs {
        dirs.push(put(&mut w, &encode(d)?)?);
    }
    let mut windows = Vec::new();
    let mut points = Vec::with_capacity(s.gzip_points.len());
    for (p, win) in &s.gzip_points {
        if p.window.is_some() {
            windows.push(put(&mut w, win)?);
        }
        points.push(p.clone());
    }
    let meta = Meta {
        version: VERSION,
        digest: digest.to_string(),
        diff_id: diff_id.to_string(),
        compression,
        stream_len: s.stream_len,
        root: s.catalog.root.clone(),
        dirs,
        objects: s.catalog.objects,
        gzip_points: points,
        windows,
        zstd_frames: s.zstd_frames.clone(),
    };
    let m = encode(&meta)?;
    let mspan = put(&mut w, &m)?;
    w.write_all(&mspan.offset.to_le_bytes())?;
    w.write_all(&u64::from(mspan.len).to_le_bytes())?;
    w.write_all(&mspan.sha256)?;
    w.write_all(MAGIC)?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
}

/// An open catalog file.
pub struct Stored {
    pub file: std::fs::File,
    pub meta: Meta,
    pub path: PathBuf,
}

/// Why a catalog file cannot be used (it is then rebuilt, or reads fail).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("damaged: {0}")]
    Damaged(&'static str),
}

impl Stored {
    /// Opens the catalog at `path` and checks its meta record; `Ok(None)` when there is none.
    pub fn open(path: &Path) -> Result<Option<Stored>, StoreError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        if len < 56 {
            return Err(StoreError::Damaged("too short"));
        }
        let mut t = [0u8; 56];
        file.read_exact_at(&mut t, len - 56)?;
        if &t[48..] != MAGIC {
            return Err(StoreError::Damaged("not a catalog of this version"));
        }
        let off = u64::from_le_bytes(t[0..8].try_into().unwrap_or_default());
        let mlen = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
        if off.checked_add(mlen).is_none_or(|end| end > len - 56) || mlen > 1 << 32 {
            return Err(StoreError::Damaged("trailer points outside the file"));
        }
        let mut m = vec![0u8; mlen as usize];
        file.read_exact_at(&mut m, off)?;
        if Sha256::digest(&m)[..] != t[16..48] {
            return Err(StoreError::Damaged("meta record checksum"));
        }
        let meta: Meta = decode(&m).ok_or(StoreError::Damaged("meta record"))?;
        if meta.version != VERSION {
            return Err(StoreError::Damaged("older catalog version"));
        }
        Ok(Some(Stored {
            file,
            meta,
            path: path.to_path_buf(),
        }))
    }

    /// Marks the catalog used now (its mtime: what `unionfs cache prune` goes by).
    pub fn touch(&self) {
        let _ = self.file.set_modified(std::time::SystemTime::now());
    }

    /// Reads the record at `span`, checked against its digest.
    pub fn record(&self, span: &Span) -> Result<Vec<u8>, StoreError> {
        let mut b = vec![0u8; span.len as usize];
        self.file.read_exact_at(&mut b, span.offset)?;
        if Sha256::digest(&b)[..] != span.sha256 {
            return Err(StoreError::Damaged("record checksum"));
        }
        Ok(b)
    }

    /// Directory `id`, sorted by name.
    pub fn dir(&self, id: u32) -> Result<Vec<Entry>, StoreError> {
        let span = self
            .meta
            .dirs
            .get(id as usize)
            .ok_or(StoreError::Damaged("no such directory"))?;
        decode(&self.record(span)?).ok_or(StoreError::Damaged("directory record"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::catalog::{Builder, Data, S_IFDIR, S_IFREG};

    fn entry(mode: u32) -> Entry {
        Entry {
            name: Box::default(),
            ino: 0,
            mode,
            uid: 0,
            gid: 0,
            size: 3,
            mtime: (1, 2),
            rdev: 0,
            nlink: 1,
            target: None,
            xattrs: vec![(b"user.a".to_vec().into(), b"v".to_vec().into())],
            dir: None,
            data: Data::Stream {
                offset: 512,
                chunks: vec![[7; 32]],
            },
        }
    }

    fn scanned() -> Scanned {
        let mut b = Builder::default();
        b.add(b"d", entry(S_IFDIR | 0o755)).expect("dir");
        b.add(b"d/f", entry(S_IFREG | 0o644)).expect("file");
        Scanned {
            catalog: b.finish(),
            stream_len: 2048,
            gzip_points: vec![(
                Point {
                    out: 0,
                    input: 0,
                    bits: Some((1, 3)),
                    window: Some(0),
                },
                vec![9u8; 100],
            )],
            zstd_frames: Vec::new(),
        }
    }

    #[test]
    fn a_catalog_round_trips_and_damage_is_noticed() {
        let t = tempfile::tempdir().expect("tmp");
        let p = path_of(t.path(), "sha256:abc");
        let s = scanned();
        write(&p, "sha256:abc", "sha256:def", Compression::Gzip, &s).expect("write");
        let st = Stored::open(&p).expect("open").expect("there");
        assert_eq!(st.meta.diff_id, "sha256:def");
        let d = st.meta.root.dir.expect("root dir");
        assert_eq!(st.dir(d).expect("root"), s.catalog.dirs[d as usize]);
        assert_eq!(st.record(&st.meta.windows[0]).expect("window"), vec![9u8; 100]);
        // A byte changed in a directory record: that record is refused, the rest still works.
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[st.meta.dirs[1].offset as usize] ^= 1;
        std::fs::write(&p, &bytes).expect("write");
        let st = Stored::open(&p).expect("open").expect("there");
        assert!(matches!(st.dir(1), Err(StoreError::Damaged(_))));
        assert!(st.dir(0).is_ok());
        // Cut short: refused at open.
        std::fs::write(&p, &bytes[..bytes.len() - 10]).expect("truncate");
        assert!(Stored::open(&p).is_err());
        assert!(Stored::open(&t.path().join("none")).expect("absent is fine").is_none());
    }
}
