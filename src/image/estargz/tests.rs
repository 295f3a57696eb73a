//! The writer's tests: the blob's structure, its table against a scan of the whole stream, the
//! reader on blobs of other writers' shapes (`innerOffset`), refusals.

use super::*;
use crate::image::catalog::{Catalog, Data};
use crate::image::layout::{Compression, LayerDesc};
use crate::image::scan::{self, Progress};

struct Quiet;
impl Progress for Quiet {}

fn desc(blob: &[u8], w: &Written) -> LayerDesc {
    LayerDesc {
        digest: w.digest.clone(),
        size: blob.len() as u64,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        compression: Compression::Gzip,
        diff_id: w.diff_id.clone(),
        annotations: w.annotations().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
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
            let a = (e.mode, e.uid, e.gid, e.size, e.mtime, e.rdev, e.nlink);
            out.insert(
                p,
                (a.0, a.1, a.2, a.3, a.4, a.5, a.6, e.target.clone(), e.xattrs.clone()),
            );
        }
    }
    out
}

/// The sample (with a big file of 3.02 chunks of 64 KiB) and its eStargz blob.
fn written() -> (Vec<u8>, Vec<u8>, Vec<u8>, Written) {
    let big = crate::image::fixture::data(3 * 65536 + 1234, 5);
    let tar = crate::image::fixture::every_shape(&big);
    let mut blob = Vec::new();
    let opts = Options {
        chunk_size: 65536,
        ..Options::default()
    };
    let w = write(&tar[..], &mut blob, &opts).expect("write");
    (big, tar, blob, w)
}

#[test]
fn the_blob_is_a_gzip_tar_with_a_member_for_each_piece_and_the_table_last() {
    let (big, tar, blob, w) = written();
    assert_eq!(
        (w.size, w.digest.clone()),
        (blob.len() as u64, format!("sha256:{:x}", Sha256::digest(&blob)))
    );

    // One gzip stream to any reader: the landmark, the input's entries, the table, the end.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut plain)
        .expect("gunzip");
    assert_eq!(w.diff_id, format!("sha256:{:x}", Sha256::digest(&plain)));
    assert_eq!(w.uncompressed_size, plain.len() as u64);
    let body = &tar[..tar.len() - 1024];
    assert_eq!(
        &plain[1024..1024 + body.len()],
        body,
        "the input's bytes pass unchanged"
    );
    let mut ar = tar::Archive::new(&plain[..]);
    let names: Vec<String> = ar
        .entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect();
    assert_eq!(names.first().map(String::as_str), Some(NO_PREFETCH_LANDMARK));
    assert_eq!(names.last().map(String::as_str), Some(ESTARGZ_TOC_NAME));

    // The footer, and the table in a member of its own at the offset it gives.
    let foot = &blob[blob.len() - 51..];
    assert_eq!(foot, &footer(w.toc_offset)[..]);
    let mut member = Vec::new();
    flate2::read::GzDecoder::new(&blob[w.toc_offset as usize..])
        .read_to_end(&mut member)
        .expect("table member");
    assert_eq!(&member[..], &plain[plain.len() - member.len()..]);

    // Members start where the table says the data is.
    let toc: serde_json::Value = {
        let mut ar = tar::Archive::new(&member[..]);
        let mut e = ar.entries().expect("entries").next().expect("one").expect("entry");
        let mut json = Vec::new();
        e.read_to_end(&mut json).expect("json");
        assert_eq!(w.toc_digest, format!("sha256:{:x}", Sha256::digest(&json)));
        serde_json::from_slice(&json).expect("json")
    };
    let entries = toc["entries"].as_array().expect("entries");
    let big_pieces: Vec<_> = entries.iter().filter(|e| e["name"] == "data/big").collect();
    assert_eq!(big_pieces.len(), 4, "{big_pieces:?}");
    assert_eq!(big_pieces[0]["type"], "reg");
    assert_eq!(big_pieces[0]["chunkSize"], 65536);
    assert_eq!(big_pieces[3]["chunkOffset"], 3 * 65536);
    assert!(big_pieces[3].get("chunkSize").is_none(), "the last chunk's size is 0");
    for (k, p) in big_pieces.iter().enumerate() {
        let off = p["offset"].as_u64().expect("offset") as usize;
        let mut d = flate2::read::GzDecoder::new(&blob[off..]);
        let mut got = vec![0u8; 65536.min(big.len() - k * 65536)];
        d.read_exact(&mut got).expect("piece");
        assert_eq!(got, big[k * 65536..k * 65536 + got.len()]);
    }
}

