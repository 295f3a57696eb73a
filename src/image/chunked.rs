//! Writing zstd:chunked layers (containers/storage `pkg/chunked`): a tar stream in, a blob out that
//! any zstd reader takes as a plain `tar+zstd` layer, and that a lazy reader (ours in `toc.rs`;
//! Podman's partial pulls) reads file by file from its table of contents.
//!
//! The blob is a concatenation of zstd frames. A frame starts at the top of the blob, at the first
//! byte of every non-empty regular file's data, at every [`Options::chunk_size`] bytes of a big
//! file's data, and right after a file's data ends; tar headers (and the padding of the data before
//! them) between two files' data share a frame (cut every 4 MiB). Decompressed, the frames are
//! exactly the input tar (its end-of-archive blocks and any bytes after them included): its sha256
//! is the layer's DiffID.
//!
//! Three skippable frames follow, which zstd decoders pass over: the table (zstd-compressed JSON,
//! `{"version":1,"entries":[…],"tarSplitDigest":…}`), the tar-split (vbatts/tar-split's JSON lines,
//! zstd-compressed: the raw bytes of the tar outside the files' data, with each file's name, size
//! and CRC-64), and a 64-byte footer (both positions, the table's type 1, the magic
//! [`FOOTER_MAGIC`]). Readers find the table through the layer annotations [`MANIFEST_POSITION`]
//! and [`MANIFEST_CHECKSUM`] (sha256 of the compressed table as stored, which is how the table is
//! trusted; also under their pre-1.44 names, which Podman 4 reads), and the tar-split through
//! [`TARSPLIT_POSITION`] and the table's `tarSplitDigest`. Current containers/storage refuses a
//! partial pull without a tar-split (it rebuilds the tar, and so the DiffID, from it), and checks
//! that the tar-split's headers and the table's entries agree field for field: the table's metadata
//! is therefore what Go's `archive/tar` reads from each header (the raw mode field, PAX overrides
//! of owner and times, `SCHILY.xattr.*` records), not our normalised view of it.
//!
//! Table entries are those containers/storage writes: a file's `reg` entry carries its `digest`
//! (sha256 of its data), `offset` and `endOffset` (where its frames start and end); a file of
//! several chunks has `chunk` entries after it, and then every piece (the `reg` entry too) carries
//! `offset`, `chunkSize` and `chunkDigest`. We cut chunks at fixed sizes, not at a rolling
//! checksum's boundaries: readers take any cut.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::rc::Rc;

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::blob::{Hashing, digest_of};

use super::catalog;
use super::pipe::Tap;
use super::toc::{CHUNKED_CHECKSUM, CHUNKED_POSITION};

/// The layer annotation with the sha256 of the compressed table as stored.
pub const MANIFEST_CHECKSUM: &str = CHUNKED_CHECKSUM[0];
/// The layer annotation `OFFSET:LENGTH:UNCOMPRESSED_LENGTH:TYPE` of the compressed table.
pub const MANIFEST_POSITION: &str = CHUNKED_POSITION[0];
/// [`MANIFEST_CHECKSUM`] as containers/storage named it before 1.44.
pub const LEGACY_MANIFEST_CHECKSUM: &str = CHUNKED_CHECKSUM[1];
/// [`MANIFEST_POSITION`] as containers/storage named it before 1.44.
pub const LEGACY_MANIFEST_POSITION: &str = CHUNKED_POSITION[1];
/// The layer annotation `OFFSET:LENGTH:UNCOMPRESSED_LENGTH` of the compressed tar-split.
pub const TARSPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
/// The last 8 bytes of the blob.
pub const FOOTER_MAGIC: [u8; 8] = *b"GNUlInUx";
/// Bytes of the footer's data (its skippable frame adds 8).
pub const FOOTER_SIZE: usize = 64;
/// The table's type in its position and the footer: a CRFS-style JSON table.
const MANIFEST_TYPE_CRFS: u64 = 1;
/// The first 4 bytes of a zstd skippable frame (RFC 8878 3.1.2), little-endian 0x184D2A50.
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The largest raw segment of the tar-split after the archive's end (as tar-split cuts them).
const TRAILER_SEGMENT: usize = 1 << 20;

