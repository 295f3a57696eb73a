//! Writing into an OCI image layout: blobs, and an image that is another one plus a layer,
//! recorded under a tag (`unionfs commit --image`).
//!
//! Blobs are written under a temporary name and renamed to their digest, so a reader never sees
//! a partial blob under a valid name; `index.json` is replaced the same way, under a lock on the
//! layout directory, so two writers tagging at once both land.

use std::io::Write;
use std::path::Path;

use super::ImageError;
use super::layout::{REF_NAME, blob_path};
use crate::blob::{CreateError, Hashing, TempFile};
use oci_spec::image::{
    Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};

/// Makes `dir` an empty image layout if it is not one yet.
pub fn init(dir: &Path) -> Result<(), ImageError> {
    let io = |p: &Path, e| ImageError::io(p, e);
    std::fs::create_dir_all(dir.join("blobs").join("sha256")).map_err(|e| io(dir, e))?;
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| io(&marker, e))?;
    }
    let index = dir.join("index.json");
    if !index.exists() {
        replace(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = TempFile::create(path).map_err(|e| match e {
        CreateError::Io(e) => ImageError::io(path, e),
        e => ImageError::invalid(path, e.to_string()),
    })?;
    tmp.file()
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| tmp.persist())
        .map_err(|e| ImageError::io(path, e))
}

/// Stores `bytes` as a blob; its digest and size.
pub fn put_bytes(dir: &Path, bytes: &[u8]) -> Result<(String, u64), ImageError> {
    let mut added = NewBlobs::default();
    let r = put_new(dir, bytes, &mut added);
    added.keep();
    r
}

/// Blobs one writer added to a layout, removed again if it fails before tagging: a failed
/// commit leaves the layout as it found it (a blob that was there before is never listed).
#[derive(Default)]
pub struct NewBlobs {
    paths: Vec<std::path::PathBuf>,
}

impl NewBlobs {
    /// Records the blob `path` this writer just made.
    pub fn add(&mut self, path: std::path::PathBuf) {
        self.paths.push(path);
    }

    /// The writer is done: the blobs stay.
    pub fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for NewBlobs {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// [`put_bytes`], recording a blob it adds in `added`.
fn put_new(dir: &Path, bytes: &[u8], added: &mut NewBlobs) -> Result<(String, u64), ImageError> {
    let digest = crate::blob::digest(bytes);
    let p = blob_path(dir, &digest)?;
    if !p.exists() {
        replace(&p, bytes)?;
        added.add(p);
    }
    Ok((digest, bytes.len() as u64))
}

/// Moves the file `src` (on the layout's filesystem, or copied when it is not) in as a blob;
/// its digest and size.
pub fn put_file(dir: &Path, src: &Path) -> Result<(String, u64), ImageError> {
    let mut f = std::fs::File::open(src).map_err(|e| ImageError::io(src, e))?;
    let mut h = Hashing::new(std::io::sink());
    std::io::copy(&mut f, &mut h).map_err(|e| ImageError::io(src, e))?;
    let (digest, size) = (h.digest(), h.len());
    let p = blob_path(dir, &digest)?;
    if p.exists() {
        return Ok((digest, size));
    }
    if std::fs::rename(src, &p).is_err() {
        let copy = |tmp: &TempFile| -> std::io::Result<()> {
            let mut from = std::fs::File::open(src)?;
            std::io::copy(&mut from, &mut tmp.file()?)?;
            Ok(())
        };
        let tmp = TempFile::create(&p).map_err(|e| ImageError::invalid(&p, e.to_string()))?;
        copy(&tmp)
            .and_then(|()| tmp.persist())
            .map_err(|e| ImageError::io(&p, e))?;
    }
    Ok((digest, size))
}

fn json<T: serde::Serialize>(v: &T, what: &Path) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(v).map_err(|e| ImageError::invalid(what, e.to_string()))
}

/// Points `tag` at the manifest `desc` in `index.json` (replacing what the tag named).
pub fn tag(dir: &Path, desc: Descriptor, tag: &str) -> Result<(), ImageError> {
    let lock = std::fs::File::open(dir).map_err(|e| ImageError::io(dir, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| ImageError::io(dir, e.into()))?;
    let path = dir.join("index.json");
    let bytes = std::fs::read(&path).map_err(|e| ImageError::io(&path, e))?;
    let mut index = ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::invalid(&path, e.to_string()))?;
    let mut manifests: Vec<Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .map(String::as_str)
                != Some(tag)
        })
        .cloned()
        .collect();
    let mut desc = desc;
    let mut ann = desc.annotations().clone().unwrap_or_default();
    ann.insert(REF_NAME.to_string(), tag.to_string());
    desc.set_annotations(Some(ann));
    manifests.push(desc);
    index.set_manifests(manifests);
    replace(&path, &json(&index, &path)?)
}

/// A layer to add to an image.
pub struct NewLayer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    /// RFC 3339: the history entry's and the new config's `created`.
    pub created: String,
    /// The layer descriptor's annotations (an eStargz layer's table-of-contents digest).
    pub annotations: Vec<(String, String)>,
}