#[test]
fn the_table_says_what_a_scan_of_the_whole_stream_finds() {
    let (_, _, blob, w) = written();
    // Equal catalogs, but for the landmark and the table themselves.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("blob");
    std::fs::write(&path, &blob).expect("write blob");
    let d = desc(&blob, &w);
    let from_toc = scan::from_toc(&crate::image::source::Blob::open(&path).expect("blob"), &d).expect("from the table");
    let scanned = scan::scan(&path, &d, &Quiet).expect("scan");
    let mut want = flatten(&scanned.catalog);
    assert!(want.remove(&b"stargz.index.json"[..]).is_some());
    assert!(want.remove(NO_PREFETCH_LANDMARK.as_bytes()).is_some());
    let got = flatten(&from_toc.catalog);
    let mismatched: Vec<_> = want
        .iter()
        .filter(|(p, a)| got.get(*p) != Some(a))
        .map(|(p, a)| format!("{}: {a:?} != {:?}", String::from_utf8_lossy(p), got.get(p)))
        .collect();
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    assert_eq!(want.len(), got.len());
    let x = &got[&b"etc/x"[..]];
    assert_eq!((x.1, x.4), (3_000_000, (1_700_000_000, 250_000_000)));
    assert!(
        from_toc
            .catalog
            .dirs
            .iter()
            .flatten()
            .all(|e| !matches!(e.data, Data::Stream { .. }))
    );
}

#[test]
fn a_wrong_toc_digest_or_footer_is_refused() {
    let tar = crate::image::fixture::every_shape(b"some data");
    let mut blob = Vec::new();
    let w = write(&tar[..], &mut blob, &Options::default()).expect("write");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("blob");
    std::fs::write(&path, &blob).expect("write blob");
    let mut d = desc(&blob, &w);
    d.annotations.insert(
        super::super::toc::ESTARGZ_TOC_DIGEST.into(),
        format!("sha256:{}", "0".repeat(64)),
    );
    let err = scan::from_toc(&crate::image::source::Blob::open(&path).expect("blob"), &d)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("table of contents digest"), "{err}");
    // A footer pointing into itself must be refused, not crash.
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 51..].copy_from_slice(&footer(n as u64 - 10));
    std::fs::write(&path, &bad).expect("write");
    let d = desc(&bad, &w);
    assert!(scan::from_toc(&crate::image::source::Blob::open(&path).expect("blob"), &d).is_err());
}

