//! docs/semantics.md, "Images": `unionfs mount --image oci:DIR:TAG` shows an OCI image's layers,
//! read in place from their blobs, exactly as `umoci unpack` of the same image gives them
//! (names, types, modes, owners, times, contents, link groups, xattrs, devices), whatever the
//! layers' compression (gzip, zstd, zstd:chunked); as root and as a plain user; with an upper on
//! top like any lower; and a damaged blob or cache never shows other bytes.
//!
//! The image is built offline by the test (Buildah from scratch with busybox, pushed to an OCI
//! layout by skopeo and Buildah), once per run of this binary.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::{Mount, bin, require_program, require_root};

/// The layout every test reads, built once: tags `gz`, `zst`, `chunked` of one image.
pub(crate) struct Images {
    _dir: tempfile::TempDir,
    pub(crate) layout: PathBuf,
    /// `umoci unpack` of the `gz` tag.
    pub(crate) unpacked: PathBuf,
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn sh(script: &str) -> Output {
    run(Command::new("sh").arg("-ec").arg(script))
}

/// The shell steps that make the base layer's tree in `$m`.
const BASE: &str = r#"
mkdir -p $m/bin $m/etc $m/opt/keep $m/opt/gone $m/var $m/dev $m/data $m/srv $m/home/u $m/a/b/c/d/e
cp /bin/busybox $m/bin/
echo hello > $m/etc/hello; ln $m/etc/hello $m/etc/hello2; ln -s hello $m/etc/link
echo k > $m/opt/keep/k; echo g > $m/opt/gone/g; echo d > $m/var/del
echo x > $m/etc/xf; setfattr -n user.color -v blue $m/etc/xf
mknod $m/dev/null c 1 3; mkfifo $m/var/fifo
truncate -s 10M $m/var/sparse; echo tail >> $m/var/sparse
head -c 3000000 /bin/busybox > $m/data/big; cat /bin/busybox >> $m/data/big
echo s > $m/srv/suid; chmod 4755 $m/srv/suid
echo o > $m/home/u/owned; chown 1000:1000 $m/home/u/owned $m/home/u
echo deep > $m/a/b/c/d/e/file
"#;

/// What the top layer changes: a whiteout, a directory removed and made again, a change, an
/// addition.
const TOP: &str = r#"
rm $m/var/del; rm -rf $m/opt/gone; mkdir $m/opt/gone; echo new > $m/opt/gone/new
echo changed > $m/etc/hello; echo added > $m/etc/added
"#;

pub(crate) fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(build_images)
}

fn build_images() -> Images {
    let dir = tempfile::Builder::new().prefix("unionfs-image").tempdir().expect("tmp");
    let d = dir.path().display().to_string();
    let buildah = format!("buildah --root {d}/root --runroot {d}/runroot --storage-driver vfs");
    let store = format!("containers-storage:[vfs@{d}/root+{d}/runroot]");
    sh(&format!(
        r#"
c=$({buildah} from scratch); m=$({buildah} mount $c)
{BASE}
{buildah} unmount $c >/dev/null; {buildah} commit $c base >/dev/null 2>&1
c=$({buildah} from localhost/base); m=$({buildah} mount $c)
{TOP}
{buildah} unmount $c >/dev/null; {buildah} commit $c top >/dev/null 2>&1
skopeo copy {store}localhost/top oci:{d}/layout:gz >/dev/null
skopeo copy --dest-compress-format zstd {store}localhost/top oci:{d}/layout:zst >/dev/null
{buildah} push --compression-format zstd:chunked localhost/top oci:{d}/layout:chunked >/dev/null 2>&1
umoci unpack --image {d}/layout:gz {d}/bundle >/dev/null
"#
    ));
    Images {
        layout: dir.path().join("layout"),
        unpacked: dir.path().join("bundle/rootfs"),
        _dir: dir,
    }
}

pub(crate) fn prerequisites() -> bool {
    require_root("Buildah, umoci and device nodes")
        && require_program("buildah", "buildah")
        && require_program("skopeo", "skopeo")
        && require_program("umoci", "umoci")
}

/// One object of a tree, with everything an unpacked image fixes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Obj {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    rdev: u64,
    /// File contents, a symlink's target.
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in name order) of the object's link group, for files with several names.
    group: Option<PathBuf>,
}

