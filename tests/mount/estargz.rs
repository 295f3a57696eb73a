//! docs/semantics.md, "Images", eStargz: an image whose layers are eStargz (written by
//! `unionfs::image::estargz`) shows exactly what the same tars as plain gzip layers show
//! (names, types, modes, owners, times to the nanosecond, sizes, contents, link groups, xattrs,
//! devices, whiteouts and opaque directories), is cataloged from its tables of contents without
//! reading its blobs, a damaged piece fails the reads of its file only (EIO, never other bytes),
//! and a table that does not match the manifest's annotation refuses the mount.
//!
//! The tars are made by the test with the `tar` crate; the layout (two tags of one image,
//! `esgz` and `gz`) is written by the test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use unionfs::image::estargz::{self, Options, Written};
use unionfs::image::toc::ESTARGZ_TOC_DIGEST;

use crate::common::{Mount, bin, require_root};
use crate::oci;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CHUNK: u64 = 1 << 20;
/// The big file: 16 chunks and a bit, incompressible.
const BIG: usize = 16 * (1 << 20) + 12_345;

/// Bytes that do not compress (`seed` picks the sequence).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Builds a tar entry by entry.
struct Tar(tar::Builder<Vec<u8>>, u64);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()), 0)
    }

    fn header(&mut self, kind: tar::EntryType, mode: u32, owner: (u64, u64)) -> tar::Header {
        self.1 += 1;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(1_700_000_000 + self.1 * 3600);
        h.set_size(0);
        h
    }

    fn dir(&mut self, p: &str, mode: u32, owner: (u64, u64)) -> &mut Tar {
        let mut h = self.header(tar::EntryType::Directory, mode, owner);
        self.0.append_data(&mut h, p, &[][..]).expect("dir");
        self
    }

    fn file(&mut self, p: &str, mode: u32, data: &[u8]) -> &mut Tar {
        let mut h = self.header(tar::EntryType::Regular, mode, (0, 0));
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, p, data).expect("file");
        self
    }

    fn link(&mut self, kind: tar::EntryType, p: &str, target: &str) -> &mut Tar {
        let mut h = self.header(kind, 0o777, (0, 0));
        self.0.append_link(&mut h, p, target).expect("link");
        self
    }

    fn special(&mut self, kind: tar::EntryType, p: &str, dev: (u32, u32)) -> &mut Tar {
        let mut h = self.header(kind, 0o660, (0, 6));
        h.set_device_major(dev.0).expect("major");
        h.set_device_minor(dev.1).expect("minor");
        self.0.append_data(&mut h, p, &[][..]).expect("special");
        self
    }

    /// A file with PAX records (xattrs, a uid past what the header holds, a fractional time).
    fn pax_file(&mut self, p: &str, data: &[u8], records: &[(&str, &[u8])]) -> &mut Tar {
        self.0.append_pax_extensions(records.iter().copied()).expect("pax");
        let mut h = self.header(tar::EntryType::Regular, 0o640, (0, 0));
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, p, data).expect("file");
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().expect("tar")
    }
}

fn base_tar(big: &[u8]) -> Vec<u8> {
    use tar::EntryType as T;
    let long = format!("deep/{}/file", "n".repeat(140));
    Tar::new()
        .dir("./", 0o755, (0, 0))
        .dir("etc/", 0o750, (1, 2))
        .file("etc/hello", 0o644, b"hello\n")
        .file("etc/empty", 0o600, b"")
        .link(T::Link, "etc/hello2", "etc/hello")
        .link(T::Link, "etc/hello3", "etc/hello")
        .link(T::Symlink, "etc/link", "hello")
        .link(T::Symlink, "etc/dangling", "/nowhere/at/all")
        .pax_file(
            "etc/x",
            b"xattrs\n",
            &[
                ("SCHILY.xattr.user.color", b"blue"),
                ("SCHILY.xattr.user.bin", b"\x00\xff\x01"),
                ("uid", b"3000000"),
                ("mtime", b"1700000000.25"),
            ],
        )
        .file("data/big", 0o640, big)
        .file("data/small", 0o644, &big[..4000])
        .file("data/chunk", 0o644, &big[..CHUNK as usize])
        .link(T::Link, "data/big2", "data/big")
        .special(T::Fifo, "var/fifo", (0, 0))
        .special(T::Char, "dev/null", (1, 3))
        .special(T::Block, "dev/loop0", (7, 0))
        .file(&long, 0o644, b"a long name\n")
        .link(T::Symlink, "deep/to-long", &long)
        .file("opt/gone/g", 0o644, b"g\n")
        .file("opt/keep/k", 0o644, b"k\n")
        .file("var/del", 0o644, b"d\n")
        .file("srv/suid", 0o4755, b"s\n")
        .dir("home/u/", 0o700, (1000, 1000))
        .finish()
}

