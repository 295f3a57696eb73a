//! Writing eStargz layers (stargz-snapshotter `docs/estargz.md`): a tar stream in, an eStargz
//! blob out, which any gzip reader takes as a plain `tar+gzip` layer and a lazy reader (ours in
//! `toc.rs`, stargz-snapshotter's) mounts from its table of contents.
//!
//! The blob is a concatenation of gzip members. A member starts at the top of the blob, at the
//! first byte of every non-empty regular file's data, at every [`Options::chunk_size`] bytes of
//! a big file's data (each piece a `chunk` entry of the table), at the table's tar entry, and at
//! the 51-byte footer (an empty member whose Extra field is `%016xSTARGZ` of the table's offset).
//! Tar headers (and the padding of the data before them) ride in whatever member is open.
//!
//! The input's bytes pass through unchanged (headers, PAX and GNU extension records, data): the
//! uncompressed stream is the input tar without its end-of-archive blocks, with the
//! `.no.prefetch.landmark` entry (one byte `0xf`; the spec requires one of the two landmarks,
//! and we prioritise no files) in front and the `stargz.index.json` entry and two zero blocks at
//! the end. Its sha256 is the layer's DiffID. The table lists every input entry (not itself),
//! with each file's `digest` and each piece's `chunkDigest` (sha256 of its bytes); its own
//! sha256 (of the JSON) goes into the layer annotation [`super::toc::ESTARGZ_TOC_DIGEST`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::rc::Rc;

use base64::Engine as _;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::blob::{Hashing, digest_of};

