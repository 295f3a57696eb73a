//! Tables of contents: zstd:chunked (containers/storage) and eStargz (stargz-snapshotter)
//! layers carry one, listing every entry with its attributes and where its data's compressed
//! pieces lie in the blob, so a layer can be cataloged without reading its whole stream.
//!
//! The table is checked against the digest the manifest's layer annotation gives before any of
//! it is used, and each piece it points to carries its own sha256, checked when it is read.
//!
//! zstd:chunked: annotations `io.github.containers.zstd-chunked.manifest-position`
//! (`OFFSET:LENGTH:UNCOMPRESSED:TYPE`, newer) or `io.containers.zstd-chunked.manifest-position`
//! (Podman 4), and the matching `…manifest-checksum` (sha256 of the compressed table). The
//! table is one zstd frame of JSON. eStargz: the table is the tar entry `stargz.index.json`, the
//! last gzip member before a 51-byte footer that gives its offset; the annotation
//! `containerd.io/snapshot/stargz/toc.digest` is the sha256 of the JSON.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::catalog::{Builder, Catalog, Data, Entry, Part, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, Xattr};
use super::layout::{Compression, LayerDesc};
use super::source::Blob;

pub const CHUNKED_POSITION: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
];
pub const CHUNKED_CHECKSUM: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];
pub const ESTARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The name eStargz gives its table in the tar.
pub const ESTARGZ_TOC_NAME: &str = "stargz.index.json";

/// A table of contents as both formats write it (field names are shared).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub uid: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub gid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modtime: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dev_major: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dev_minor: u64,
    /// Values base64-encoded.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub xattrs: HashMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub end_offset: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub chunk_offset: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub chunk_size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inner_offset: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// The kind of table a layer carries, as its annotations say.
pub fn kind_of(desc: &LayerDesc) -> Option<Compression> {
    if CHUNKED_POSITION.iter().any(|k| desc.annotations.contains_key(*k)) && desc.compression == Compression::Zstd {
        return Some(Compression::Zstd);
    }
    (desc.annotations.contains_key(ESTARGZ_TOC_DIGEST) && desc.compression == Compression::Gzip)
        .then_some(Compression::Gzip)
}

/// Reads and checks the table of the layer `desc` whose blob is `blob`; with it, where the
/// files' data ends in the blob (the table's offset for eStargz, the blob's size otherwise).
///
/// eStargz landmarks (`.prefetch.landmark`, `.no.prefetch.landmark` at the root) are left
/// out: they mark where prefetching ends, they are no files of the layer (stargz-snapshotter
/// hides them too; the table never lists itself).
pub fn read(f: &Blob, desc: &LayerDesc) -> Result<(Toc, u64), ImageError> {
    let blob = f.path();
    let (json, data_end) = match kind_of(desc) {
        Some(Compression::Zstd) => (chunked_json(f, blob, desc)?, desc.size),
        Some(Compression::Gzip) => estargz_json(f, blob, desc)?,
        _ => return Err(ImageError::invalid(blob, "the layer has no table of contents")),
    };
    let mut toc: Toc =
        serde_json::from_slice(&json).map_err(|e| ImageError::corrupt(blob, format!("table of contents: {e}")))?;
    if kind_of(desc) == Some(Compression::Gzip) {
        toc.entries.retain(|e| {
            e.kind == "chunk"
                || !super::catalog::normalise(e.name.as_bytes()).is_some_and(|p| {
                    p == super::estargz::PREFETCH_LANDMARK.as_bytes()
                        || p == super::estargz::NO_PREFETCH_LANDMARK.as_bytes()
                })
        });
    }
    Ok((toc, data_end))
}

fn annotation<'a>(desc: &'a LayerDesc, keys: &[&str]) -> Option<&'a String> {
    keys.iter().find_map(|k| desc.annotations.get(*k))
}

fn chunked_json(f: &Blob, blob: &Path, desc: &LayerDesc) -> Result<Vec<u8>, ImageError> {
    let pos = annotation(desc, &CHUNKED_POSITION).ok_or_else(|| ImageError::invalid(blob, "no table position"))?;
    let nums: Vec<u64> = pos.split(':').filter_map(|n| n.parse().ok()).collect();
    let [offset, len, ulen, ..] = nums[..] else {
        return Err(ImageError::corrupt(blob, format!("table position {pos}")));
    };
    if offset.checked_add(len).is_none_or(|end| end > desc.size) || ulen > 1 << 30 {
        return Err(ImageError::corrupt(
            blob,
            format!("table position {pos} is outside the blob"),
        ));
    }
    let mut z = vec![0u8; len as usize];
    f.read_exact_at(&mut z, offset).map_err(|e| ImageError::io(blob, e))?;
    let want = annotation(desc, &CHUNKED_CHECKSUM).ok_or_else(|| ImageError::invalid(blob, "no table checksum"))?;
    let got = format!("sha256:{:x}", Sha256::digest(&z));
    if &got != want {
        return Err(ImageError::corrupt(
            blob,
            format!("table of contents digest {got}, the manifest says {want}"),
        ));
    }
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(&z[..])
        .and_then(|d| d.take(ulen + 1).read_to_end(&mut json))
        .map_err(|e| ImageError::corrupt(blob, format!("table of contents: {e}")))?;
    Ok(json)
}

