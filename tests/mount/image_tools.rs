//! README, "Layer tools" with `--image`: `diff`, `size`, `layers`, `check` and `commit` read an
//! OCI image's layers as the bottom lowers, the stack `unionfs mount --image` shows; `commit
//! --image oci:L:TAG --tag NEW` adds the upper's layer to the image as a new tagged image.
//!
//! The oracles are independent: `umoci unpack`, `podman pull` into a private store (its tree
//! through `podman image mount`), `skopeo inspect`, and a mount of the new tag, each compared
//! with the view the upper was written through. A failed commit leaves the layout as it was,
//! byte for byte. The image is the one `images.rs` builds (once per run), copied per test.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::images::{diff, images, mount_image, prerequisites, run, sh, snapshot};
use crate::common::podman::{Podman, require_podman};
use crate::common::{TmpfsGuard, bin, require_program};

/// Every tool these tests use, or the test fails: a test here that checks nothing proves nothing.
pub(crate) fn need() {
    assert!(
        prerequisites() && require_program("podman", "podman") && require_podman(),
        "root, buildah, skopeo, umoci and podman are required"
    );
}

fn unionfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unionfs")
}

/// `unionfs ARGS`, which must succeed; its stdout.
pub(crate) fn tool<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let o = unionfs(args);
    assert!(
        o.status.success(),
        "unionfs {args:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A copy of the shared layout (tags `gz`, `zst`, `chunked`) in `dir`, to write into.
pub(crate) fn layout_copy(dir: &Path) -> PathBuf {
    let l = dir.join("layout");
    run(Command::new("cp").arg("-a").arg(&images().layout).arg(&l));
    l
}

pub(crate) fn oci(layout: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", layout.display())
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What the test does through the mount: one change of each kind an OCI layer carries.
pub(crate) const CHANGES: &str = r#"
echo new > $m/etc/added2
setfattr -n user.fresh -v yes $m/etc/added2
ln $m/etc/added2 $m/etc/added2-link
ln -s ../etc/added2 $m/home/u/sym
echo more >> $m/etc/xf
echo again >> $m/etc/hello
setfattr -n user.tag -v t $m/home/u/owned
ln $m/srv/suid $m/srv/suid2
rm $m/data/big $m/var/fifo
rm -rf $m/opt/keep; mkdir $m/opt/keep; echo back > $m/opt/keep/back
chmod 700 $m/home/u
"#;

/// The layout's tags, from `index.json` (name → manifest digest).
fn tags(layout: &Path) -> BTreeMap<String, String> {
    let image = std::fs::read(layout.join("index.json")).expect("index.json");
    let index: serde_json::Value = serde_json::from_slice(&image).expect("index json");
    let mut out = BTreeMap::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            out.insert(tag.clone(), m["digest"].as_str().unwrap_or("").to_string())
                .is_none(),
            "tag {tag} twice in index.json"
        );
    }
    out
}

pub(crate) fn skopeo_inspect(layout: &Path, tag: &str, config: bool) -> serde_json::Value {
    let mut c = Command::new("skopeo");
    c.arg("inspect");
    if config {
        c.arg("--config");
    }
    let out = run(c.arg(oci(layout, tag)));
    serde_json::from_slice(&out.stdout).expect("skopeo json")
}

/// A symlink to a layout whose path Podman takes for an image name: `podman pull oci:PATH`
/// names the image after PATH, and refuses capitals (which temporary names have).
struct LowercaseLink(PathBuf);

impl LowercaseLink {
    fn to(layout: &Path) -> LowercaseLink {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let link = std::env::temp_dir().join(format!("unionfs-pull-{}-{nanos}", std::process::id()));
        std::os::unix::fs::symlink(layout, &link).expect("symlink to the layout");
        LowercaseLink(link)
    }
}

impl Drop for LowercaseLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The tree Podman makes of `oci:LAYOUT:TAG`: pulled into a private store and mounted there.
pub(crate) fn podman_tree(layout: &Path, tag: &str) -> BTreeMap<PathBuf, super::images::Obj> {
    let p = Podman::new(None);
    let link = LowercaseLink::to(layout);
    let id = p.run(&["pull", "-q", &oci(&link.0, tag)]);
    let id = id.lines().last().expect("image id").trim().to_string();
    let root = PathBuf::from(p.run(&["image", "mount", &id]));
    let tree = snapshot(&root);
    p.run(&["image", "unmount", &id]);
    tree
}