use super::catalog::{self, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::pipe::Tap;
use super::toc::ESTARGZ_TOC_NAME;

/// The landmark written when no file is prioritised.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The landmark that ends the prioritised files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The landmarks' one byte of content.
const LANDMARK_CONTENT: u8 = 0xf;
/// Size of the footer.
pub const FOOTER_SIZE: u64 = 51;
/// Annotation some tools add with the uncompressed size (optional).
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// How to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Largest piece of a file's data in one gzip member (stargz-snapshotter's default: 4 MiB).
    pub chunk_size: u64,
    /// gzip level.
    pub level: flate2::Compression,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            chunk_size: 4 << 20,
            level: flate2::Compression::default(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:…` of the blob.
    pub digest: String,
    /// Bytes of the blob.
    pub size: u64,
    /// `sha256:…` of the uncompressed stream (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Bytes of the uncompressed stream.
    pub uncompressed_size: u64,
    /// `sha256:…` of the table's JSON: the value of the layer annotation
    /// `containerd.io/snapshot/stargz/toc.digest`.
    pub toc_digest: String,
    /// Where the table's gzip member starts in the blob.
    pub toc_offset: u64,
}

impl Written {
    /// The annotations the layer's descriptor carries.
    pub fn annotations(&self) -> [(&'static str, String); 2] {
        [
            (super::toc::ESTARGZ_TOC_DIGEST, self.toc_digest.clone()),
            (UNCOMPRESSED_SIZE_ANNOTATION, self.uncompressed_size.to_string()),
        ]
    }
}

/// A table entry as stargz-snapshotter writes it (same names and order; `mode`, `uid` and `gid`
/// are required by the spec, so always written).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    modtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    user_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    group_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_major: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_minor: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Serialize)]
struct OutToc {
    version: u32,
    entries: Vec<OutEntry>,
}

/// The blob being written: the uncompressed stream goes into the open gzip member (one is
/// opened on the first byte after a member ends).
struct Blob<W: Write> {
    raw: Option<Hashing<W>>,
    gz: Option<GzEncoder<Hashing<W>>>,
    level: flate2::Compression,
    diff: Sha256,
    ulen: u64,
}

impl<W: Write> Blob<W> {
    /// Ends the open member (if any); the offset the next one will start at.
    fn end_member(&mut self) -> std::io::Result<u64> {
        if let Some(gz) = self.gz.take() {
            self.raw = Some(gz.finish()?);
        }
        self.raw
            .as_ref()
            .map(|r| r.len())
            .ok_or_else(|| std::io::Error::other("estargz: no output"))
    }

    /// Writes `b` of the uncompressed stream.
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        self.diff.update(b);
        self.ulen += b.len() as u64;
        if self.gz.is_none() {
            let raw = self
                .raw
                .take()
                .ok_or_else(|| std::io::Error::other("estargz: no output"))?;
            self.gz = Some(GzEncoder::new(raw, self.level));
        }
        match self.gz.as_mut() {
            Some(gz) => gz.write_all(b),
            None => Err(std::io::Error::other("estargz: no member open")),
        }
    }

    /// Writes `b` straight to the blob, outside any member (the footer).
    fn put_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.end_member()?;
        match self.raw.as_mut() {
            Some(r) => r.write_all(b),
            None => Err(std::io::Error::other("estargz: no output")),
        }
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn utf8(b: &[u8], what: &str) -> std::io::Result<String> {
    String::from_utf8(b.to_vec())
        .map_err(|_| invalid(format!("estargz: {what} {} is not UTF-8", String::from_utf8_lossy(b))))
}

/// Writes the tar stream `tar` as an eStargz blob to `out`.
///
/// Refused (`InvalidData`): entry types a table cannot describe (GNU sparse files, PAX global
/// headers, ...), names or xattr names that are not UTF-8, and entries at the root named
/// `stargz.index.json` or as a landmark (names the format reserves).
pub fn write<R: Read, W: Write>(tar: R, out: W, opts: &Options) -> std::io::Result<Written> {
    let chunk_size = opts.chunk_size.max(1);
    let mut blob = Blob {
        raw: Some(Hashing::new(out)),
        gz: None,
        level: opts.level,
        diff: Sha256::new(),
        ulen: 0,
    };
    let mut toc = Vec::new();
    landmark(&mut blob, &mut toc)?;

    let tap = Tap::new(tar);
    let (kept, recording) = (Rc::clone(&tap.kept), Rc::clone(&tap.recording));
    let mut ar = tar::Archive::new(tap);
    // Where the last entry (with its padding) ends in the input, and where what `kept` holds
    // starts.
    let (mut entry_end, mut kept_from) = (0u64, 0u64);
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut groups: HashMap<u64, String> = HashMap::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let header_bytes = std::mem::take(&mut *kept.borrow_mut());
        kept_from += header_bytes.len() as u64;
        blob.put(&header_bytes)?;
        let size = entry.size();
        entry_end = entry.raw_file_position() + size.div_ceil(512) * 512;

        let path = entry.path_bytes().into_owned();
        let name = utf8(&path, "name")?;
        if is_reserved(&path) {
            return Err(invalid(format!(
                "estargz: the layer has an entry {name}, a name eStargz reserves"
            )));
        }
        let mut e = describe(&mut entry, name)?;
        let h = entry.header();
        if let (Ok(Some(u)), Ok(id)) = (h.username(), h.uid()) {
            e.user_name = name_if_changed(&mut names, id, u);
        }
        if let (Ok(Some(g)), Ok(id)) = (h.groupname(), h.gid()) {
            e.group_name = name_if_changed(&mut groups, id, g);
        }
        if e.kind != "reg" {
            toc.push(e);
            continue;
        }
        recording.set(false);
        file_data(&mut entry, e, size, chunk_size, &mut blob, &mut toc)?;
        recording.set(true);
        kept_from += size;
    }
    drop(ar);
    // What was read after the last entry: its padding, then the input's end-of-archive block.
    let rest = std::mem::take(&mut *kept.borrow_mut());
    let keep = (entry_end.saturating_sub(kept_from) as usize).min(rest.len());
    blob.put(&rest[..keep])?;

    finish(blob, toc)
}

/// The table, in a member of its own, as the last entry; then the footer.
fn finish<W: Write>(mut blob: Blob<W>, toc: Vec<OutEntry>) -> std::io::Result<Written> {
    let json = toc_json(toc)?;
    let toc_offset = blob.end_member()?;
    blob.put(header(ESTARGZ_TOC_NAME, json.len() as u64)?.as_bytes())?;
    blob.put(&json)?;
    blob.put(&vec![
        0u8;
        (json.len() as u64).next_multiple_of(512) as usize - json.len()
    ])?;
    blob.put(&[0u8; 1024])?;
    blob.put_raw(&footer(toc_offset))?;
    let Some(mut raw) = blob.raw.take() else {
        return Err(std::io::Error::other("estargz: no output"));
    };
    raw.flush()?;
    Ok(Written {
        digest: raw.digest(),
        size: raw.len(),
        diff_id: digest_of(blob.diff),
        uncompressed_size: blob.ulen,
        toc_digest: format!("sha256:{:x}", Sha256::digest(&json)),
        toc_offset,
    })
}

/// A regular file's data (`size` bytes read from `entry`) in gzip members of its own,
/// `chunk_size` bytes each; its table entry `e` and the `chunk` entries after it go to `toc`.
fn file_data<W: Write>(
    entry: &mut impl Read,
    mut e: OutEntry,
    size: u64,
    chunk_size: u64,
    blob: &mut Blob<W>,
    toc: &mut Vec<OutEntry>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut whole = Sha256::new();
    let first = toc.len();
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(chunk_size);
        buf.resize(n as usize, 0);
        entry.read_exact(&mut buf)?;
        whole.update(&buf);
        let mut piece = if done == 0 {
            std::mem::take(&mut e)
        } else {
            OutEntry {
                name: toc[first].name.clone(),
                kind: "chunk",
                chunk_offset: done,
                ..OutEntry::default()
            }
        };
        piece.offset = blob.end_member()?;
        if size > chunk_size && done + n < size {
            piece.chunk_size = n;
        }
        piece.chunk_digest = format!("sha256:{:x}", Sha256::digest(&buf));
        blob.put(&buf)?;
        toc.push(piece);
        done += n;
    }
    if size == 0 {
        toc.push(e);
    }
    toc[first].digest = digest_of(whole);
    Ok(())
}

/// The header of an entry of our own (the table, the landmark): a regular file of `size` bytes,
/// mode 0644, owned by root, time 0.
fn header(name: &str, size: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

/// The `.no.prefetch.landmark` entry, first in the stream: its header, then its byte in a
/// member of its own.
fn landmark<W: Write>(blob: &mut Blob<W>, toc: &mut Vec<OutEntry>) -> std::io::Result<()> {
    blob.put(header(NO_PREFETCH_LANDMARK, 1)?.as_bytes())?;
    let offset = blob.end_member()?;
    let mut block = [0u8; 512];
    block[0] = LANDMARK_CONTENT;
    blob.put(&block)?;
    let d = format!("sha256:{:x}", Sha256::digest([LANDMARK_CONTENT]));
    toc.push(OutEntry {
        name: NO_PREFETCH_LANDMARK.to_string(),
        kind: "reg",
        size: 1,
        mode: Some(S_IFREG | 0o644),
        uid: Some(0),
        gid: Some(0),
        offset,
        digest: d.clone(),
        chunk_digest: d,
        ..OutEntry::default()
    });
    Ok(())
}

/// Whether `path` is the table's or a landmark's (at the layer's root, as stargz-snapshotter
/// looks for them).
pub fn is_reserved(path: &[u8]) -> bool {
    catalog::normalise(path).is_some_and(|p| {
        [ESTARGZ_TOC_NAME, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK]
            .iter()
            .any(|r| r.as_bytes() == p.as_slice())
    })
}

/// stargz-snapshotter writes a user or group name only where it differs from the last one
/// written for that id (readers carry it forward).
fn name_if_changed(seen: &mut HashMap<u64, String>, id: u64, name: &str) -> String {
    if name.is_empty() || seen.get(&id).is_some_and(|n| n == name) {
        return String::new();
    }
    seen.insert(id, name.to_string());
    name.to_string()
}

/// The table entry of one tar entry (without data offsets and digests).
fn describe<R: Read>(entry: &mut tar::Entry<'_, R>, name: String) -> std::io::Result<OutEntry> {
    let h = entry.header();
    if h.entry_type() == tar::EntryType::Link {
        let target = entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default();
        return Ok(OutEntry {
            name,
            kind: "hardlink",
            link_name: utf8(&target, "hard link target")?,
            mode: Some(h.mode()? & 0o7777 | S_IFREG),
            uid: Some(h.uid()?),
            gid: Some(h.gid()?),
            modtime: rfc3339((h.mtime()? as i64, 0)),
            ..OutEntry::default()
        });
    }
    let kind = h.entry_type();
    if kind == tar::EntryType::GNUSparse {
        return Err(invalid(format!("estargz: {name}: GNU sparse files are not supported")));
    }
    let Some(a) = super::scan::attributes(entry)? else {
        return Err(invalid(format!("estargz: {name}: unsupported tar entry type {kind:?}")));
    };
    let fmt = a.mode & S_IFMT;
    let kind = match fmt {
        S_IFREG => "reg",
        S_IFDIR => "dir",
        S_IFLNK => "symlink",
        0o020000 => "char",
        0o060000 => "block",
        _ => "fifo",
    };
    let mut xattrs = BTreeMap::new();
    for (k, v) in &a.xattrs {
        xattrs.insert(
            utf8(k, "xattr name")?,
            base64::engine::general_purpose::STANDARD.encode(v),
        );
    }
    let dev = matches!(kind, "char" | "block");
    Ok(OutEntry {
        name,
        kind,
        size: if kind == "reg" { a.size } else { 0 },
        modtime: rfc3339(a.mtime),
        link_name: match &a.target {
            Some(t) => utf8(t, "symlink target")?,
            None => String::new(),
        },
        mode: Some(a.mode),
        uid: Some(a.uid.into()),
        gid: Some(a.gid.into()),
        dev_major: dev.then(|| rustix::fs::major(a.rdev)),
        dev_minor: dev.then(|| rustix::fs::minor(a.rdev)),
        xattrs,
        ..OutEntry::default()
    })
}

/// The table as JSON (tab-indented, as stargz-snapshotter writes it).
fn toc_json(entries: Vec<OutEntry>) -> std::io::Result<Vec<u8>> {
    let mut json = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut json, fmt);
    OutToc { version: 1, entries }
        .serialize(&mut ser)
        .map_err(std::io::Error::other)?;
    Ok(json)
}

/// The 51-byte footer: an empty gzip member whose Extra field gives the table's offset.
pub fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    // gzip header: magic, deflate, FEXTRA, mtime 0, XFL 0, OS unknown.
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // A final stored block of length 0; CRC32 and ISIZE of nothing are 0.
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// (seconds, nanoseconds) as RFC 3339; the epoch itself is "" (zero or unknown), as the
/// stargz-snapshotter's writer leaves it.
fn rfc3339((secs, ns): (i64, u32)) -> String {
    if secs == 0 && ns == 0 {
        return String::new();
    }
    super::write::rfc3339_ns(secs, ns)
}

/// [`write`] for a producer that pushes its tar (as `unionfs commit` does): `produce` writes
/// the tar stream into the `Write` it is given, while a scoped thread turns it into the eStargz
/// blob on `out`. Returns what `produce` returned and what was written. An error of `produce`
/// is the result (the blob is then incomplete: discard it); if the writer refuses the tar
/// first, its error is.
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