fn top_tar() -> Vec<u8> {
    Tar::new()
        .file("var/.wh.del", 0o644, b"")
        .dir("opt/gone/", 0o755, (0, 0))
        .file("opt/gone/.wh..wh..opq", 0o644, b"")
        .file("opt/gone/new", 0o644, b"new\n")
        .file("etc/hello", 0o644, b"changed\n")
        .file("etc/added", 0o644, b"added\n")
        .link(tar::EntryType::Link, "etc/added2", "etc/added")
        .finish()
}

/// A layer to put in a layout.
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
    annotations: Vec<(String, String)>,
}

fn plain(tar: &[u8]) -> Layer {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(tar).expect("gzip");
    Layer {
        blob: e.finish().expect("gzip"),
        diff_id: format!("sha256:{:x}", Sha256::digest(tar)),
        annotations: Vec::new(),
    }
}

fn esgz(tar: &[u8]) -> (Layer, Written) {
    let mut blob = Vec::new();
    let opts = Options {
        chunk_size: CHUNK,
        ..Options::default()
    };
    let w = estargz::write(tar, &mut blob, &opts).expect("estargz");
    let layer = Layer {
        blob,
        diff_id: w.diff_id.clone(),
        annotations: w.annotations().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    (layer, w)
}

/// Writes the layout `dir` with one image a tag, each of `layers` (base first).
fn layout(dir: &Path, images: &[(&str, &[Layer])]) {
    let dir = oci::new_layout(dir);
    let mut manifests = Vec::new();
    for (tag, layers) in images {
        let descs: Vec<(serde_json::Value, String)> = layers
            .iter()
            .map(|l| {
                let mut d = oci::put(&dir, GZIP, &l.blob);
                let notes: serde_json::Map<String, serde_json::Value> = l
                    .annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                d["annotations"] = notes.into();
                (d, l.diff_id.clone())
            })
            .collect();
        let arch = unionfs::image::layout::host_arch();
        manifests.push(oci::tagged(oci::image(&dir, &descs, arch), tag));
    }
    oci::write_index(&dir, manifests);
}

/// The test image: tags `esgz` and `gz` of the same two tars, and what writing them gave.
struct Fixture {
    dir: tempfile::TempDir,
    big: Vec<u8>,
    written: Vec<Written>,
}

impl Fixture {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }
}

fn fixture() -> Fixture {
    let big = noise(BIG, 3);
    let tars = [base_tar(&big), top_tar()];
    let (e0, w0) = esgz(&tars[0]);
    let (e1, w1) = esgz(&tars[1]);
    let dir = tempfile::Builder::new()
        .prefix("unionfs-estargz")
        .tempdir()
        .expect("tmp");
    let gz = [plain(&tars[0]), plain(&tars[1])];
    layout(&dir.path().join("layout"), &[("esgz", &[e0, e1]), ("gz", &gz)]);
    Fixture {
        dir,
        big,
        written: vec![w0, w1],
    }
}

fn mount_image(layout: &Path, tag: &str, cache: &Path, mnt: &Path) -> Mount {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    let mut args: Vec<OsString> = vec!["mount".into(), "--foreground".into(), "--image".into()];
    args.push(format!("oci:{}:{tag}", layout.display()).into());
    args.extend(["--cache".into(), cache.into(), mnt.into()]);
    Mount::start(&args, mnt)
}

/// One object of a view.
#[derive(Debug, PartialEq, Eq)]
struct Obj {
    kind: char,
    mode: u32,
    owner: (u32, u32),
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    nlink: u64,
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in name order) with the same inode number.
    group: PathBuf,
}

/// Every object below `root`, by path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Obj> {
    let mut first: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (rel, md, kind, data) in super::images::walk(root) {
        let obj = Obj {
            kind,
            mode: md.mode() & 0o7777,
            owner: (md.uid(), md.gid()),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            rdev: md.rdev(),
            nlink: md.nlink(),
            data,
            xattrs: crate::common::all_xattrs(&root.join(&rel))
                .into_iter()
                .filter(|(n, _)| n.starts_with("user."))
                .collect(),
            group: first.entry(md.ino()).or_insert(rel.clone()).clone(),
        };
        out.insert(rel, obj);
    }
    out
}