/// How to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest piece of a file's data in one zstd frame.
    pub chunk_size: u64,
    /// zstd level.
    pub level: i32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk_size: 4 << 20,
            level: ::zstd::DEFAULT_COMPRESSION_LEVEL,
        }
    }
}

/// Where a skippable frame's data lies in the blob, and its size once decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: u64,
    pub len: u64,
    pub uncompressed: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:…` of the blob.
    pub digest: String,
    /// Bytes of the blob.
    pub size: u64,
    /// `sha256:…` of the uncompressed stream, the input tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Bytes of the uncompressed stream.
    pub uncompressed_size: u64,
    /// `sha256:…` of the compressed table as stored (the annotation [`MANIFEST_CHECKSUM`]).
    pub toc_digest: String,
    pub toc: Position,
    /// `sha256:…` of the compressed tar-split as stored (the table's `tarSplitDigest`).
    pub tar_split_digest: String,
    pub tar_split: Position,
}

impl Written {
    /// The annotations the layer's descriptor carries: the table's checksum and position
    /// under the current names and under the names containers/storage used before 1.44
    /// (Podman 4 reads only those: without them it pulls the layer whole), and the tar-split's
    /// position.
    pub fn annotations(&self) -> [(&'static str, String); 5] {
        let t = &self.toc;
        let s = &self.tar_split;
        let position = format!("{}:{}:{}:{MANIFEST_TYPE_CRFS}", t.offset, t.len, t.uncompressed);
        [
            (MANIFEST_CHECKSUM, self.toc_digest.clone()),
            (MANIFEST_POSITION, position.clone()),
            (TARSPLIT_POSITION, format!("{}:{}:{}", s.offset, s.len, s.uncompressed)),
            (LEGACY_MANIFEST_CHECKSUM, self.toc_digest.clone()),
            (LEGACY_MANIFEST_POSITION, position),
        ]
    }
}

/// A table entry with containers/storage's names, in its order.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u64,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    modtime: Option<String>,
    #[serde(rename = "accesstime", skip_serializing_if = "Option::is_none")]
    access_time: Option<String>,
    #[serde(rename = "changetime", skip_serializing_if = "Option::is_none")]
    change_time: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    dev_major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dev_minor: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    end_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutToc {
    version: u32,
    entries: Vec<OutEntry>,
    tar_split_digest: String,
}

/// A tar-split record: `type` 1 is a file (its name, size, and the CRC-64 of its data as
/// `payload`), 2 a segment of raw tar bytes (`payload`); positions count from 0.
#[derive(Serialize)]
struct SplitEntry<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    payload: Option<String>,
    position: u64,
}

/// The tar-split, compressed as it is made.
struct TarSplit {
    z: ::zstd::stream::write::Encoder<'static, Vec<u8>>,
    position: u64,
    uncompressed: u64,
    /// Names of the files so far, cleaned: tar-split refuses a name given twice.
    seen: HashSet<Vec<u8>>,
}

impl TarSplit {
    fn record(&mut self, e: &SplitEntry<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.z.write_all(&line)?;
        self.uncompressed += line.len() as u64;
        self.position += 1;
        Ok(())
    }

    fn segment(&mut self, raw: &[u8]) -> std::io::Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        let payload = base64::engine::general_purpose::STANDARD.encode(raw);
        self.record(&SplitEntry {
            kind: 2,
            name: "",
            size: 0,
            payload: Some(payload),
            position: self.position,
        })
    }

    fn file(&mut self, name: &str, size: u64, crc: Option<u64>) -> std::io::Result<()> {
        let clean = catalog::normalise(name.as_bytes()).unwrap_or_else(|| name.as_bytes().to_vec());
        if !self.seen.insert(clean) {
            return Err(invalid(format!(
                "zstd:chunked: {name} is in the layer twice (tar-split refuses that)"
            )));
        }
        let payload = crc.map(|c| base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes()));
        self.record(&SplitEntry {
            kind: 1,
            name,
            size,
            payload,
            position: self.position,
        })
    }
}

/// CRC-64 with the ISO polynomial, as Go's `hash/crc64` computes it (tar-split's file check).
fn crc64_iso(crc: u64, data: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u64;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xD800_0000_0000_0000
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = table[((c as u8) ^ b) as usize] ^ (c >> 8);
    }
    !c
}

/// Stream bytes outside files' data (headers, padding) gathered into one frame at most.
const MAX_GATHERED: usize = 4 << 20;

/// The blob being written. Each frame is compressed in one go, its size known: zstd then
/// sizes its tables to the input, where a streaming frame per file would clear tables made
/// for megabytes (ten times slower on a tree of small files).
struct Blob<W: Write> {
    out: Hashing<W>,
    z: ::zstd::bulk::Compressor<'static>,
    /// Stream bytes for the next frame (headers and padding between files' data).
    gathered: Vec<u8>,
    diff: Sha256,
    ulen: u64,
}

impl<W: Write> Blob<W> {
    fn new(out: W, level: i32) -> std::io::Result<Blob<W>> {
        let mut z = ::zstd::bulk::Compressor::new(level)?;
        z.set_parameter(::zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        Ok(Blob {
            out: Hashing::new(out),
            z,
            gathered: Vec::new(),
            diff: Sha256::new(),
            ulen: 0,
        })
    }

    /// Ends the frame being gathered (if any); the offset the next one will start at.
    fn end_frame(&mut self) -> std::io::Result<u64> {
        if !self.gathered.is_empty() {
            let f = self.z.compress(&self.gathered)?;
            self.out.write_all(&f)?;
            self.gathered.clear();
        }
        Ok(self.out.len())
    }

    /// Writes `b` of the uncompressed stream into the frame being gathered.
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.diff.update(b);
        self.ulen += b.len() as u64;
        self.gathered.extend_from_slice(b);
        if self.gathered.len() >= MAX_GATHERED {
            self.end_frame()?;
        }
        Ok(())
    }

    /// Writes `b` of the uncompressed stream as a frame of its own; where it starts.
    fn put_frame(&mut self, b: &[u8]) -> std::io::Result<u64> {
        let at = self.end_frame()?;
        self.diff.update(b);
        self.ulen += b.len() as u64;
        let f = self.z.compress(b)?;
        self.out.write_all(&f)?;
        Ok(at)
    }

    /// Writes `data` in a skippable frame of its own; the offset of `data` in the blob.
    fn skippable(&mut self, data: &[u8]) -> std::io::Result<u64> {
        let at = self.end_frame()? + 8;
        let len = u32::try_from(data.len())
            .map_err(|_| invalid("zstd:chunked: the table or tar-split exceeds 4 GiB".into()))?;
        self.out.write_all(&SKIPPABLE_MAGIC)?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(data)?;
        Ok(at)
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn utf8(b: &[u8], what: &str) -> std::io::Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        invalid(format!(
            "zstd:chunked: {what} {} is not UTF-8",
            String::from_utf8_lossy(b)
        ))
    })
}

/// Writes the tar stream `tar` as a zstd:chunked blob to `out`.
///
/// Refused (`InvalidData`): entry types a table cannot describe (GNU sparse files, PAX global
/// headers, ...), non-regular entries with data, names, link targets or xattr names that are
/// not UTF-8, and a name given twice (as tar-split refuses them).
pub fn write<R: Read, W: Write>(tar: R, out: W, opts: &Options) -> std::io::Result<Written> {
    let chunk_size = opts.chunk_size.max(1);
    let mut blob = Blob::new(out, opts.level)?;
    let mut split = TarSplit {
        z: ::zstd::stream::write::Encoder::new(Vec::new(), opts.level)?,
        position: 0,
        uncompressed: 0,
        seen: HashSet::new(),
    };
    let mut toc = Vec::new();

    let tap = Tap::new(tar);
    let (kept, recording) = (Rc::clone(&tap.kept), Rc::clone(&tap.recording));
    let mut ar = tar::Archive::new(tap);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let header_bytes = std::mem::take(&mut *kept.borrow_mut());
        blob.put(&header_bytes)?;
        split.segment(&header_bytes)?;
        let e = describe(&mut entry)?;
        if e.kind != "reg" {
            if e.size > 0 {
                return Err(invalid(format!(
                    "zstd:chunked: {}: a {} entry with data",
                    e.name, e.kind
                )));
            }
            split.file(&e.name, 0, None)?;
            toc.push(e);
            continue;
        }
        recording.set(false);
        let r = file_data(&mut entry, e, chunk_size, &mut blob, &mut split, &mut toc);
        recording.set(true);
        r?;
    }
    // The rest of the input: the last entry's padding, the end-of-archive blocks, anything
    // after them.
    let mut tap = ar.into_inner();
    let mut rest = std::mem::take(&mut *kept.borrow_mut());
    tap.recording.set(false);
    tap.read_to_end(&mut rest)?;
    blob.put(&rest)?;
    for piece in rest.chunks(TRAILER_SEGMENT) {
        split.segment(piece)?;
    }
    finish(blob, split, toc, opts.level)
}

/// The table and the tar-split, each in a skippable frame, then the footer.
fn finish<W: Write>(mut blob: Blob<W>, split: TarSplit, toc: Vec<OutEntry>, level: i32) -> std::io::Result<Written> {
    let split_len = split.uncompressed;
    let split_z = split.z.finish()?;
    let tar_split_digest = format!("sha256:{:x}", Sha256::digest(&split_z));
    let json = serde_json::to_vec(&OutToc {
        version: 1,
        entries: toc,
        tar_split_digest: tar_split_digest.clone(),
    })
    .map_err(std::io::Error::other)?;
    let toc_z = ::zstd::stream::encode_all(&json[..], level)?;
    let toc = Position {
        offset: blob.skippable(&toc_z)?,
        len: toc_z.len() as u64,
        uncompressed: json.len() as u64,
    };
    let tar_split = Position {
        offset: blob.skippable(&split_z)?,
        len: split_z.len() as u64,
        uncompressed: split_len,
    };
    blob.skippable(&footer(&toc, &tar_split))?;
    let mut out = blob.out;
    out.flush()?;
    Ok(Written {
        digest: out.digest(),
        size: out.len(),
        diff_id: digest_of(blob.diff),
        uncompressed_size: blob.ulen,
        toc_digest: format!("sha256:{:x}", Sha256::digest(&toc_z)),
        toc,
        tar_split_digest,
        tar_split,
    })
}

/// The footer's data: the table's and the tar-split's positions (little-endian), the magic.
pub fn footer(toc: &Position, tar_split: &Position) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    let words = [
        toc.offset,
        toc.len,
        toc.uncompressed,
        MANIFEST_TYPE_CRFS,
        tar_split.offset,
        tar_split.len,
        tar_split.uncompressed,
    ];
    for (i, w) in words.iter().enumerate() {
        f[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    f[56..].copy_from_slice(&FOOTER_MAGIC);
    f
}

/// A regular file's data (read from `entry`) in zstd frames of its own, `chunk_size` bytes
/// each; its table entry `e` and the `chunk` entries after it go to `toc`.
fn file_data<W: Write>(
    entry: &mut impl Read,
    mut e: OutEntry,
    chunk_size: u64,
    blob: &mut Blob<W>,
    split: &mut TarSplit,
    toc: &mut Vec<OutEntry>,
) -> std::io::Result<()> {
    let size = e.size;
    let name = e.name.clone();
    if size == 0 {
        split.file(&name, 0, None)?;
        toc.push(e);
        return Ok(());
    }
    let mut buf = Vec::new();
    let mut whole = Sha256::new();
    let mut crc = 0u64;
    let mut pieces: Vec<OutEntry> = Vec::new();
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(chunk_size);
        buf.resize(n as usize, 0);
        entry.read_exact(&mut buf)?;
        whole.update(&buf);
        crc = crc64_iso(crc, &buf);
        let offset = blob.put_frame(&buf)?;
        pieces.push(OutEntry {
            kind: "chunk",
            name: name.clone(),
            offset,
            chunk_offset: done,
            chunk_size: n,
            chunk_digest: format!("sha256:{:x}", Sha256::digest(&buf)),
            ..OutEntry::default()
        });
        done += n;
    }
    e.end_offset = blob.end_frame()?;
    e.digest = digest_of(whole);
    split.file(&name, size, Some(crc))?;
    let mut pieces = pieces.into_iter();
    if let Some(first) = pieces.next() {
        e.offset = first.offset;
        if pieces.len() > 0 {
            e.chunk_size = first.chunk_size;
            e.chunk_digest = first.chunk_digest;
        }
    }
    toc.push(e);
    toc.extend(pieces);
    Ok(())
}

/// The table entry of one tar entry (without data offsets and digests), with what Go's
/// `archive/tar` reads from its header.
fn describe<R: Read>(entry: &mut tar::Entry<'_, R>) -> std::io::Result<OutEntry> {
    let path = entry.path_bytes().into_owned();
    let name = utf8(&path, "name")?;
    let h = entry.header();
    let flag = h.entry_type();
    let kind = match flag {
        tar::EntryType::Regular if flag.as_byte() == 0 && name.ends_with('/') => "dir",
        tar::EntryType::Regular => "reg",
        tar::EntryType::Link => "hardlink",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Char => "char",
        tar::EntryType::Block => "block",
        tar::EntryType::Directory => "dir",
        tar::EntryType::Fifo => "fifo",
        other => {
            return Err(invalid(format!(
                "zstd:chunked: {name}: unsupported tar entry type {other:?}"
            )));
        }
    };
    let mut e = OutEntry {
        kind,
        name,
        mode: h.mode()?.into(),
        size: entry.size(),
        uid: h.uid()?,
        gid: h.gid()?,
        // Go reads the device fields of every header; empty ones are 0.
        dev_major: h.device_major().ok().flatten().unwrap_or(0).into(),
        dev_minor: h.device_minor().ok().flatten().unwrap_or(0).into(),
        ..OutEntry::default()
    };
    let mut mtime = (h.mtime()? as i64, 0);
    let (mut atime, mut ctime) = (None, None);
    if let Some(g) = h.as_gnu() {
        if g.atime[0] != 0 {
            atime = Some((g.atime()? as i64, 0));
        }
        if g.ctime[0] != 0 {
            ctime = Some((g.ctime()? as i64, 0));
        }
    }
    if let Some(target) = entry.link_name_bytes() {
        e.link_name = utf8(&target, "link target")?;
    }
    if let Some(exts) = entry.pax_extensions()? {
        for x in exts {
            let x = x?;
            let key = x.key_bytes();
            let val = x.value_bytes();
            if let Some(k) = key.strip_prefix(b"SCHILY.xattr.") {
                e.xattrs.insert(
                    utf8(k, "xattr name")?,
                    base64::engine::general_purpose::STANDARD.encode(val),
                );
                continue;
            }
            let v = std::str::from_utf8(val).ok().map(str::trim);
            let time = || v.and_then(super::scan::parse_pax_time);
            match key {
                b"uid" => e.uid = v.and_then(|v| v.parse().ok()).unwrap_or(e.uid),
                b"gid" => e.gid = v.and_then(|v| v.parse().ok()).unwrap_or(e.gid),
                b"mtime" => mtime = time().unwrap_or(mtime),
                b"atime" => atime = time().or(atime),
                b"ctime" => ctime = time().or(ctime),
                _ => {}
            }
        }
    }
    let stamp = |(s, ns): (i64, u32)| super::write::rfc3339_ns(s, ns);
    e.modtime = Some(stamp(mtime));
    e.access_time = atime.map(stamp);
    e.change_time = ctime.map(stamp);
    Ok(e)
}

/// [`write`] for a producer that pushes its tar (as `unionfs commit` does): `produce` writes
/// the tar stream into the `Write` it is given, while a scoped thread turns it into the blob on
/// `out`. Returns what `produce` returned and what was written. An error of `produce` is the
/// result (the blob is then incomplete: discard it); if the writer refuses the tar first, its
/// error is.
pub fn write_with<W, T>(
    out: W,
    opts: &Options,
    produce: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
) -> std::io::Result<(T, Written)>
where
    W: Write + Send,
{
    super::pipe::write_with(out, |r, out| write(r, out, opts), produce)
}

#[cfg(test)]
mod tests;