/// `tree` as Podman 4.3's partial pulls of zstd:chunked layers make it, whoever wrote the
/// layer (Buildah's as much as ours): every mtime the time of the pull, every owner root, no
/// device nodes. What is left (names, types, modes, contents, xattrs, links) must match.
pub(crate) fn as_partial_pulls_keep(tree: BTreeMap<PathBuf, Obj>) -> BTreeMap<PathBuf, Obj> {
    tree.into_iter()
        .filter(|(_, o)| !matches!(o.kind, 'c' | 'b'))
        .map(|(p, o)| {
            let o = Obj {
                mtime: 0,
                uid: 0,
                gid: 0,
                ..o
            };
            (p, o)
        })
        .collect()
}

/// Every object below `root` (not `root` itself), by path.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<PathBuf, Obj> {
    let mut out = BTreeMap::new();
    let mut first_of: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for (rel, md, kind, data) in walk(root) {
        let group = (kind == 'f' && md.nlink() > 1).then(|| first_of.entry(md.ino()).or_insert(rel.clone()).clone());
        let xattrs = xattrs(&root.join(&rel));
        out.insert(
            rel,
            Obj {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                rdev: md.rdev(),
                data,
                xattrs,
                group,
            },
        );
    }
    out
}

/// Every object below `root` (not `root` itself), in path order: its path relative to
/// `root`, its lstat, its kind (`d`, `l`, `c`, `b`, `p`, `s`, `f`) and its data (a file's
/// contents, a symlink's target).
pub(crate) fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata, char, Vec<u8>)> {
    let mut stack = vec![root.to_path_buf()];
    let mut paths = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("entry").path();
            if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let kind = match () {
                _ if ft.is_dir() => 'd',
                _ if ft.is_symlink() => 'l',
                _ if ft.is_char_device() => 'c',
                _ if ft.is_block_device() => 'b',
                _ if ft.is_fifo() => 'p',
                _ if ft.is_socket() => 's',
                _ => 'f',
            };
            let data = match kind {
                'f' => std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())),
                'l' => std::fs::read_link(&p)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => Vec::new(),
            };
            let rel = p.strip_prefix(root).expect("below root").to_path_buf();
            (rel, md, kind, data)
        })
        .collect()
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    crate::common::all_xattrs(p)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("system.") && !n.starts_with("security.selinux"))
        .collect()
}

/// Differences between two snapshots, for a readable failure.
pub(crate) fn diff(a: &BTreeMap<PathBuf, Obj>, b: &BTreeMap<PathBuf, Obj>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, o) in a {
        match b.get(p) {
            None => out.push(format!("only in the first: {}", p.display())),
            Some(x) if x != o => out.push(format!(
                "{}: {:?} != {:?}",
                p.display(),
                (
                    o.kind,
                    o.mode,
                    o.uid,
                    o.gid,
                    o.mtime,
                    o.rdev,
                    o.data.len(),
                    &o.xattrs,
                    &o.group
                ),
                (
                    x.kind,
                    x.mode,
                    x.uid,
                    x.gid,
                    x.mtime,
                    x.rdev,
                    x.data.len(),
                    &x.xattrs,
                    &x.group
                )
            )),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("only in the second: {}", p.display()));
    }
    out
}

/// `unionfs mount --foreground --image oci:LAYOUT:TAG --cache CACHE [extra] MNT`.
pub(crate) fn mount_image(layout: &Path, tag: &str, cache: &Path, extra: &[&str], mnt: &Path) -> Mount {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    let mut args: Vec<OsString> = vec!["mount".into(), "--foreground".into(), "--image".into()];
    args.push(format!("oci:{}:{tag}", layout.display()).into());
    args.extend(["--cache".into(), cache.into()]);
    args.extend(extra.iter().map(OsString::from));
    args.push(mnt.into());
    Mount::start(&args, mnt)
}

#[test]
fn every_compression_shows_what_umoci_unpacks() {
    if !prerequisites() {
        return;
    }
    let img = images();
    let want = snapshot(&img.unpacked);
    assert!(want.contains_key(Path::new("etc/hello2")) && !want.contains_key(Path::new("var/del")));
    let t = tempfile::tempdir().expect("tmp");
    for tag in ["gz", "zst", "chunked"] {
        let m = mount_image(&img.layout, tag, &t.path().join("cache"), &[], &t.path().join(tag));
        let got = snapshot(&m.mnt);
        let d = diff(&want, &got);
        assert!(
            d.is_empty(),
            "{tag}: the view differs from umoci unpack:\n{}",
            d.join("\n")
        );
        assert_eq!(m.unmount(), Some(0));
    }
}

