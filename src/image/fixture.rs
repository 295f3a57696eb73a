//! Images made in memory for the image module's own tests: a tar written with the `tar` crate,
//! compressed as asked, in a layout with a manifest and config whose digests and DiffIDs are
//! right (or wrong on purpose).

use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::layout::Compression;
use super::write;

/// One tar entry to write.
pub enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, Vec<u8>),
    /// A file with PAX xattrs.
    XattrFile(&'a str, Vec<u8>, &'a [(&'a str, &'a [u8])]),
    Link(&'a str, &'a str),
    Symlink(&'a str, &'a str),
}

/// A tar of `items`.
pub fn tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match it {
            Item::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).expect("dir");
            }
            Item::File(p, mode, data) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).expect("file");
            }
            Item::XattrFile(p, data, xattrs) => {
                let recs: Vec<(String, &[u8])> =
                    xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                    .expect("pax");
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).expect("file");
            }
            Item::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, target).expect("link");
            }
            Item::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).expect("symlink");
            }
        }
    }
    b.into_inner().expect("tar")
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

/// A layout at `dir` with one image `tag` of `layers` (tars, base first) compressed as `c`.
pub fn layout(dir: &Path, tag: &str, layers: &[Vec<u8>], c: Compression) {
    write::init(dir).expect("init");
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for t in layers {
        let blob = compress(t, c);
        let (digest, size) = write::put_bytes(dir, &blob).expect("blob");
        diff_ids.push(format!("\"sha256:{:x}\"", Sha256::digest(t)));
        descs.push(format!(
            r#"{{"mediaType":"{}","digest":"{digest}","size":{size}}}"#,
            c.media_type()
        ));
    }
    let arch = super::layout::host_arch();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[]}}"#,
        diff_ids.join(",")
    );
    let (cd, cs) = write::put_bytes(dir, config.as_bytes()).expect("config");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let (md, ms) = write::put_bytes(dir, manifest.as_bytes()).expect("manifest");
    let desc: oci_spec::image::Descriptor = serde_json::from_str(&format!(
        r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms}}}"#
    ))
    .expect("descriptor");
    write::tag(dir, desc, tag).expect("tag");
}

/// Bytes that compress somewhat and differ everywhere (`seed` picks the sequence).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(format!("{:x} ", x % 100_000).as_bytes());
    }
    v.truncate(len);
    v
}
