//! docs/semantics.md, "Images": offsets past 4 GiB. A layer whose tar holds a 5 GiB file and then
//! a small one, as gzip and as zstd: the small file's data starts past 4 GiB in the decompressed
//! stream (and, for gzip, past the restart points a 32-bit offset could name), so a catalog or a
//! restart point that kept offsets in 32 bits would read the wrong bytes. The layers are written
//! by this test (the tar streamed, never held whole), with their DiffIDs and digests, into an OCI
//! layout of its own.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::common::Mount;
use crate::oci;

/// The big file's size: past 4 GiB by more than a gzip restart interval.
const BIG: u64 = 5 << 30;

/// What the big file ends with (the rest is zeros).
const TAIL: &[u8] = b"the end of five GiB\n";

const AFTER: &[u8] = b"a small file after the big one\n";

/// Zeros, then `TAIL`, `len` bytes in all.
struct BigData {
    pos: u64,
    len: u64,
}

impl Read for BigData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        let n = (buf.len() as u64).min(left) as usize;
        let tail_start = self.len - TAIL.len() as u64;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.pos + i as u64;
            *b = if at >= tail_start {
                TAIL[(at - tail_start) as usize]
            } else {
                0
            };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Hashes what goes through it (the DiffID of the tar written into it).
struct Tee<W: Write> {
    hash: Sha256,
    out: W,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Streams the layer's tar into `out`; returns the tar's sha256 (the DiffID).
fn write_tar<W: Write>(out: W) -> (String, W) {
    let mut b = tar::Builder::new(Tee {
        hash: Sha256::new(),
        out,
    });
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(BIG);
    b.append_data(&mut h, "big", BigData { pos: 0, len: BIG })
        .expect("append big");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(AFTER.len() as u64);
    b.append_data(&mut h, "after", AFTER).expect("append after");
    let tee = b.into_inner().expect("finish tar");
    (format!("sha256:{:x}", tee.hash.finalize()), tee.out)
}

fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).expect("open blob");
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).expect("hash blob");
    format!("sha256:{:x}", h.finalize())
}

/// Writes the layer (gzip or zstd) into `layout` and tags an image of it `tag`; returns the
/// manifest's descriptor.
fn add_image(layout: &Path, tag: &str, zstd: bool) -> serde_json::Value {
    let tmp = layout.join(format!("layer.{tag}"));
    let file = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create layer"));
    let (diff_id, media) = if zstd {
        let enc = zstd::Encoder::new(file, 1).expect("zstd");
        let (d, enc) = write_tar(enc);
        enc.finish().expect("finish zstd").flush().expect("flush");
        (d, "application/vnd.oci.image.layer.v1.tar+zstd")
    } else {
        let enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let (d, enc) = write_tar(enc);
        enc.finish().expect("finish gzip").flush().expect("flush");
        (d, "application/vnd.oci.image.layer.v1.tar+gzip")
    };
    let digest = sha256_file(&tmp);
    let size = std::fs::metadata(&tmp).expect("stat layer").len();
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&digest[7..])).expect("blob in place");
    let layer = serde_json::json!({"mediaType": media, "digest": digest, "size": size});
    let arch = unionfs::image::layout::host_arch();
    oci::tagged(oci::image(layout, &[(layer, diff_id)], arch), tag)
}

#[test]
fn offsets_past_4_gib_read_the_right_bytes_in_gzip_and_zstd_layers() {
    let t = tempfile::tempdir().expect("tmp");
    let layout = oci::new_layout(&t.path().join("layout"));
    let start = std::time::Instant::now();
    let manifests = vec![add_image(&layout, "gz", false), add_image(&layout, "zst", true)];
    eprintln!("two 5 GiB layers written in {:?}", start.elapsed());
    oci::write_index(&layout, manifests);
    for tag in ["gz", "zst"] {
        let mnt = t.path().join(format!("mnt-{tag}"));
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let cache = t.path().join(format!("cache-{tag}"));
        let args: Vec<OsString> = vec![
            "mount".into(),
            "--foreground".into(),
            "--image".into(),
            format!("oci:{}:{tag}", layout.display()).into(),
            "--cache".into(),
            cache.into(),
            mnt.clone().into(),
        ];
        let start = std::time::Instant::now();
        // The first mount reads both 5 GiB layers once (a minute or more on a busy machine).
        let m = Mount::start_slow(&args, &mnt, std::time::Duration::from_secs(600));
        eprintln!("{tag}: indexed and mounted in {:?}", start.elapsed());
        assert_eq!(std::fs::read(m.path("after")).expect("read after"), AFTER, "{tag}");
        let big = std::fs::File::open(m.path("big")).expect("open big");
        assert_eq!(big.metadata().expect("stat big").len(), BIG, "{tag}");
        let mut buf = vec![0u8; TAIL.len()];
        big.read_exact_at(&mut buf, BIG - TAIL.len() as u64)
            .expect("read the tail");
        assert_eq!(buf, TAIL, "{tag}: the last bytes of the big file");
        // Just past 4 GiB, and across it: zeros.
        let mut buf = vec![1u8; 8192];
        big.read_exact_at(&mut buf, (4 << 30) - 4096)
            .expect("read across 4 GiB");
        assert!(buf.iter().all(|&b| b == 0), "{tag}: zeros across 4 GiB");
        drop(big);
        m.unmount();
    }
}
