//! `unionfs commit --image oci:DIR:TAG --tag NEWTAG`: the upper's layer, computed against the
//! image's layers (the stack's bottom lowers), stored as a blob of the image's own layout, and
//! a new image (the old manifest and config plus that layer, a history entry) tagged NEWTAG.
//!
//! Nothing in the layout changes until the layer is whole: the blob is written under a
//! temporary name in `blobs/sha256/` (removed on any error or Ctrl-C) and renamed to its
//! digest; then the config and manifest blobs; `index.json` last (`image::write::tag`), so a
//! reader sees the old tags or the new one, never a tag naming a missing blob.

use std::io::BufWriter;
use std::path::Path;

use super::{CommitOptions, CommitSummary, commit_blob};
use crate::blob::{CreateError, TempFile};
use crate::image::layout::blob_path;
use crate::image::write::{NewBlobs, NewLayer, append_layer};
use crate::layers::stack::Stack;
use crate::layers::{LayerError, Observer, Result};

/// What goes into the new image's history beside the layer.
#[derive(Debug, Clone, Default)]
pub struct HistoryEntry {
    /// `created_by` (what `docker history` shows as CREATED BY).
    pub created_by: Option<String>,
    pub comment: Option<String>,
    /// RFC 3339; now if none.
    pub created: Option<String>,
}

/// What a commit into an image wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageCommit {
    #[serde(flatten)]
    pub layer: CommitSummary,
    /// `sha256:…` of the new image's manifest.
    pub manifest: String,
    /// `oci:DIR:NEWTAG`.
    pub image: String,
}

/// Whether `tag` may name an image in a layout: letters, digits, and `.`, `_`, `-` (or `--`)
/// between them, at most 128 characters (the OCI layout's reference grammar without the
/// separators `oci:DIR:TAG` could not carry).
pub fn valid_tag(tag: &str) -> std::result::Result<(), &'static str> {
    if tag.is_empty() {
        return Err("a tag cannot be empty");
    }
    if tag.len() > 128 {
        return Err("a tag has at most 128 characters");
    }
    let b = tag.as_bytes();
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c)) {
        return Err("a tag has only letters, digits, '.', '_' and '-'");
    }
    let alnum = |c: Option<&u8>| c.is_some_and(u8::is_ascii_alphanumeric);
    if !alnum(b.first()) || !alnum(b.last()) {
        return Err("a tag starts and ends with a letter or digit");
    }
    // Between two runs of letters and digits: one separator, or "--".
    for run in tag.split(|c: char| c.is_ascii_alphanumeric()).filter(|r| !r.is_empty()) {
        if run.len() > 1 && run != "--" {
            return Err("separators in a tag are one '.', '_' or '-' (or \"--\") between letters or digits");
        }
    }
    Ok(())
}

/// Commits the upper of `stack` (opened over an image) into the image's layout as `new_tag`.
pub fn commit_to_image(
    stack: &Stack,
    opts: &CommitOptions,
    new_tag: &str,
    history: &HistoryEntry,
    obs: &dyn Observer,
) -> Result<ImageCommit> {
    let image = stack
        .image
        .as_ref()
        .ok_or_else(|| LayerError::invalid("--image", "an image is required to commit into"))?;
    let layout = &image.layout;
    valid_tag(new_tag).map_err(|why| LayerError::invalid(layout, format!("tag {new_tag:?}: {why}")))?;
    let ((layer, annotations), added) = write_blob(stack, opts, layout, obs)?;
    let created = history.created.clone().unwrap_or_else(crate::image::write::rfc3339_now);
    let new = NewLayer {
        digest: layer.digest.clone(),
        size: layer.size,
        media_type: layer.media_type.to_string(),
        diff_id: layer.diff_id.clone(),
        created_by: history.created_by.clone(),
        comment: history.comment.clone(),
        created,
        annotations,
    };
    let manifest = append_layer(layout, &image.manifest, &image.config, &new, new_tag, added)?;
    Ok(ImageCommit {
        layer,
        manifest,
        image: format!("oci:{}:{new_tag}", layout.display()),
    })
}

/// Writes the layer as a blob of the layout `layout` (under a temporary name, renamed to its
/// digest once whole; a blob of that digest already there is kept, and not listed as added).
fn write_blob(
    stack: &Stack,
    opts: &CommitOptions,
    layout: &Path,
    obs: &dyn Observer,
) -> Result<(super::Blob, NewBlobs)> {
    let mut added = NewBlobs::default();
    let blobs = layout.join("blobs").join("sha256");
    let placeholder = blobs.join("layer");
    let tmp = TempFile::create(&placeholder).map_err(|e| match e {
        CreateError::Io(e) => LayerError::io(&blobs, e),
        e => LayerError::invalid(&blobs, e.to_string()),
    })?;
    let w = BufWriter::with_capacity(1 << 20, tmp.file().map_err(|e| LayerError::io(&blobs, e))?);
    let blob = commit_blob(stack, opts, w, obs).map_err(|e| match e {
        LayerError::Output(source) => LayerError::io(&blobs, source),
        e => e,
    })?;
    let dest = blob_path(layout, &blob.0.digest)?;
    if dest.exists() {
        // The same layer committed before: same bytes, same name.
        return Ok((blob, added));
    }
    tmp.persist_as(&dest).map_err(|e| LayerError::io(&dest, e))?;
    added.add(dest);
    Ok((blob, added))
}

#[cfg(test)]
mod tests {
    use super::valid_tag;

    #[test]
    fn tags_follow_the_reference_grammar() {
        for ok in ["v2", "latest", "1.0.3", "a_b", "a--b", "X-9"] {
            assert!(valid_tag(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "a:b",
            "a b",
            "é",
            "a---b",
            &"x".repeat(129),
        ] {
            assert!(valid_tag(bad).is_err(), "{bad:?}");
        }
    }
}
