//! README, "Layer tools": `commit --compress zstd:chunked` writes the upper's layer as a
//! zstd:chunked blob (containers/storage's format: a zstd frame per file, a table of contents
//! and a tar-split in skippable frames, a footer). Checked with independent tools: the `zstd`
//! program decompresses the blob to the tar whose sha256 is the config's DiffID, Podman pulls
//! the new image into a private store and shows the view the upper was written through, and a
//! mount of the new tag (which reads the layer by its table) shows it too. Pushed to a
//! registry, Podman pulls the layer as zstd:chunked (by range requests, as its debug log says)
//! and shows the same view (but for what its partial pulls keep of no layer: mtimes, owners,
//! device nodes); a mount of the pushed image shows all of the view, reading the layer by range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::image_tools::{committed, need, oci, podman_tree, s, skopeo_inspect, tool};
use super::images::{Obj, as_partial_pulls_keep, diff, mount_image, run, snapshot};
use crate::common::podman::Podman;
use crate::common::{Mount, Registry, registry_prerequisites};

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
const POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
const TARSPLIT: &str = "io.github.containers.zstd-chunked.tarsplit-position";
/// The names Podman 4 (containers/storage before 1.44) reads.
const LEGACY_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const LEGACY_POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// The test image's `chunked` tag with the CHANGES committed as zstd:chunked, tag `ch` (see
/// [`committed`]).
fn committed_chunked(dir: &Path) -> (PathBuf, BTreeMap<PathBuf, Obj>, PathBuf, PathBuf) {
    committed(dir, "chunked", "ch", "zstd:chunked")
}

/// [`committed`] in `dir`, pushed to a registry of its own (with skopeo) as `ch:ch`: the view,
/// the committed layer's digest, the registry.
fn committed_and_pushed(dir: &Path) -> (BTreeMap<PathBuf, Obj>, String, Registry) {
    need();
    assert!(registry_prerequisites(), "docker-registry and skopeo are required");
    let (layout, view, _, _) = committed_chunked(dir);
    let digest = top_layer(&layout)["digest"].as_str().expect("digest").to_string();
    let reg = Registry::start(&[]);
    reg.push(&layout, "ch", "ch", &[]);
    (view, digest, reg)
}

/// The new image's top layer descriptor.
fn top_layer(layout: &Path) -> serde_json::Value {
    let raw = run(Command::new("skopeo").args(["inspect", "--raw"]).arg(oci(layout, "ch")));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest json");
    manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer")
        .clone()
}

#[test]
fn commit_as_zstd_chunked_is_what_zstd_podman_and_a_mount_of_the_new_tag_show() {
    need();
    let t = tempfile::tempdir().expect("tmp");
    let (layout, view, upper, cache) = committed_chunked(t.path());
    let img = ["--image", &oci(&layout, "chunked"), "--cache", s(&cache)];

    // The new layer is zstd and says where its table and tar-split are.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(oci(&layout, "ch")));
    let manifest: serde_json::Value = serde_json::from_slice(&raw.stdout).expect("manifest json");
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .expect("a layer")
        .clone();
    assert_eq!(top["mediaType"], ZSTD, "{top}");
    let note = |k: &str| top["annotations"][k].as_str().unwrap_or_default().to_string();
    let (checksum, position) = (note(CHECKSUM), note(POSITION));
    assert!(checksum.starts_with("sha256:"), "{top}");
    let pos: Vec<u64> = position.split(':').filter_map(|n| n.parse().ok()).collect();
    assert_eq!((pos.len(), pos.get(3)), (4, Some(&1)), "{top}");
    assert_eq!(note(TARSPLIT).split(':').count(), 3, "{top}");
    assert_eq!(
        (note(LEGACY_CHECKSUM), note(LEGACY_POSITION)),
        (checksum.clone(), position.clone())
    );

    // The blob: the table's bytes where the annotation says, of the digest it says; the
    // `zstd` program decompresses the whole blob to the tar of the config's DiffID.
    let digest = top["digest"].as_str().expect("digest");
    let blob_path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let blob = std::fs::read(&blob_path).expect("blob");
    assert_eq!(&blob[blob.len() - 8..], b"GNUlInUx");
    let table = &blob[pos[0] as usize..(pos[0] + pos[1]) as usize];
    assert_eq!(format!("sha256:{:x}", Sha256::digest(table)), checksum);
    let tar = run(Command::new("zstd").args(["-d", "-c"]).arg(&blob_path)).stdout;
    let config = skopeo_inspect(&layout, "ch", true);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(
        diff_ids.last().and_then(|d| d.as_str()),
        Some(format!("sha256:{:x}", Sha256::digest(&tar)).as_str())
    );

    // (a) A mount of the new tag, with a cache of its own, shows the view.
    let m = mount_image(&layout, "ch", &t.path().join("cache2"), &[], &t.path().join("mnt2"));
    let d = diff(&view, &snapshot(&m.mnt));
    assert_eq!(m.unmount(), Some(0));
    assert!(d.is_empty(), "a mount of ch differs from the view:\n{}", d.join("\n"));

    // (b) Podman pulls it (its zstd layers as plain zstd) and shows the view.
    let d = diff(&view, &podman_tree(&layout, "ch"));
    assert!(d.is_empty(), "podman's ch differs from the view:\n{}", d.join("\n"));

    // Into a file: the annotations a manifest needs are printed with the blob.
    let out = tool(
        &[
            &["commit"][..],
            &img,
            &[
                "--upper",
                s(&upper),
                "--compress",
                "zstd:chunked",
                "--output",
                s(&t.path().join("layer.zst")),
            ],
        ]
        .concat(),
    );
    for (k, v) in [
        (CHECKSUM, &checksum),
        (POSITION, &position),
        (TARSPLIT, &note(TARSPLIT)),
    ] {
        assert!(
            out.lines().any(|l| l == format!("annotation {k} {v}")),
            "{k} in:\n{out}"
        );
    }
    assert!(
        out.lines().any(|l| l == format!("blob {digest} {} {ZSTD}", blob.len())),
        "{out}"
    );
    run(Command::new("zstd").arg("-t").arg(t.path().join("layer.zst")));
}