/// The eStargz footer's table offset.
fn estargz_offset(f: &Blob, blob: &Path, size: u64) -> Result<u64, ImageError> {
    let mut foot = [0u8; 51];
    if size < 51 {
        return Err(ImageError::corrupt(blob, "too short for an eStargz footer"));
    }
    f.read_exact_at(&mut foot, size - 51)
        .map_err(|e| ImageError::io(blob, e))?;
    let ok = foot[0] == 0x1f && foot[1] == 0x8b && foot[12] == b'S' && foot[13] == b'G' && &foot[32..38] == b"STARGZ";
    let hex = std::str::from_utf8(&foot[16..32]).ok();
    match (ok, hex.and_then(|h| u64::from_str_radix(h, 16).ok())) {
        // The table's member lies between the offset and the footer.
        (true, Some(off)) if off < size - 51 => Ok(off),
        _ => Err(ImageError::corrupt(blob, "no eStargz footer")),
    }
}

/// The eStargz table's JSON (checked against the annotation), and its offset in the blob.
fn estargz_json(f: &Blob, blob: &Path, desc: &LayerDesc) -> Result<(Vec<u8>, u64), ImageError> {
    let off = estargz_offset(f, blob, desc.size)?;
    let mut member = vec![0u8; (desc.size - 51 - off) as usize];
    f.read_exact_at(&mut member, off).map_err(|e| ImageError::io(blob, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&member[..]));
    let mut entries = ar.entries().map_err(|e| ImageError::corrupt(blob, e.to_string()))?;
    let mut e = entries
        .next()
        .ok_or_else(|| ImageError::corrupt(blob, "no table of contents at the footer's offset"))?
        .map_err(|e| ImageError::corrupt(blob, e.to_string()))?;
    if e.path_bytes().as_ref() != ESTARGZ_TOC_NAME.as_bytes() {
        return Err(ImageError::corrupt(
            blob,
            "the entry at the footer's offset is not the table",
        ));
    }
    let mut json = Vec::new();
    e.read_to_end(&mut json)
        .map_err(|e| ImageError::corrupt(blob, e.to_string()))?;
    let want = desc.annotations.get(ESTARGZ_TOC_DIGEST).cloned().unwrap_or_default();
    let got = format!("sha256:{:x}", Sha256::digest(&json));
    if got != want {
        return Err(ImageError::corrupt(
            blob,
            format!("table of contents digest {got}, the manifest says {want}"),
        ));
    }
    Ok((json, off))
}

/// `2026-12-07T05:44:39.123Z` → (seconds, nanoseconds); the zero time and garbage are 0.
pub fn parse_time(s: &str) -> (i64, u32) {
    let parse = || -> Option<(i64, u32)> {
        let (date, rest) = s.split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let time_end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
        let (clock, zone) = rest.split_at(time_end);
        let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
        let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
        let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let ns: u32 = digits.parse().ok()?;
        let offset = match zone.as_bytes().first() {
            Some(b'+') | Some(b'-') => {
                let sign = if zone.starts_with('-') { -1 } else { 1 };
                let (oh, om) = zone[1..].split_once(':')?;
                sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
            }
            _ => 0,
        };
        let days = days_from_civil(y, m, day);
        Some((days * 86_400 + hh * 3600 + mm * 60 + ss - offset, ns))
    };
    if s.starts_with("0001-01-01T00:00:00") {
        return (0, 0);
    }
    parse().unwrap_or((0, 0))
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let h = s.strip_prefix("sha256:")?;
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The catalog a table describes; `data_end` (where the files' data ends in the blob) bounds
/// the last piece of a file.
pub fn catalog(toc: &Toc, blob: &Path, data_end: u64) -> Result<Catalog, ImageError> {
    let bad = |what: String| ImageError::corrupt(blob, format!("table of contents: {what}"));
    let mut b = Builder::default();
    let entries = &toc.entries;
    let mut i = 0;
    while i < entries.len() {
        let t = &entries[i];
        let mut j = i + 1;
        while j < entries.len() && entries[j].kind == "chunk" && entries[j].name == t.name {
            j += 1;
        }
        let after = After {
            entries: &entries[j..],
            data_end,
        };
        match t.kind.as_str() {
            "hardlink" => b
                .link(t.name.as_bytes(), t.link_name.as_bytes())
                .map_err(|e| bad(e.to_string()))?,
            "chunk" => return Err(bad(format!("a chunk of {} without its file", t.name))),
            _ => {
                let e = entry_of(t, &entries[i..j], &after).map_err(bad)?;
                b.add(t.name.as_bytes(), e).map_err(|e| bad(e.to_string()))?;
            }
        }
        i = j;
    }
    Ok(b.finish())
}

/// The entries after a file's pieces, and where the files' data ends: what bounds its last
/// piece in the blob.
struct After<'a> {
    entries: &'a [TocEntry],
    data_end: u64,
}

impl After<'_> {
    /// Where the next member after the one at `offset` starts: the first later entry's that
    /// starts past it (eStargz entries written with `innerOffset` share their member with the
    /// entries before them), or the end of the data.
    fn member_end(&self, offset: u64) -> u64 {
        self.entries
            .iter()
            .find(|e| e.offset > offset)
            .map_or(self.data_end, |e| e.offset)
    }
}