#[test]
fn an_upper_over_an_image_changes_nothing_of_it_and_keeps_its_changes() {
    if !prerequisites() {
        return;
    }
    let img = images();
    let t = tempfile::tempdir().expect("tmp");
    let (upper, cache, mnt) = (t.path().join("upper"), t.path().join("cache"), t.path().join("mnt"));
    std::fs::create_dir(&upper).expect("mkdir");
    let blobs_before = snapshot(&img.layout);
    let extra = ["--upper", upper.to_str().expect("utf-8")];
    let m = mount_image(&img.layout, "zst", &cache, &extra, &mnt);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("etc/hello"))
        .and_then(|mut f| f.write_all(b"more\n"))
        .expect("append to an image file");
    assert_eq!(
        std::fs::read(m.path("etc/hello2")).expect("read"),
        b"changed\nmore\n",
        "hard link follows"
    );
    std::fs::remove_file(m.path("data/big")).expect("rm an image file");
    std::fs::remove_dir_all(m.path("a")).expect("rm -rf an image tree");
    std::fs::write(m.path("opt/keep/new"), b"n").expect("create");
    let view = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));
    let m = mount_image(&img.layout, "zst", &cache, &extra, &mnt);
    let again = snapshot(&m.mnt);
    let d = diff(&view, &again);
    assert!(d.is_empty(), "the view changed across a remount:\n{}", d.join("\n"));
    assert!(!m.path("data/big").exists() && !m.path("a").exists());
    assert_eq!(m.unmount(), Some(0));
    assert!(
        diff(&blobs_before, &snapshot(&img.layout)).is_empty(),
        "the layout changed"
    );
}

/// A copy of the layout whose first blob of the `gz` image is `f(blob)`.
fn damaged_layout(dir: &Path, f: impl Fn(&mut Vec<u8>)) -> (PathBuf, PathBuf) {
    let copy = dir.join("layout");
    run(Command::new("cp").arg("-a").arg(&images().layout).arg(&copy));
    let image = unionfs::image::layout::open(&copy, Some("gz")).expect("image");
    let blob = unionfs::image::layout::blob_path(&copy, &image.layers[0].digest).expect("blob");
    let mut b = std::fs::read(&blob).expect("read blob");
    f(&mut b);
    std::fs::write(&blob, &b).expect("write blob");
    (copy, blob)
}

#[test]
fn a_corrupt_or_truncated_blob_is_refused_with_one_line_and_nothing_mounted() {
    if !prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Damage); 2] = [
        (
            "corrupt",
            Box::new(|b: &mut Vec<u8>| {
                let mid = b.len() / 2;
                b[mid] ^= 0x20;
            }),
        ),
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 7))),
    ];
    for (what, f) in cases {
        let dir = t.path().join(what);
        std::fs::create_dir(&dir).expect("mkdir");
        let (layout, blob) = damaged_layout(&dir, f);
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let out = Command::new(bin())
            .args(["mount", "--image"])
            .arg(format!("oci:{}:gz", layout.display()))
            .arg("--cache")
            .arg(dir.join("cache"))
            .arg(&mnt)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(
            err.contains(&blob.display().to_string()),
            "{what}: names the blob: {err}"
        );
        assert!(!crate::common::is_mounted(&mnt), "{what}: nothing mounted");
    }
}

#[test]
fn a_damaged_or_removed_cache_never_serves_other_bytes() {
    if !prerequisites() {
        return;
    }
    let img = images();
    let want = std::fs::read(img.unpacked.join("data/big")).expect("oracle");
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let m = mount_image(&img.layout, "zst", &cache, &[], &t.path().join("mnt"));
    assert_eq!(std::fs::read(m.path("data/big")).expect("read"), want);
    let pieces = files_below(&cache.join("content"));
    assert!(!pieces.is_empty(), "reads of a zstd layer go through the content cache");
    for p in &pieces {
        std::fs::write(p, b"not what it was").expect("damage a cached piece");
    }
    drop_page_cache();
    assert_eq!(std::fs::read(m.path("data/big")).expect("read after damage"), want);
    std::fs::remove_dir_all(&cache).expect("rm the cache while mounted");
    drop_page_cache();
    assert_eq!(std::fs::read(m.path("data/big")).expect("read without a cache"), want);
    assert_eq!(m.unmount(), Some(0));
}

