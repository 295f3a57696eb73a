//! `unionfs push oci:DIR:TAG docker://HOST/REPO[:TAG]`: an image of an OCI layout uploaded to a
//! registry through the distribution API, so that what `unionfs commit --image` writes can be
//! pushed without skopeo.
//!
//! Each blob (the layers, then the config; a few at once) is asked for first (`HEAD`) and skipped when the
//! repository has it; else mounted from a repository of the same registry named with
//! `--mount-from` (`POST …/uploads/?mount=D&from=R`, 201: no bytes sent); else uploaded whole in
//! one `PUT` to the session a `POST` opens, streamed from the layout's file. The registry checks
//! every blob against its digest. The manifest goes last, its bytes as the layout stores them,
//! so its digest (printed) is the layout's.

use std::path::Path;

use ureq::Body;
use ureq::http::{Response, StatusCode};

use super::client::{Client, Method, Payload};
use super::reference::{Reference, Which};
use super::{Options, credentials};
use crate::image::ImageError;
use crate::image::layout::{self, Image};

/// Hears how a push goes (a progress line on a terminal).
pub trait Report: Sync {
    /// Blob `n` of `count` (`digest`, `size` bytes) is being looked at.
    fn blob(&self, _n: usize, _count: usize, _digest: &str, _size: u64) {}
    /// `n` more bytes of the blob sent.
    fn bytes(&self, _n: u64) {}
}

/// No report.
pub struct Quiet;
impl Report for Quiet {}

/// What a push did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:…` of the manifest (the layout's).
    pub manifest_digest: String,
    /// Blobs the repository had already.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded, and their bytes.
    pub uploaded: usize,
    pub bytes: u64,
}

/// What the `--mount-from` repositories may be: names as in a reference's path.
fn check_repository(r: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
    if r.is_empty() || !r.chars().all(ok) || r.split('/').any(|p| p.is_empty() || p.starts_with(['.', '-', '_'])) {
        return Err(format!("--mount-from {r:?} is not a repository name"));
    }
    Ok(())
}

/// Pushes the image `source` (`oci:DIR[:TAG]`) to `dest` (`docker://HOST/REPO[:TAG|@DIGEST]`),
/// mounting blobs the repositories `mount_from` of the same registry have.
pub fn push(
    source: &str,
    dest: &str,
    opts: &Options,
    mount_from: &[String],
    report: &dyn Report,
) -> Result<Pushed, ImageError> {
    let (dir, tag) = layout::parse_reference(source)?;
    let image = layout::open(&dir, tag.as_deref())?;
    let target = Reference::parse(dest).map_err(ImageError::Reference)?;
    let fail = |reason: String| ImageError::Registry {
        reference: target.to_string(),
        reason,
    };
    if let Which::Digest(d) = &target.image {
        if *d != image.manifest_digest {
            return Err(fail(format!(
                "the image's manifest is {}: it cannot be pushed as {d}",
                image.manifest_digest
            )));
        }
    }
    for r in mount_from {
        check_repository(r).map_err(fail)?;
    }
    let manifest = layout::read_blob(&dir, &image.manifest_digest)?;
    let blobs = blobs_of(&image);
    // Every blob must be in the layout, at its size, before anything is sent.
    for (digest, size) in &blobs {
        let p = layout::blob_path(&dir, digest)?;
        let len = std::fs::metadata(&p).map_err(|e| ImageError::io(p.clone(), e))?.len();
        if len != *size {
            return Err(ImageError::corrupt(p, format!("{len} bytes, the manifest says {size}")));
        }
    }

    let (creds, from) = credentials(&target).map_err(fail)?;
    let mut scopes = vec![format!("repository:{}:pull,push", target.repository)];
    scopes.extend(mount_from.iter().map(|r| format!("repository:{r}:pull")));
    let client = Client::connect_scoped(&target, opts, creds, from, scopes).map_err(|e| fail(e.to_string()))?;

    let mut done = Pushed {
        manifest_digest: image.manifest_digest.clone(),
        ..Pushed::default()
    };
    let hows = all_blobs(&client, &dir, &blobs, mount_from, report).map_err(fail)?;
    for ((_, size), how) in blobs.iter().zip(hows) {
        match how {
            How::Present => done.present += 1,
            How::Mounted => done.mounted += 1,
            How::Uploaded => {
                done.uploaded += 1;
                done.bytes += size;
            }
        }
    }

    let media = manifest_media_type(&image);
    let url = client.url(&format!("manifests/{}", target.image.as_str()));
    let resp = client
        .send(Method::Put, &url, &Payload::Bytes(&manifest, &media))
        .map_err(|e| fail(format!("manifest: {e}")))?;
    if resp.status() != StatusCode::CREATED {
        return Err(fail(refusal(&format!("manifest {}", image.manifest_digest), resp)));
    }
    // The registry names the digest it stored the manifest under: it must be the layout's.
    if let Some(d) = header(&resp, "docker-content-digest") {
        if d != image.manifest_digest {
            return Err(fail(format!(
                "the registry stored the manifest as {d}, not {}",
                image.manifest_digest
            )));
        }
    }
    Ok(done)
}

/// Blobs sent at once: as on the pull side, a few streams fill a slow link better than one.
const SENDERS: usize = 4;