/// Bytes the process `pid` has read so far (`rchar` of /proc/PID/io).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar")
}

#[test]
fn an_estargz_image_shows_what_the_same_gzip_image_shows_without_reading_its_blobs() {
    if !require_root("image views with owners and device nodes") {
        return;
    }
    let f = fixture();
    let t = tempfile::tempdir().expect("tmp");
    let m = mount_image(&f.layout(), "gz", &t.path().join("cache-gz"), &t.path().join("gz"));
    let gz_read = bytes_read(m.pid().expect("pid"));
    let want = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));

    let m = mount_image(
        &f.layout(),
        "esgz",
        &t.path().join("cache-esgz"),
        &t.path().join("esgz"),
    );
    let esgz_read = bytes_read(m.pid().expect("pid"));
    let got = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));

    // The plain gzip layers are scanned whole; the eStargz ones only have their tables read.
    assert!(
        gz_read > BIG as u64,
        "a scan reads the whole blob ({gz_read} bytes read)"
    );
    assert!(
        esgz_read < BIG as u64 / 16,
        "a cold eStargz mount reads its tables, not its blobs ({esgz_read} bytes read, the big layer is {} bytes)",
        f.written[0].size
    );

    let diff: Vec<String> = want
        .iter()
        .filter(|(p, o)| got.get(*p) != Some(o))
        .map(|(p, o)| {
            let g = got.get(p);
            let strip = |o: &Obj| {
                (
                    o.kind,
                    o.mode,
                    o.owner,
                    o.size,
                    o.mtime,
                    o.rdev,
                    o.nlink,
                    o.group.clone(),
                )
            };
            format!("{}: gz {:?} esgz {:?}", p.display(), strip(o), g.map(strip))
        })
        .chain(
            got.keys()
                .filter(|p| !want.contains_key(*p))
                .map(|p| format!("only in esgz: {}", p.display())),
        )
        .collect();
    assert!(diff.is_empty(), "the eStargz view differs:\n{}", diff.join("\n"));

    // What the view must hold, so that the comparison compares something.
    let at = |p: &str| want.get(Path::new(p)).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(at("data/big").data, f.big);
    assert_eq!(at("data/big2").group, PathBuf::from("data/big"));
    assert_eq!(
        (at("etc/hello2").nlink, at("etc/hello2").data.as_slice()),
        (3, &b"hello\n"[..])
    );
    assert_eq!(at("etc/hello").data, b"changed\n");
    assert_eq!(at("etc/added2").group, PathBuf::from("etc/added"));
    let x = at("etc/x");
    assert_eq!((x.owner.0, x.mtime), (3_000_000, (1_700_000_000, 250_000_000)));
    assert_eq!(x.xattrs.get("user.bin").map(Vec::as_slice), Some(&b"\x00\xff\x01"[..]));
    assert_eq!(
        (at("dev/null").kind, at("dev/null").rdev),
        ('c', rustix::fs::makedev(1, 3))
    );
    assert_eq!(at("dev/loop0").kind, 'b');
    assert_eq!(at("var/fifo").kind, 'p');
    assert_eq!(at("srv/suid").mode, 0o4755);
    assert_eq!(at("home/u").owner, (1000, 1000));
    assert_eq!(at("etc/empty").size, 0);
    for gone in ["var/del", "opt/gone/g", ".no.prefetch.landmark", "stargz.index.json"] {
        assert!(!want.contains_key(Path::new(gone)), "{gone} must not be visible");
    }
    assert!(want.contains_key(Path::new("opt/gone/new")) && want.contains_key(Path::new("opt/keep/k")));
}

#[test]
fn an_estargz_blob_is_a_gzip_tar_any_tool_reads() {
    if !require_root("the image tests run as root") {
        return;
    }
    let f = fixture();
    let image = unionfs::image::layout::open(&f.layout(), Some("esgz")).expect("image");
    let blob = unionfs::image::layout::blob_path(&f.layout(), &image.layers[0].digest).expect("blob");
    let ok = Command::new("gzip").arg("-t").arg(&blob).status().expect("gzip");
    assert!(ok.success(), "gzip -t");
    let out = Command::new("tar").arg("-tzvf").arg(&blob).output().expect("tar");
    assert!(
        out.status.success(),
        "tar -tzvf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    for name in [
        ".no.prefetch.landmark",
        "data/big",
        "etc/hello2 link to etc/hello",
        "stargz.index.json",
    ] {
        assert!(list.contains(name), "tar -tzvf lists {name}:\n{list}");
    }
    // The DiffID is the uncompressed stream's, table included.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&blob).expect("open"))
        .read_to_end(&mut plain)
        .expect("gunzip");
    assert_eq!(image.layers[0].diff_id, format!("sha256:{:x}", Sha256::digest(&plain)));
}

