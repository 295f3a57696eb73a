//! The writer's tests: the blob is one zstd stream of exactly the input tar, its table and
//! footer are where the annotations and the footer say, the table gives the catalog a scan of
//! the whole stream gives and reads every file back by its own frames, and the tar-split
//! rebuilds the tar (what containers/storage does with it).

use std::io::Read;

use super::*;
use crate::image::catalog::{Catalog, Data};
use crate::image::fixture::Item;
use crate::image::layout::{Compression, LayerDesc};
use crate::image::scan::{self, Progress};

struct Quiet;
impl Progress for Quiet {}

const CHUNK: u64 = 65536;

fn desc(blob: &[u8], w: &Written) -> LayerDesc {
    LayerDesc {
        digest: w.digest.clone(),
        size: blob.len() as u64,
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        compression: Compression::Zstd,
        diff_id: w.diff_id.clone(),
        annotations: w.annotations().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// The sample (with a big file of 3.02 chunks) and its blob.
fn written() -> (Vec<u8>, Vec<u8>, Vec<u8>, Written) {
    let big = crate::image::fixture::data(3 * CHUNK as usize + 1234, 5);
    let tar = crate::image::fixture::every_shape(&big);
    let mut blob = Vec::new();
    let opts = Options {
        chunk_size: CHUNK,
        ..Options::default()
    };
    let w = write(&tar[..], &mut blob, &opts).expect("write");
    (big, tar, blob, w)
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// Decompresses the one frame at `at`.
fn frame(blob: &[u8], at: u64) -> Vec<u8> {
    let mut d = ::zstd::stream::read::Decoder::new(&blob[at as usize..])
        .expect("decoder")
        .single_frame();
    let mut out = Vec::new();
    d.read_to_end(&mut out).expect("frame");
    out
}

fn toc_of(blob: &[u8], w: &Written) -> serde_json::Value {
    let t = w.toc;
    let z = &blob[t.offset as usize..(t.offset + t.len) as usize];
    assert_eq!(sha(z), w.toc_digest);
    let json = ::zstd::stream::decode_all(z).expect("table");
    assert_eq!(json.len() as u64, t.uncompressed);
    serde_json::from_slice(&json).expect("json")
}

#[test]
fn the_blob_is_one_zstd_stream_of_exactly_the_input_tar() {
    let (_, tar, blob, w) = written();
    assert_eq!((w.size, w.digest.clone()), (blob.len() as u64, sha(&blob)));
    let plain = ::zstd::stream::decode_all(&blob[..]).expect("unzstd");
    assert!(plain == tar, "the stream is the input tar, byte for byte");
    assert_eq!(w.diff_id, sha(&tar));
    assert_eq!(w.uncompressed_size, tar.len() as u64);
}

#[test]
fn the_table_tar_split_and_footer_are_where_annotations_and_footer_say() {
    let (_, _, blob, w) = written();
    let n = blob.len();
    // Footer: a skippable frame of 64 bytes, last.
    let foot = &blob[n - 72..];
    assert_eq!(&foot[..4], &[0x50, 0x2a, 0x4d, 0x18]);
    assert_eq!(&foot[4..8], &64u32.to_le_bytes());
    assert_eq!(&foot[8..], &footer(&w.toc, &w.tar_split)[..]);
    assert_eq!(&foot[64..], b"GNUlInUx");
    // The table and the tar-split, each in its skippable frame, back to back before it.
    assert_eq!(w.toc.offset + w.toc.len + 8, w.tar_split.offset);
    assert_eq!(w.tar_split.offset + w.tar_split.len, n as u64 - 72);
    let at = (w.toc.offset - 8) as usize;
    assert_eq!(&blob[at..at + 4], &[0x50, 0x2a, 0x4d, 0x18]);
    assert_eq!(&blob[at + 4..at + 8], &(w.toc.len as u32).to_le_bytes());
    let notes: BTreeMap<_, _> = w.annotations().into_iter().collect();
    assert_eq!(notes[MANIFEST_CHECKSUM], w.toc_digest);
    assert_eq!(notes[LEGACY_MANIFEST_CHECKSUM], w.toc_digest);
    assert_eq!(notes[LEGACY_MANIFEST_POSITION], notes[MANIFEST_POSITION]);
    assert_eq!(
        notes[MANIFEST_POSITION],
        format!("{}:{}:{}:1", w.toc.offset, w.toc.len, w.toc.uncompressed)
    );
    assert_eq!(
        notes[TARSPLIT_POSITION],
        format!(
            "{}:{}:{}",
            w.tar_split.offset, w.tar_split.len, w.tar_split.uncompressed
        )
    );
    let toc = toc_of(&blob, &w);
    assert_eq!(toc["version"], 1);
    let s = &blob[w.tar_split.offset as usize..(w.tar_split.offset + w.tar_split.len) as usize];
    assert_eq!(toc["tarSplitDigest"], sha(s));
}

#[test]
fn every_piece_of_a_file_is_a_frame_of_its_own_as_containers_storage_lists_it() {
    let (big, _, blob, w) = written();
    let toc = toc_of(&blob, &w);
    let entries = toc["entries"].as_array().expect("entries");
    let big_pieces: Vec<_> = entries.iter().filter(|e| e["name"] == "data/big").collect();
    assert_eq!(big_pieces.len(), 4, "{big_pieces:?}");
    assert_eq!(big_pieces[0]["type"], "reg");
    assert_eq!(big_pieces[0]["mode"], 0o4755);
    assert_eq!(big_pieces[0]["digest"], sha(&big));
    assert!(big_pieces[1..].iter().all(|p| p["type"] == "chunk"));
    assert_eq!(big_pieces[3]["chunkOffset"], 3 * CHUNK);
    assert_eq!(big_pieces[3]["chunkSize"], 1234);
    for (k, p) in big_pieces.iter().enumerate() {
        let off = p["offset"].as_u64().expect("offset");
        let want = &big[k * CHUNK as usize..(big.len()).min((k + 1) * CHUNK as usize)];
        assert_eq!(frame(&blob, off), want, "piece {k}");
        assert_eq!(p["chunkDigest"], sha(want));
    }
    // The file's frames end where its endOffset says: the next frame starts there.
    let end = big_pieces[0]["endOffset"].as_u64().expect("endOffset");
    assert!(end > big_pieces[3]["offset"].as_u64().unwrap_or(u64::MAX));
    // A one-piece file: offset, endOffset and digest, no chunk fields.
    let hello = entries.iter().find(|e| e["name"] == "etc/hello").expect("hello");
    assert_eq!(frame(&blob, hello["offset"].as_u64().expect("offset")), b"hello\n");
    assert_eq!(hello["digest"], sha(b"hello\n"));
    assert!(hello.get("chunkSize").is_none() && hello.get("chunkDigest").is_none());
    let x = entries.iter().find(|e| e["name"] == "etc/x").expect("x");
    assert_eq!(x["uid"], 3_000_000);
    assert_eq!(x["modtime"], "2023-11-14T22:13:20.25Z");
    assert_eq!(x["accesstime"], "2023-11-14T22:13:21.5Z");
    assert_eq!(x["xattrs"]["user.color"], "Ymx1ZQ==");
    let null = entries.iter().find(|e| e["name"] == "dev/null").expect("null");
    assert_eq!(
        (null["type"].clone(), null["devMajor"].clone(), null["devMinor"].clone()),
        ("char".into(), 1.into(), 3.into())
    );
    let link = entries.iter().find(|e| e["name"] == "etc/hello2").expect("link");
    assert_eq!(
        (link["type"].clone(), link["linkName"].clone()),
        ("hardlink".into(), "etc/hello".into())
    );
    let empty = entries.iter().find(|e| e["name"] == "etc/empty").expect("empty");
    assert!(empty.get("offset").is_none() && empty.get("digest").is_none());
}

#[test]
fn the_tar_split_rebuilds_the_tar() {
    let (_, tar, blob, w) = written();
    let s = &blob[w.tar_split.offset as usize..(w.tar_split.offset + w.tar_split.len) as usize];
    let lines = ::zstd::stream::decode_all(s).expect("tar-split");
    assert_eq!(lines.len() as u64, w.tar_split.uncompressed);
    // The files' data by name, from the input.
    let mut data = BTreeMap::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = String::from_utf8(e.path_bytes().into_owned()).expect("utf8");
        let mut d = Vec::new();
        e.read_to_end(&mut d).expect("data");
        data.insert(name, d);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rebuilt = Vec::new();
    for (i, line) in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let v: serde_json::Value = serde_json::from_slice(line).expect("line");
        assert_eq!(v["position"], i as u64);
        match v["type"].as_u64() {
            Some(2) => rebuilt.extend(b64.decode(v["payload"].as_str().expect("payload")).expect("b64")),
            Some(1) => {
                let name = v["name"].as_str().expect("name");
                let d = &data[name];
                assert_eq!(v["size"].as_u64().unwrap_or(0), d.len() as u64, "{name}");
                if d.is_empty() {
                    assert!(v["payload"].is_null(), "{name}");
                } else {
                    let crc = b64.decode(v["payload"].as_str().expect("crc")).expect("b64");
                    assert_eq!(crc, crc64_iso(0, d).to_be_bytes(), "{name}");
                    rebuilt.extend_from_slice(d);
                }
            }
            other => panic!("record type {other:?}"),
        }
    }
    assert!(rebuilt == tar, "the tar-split and the files give the tar back");
}

#[test]
fn crc64_is_gos_iso_crc() {
    // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO)).
    assert_eq!(crc64_iso(0, b"123456789"), 0xb909_56c7_75a4_1001);
    assert_eq!(crc64_iso(crc64_iso(0, b"1234"), b"56789"), 0xb909_56c7_75a4_1001);
}

type Attrs = (
    u32,
    u32,
    u32,
    u64,
    (i64, u32),
    u64,
    u32,
    Option<Box<[u8]>>,
    Vec<catalog::Xattr>,
);

/// Every path of a catalog with what a stat, readlink and listxattr show.
fn flatten(c: &Catalog) -> BTreeMap<Vec<u8>, Attrs> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(Vec::new(), 0u32)];
    while let Some((dir, id)) = stack.pop() {
        for e in &c.dirs[id as usize] {
            let mut p = dir.clone();
            p.extend_from_slice(&e.name);
            if let Some(d) = e.dir.filter(|_| e.is_dir()) {
                let mut q = p.clone();
                q.push(b'/');
                stack.push((q, d));
            }
            out.insert(
                p,
                (
                    e.mode,
                    e.uid,
                    e.gid,
                    e.size,
                    e.mtime,
                    e.rdev,
                    e.nlink,
                    e.target.clone(),
                    e.xattrs.clone(),
                ),
            );
        }
    }
    out
}

