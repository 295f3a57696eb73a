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

/// A tar with every shape a layer has (for the writers of indexed layers): directories, empty
/// and big files (`big`, and a file of exactly two 64 KiB pieces or all of `big` if shorter),
/// hard links (to the big file too), symlinks, a FIFO, a long name, a whiteout and an opaque
/// marker, character and block devices, PAX xattrs, owner and times.
pub fn every_shape(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut n = 0;
    let mut put = |b: &mut tar::Builder<Vec<u8>>, kind, path: &str, mode, data: &[u8], link: Option<&str>| {
        n += 1;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(n);
        h.set_gid(2 * n);
        h.set_mtime(1_700_000_000 + n);
        h.set_size(data.len() as u64);
        match link {
            Some(t) => b.append_link(&mut h, path, t).expect("link"),
            None => b.append_data(&mut h, path, data).expect("entry"),
        }
    };
    use tar::EntryType as T;
    put(&mut b, T::Directory, "./", 0o755, b"", None);
    put(&mut b, T::Directory, "etc/", 0o750, b"", None);
    put(&mut b, T::Regular, "etc/hello", 0o644, b"hello\n", None);
    put(&mut b, T::Regular, "etc/empty", 0o600, b"", None);
    put(&mut b, T::Link, "etc/hello2", 0o644, b"", Some("etc/hello"));
    put(&mut b, T::Symlink, "etc/link", 0o777, b"", Some("hello"));
    put(&mut b, T::Regular, "data/big", 0o4755, big, None);
    put(
        &mut b,
        T::Regular,
        "data/exact",
        0o644,
        &big[..big.len().min(2 * 65536)],
        None,
    );
    put(&mut b, T::Link, "data/big2", 0o4755, b"", Some("data/big"));
    put(&mut b, T::Fifo, "var/fifo", 0o644, b"", None);
    let long = format!("deep/{}/file", "x".repeat(150));
    put(&mut b, T::Regular, &long, 0o644, b"long name\n", None);
    put(&mut b, T::Symlink, "deep/longlink", 0o777, b"", Some(&long));
    // Whiteouts and opaque markers, named as the format module names them.
    let gone = crate::format::markers::oci_name(std::ffi::OsStr::new("gone"));
    put(&mut b, T::Regular, &gone.to_string_lossy(), 0o644, b"", None);
    let opq = format!("opq/{}", crate::format::markers::OPAQUE_MARKER);
    put(&mut b, T::Regular, &opq, 0o644, b"", None);
    let device = |b: &mut tar::Builder<Vec<u8>>, kind, path: &str, mode, gid, (major, minor)| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_size(0);
        b.append_data(&mut h, path, &[][..]).expect("device");
    };
    device(&mut b, T::Char, "dev/null", 0o666, 0, (1, 3));
    device(&mut b, T::Block, "dev/sda1", 0o660, 6, (8, 1));
    let recs: [(&str, &[u8]); 5] = [
        ("SCHILY.xattr.user.color", b"blue"),
        ("SCHILY.xattr.user.bin", b"\x00\xff\x01"),
        ("uid", b"3000000"),
        ("mtime", b"1700000000.25"),
        ("atime", b"1700000001.5"),
    ];
    b.append_pax_extensions(recs).expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o640);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(7);
    b.append_data(&mut h, "etc/x", &b"xattrs\n"[..]).expect("file");
    b.into_inner().expect("tar")
}