/// What became of each of `blobs` (in order), [`SENDERS`] at a time on the one client (its
/// token is shared), or the first failure: after one, no other blob is started.
fn all_blobs(
    client: &Client,
    dir: &Path,
    blobs: &[(String, u64)],
    mount_from: &[String],
    report: &dyn Report,
) -> Result<Vec<How>, String> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<parking_lot::Mutex<Option<Result<How, String>>>> =
        blobs.iter().map(|_| parking_lot::Mutex::new(None)).collect();
    std::thread::scope(|sc| {
        for _ in 0..SENDERS.min(blobs.len()) {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some((digest, size)) = blobs.get(i).filter(|_| !failed.load(Relaxed)) else {
                        break;
                    };
                    report.blob(i + 1, blobs.len(), digest, *size);
                    let r = layout::blob_path(dir, digest)
                        .map_err(|e| e.to_string())
                        .and_then(|path| blob(client, digest, *size, &path, mount_from, report));
                    failed.fetch_or(r.is_err(), Relaxed);
                    *results[i].lock() = Some(r);
                }
            });
        }
    });
    let results: Vec<Option<Result<How, String>>> = results.into_iter().map(parking_lot::Mutex::into_inner).collect();
    // The first failure in blob order (a blob left untried was not the cause).
    if let Some(Some(Err(e))) = results.iter().find(|r| matches!(r, Some(Err(_)))) {
        return Err(e.clone());
    }
    results
        .into_iter()
        .map(|r| match r {
            Some(Ok(how)) => Ok(how),
            _ => Err("a blob was not sent".to_string()),
        })
        .collect()
}

/// The image's blobs, (digest, size): layers base first, then the config.
fn blobs_of(image: &Image) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = image.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
    out.push((image.config_digest.clone(), image.manifest.config().size()));
    // A layer listed twice goes once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(d, _)| seen.insert(d.clone()));
    out
}

/// The manifest's own `mediaType`, else OCI's (the field is optional in OCI manifests).
fn manifest_media_type(image: &Image) -> String {
    image.manifest.media_type().as_ref().map_or_else(
        || "application/vnd.oci.image.manifest.v1+json".to_string(),
        |m| m.to_string(),
    )
}

/// How a blob got into the repository.
enum How {
    Present,
    Mounted,
    Uploaded,
}

/// Makes sure the repository has the blob `digest` (the file `path`, `size` bytes).
fn blob(
    client: &Client,
    digest: &str,
    size: u64,
    path: &Path,
    mount_from: &[String],
    report: &dyn Report,
) -> Result<How, String> {
    let what = format!("blob {digest}");
    let resp = client
        .send(Method::Head, &client.url(&format!("blobs/{digest}")), &Payload::Empty)
        .map_err(|e| format!("{what}: {e}"))?;
    match resp.status() {
        StatusCode::OK => return Ok(How::Present),
        StatusCode::NOT_FOUND => {}
        _ => return Err(refusal(&what, resp)),
    }
    // A mount that fails opens an upload session instead (202): the last one is used, the
    // others are given up.
    let mut session = None;
    for (i, from) in mount_from.iter().enumerate() {
        let url = client.url(&format!("blobs/uploads/?mount={digest}&from={from}"));
        let resp = client
            .send(Method::Post, &url, &Payload::Empty)
            .map_err(|e| format!("{what}: {e}"))?;
        match resp.status() {
            StatusCode::CREATED => return Ok(How::Mounted),
            StatusCode::ACCEPTED => {
                let loc = location(client, &what, &resp)?;
                if i + 1 == mount_from.len() {
                    session = Some(loc);
                } else {
                    let _ = client.send(Method::Delete, &loc, &Payload::Empty);
                }
            }
            _ => return Err(refusal(&format!("{what}: mount from {from}"), resp)),
        }
    }
    let session = match session {
        Some(s) => s,
        None => {
            let resp = client
                .send(Method::Post, &client.url("blobs/uploads/"), &Payload::Empty)
                .map_err(|e| format!("{what}: {e}"))?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(refusal(&format!("{what}: starting the upload"), resp));
            }
            location(client, &what, &resp)?
        }
    };
    let sep = if session.contains('?') { '&' } else { '?' };
    let url = format!("{session}{sep}digest={digest}");
    let sent = |n: u64| report.bytes(n);
    let resp = client
        .send(Method::Put, &url, &Payload::File(path, size, &sent))
        .map_err(|e| format!("{what}: upload: {e}"))?;
    if resp.status() != StatusCode::CREATED {
        return Err(refusal(&format!("{what}: upload"), resp));
    }
    Ok(How::Uploaded)
}

/// The upload session's URL an answer names.
fn location(client: &Client, what: &str, resp: &Response<Body>) -> Result<String, String> {
    header(resp, "location")
        .map(|l| client.location(&l))
        .ok_or_else(|| format!("{what}: the registry opened an upload without a Location"))
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Why the registry refused `what`: its status and the errors its body lists
/// (`{"errors": [{"code": …, "message": …}]}`).
fn refusal(what: &str, mut resp: Response<Body>) -> String {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 16)
        .read_to_vec()
        .unwrap_or_default();
    let errors: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code}: {msg}").trim_matches([' ', ':']).to_string()
        })
        .filter(|e| !e.is_empty())
        .collect();
    let said = if errors.is_empty() {
        String::new()
    } else {
        format!(" ({})", errors.join("; "))
    };
    match status {
        403 => format!("{what}: denied (403){said}"),
        404 => format!("{what}: not found (404){said}"),
        _ => format!("{what}: the registry answered HTTP {status}{said}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_from_names_are_repositories() {
        assert!(check_repository("team/app").is_ok());
        for bad in ["", "App", "a//b", "../x", "a?b", "a&from=b"] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }
}