#[test]
fn commit_into_an_image_is_what_umoci_podman_skopeo_and_a_mount_of_the_new_tag_show() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    let layout = layout_copy(t.path());
    let (upper, cache, mnt) = (t.path().join("upper"), t.path().join("cache"), t.path().join("mnt"));
    std::fs::create_dir(&upper).expect("mkdir upper");
    let m = mount_image(&layout, "gz", &cache, &["--upper", s(&upper)], &mnt);
    sh(&format!("m={}\n{CHANGES}", mnt.display()));
    let view = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));

    let img = ["--image", &oci(&layout, "gz"), "--cache", s(&cache)];
    let changes = tool(&[&["diff"][..], &img, &["--upper", s(&upper)]].concat());
    for want in [
        "A /etc/added2",
        "A /home/u/sym",
        "C /etc/xf",
        "C /etc/hello2",
        "D /data/big",
        "D /var/fifo",
        "A /opt/keep/back",
        "D /opt/keep/k",
    ] {
        assert!(
            changes.lines().any(|l| l == want),
            "diff --image lacks {want:?}:\n{changes}"
        );
    }
    tool(&[&["check"][..], &img, &["--upper", s(&upper)]].concat());
    let size = tool(&[&["size"][..], &img, &["--upper", s(&upper), "--json"]].concat());
    let size: serde_json::Value = serde_json::from_str(&size).expect("size json");
    let bytes = |k: &str| size[k].as_u64().unwrap_or(0);
    assert!(
        bytes("virtual_bytes") > bytes("upper_bytes") + 1_000_000,
        "size counts the image's layers: {size}"
    );

    let tags_before = tags(&layout);
    let out = tool(
        &[
            &["commit"][..],
            &img,
            &["--upper", s(&upper), "--tag", "v2", "--message", "apply CHANGES"],
        ]
        .concat(),
    );
    assert!(out.contains(&format!("oci:{}:v2", layout.display())), "{out}");
    let tags_after = tags(&layout);
    assert_eq!(tags_after.len(), tags_before.len() + 1, "{tags_after:?}");
    for (tag, digest) in &tags_before {
        assert_eq!(tags_after.get(tag), Some(digest), "tag {tag} kept");
    }

    // (a) umoci applies the layers itself.
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", layout.display()))
        .arg(t.path().join("bundle")));
    let d = diff(&view, &snapshot(&t.path().join("bundle/rootfs")));
    assert!(
        d.is_empty(),
        "umoci unpack of v2 differs from the view:\n{}",
        d.join("\n")
    );

    // (b) Podman.
    let d = diff(&view, &podman_tree(&layout, "v2"));
    assert!(d.is_empty(), "podman's v2 differs from the view:\n{}", d.join("\n"));

    // (c) A mount of the new tag, no upper.
    let m = mount_image(&layout, "v2", &cache, &[], &t.path().join("mnt2"));
    let d = diff(&view, &snapshot(&m.mnt));
    assert_eq!(m.unmount(), Some(0));
    assert!(d.is_empty(), "a mount of v2 differs from the view:\n{}", d.join("\n"));

    // (d) skopeo: one more layer, and its history entry.
    let old = skopeo_inspect(&layout, "gz", false);
    let new = skopeo_inspect(&layout, "v2", false);
    let n = |v: &serde_json::Value| v["Layers"].as_array().map_or(0, Vec::len);
    assert_eq!(n(&new), n(&old) + 1, "{new}");
    let layers = |v: &serde_json::Value| v["Layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers(&new)[..n(&old)], layers(&old)[..], "the image's layers kept");
    let config = skopeo_inspect(&layout, "v2", true);
    let history = config["history"].as_array().expect("history");
    let last = history.last().expect("an entry");
    assert_eq!(last["created_by"], "apply CHANGES", "{config}");
    assert!(
        last["created"].is_string() && last.get("empty_layer").is_none(),
        "{last}"
    );
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(diff_ids.len(), n(&new));

    // `layers --image` on v2: the new layer first, with its history row.
    let rows = tool(&["layers", "--image", &oci(&layout, "v2"), "--cache", s(&cache), "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&rows).expect("layers json");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), n(&new), "one row per image layer: {rows:?}");
    assert_eq!(rows[0]["role"], "image 0");
    assert_eq!(rows[0]["created_by"], "apply CHANGES");
    assert_eq!(rows[0]["digest"], new["Layers"][n(&new) - 1], "top first");
    assert_eq!(rows[0]["whiteouts"], 2, "{:?}", rows[0]);
    assert_eq!(rows[0]["opaque_dirs"], 1, "{:?}", rows[0]);
    assert!(rows[0]["blob_bytes"].as_u64().unwrap_or(0) > 0);
    let table = tool(&["layers", "--image", &oci(&layout, "v2"), "--cache", s(&cache)]);
    let top = table.lines().nth(1).unwrap_or_default();
    assert!(top.starts_with("image 0") && top.ends_with("apply CHANGES"), "{table}");

    // Committing to a tag again replaces it, as skopeo and umoci do; the other tags stay.
    tool(
        &[
            &["commit"][..],
            &img,
            &[
                "--upper",
                s(&upper),
                "--tag",
                "v2",
                "--message",
                "again",
                "--compress",
                "zstd",
            ],
        ]
        .concat(),
    );
    let tags_again = tags(&layout);
    assert_eq!(tags_again.len(), tags_after.len(), "{tags_again:?}");
    assert_ne!(tags_again["v2"], tags_after["v2"]);
    let config = skopeo_inspect(&layout, "v2", true);
    assert_eq!(
        config["history"]
            .as_array()
            .and_then(|h| h.last())
            .map(|h| &h["created_by"]),
        Some(&"again".into())
    );
    let m = mount_image(&layout, "v2", &cache, &[], &t.path().join("mnt3"));
    let d = diff(&view, &snapshot(&m.mnt));
    assert_eq!(m.unmount(), Some(0));
    assert!(
        d.is_empty(),
        "a mount of the zstd v2 differs from the view:\n{}",
        d.join("\n")
    );
}

#[test]
fn the_tools_stack_lower_directories_over_the_image_as_the_mount_does() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    let layout = &images().layout;
    let (lower, upper, cache, mnt) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("cache"),
        t.path().join("mnt"),
    );
    std::fs::create_dir(&upper).expect("mkdir upper");
    // The directory shadows one image file and adds one.
    std::fs::create_dir_all(lower.join("etc")).expect("mkdir lower");
    std::fs::write(lower.join("etc/xf"), b"from the directory\n").expect("write");
    std::fs::write(lower.join("etc/dironly"), b"d\n").expect("write");
    let m = mount_image(
        layout,
        "zst",
        &cache,
        &["--lower", s(&lower), "--upper", s(&upper)],
        &mnt,
    );
    assert_eq!(std::fs::read(m.path("etc/xf")).expect("read"), b"from the directory\n");
    std::fs::remove_file(m.path("etc/dironly")).expect("rm a directory's file");
    std::fs::remove_file(m.path("etc/hello2")).expect("rm an image file");
    std::fs::write(m.path("etc/mine"), b"m").expect("create");
    assert_eq!(m.unmount(), Some(0));

    let stack = [
        "--image",
        &oci(layout, "zst"),
        "--cache",
        s(&cache),
        "--lower",
        s(&lower),
        "--upper",
        s(&upper),
    ];
    let changes = tool(&[&["diff"][..], &stack].concat());
    let lines: Vec<&str> = changes.lines().filter(|l| !l.ends_with("/etc")).collect();
    assert_eq!(lines, ["D /etc/dironly", "D /etc/hello2", "A /etc/mine"], "{changes}");
    // Without the image below, the image's file is not there to delete.
    let o = unionfs(&["diff", "--lower", s(&lower), "--upper", s(&upper)]);
    let without = String::from_utf8_lossy(&o.stdout);
    assert!(!without.contains("/etc/hello2"), "{without}");
    tool(&[&["check"][..], &stack].concat());

    let rows = tool(&[&["layers"][..], &stack, &["--json"]].concat());
    let rows: serde_json::Value = serde_json::from_str(&rows).expect("layers json");
    let roles: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["role"].as_str())
        .collect();
    assert_eq!(roles, ["upper", "lower 0", "image 0", "image 1"]);

    // A layer file from this stack, applied by umoci over the image's own unpack, is the view.
    let out = t.path().join("layer.tar");
    tool(&[&["commit"][..], &stack, &["--output", s(&out)]].concat());
    let tar = run(Command::new("tar").arg("-tf").arg(&out));
    let names = String::from_utf8_lossy(&tar.stdout);
    assert!(names.lines().any(|l| l == "etc/.wh.hello2"), "{names}");
    assert!(names.lines().any(|l| l == "etc/.wh.dironly"), "{names}");
}