#[test]
fn a_pushed_tar_gives_the_same_blob_and_errors_reach_the_caller() {
    let big = crate::image::fixture::data(3 << 20, 6);
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
    // The producer fails: its error, whatever the writer made of the half tar.
    let e = write_with(std::io::sink(), &Options::default(), |out| {
        out.write_all(&tar[..tar.len() / 2])?;
        Err::<(), _>(std::io::Error::other("producer failed"))
    })
    .expect_err("fails");
    assert_eq!(e.to_string(), "producer failed");
    // The writer refuses the tar: its error, not the producer's broken pipe.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    b.append_data(&mut h, "stargz.index.json", &b"x"[..]).expect("entry");
    let bad = b.into_inner().expect("tar");
    let e = write_with(std::io::sink(), &Options::default(), |out| {
        out.write_all(&bad)?;
        out.write_all(&vec![0u8; 4 << 20])
    })
    .expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

/// A blob as stargz-snapshotter writes it with `--estargz-min-chunk-size`: two files' data
/// in one gzip member, the second found by its `innerOffset`.
#[test]
fn pieces_that_share_a_member_are_read_at_their_inner_offset() {
    let gz = |b: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    };
    let (a, b) = (crate::image::fixture::data(100, 1), crate::image::fixture::data(50, 2));
    let m0 = gz(header("a", 100).expect("header").as_bytes());
    let mut u1 = a.clone();
    u1.resize(512, 0);
    u1.extend_from_slice(header("b", 50).expect("header").as_bytes());
    u1.extend_from_slice(&b);
    u1.resize(1536, 0);
    let m1 = gz(&u1);
    let d = |x: &[u8]| format!("sha256:{:x}", Sha256::digest(x));
    let json = format!(
        r#"{{"version":1,"entries":[
        {{"name":"a","type":"reg","size":100,"mode":420,"offset":{o},"digest":"{da}","chunkDigest":"{da}"}},
        {{"name":"b","type":"reg","size":50,"mode":420,"offset":{o},"innerOffset":1024,"digest":"{db}","chunkDigest":"{db}"}}]}}"#,
        o = m0.len(),
        da = d(&a),
        db = d(&b)
    );
    let mut u2 = header(ESTARGZ_TOC_NAME, json.len() as u64)
        .expect("header")
        .as_bytes()
        .to_vec();
    u2.extend_from_slice(json.as_bytes());
    u2.resize(512 + (json.len()).next_multiple_of(512) + 1024, 0);
    let mut blob = [m0.clone(), m1.clone(), gz(&u2)].concat();
    blob.extend_from_slice(&footer((m0.len() + m1.len()) as u64));

    let t = tempfile::tempdir().expect("tmp");
    let w = Written {
        digest: d(&blob),
        size: blob.len() as u64,
        diff_id: String::new(),
        uncompressed_size: 0,
        toc_digest: d(json.as_bytes()),
        toc_offset: 0,
    };
    let hex = &w.digest["sha256:".len()..];
    std::fs::create_dir_all(t.path().join("blobs/sha256")).expect("mkdir");
    std::fs::write(t.path().join("blobs/sha256").join(hex), &blob).expect("blob");
    let cache = t.path().join("cache");
    let cc = std::sync::Arc::new(crate::image::cache::ContentCache::new(&cache, 1 << 20));
    let l = crate::image::layer::ImageLayer::open(t.path(), &desc(&blob, &w), &cache, cc, None, &Quiet).expect("open");
    for (name, want) in [("a", &a), ("b", &b)] {
        let e = l.lookup(0, name.as_bytes()).expect("lookup").expect(name);
        let mut buf = vec![0u8; 200];
        let n = l.read(&e, 0, &mut buf).expect("read");
        assert_eq!(&buf[..n], &want[..], "{name}");
    }
}

#[test]
fn reserved_names_are_refused() {
    for name in ["stargz.index.json", "./.no.prefetch.landmark", ".prefetch.landmark"] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        b.append_data(&mut h, name, &b"x"[..]).expect("entry");
        let tar = b.into_inner().expect("tar");
        let e = write(&tar[..], std::io::sink(), &Options::default()).expect_err(name);
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{name}");
    }
    assert!(!is_reserved(b"etc/stargz.index.json"));
}

#[test]
fn times_format_as_rfc3339_and_parse_back() {
    for t in [
        (1, 0),
        (1_796_622_279, 0),
        (1_700_000_000, 250_000_000),
        (-86_401, 5),
        (951_782_400, 0),
    ] {
        let s = rfc3339(t);
        assert_eq!(super::super::toc::parse_time(&s), t, "{s}");
    }
    assert_eq!(rfc3339((951_782_400, 0)), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339((0, 0)), "");
}