fn files_below(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with('.')
                && e.file_name() != "lock"
                && e.file_name() != "size"
            {
                out.push(e.path());
            }
        }
    }
    out
}

/// Makes the kernel forget cached file pages, so reads reach the daemon again.
pub(crate) fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", b"1").expect("drop_caches (root)");
}

#[test]
fn a_missing_tag_is_one_line_listing_the_tags() {
    if !prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let out = Command::new(bin())
        .args(["mount", "--image"])
        .arg(format!("oci:{}:nosuchtag", images().layout.display()))
        .arg(t.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("nosuchtag") && err.contains("gz") && err.contains("chunked"),
        "{err}"
    );
}

/// What a plain user and root must both see of an image's tree: every entry's type, mode,
/// owner and mtime, and for all but directories size, link count, device numbers, `user.`
/// xattrs, a symlink's target and the contents of files everyone may read. Run as root on the unpacked image and as
/// the user on the mount (root cannot look into a plain user's FUSE mount). The files the test
/// makes (`new-*`) are left out.
const LISTING: &str = r#"
cd "$1" && find . -mindepth 1 ! -name 'new-*' | LC_ALL=C sort | while read -r p; do
  if [ -d "$p" ] && [ ! -L "$p" ]; then stat -c '%n|%F|%a|%u|%g|%Y' "$p"; continue; fi
  stat -c '%n|%F|%a|%u|%g|%Y|%s|%h|%t|%T' "$p"
  getfattr -h -d -m '^user\.' "$p" 2>/dev/null | grep '=' || true
  if [ -L "$p" ]; then echo "-> $(readlink "$p")"
  elif [ -f "$p" ]; then case $(stat -c %A "$p") in ???????r*) sha256sum < "$p";; esac
  fi
done
"#;

#[test]
fn a_plain_user_mounts_an_image_through_fusermount3() {
    if !prerequisites() {
        return;
    }
    let img = images();
    let user = crate::as_user::rootless_user();
    let want = sh(&format!("set -- {}\n{LISTING}", img.unpacked.display())).stdout;
    let want = String::from_utf8_lossy(&want).into_owned();
    assert!(
        want.contains("./etc/hello2|")
            && want.contains("./dev/null|character special file")
            && want.contains("user.color=\"blue\""),
        "{want}"
    );
    // The user's own copy of the layout (root's is private), and its own cache.
    let l = crate::as_user::user_layers(user, |l| {
        run(Command::new("cp")
            .arg("-a")
            .arg(&img.layout)
            .arg(l.dir.path().join("layout")));
    });
    let before = snapshot(&l.dir.path().join("layout"));
    for tag in ["zst", "chunked"] {
        let image = format!("oci:{}:{tag}", l.dir.path().join("layout").display());
        let cache = l.dir.path().join(format!("cache-{tag}"));
        let cache = cache.to_str().expect("utf-8");
        let m = crate::as_user::UserMount::start(user, &l, &["--image", &image, "--cache", cache]);
        let got = crate::as_user::user_sh_ok(user, LISTING, &[m.mnt.as_os_str()]);
        assert_eq!(got, want, "{tag}: the view as the user differs from umoci unpack");
        // The view's root is the user's upper: the user may add to it; the image's own files
        // keep their owners and modes, so a root-owned file stays closed to the user.
        let new = format!("new-{tag}");
        crate::as_user::user_sh_ok(user, &format!("echo made > \"$1/{new}\""), &[m.mnt.as_os_str()]);
        let (code, _) = crate::as_user::user_sh(user, "echo no >> \"$1/etc/hello\"", &[m.mnt.as_os_str()]);
        assert_ne!(code, 0, "{tag}: a plain user appended to a root-owned 0644 image file");
        m.finish();
        assert_eq!(
            std::fs::read(l.upper.join(&new)).expect("the new file in the upper"),
            b"made\n"
        );
        assert!(!l.upper.join("etc").exists(), "{tag}: a refused write left a copy-up");
    }
    let d = diff(&before, &snapshot(&l.dir.path().join("layout")));
    assert!(d.is_empty(), "the layout changed:\n{}", d.join("\n"));
}