/// The layout as a listing of its files with their types, modes, sizes and sha256 (a
/// directory's mtime is left out: a temporary file made and removed in it changes that).
fn layout_state(layout: &Path) -> Vec<String> {
    let out = run(Command::new("sh")
        .arg("-ec")
        .arg(
            r#"cd "$1"; find . -printf '%p %y %m %s\n' | sort; find . -type f -print0 | sort -z | xargs -0r sha256sum"#,
        )
        .arg("sh")
        .arg(layout));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_failed_commit_into_an_image_says_why_in_one_line_and_leaves_the_layout_as_it_was() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    // The layout on a small tmpfs: the layer (incompressible data) cannot fit.
    let small = t.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let du = run(Command::new("du").arg("-sk").arg(&images().layout));
    let kib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du");
    let _fs = TmpfsGuard::mount(&small, &format!("{}k", kib + 2048));
    let layout = layout_copy(&small);
    let (upper, cache) = (t.path().join("upper"), t.path().join("cache"));
    std::fs::create_dir_all(upper.join("etc")).expect("mkdir upper");
    std::fs::write(upper.join("etc/small"), b"s").expect("write");
    let before = layout_state(&layout);

    let fails = |args: &[&str], names: &str, why: &str| {
        let o = unionfs(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.contains(names) && err.contains(why),
            "{args:?}: names {names} and {why}: {err}"
        );
        assert_eq!(layout_state(&layout), before, "{args:?}: the layout changed");
    };
    let gz = oci(&layout, "gz");
    let base = ["commit", "--cache", s(&cache), "--upper", s(&upper)];
    fails(
        &[&base[..], &["--image", &gz, "--tag", "bad:tag"]].concat(),
        "bad:tag",
        "tag",
    );
    fails(&[&base[..], &["--image", &gz, "--tag=-x"]].concat(), "-x", "tag");
    fails(
        &[&base[..], &["--image", &oci(&layout, "nosuch"), "--tag", "v2"]].concat(),
        "nosuch",
        "gz",
    );
    let missing = t.path().join("missing");
    fails(
        &[&base[..], &["--image", &oci(&missing, "gz"), "--tag", "v2"]].concat(),
        s(&missing),
        "",
    );

    // 16 MiB that gzip cannot shrink: more than the tmpfs has left.
    run(Command::new("head")
        .args(["-c", "16777216", "/dev/urandom"])
        .stdout(std::fs::File::create(upper.join("etc/random")).expect("create")));
    fails(
        &[&base[..], &["--image", &gz, "--tag", "v2"]].concat(),
        s(&layout),
        "No space left on device",
    );
}

