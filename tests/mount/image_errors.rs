//! docs/semantics.md, "Images": what cannot be mounted is refused with one line that names it,
//! exit status 2, nothing mounted: a layer media type we do not read, an image for another
//! platform, an image index (multi-platform) without an entry for this machine. The layouts are
//! written by the test (hand-made JSON, one small layer).

use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::common::{bin, is_mounted};
use crate::oci;

fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(3);
    b.append_data(&mut h, "f", &b"hi\n"[..]).expect("append");
    b.into_inner().expect("tar")
}

/// An image of the one small layer, stored as `layer_media`, for `arch`; its manifest's
/// descriptor (with `platform` when asked, as an index entry has it).
fn image(layout: &Path, layer_media: &str, arch: &str, platform: bool) -> serde_json::Value {
    let tar = small_tar();
    let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
    let layer = oci::put(layout, layer_media, &tar);
    let mut d = oci::image(layout, &[(layer, diff_id)], arch);
    if platform {
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
    }
    d
}

/// A layout with the tags `ok` (a well-formed image), `bz2` (a layer media type we do not
/// read), `foreign` (an image for another architecture) and `list` (an image index without an
/// entry for this machine); and that other architecture.
pub(crate) fn refusable_layout(dir: &Path) -> (std::path::PathBuf, &'static str) {
    let layout = oci::new_layout(dir);
    let foreign = if unionfs::image::layout::host_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let tar = "application/vnd.oci.image.layer.v1.tar";
    let bzip2 = "application/vnd.oci.image.layer.v1.tar+bzip2";
    let list = {
        let entry = image(&layout, tar, foreign, true);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry],
        });
        oci::put(
            &layout,
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )
    };
    let host = unionfs::image::layout::host_arch();
    oci::write_index(
        &layout,
        vec![
            oci::tagged(image(&layout, tar, host, false), "ok"),
            oci::tagged(image(&layout, bzip2, host, false), "bz2"),
            oci::tagged(image(&layout, tar, foreign, false), "foreign"),
            oci::tagged(list, "list"),
        ],
    );
    (layout, foreign)
}

#[test]
fn an_unsupported_media_type_a_foreign_platform_or_no_match_in_an_index_is_one_line() {
    let t = tempfile::tempdir().expect("tmp");
    let (layout, foreign) = refusable_layout(&t.path().join("layout"));
    let before: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("ls")
        .map(|e| e.map(|e| e.path()))
        .collect();

    let mount = |tag: &str| {
        let mnt = t.path().join(format!("mnt-{tag}"));
        std::fs::create_dir_all(&mnt).expect("mkdir");
        let out = Command::new(bin())
            .args(["mount", "--image"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg("--cache")
            .arg(t.path().join("cache"))
            .arg(&mnt)
            .output()
            .expect("run");
        let mounted = is_mounted(&mnt);
        if mounted {
            let _ = Command::new(bin()).arg("umount").arg(&mnt).status();
        }
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            mounted,
        )
    };
    // The well-formed image mounts: the others fail for what they are, not for the layout.
    let (code, err, mounted) = mount("ok");
    assert!(code == Some(0) && mounted, "{err}");
    for (tag, says) in [
        ("bz2", vec!["bzip2"]),
        ("foreign", vec![foreign]),
        ("list", vec![foreign]),
    ] {
        let (code, err, mounted) = mount(tag);
        eprintln!("{tag}: {}", err.trim());
        assert_eq!(code, Some(2), "{tag}: {err}");
        assert!(!mounted, "{tag}: mounted");
        assert_eq!(err.trim().lines().count(), 1, "{tag}: {err}");
        for s in says {
            assert!(err.contains(s), "{tag}: the line does not name {s}: {err}");
        }
    }
    let after: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("ls")
        .map(|e| e.map(|e| e.path()))
        .collect();
    assert_eq!(before.len(), after.len(), "the layout changed");
}
