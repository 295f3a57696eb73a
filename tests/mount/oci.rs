//! OCI image layouts written by hand, for the image tests that need layers no tool on this
//! machine makes (offsets past 4 GiB, eStargz, foreign platforms, unknown media types): blobs
//! stored under their digest, manifests and configs as the image spec has them, tags in
//! `index.json`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub(crate) const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Makes `layout` an empty layout (creating it); returns it.
pub(crate) fn new_layout(layout: &Path) -> PathBuf {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir layout");
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    layout.to_path_buf()
}

/// Stores `bytes` as a blob of `layout`; its descriptor.
pub(crate) fn put(layout: &Path, media: &str, bytes: &[u8]) -> Value {
    let digest = format!("sha256:{:x}", Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).expect("write blob");
    json!({"mediaType": media, "digest": digest, "size": bytes.len()})
}

/// An image of `layers` (descriptors, base first, with their DiffIDs) for `arch`: its config
/// and manifest stored; the manifest's descriptor.
pub(crate) fn image(layout: &Path, layers: &[(Value, String)], arch: &str) -> Value {
    let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
    let config = json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = put(layout, CONFIG, config.to_string().as_bytes());
    let descs: Vec<&Value> = layers.iter().map(|(d, _)| d).collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": descs});
    put(layout, MANIFEST, manifest.to_string().as_bytes())
}

/// `desc` named `tag` (as an `index.json` entry carries it).
pub(crate) fn tagged(mut desc: Value, tag: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    desc
}

/// Writes `index.json` with `manifests`.
pub(crate) fn write_index(layout: &Path, manifests: Vec<Value>) {
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
}