/// Unmounts a background mount this test made, whatever happens to the test.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if crate::common::is_mounted(&self.0) {
            let _ = Command::new(bin()).arg("umount").arg(&self.0).status();
        }
        if crate::common::is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn relative_image_paths_mean_the_same_to_a_background_mount_and_to_the_tools() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    layout_copy(t.path());
    for d in ["upper", "mnt"] {
        std::fs::create_dir(t.path().join(d)).expect("mkdir");
    }
    let in_t = |args: &[&str]| {
        let o = Command::new(bin())
            .args(args)
            .current_dir(t.path())
            .stdin(Stdio::null())
            .output()
            .expect("run unionfs");
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // In the background the daemon serves from `/`: the paths must have been made absolute.
    in_t(&[
        "mount",
        "--image",
        "oci:layout:gz",
        "--cache",
        "cache",
        "--upper",
        "upper",
        "mnt",
    ]);
    let guard = Unmount(t.path().join("mnt"));
    std::fs::write(guard.0.join("etc/motd"), b"hi\n").expect("write through the mount");
    in_t(&["umount", "mnt"]);
    drop(guard);
    let changes = in_t(&[
        "diff",
        "--image",
        "oci:layout:gz",
        "--cache",
        "cache",
        "--upper",
        "upper",
    ]);
    assert!(changes.lines().any(|l| l == "A /etc/motd"), "{changes}");
    in_t(&[
        "commit",
        "--image",
        "oci:layout:gz",
        "--cache",
        "cache",
        "--upper",
        "upper",
        "--tag",
        "v2",
    ]);
    let m = mount_image(
        &t.path().join("layout"),
        "v2",
        &t.path().join("cache"),
        &[],
        &t.path().join("mnt2"),
    );
    assert_eq!(std::fs::read(m.path("etc/motd")).expect("read"), b"hi\n");
    assert_eq!(m.unmount(), Some(0));
}