/// A copy of the fixture's layout whose base eStargz blob is `f(blob, written)`.
fn damaged(f: &Fixture, dir: &Path, damage: impl Fn(&mut Vec<u8>, &Written)) -> PathBuf {
    let copy = dir.join("layout");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(f.layout())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(ok.success());
    let image = unionfs::image::layout::open(&copy, Some("esgz")).expect("image");
    let blob = unionfs::image::layout::blob_path(&copy, &image.layers[0].digest).expect("blob");
    let mut b = std::fs::read(&blob).expect("read");
    damage(&mut b, &f.written[0]);
    std::fs::write(&blob, &b).expect("write");
    blob
}

/// The offset in the blob of the member of `data/big`'s piece `k`, from the table.
fn piece_offset(blob: &[u8], w: &Written, k: usize) -> usize {
    let mut member = Vec::new();
    flate2::read::GzDecoder::new(&blob[w.toc_offset as usize..])
        .read_to_end(&mut member)
        .expect("table member");
    let mut ar = tar::Archive::new(&member[..]);
    let mut e = ar.entries().expect("entries").next().expect("one").expect("entry");
    let mut json = Vec::new();
    e.read_to_end(&mut json).expect("json");
    let toc: serde_json::Value = serde_json::from_slice(&json).expect("json");
    let pieces: Vec<&serde_json::Value> = toc["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["name"] == "data/big")
        .collect();
    assert_eq!(pieces.len(), BIG.div_ceil(CHUNK as usize));
    pieces[k]["offset"].as_u64().expect("offset") as usize
}

#[test]
fn a_damaged_piece_fails_its_file_only_and_never_with_other_bytes() {
    if !require_root("the image tests run as root") {
        return;
    }
    let f = fixture();
    let t = tempfile::tempdir().expect("tmp");
    // A byte in the middle of the compressed data of the big file's third piece.
    damaged(&f, t.path(), |b, w| {
        let at = piece_offset(b, w, 2) + (CHUNK / 2) as usize;
        b[at] ^= 0x10;
    });
    let m = mount_image(
        &t.path().join("layout"),
        "esgz",
        &t.path().join("cache"),
        &t.path().join("mnt"),
    );
    let err = std::fs::read(m.path("data/big")).expect_err("reading the damaged file fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Its other pieces, and other files, read right.
    let file = std::fs::File::open(m.path("data/big")).expect("open");
    let mut buf = vec![0u8; 100_000];
    file.read_exact_at(&mut buf, 5 * CHUNK + 7).expect("an intact piece");
    assert_eq!(buf, f.big[5 * CHUNK as usize + 7..5 * CHUNK as usize + 7 + 100_000]);
    let err = file
        .read_exact_at(&mut buf, 2 * CHUNK + 10)
        .expect_err("the damaged piece");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(std::fs::read(m.path("data/small")).expect("read"), &f.big[..4000]);
    assert_eq!(std::fs::read(m.path("etc/hello2")).expect("read"), b"hello\n");
    drop(file);
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_table_that_does_not_match_its_annotation_refuses_the_mount_in_one_line() {
    if !require_root("the image tests run as root") {
        return;
    }
    let big = noise(3 * CHUNK as usize, 4);
    let (mut base, _) = esgz(&base_tar(&big));
    let (top, top_written) = esgz(&top_tar());
    // The base layer's annotation names another table (the top layer's).
    for (k, v) in base.annotations.iter_mut() {
        if k == ESTARGZ_TOC_DIGEST {
            *v = top_written.toc_digest.clone();
        }
    }
    let t = tempfile::tempdir().expect("tmp");
    let dir = t.path().join("layout");
    layout(&dir, &[("bad", &[base, top])]);
    let image = unionfs::image::layout::open(&dir, Some("bad")).expect("image");
    let blob = unionfs::image::layout::blob_path(&dir, &image.layers[0].digest).expect("blob");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = Command::new(bin())
        .args(["mount", "--image"])
        .arg(format!("oci:{}:bad", dir.display()))
        .arg("--cache")
        .arg(t.path().join("cache"))
        .arg(&mnt)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&blob.display().to_string()),
        "names the layer's blob: {err}"
    );
    assert!(err.contains("table of contents digest"), "says why: {err}");
    assert!(!crate::common::is_mounted(&mnt), "nothing mounted");
}