#[test]
fn podman_pulls_a_committed_zstd_chunked_layer_from_a_registry_by_its_table() {
    let t = tempfile::tempdir().expect("tmp");
    let (view, digest, reg) = committed_and_pushed(t.path());

    // Partial pulls are off unless storage.conf turns them on; the store is the helper's.
    let p = Podman::new(None);
    let conf = p.path().join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
             [storage.options]\npull_options = {{enable_partial_images = \"true\"}}\n",
            p.path().join("root").display(),
            p.path().join("run").display()
        ),
    )
    .expect("storage.conf");
    let reference = format!("{}/ch:ch", reg.host());
    let out = p
        .cmd()
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .args(["--log-level", "debug", "pull", "--tls-verify=false", &reference])
        .output()
        .expect("podman pull");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "podman pull failed: {log}");
    assert!(
        log.contains(&format!("Retrieved partial blob {digest}")),
        "podman did not pull {digest} as zstd:chunked:\n{log}"
    );
    // Podman 4.3's partial pulls keep no mtimes, owners or device nodes, of Buildah's layers
    // as of ours (the table's are checked by the mount of the new tag in the test above).
    let root = PathBuf::from(p.run(&["image", "mount", &reference]));
    let d = diff(&as_partial_pulls_keep(view), &as_partial_pulls_keep(snapshot(&root)));
    p.run(&["image", "unmount", &reference]);
    assert!(
        d.is_empty(),
        "podman's partial pull differs from the view:\n{}",
        d.join("\n")
    );
}

#[test]
fn a_mount_of_the_pushed_image_reads_the_committed_layer_by_range() {
    let t = tempfile::tempdir().expect("tmp");
    let (view, digest, reg) = committed_and_pushed(t.path());

    let (cache, mnt) = (t.path().join("cache-reg"), t.path().join("mnt-reg"));
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let auth = t.path().join("no-auth.json").display().to_string();
    let args: Vec<std::ffi::OsString> = vec![
        "mount".into(),
        "--foreground".into(),
        "--image".into(),
        reg.reference("ch", "ch").into(),
        "--tls-verify=false".into(),
        "--cache".into(),
        cache.clone().into(),
        mnt.clone().into(),
    ];
    let m = Mount::start_with_env(&args, &mnt, &[("REGISTRY_AUTH_FILE", &auth)]);
    let d = diff(&view, &snapshot(&m.mnt));
    assert_eq!(m.unmount(), Some(0));
    assert!(
        d.is_empty(),
        "the registry mount differs from the view:\n{}",
        d.join("\n")
    );
    let whole = unionfs::image::layout::blob_path(&cache, &digest).expect("path");
    assert!(
        !whole.exists(),
        "the committed layer was read by its table, not fetched whole"
    );
    assert!(reg.blob_bytes_sent(206).1 > 0, "range requests were made");
}