/// A copy of the test image in `dir` with [`CHANGES`] made through a mount over its tag `from`
/// and committed with `--compress COMPRESS` as tag `tag`: the layout, the view the changes made,
/// the upper, the cache.
pub(crate) fn committed(
    dir: &Path,
    from: &str,
    tag: &str,
    compress: &str,
) -> (PathBuf, BTreeMap<PathBuf, crate::images::Obj>, PathBuf, PathBuf) {
    let layout = layout_copy(dir);
    let (upper, cache, mnt) = (dir.join("upper"), dir.join("cache"), dir.join("mnt"));
    std::fs::create_dir(&upper).expect("mkdir upper");
    let m = mount_image(&layout, from, &cache, &["--upper", s(&upper)], &mnt);
    sh(&format!("m={}\n{CHANGES}", mnt.display()));
    let view = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));
    let img = ["--image", &oci(&layout, from), "--cache", s(&cache)];
    tool(
        &[
            &["commit"][..],
            &img,
            &["--upper", s(&upper), "--tag", tag, "--compress", compress],
        ]
        .concat(),
    );
    (layout, view, upper, cache)
}

#[test]
fn commit_as_estargz_makes_a_layer_the_mount_reads_by_its_table_of_contents() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    let (layout, view, upper, cache) = committed(t.path(), "gz", "es", "estargz");
    let img = ["--image", &oci(&layout, "gz"), "--cache", s(&cache)];

    // The new layer is gzip and carries the table's digest, as eStargz readers expect.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(oci(&layout, "es")));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest json");
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer")
        .clone();
    assert_eq!(top["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip", "{top}");
    let toc = top["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
        .as_str()
        .unwrap_or_default();
    assert!(toc.starts_with("sha256:"), "{top}");

    // Mounted with a cache of its own, the new image is the view the upper made.
    let m = mount_image(&layout, "es", &t.path().join("cache2"), &[], &t.path().join("mnt2"));
    let d = diff(&view, &snapshot(&m.mnt));
    assert!(
        d.is_empty(),
        "the eStargz image differs from the view:\n{}",
        d.join("\n")
    );
    assert_eq!(m.unmount(), Some(0));

    // Into a file: the annotations a manifest needs are printed with the blob.
    let out = tool(
        &[
            &["commit"][..],
            &img,
            &[
                "--upper",
                s(&upper),
                "--compress",
                "estargz",
                "--output",
                s(&t.path().join("layer.tgz")),
            ],
        ]
        .concat(),
    );
    assert!(
        out.lines()
            .any(|l| l == format!("annotation containerd.io/snapshot/stargz/toc.digest {toc}")),
        "{out}"
    );
    run(Command::new("gzip").arg("-t").arg(t.path().join("layer.tgz")));
}