#[test]
fn the_table_gives_the_catalog_a_scan_gives_and_reads_every_file_back() {
    let (big, tar, blob, w) = written();
    let t = tempfile::tempdir().expect("tmp");
    let hex = &w.digest["sha256:".len()..];
    let blobs = t.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let path = blobs.join(hex);
    std::fs::write(&path, &blob).expect("blob");
    let d = desc(&blob, &w);
    let from_toc = scan::from_toc(&crate::image::source::Blob::open(&path).expect("blob"), &d).expect("from the table");
    let scanned = scan::scan(&path, &d, &Quiet).expect("scan");
    let want = flatten(&scanned.catalog);
    let got = flatten(&from_toc.catalog);
    let mismatched: Vec<_> = want
        .iter()
        .filter(|(p, a)| got.get(*p) != Some(a))
        .map(|(p, a)| format!("{}: {a:?} != {:?}", String::from_utf8_lossy(p), got.get(p)))
        .collect();
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    assert_eq!(want.len(), got.len());
    assert!(
        from_toc
            .catalog
            .dirs
            .iter()
            .flatten()
            .all(|e| !matches!(e.data, Data::Stream { .. }))
    );

    // Every regular file, read through the layer by its pieces.
    let cache = t.path().join("cache");
    let cc = std::sync::Arc::new(crate::image::cache::ContentCache::new(&cache, 1 << 20));
    let l = crate::image::layer::ImageLayer::open(t.path(), &d, &cache, cc, None, &Quiet).expect("open");
    let mut ar = tar::Archive::new(&tar[..]);
    let mut files = 0;
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path_bytes().into_owned();
        let mut want = Vec::new();
        e.read_to_end(&mut want).expect("data");
        let mut id = 0u32;
        let mut found = None;
        let parts: Vec<&[u8]> = name.split(|&c| c == b'/').filter(|p| !p.is_empty()).collect();
        for (k, part) in parts.iter().enumerate() {
            let ent = l.lookup(id, part).expect("lookup").expect("exists");
            if k + 1 < parts.len() {
                id = ent.dir.expect("a directory");
            } else {
                found = Some(ent);
            }
        }
        let ent = found.expect("the file");
        let mut got = vec![0u8; want.len() + 10];
        let mut n = 0;
        while n < got.len() {
            let k = l.read(&ent, n as u64, &mut got[n..]).expect("read");
            if k == 0 {
                break;
            }
            n += k;
        }
        assert!(got[..n] == want[..], "{}", String::from_utf8_lossy(&name));
        files += 1;
    }
    assert_eq!(files, 8);
    assert_eq!(big.len() as u64 % CHUNK, 1234);
}