fn entry_of(t: &TocEntry, pieces: &[TocEntry], after: &After<'_>) -> Result<Entry, String> {
    let fmt = match t.kind.as_str() {
        "dir" => S_IFDIR,
        "reg" => S_IFREG,
        "symlink" => S_IFLNK,
        "char" => 0o020000,
        "block" => 0o060000,
        "fifo" => 0o010000,
        other => return Err(format!("{}: unknown type {other}", t.name)),
    };
    let mut xattrs: Vec<Xattr> = Vec::new();
    for (k, v) in &t.xattrs {
        let val = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| format!("{}: xattr {k}: {e}", t.name))?;
        xattrs.push((k.as_bytes().into(), val.into()));
    }
    xattrs.sort();
    let data = if fmt == S_IFREG && t.size > 0 {
        Data::Parts(parts(t, pieces, after)?)
    } else {
        Data::None
    };
    Ok(Entry {
        name: Box::default(),
        ino: 0,
        mode: fmt | (t.mode as u32 & !S_IFMT & 0o7777),
        uid: t.uid as u32,
        gid: t.gid as u32,
        size: if fmt == S_IFREG {
            t.size
        } else if fmt == S_IFLNK {
            t.link_name.len() as u64
        } else {
            0
        },
        mtime: t.modtime.as_deref().map_or((0, 0), parse_time),
        rdev: rustix::fs::makedev(t.dev_major as u32, t.dev_minor as u32),
        nlink: 1,
        target: (fmt == S_IFLNK).then(|| t.link_name.as_bytes().into()),
        xattrs,
        dir: None,
        data,
    })
}

/// The pieces of a file from its `reg` entry and the `chunk` entries after it.
fn parts(t: &TocEntry, pieces: &[TocEntry], after: &After<'_>) -> Result<Vec<Part>, String> {
    let mut out: Vec<Part> = Vec::new();
    for (k, p) in pieces.iter().enumerate() {
        let start = if k == 0 { 0 } else { p.chunk_offset };
        let len = if p.chunk_size > 0 {
            p.chunk_size
        } else {
            t.size.saturating_sub(start)
        };
        let end_in_blob = pieces[k + 1..]
            .iter()
            .find(|q| q.offset > p.offset)
            .map(|q| q.offset)
            .or((t.end_offset > 0).then_some(t.end_offset))
            .unwrap_or_else(|| after.member_end(p.offset));
        let zeros = p.chunk_type == "zeros";
        let digest = if zeros {
            None
        } else {
            let d = if p.chunk_digest.is_empty() && pieces.len() == 1 {
                &t.digest
            } else {
                &p.chunk_digest
            };
            Some(hex32(d).ok_or_else(|| format!("{}: no usable digest for a piece", t.name))?)
        };
        if !zeros && end_in_blob <= p.offset {
            return Err(format!("{}: a piece with no data in the blob", t.name));
        }
        out.push(Part {
            file_offset: start,
            len,
            blob_offset: p.offset,
            blob_len: end_in_blob.saturating_sub(p.offset),
            skip: p.inner_offset,
            digest,
        });
    }
    let covered: u64 = out.iter().map(|p| p.len).sum();
    if covered != t.size || out.windows(2).any(|w| w[0].file_offset + w[0].len != w[1].file_offset) {
        return Err(format!("{}: its pieces do not cover its {} bytes", t.name, t.size));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_like_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:10Z"), (10, 0));
        assert_eq!(parse_time("2026-12-07T05:44:39Z"), (1_796_622_279, 0));
        assert_eq!(parse_time("2026-12-07T05:44:39.5+01:00"), (1_796_618_679, 500_000_000));
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), (0, 0));
        assert_eq!(parse_time("garbage"), (0, 0));
    }
}