/// Writes the image `manifest`/`config` plus `layer` (config and manifest blobs) and tags it
/// `new_tag`; returns the new manifest's digest. `added` holds the blobs the caller added (the
/// layer's): on an error they are removed with the config and manifest blobs made here, so the
/// layout is as it was; once tagged they stay.
pub fn append_layer(
    dir: &Path,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    layer: &NewLayer,
    new_tag: &str,
    mut added: NewBlobs,
) -> Result<String, ImageError> {
    let mut cfg = config.clone();
    let mut rootfs = cfg.rootfs().clone();
    rootfs.diff_ids_mut().push(layer.diff_id.clone());
    cfg.set_rootfs(rootfs);
    let mut h = HistoryBuilder::default().created(layer.created.clone());
    if let Some(c) = &layer.created_by {
        h = h.created_by(c.clone());
    }
    if let Some(c) = &layer.comment {
        h = h.comment(c.clone());
    }
    let h = h.build().map_err(|e| ImageError::invalid(dir, e.to_string()))?;
    let mut history = cfg.history().clone().unwrap_or_default();
    history.push(h);
    cfg.set_history(Some(history));
    cfg.set_created(Some(layer.created.clone()));
    let (cdigest, csize) = put_new(dir, &json(&cfg, dir)?, &mut added)?;
    let mut m = manifest.clone();
    m.set_config(
        DescriptorBuilder::default()
            .media_type(MediaType::ImageConfig)
            .digest(parse_digest(dir, &cdigest)?)
            .size(csize)
            .build()
            .map_err(|e| ImageError::invalid(dir, e.to_string()))?,
    );
    let mut layers = m.layers().clone();
    let mut d = DescriptorBuilder::default()
        .media_type(MediaType::from(layer.media_type.as_str()))
        .digest(parse_digest(dir, &layer.digest)?)
        .size(layer.size);
    if !layer.annotations.is_empty() {
        d = d.annotations(
            layer
                .annotations
                .iter()
                .cloned()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    layers.push(d.build().map_err(|e| ImageError::invalid(dir, e.to_string()))?);
    m.set_layers(layers);
    m.set_media_type(Some(MediaType::ImageManifest));
    let (mdigest, msize) = put_new(dir, &json(&m, dir)?, &mut added)?;
    let desc = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(parse_digest(dir, &mdigest)?)
        .size(msize)
        .build()
        .map_err(|e| ImageError::invalid(dir, e.to_string()))?;
    tag(dir, desc, new_tag)?;
    added.keep();
    Ok(mdigest)
}

fn parse_digest(dir: &Path, d: &str) -> Result<oci_spec::image::Digest, ImageError> {
    d.parse()
        .map_err(|e: oci_spec::OciSpecError| ImageError::invalid(dir, e.to_string()))
}

/// Now as RFC 3339 in UTC (`2026-12-07T05:44:39Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(secs)
}

/// `secs` since the epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: i64) -> String {
    rfc3339_ns(secs, 0)
}

/// `secs` and `ns` since the epoch as RFC 3339 in UTC, with as many digits of the fraction as
/// it needs (none for a whole second).
pub fn rfc3339_ns(secs: i64, ns: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let frac = if ns == 0 {
        String::new()
    } else {
        format!(".{ns:09}").trim_end_matches('0').to_string()
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in ["", "blobs/sha256"] {
            for e in std::fs::read_dir(dir.join(sub)).expect("list").flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    out.push((e.path(), std::fs::read(e.path()).expect("read")));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_failed_append_removes_the_blobs_it_added_and_keeps_those_it_found() {
        use super::super::fixture;
        use super::super::layout::{Compression, open};
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("layout");
        let tar = fixture::tar(&[fixture::Item::File("f", 0o644, b"x".to_vec())]);
        fixture::layout(&dir, "t", std::slice::from_ref(&tar), Compression::None);
        let img = open(&dir, Some("t")).expect("image");
        let before = files(&dir);
        // A layer blob the caller added; the image's own blobs are found, never removed.
        let (digest, size) = put_bytes(&dir, b"a new layer").expect("blob");
        let mut added = NewBlobs::default();
        added.add(blob_path(&dir, &digest).expect("path"));
        let layer = NewLayer {
            annotations: Vec::new(),
            digest,
            size,
            media_type: Compression::None.media_type().to_string(),
            diff_id: crate::blob::digest(b"a new layer"),
            created_by: Some("test".into()),
            comment: None,
            created: rfc3339(0),
        };
        // index.json unreadable as an index: the tag, the last step, fails.
        let index = dir.join("index.json");
        let good_index = std::fs::read(&index).expect("index");
        std::fs::write(&index, b"{").expect("break index");
        let r = append_layer(&dir, &img.manifest, &img.config, &layer, "v2", added);
        assert!(r.is_err());
        std::fs::write(&index, &good_index).expect("mend index");
        assert_eq!(
            files(&dir),
            before,
            "the config, manifest and layer blobs are gone again"
        );
    }
}