#[test]
fn a_wrong_table_checksum_is_refused() {
    let (_, _, blob, w) = written();
    let t = tempfile::tempdir().expect("tmp");
    let path = t.path().join("blob");
    std::fs::write(&path, &blob).expect("blob");
    let mut d = desc(&blob, &w);
    for k in [MANIFEST_CHECKSUM, LEGACY_MANIFEST_CHECKSUM] {
        d.annotations.insert(k.into(), format!("sha256:{}", "0".repeat(64)));
    }
    let err = scan::from_toc(&crate::image::source::Blob::open(&path).expect("blob"), &d)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("table of contents digest"), "{err}");
}

#[test]
fn a_pushed_tar_gives_the_same_blob_and_bad_tars_are_refused() {
    let big = crate::image::fixture::data(5 << 20, 6);
    let tar = crate::image::fixture::every_shape(&big);
    let mut want = Vec::new();
    let w = write(&tar[..], &mut want, &Options::default()).expect("write");
    let mut got = Vec::new();
    let (n, w2) = write_with(&mut got, &Options::default(), |out| {
        for piece in tar.chunks(1000) {
            out.write_all(piece)?;
        }
        Ok(7)
    })
    .expect("write_with");
    assert_eq!((n, &w2, &got), (7, &w, &want));

    // A name twice, which tar-split refuses.
    let a = || Item::File("./a", 0o644, b"x".to_vec());
    let twice = crate::image::fixture::tar(&[a(), a()]);
    let e = write(&twice[..], std::io::sink(), &Options::default()).expect_err("twice");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    // A PAX global header: no table entry can say it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XGlobalHeader);
    h.set_size(0);
    b.append_data(&mut h, "g", &[][..]).expect("entry");
    let g = b.into_inner().expect("tar");
    let e = write(&g[..], std::io::sink(), &Options::default()).expect_err("global");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

#[test]
fn an_empty_layer_and_bytes_after_the_end_of_archive_pass_unchanged() {
    let empty = tar::Builder::new(Vec::new()).into_inner().expect("tar");
    let mut padded = crate::image::fixture::every_shape(&crate::image::fixture::data(2 * CHUNK as usize + 5, 1));
    padded.extend_from_slice(&[0u8; 10240]);
    for (tar, entries) in [(empty, 0), (padded, 17)] {
        let mut blob = Vec::new();
        let w = write(&tar[..], &mut blob, &Options::default()).expect("write");
        let plain = ::zstd::stream::decode_all(&blob[..]).expect("unzstd");
        assert!(plain == tar, "{} bytes", tar.len());
        assert_eq!(w.diff_id, sha(&tar));
        let toc = toc_of(&blob, &w);
        assert_eq!(toc["entries"].as_array().map(Vec::len), Some(entries), "{toc}");
    }
}
