//! README, "From a registry": `unionfs push oci:DIR:TAG docker://HOST/REPO:TAG` uploads an image
//! of a layout to a registry, its manifest byte for byte (`skopeo inspect` sees the layout's
//! digest), and a mount of the pushed image shows what `umoci unpack` does (a zstd:chunked one
//! read lazily). A blob the repository has is not sent again; one another repository has is
//! mounted from it (`--mount-from`); what `commit --image` writes is pushed and mounted back.
//! Credentials come from `auth.json` (Basic, or a Bearer token); every failure is one line, exit
//! 2, and a push refused for want of credentials leaves nothing behind.
//!
//! Each test starts its own `docker-registry` (killed by its PID when the test ends); the
//! registry's access log says which requests our binary made.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{Auth, Registry, bin, registry_prerequisites};
use crate::image_tools::{layout_copy, oci, s, tool};
use crate::images::{diff, images, prerequisites, snapshot};
use crate::registry::{mount, no_auth};

fn need() -> bool {
    prerequisites() && registry_prerequisites()
}

/// `unionfs push SOURCE DEST --tls-verify=false EXTRA…` with `auth` as the only credentials.
fn push(source: &str, dest: &str, extra: &[&str], auth: &Path) -> Output {
    Command::new(bin())
        .args(["push", source, dest, "--tls-verify=false"])
        .args(extra)
        .env("REGISTRY_AUTH_FILE", auth)
        .output()
        .expect("run unionfs push")
}

/// A push that must succeed: the digest it prints.
fn pushed(source: &str, dest: &str, extra: &[&str], auth: &Path) -> String {
    let out = push(source, dest, extra, auth);
    assert!(
        out.status.success(),
        "push {source} {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A push that must fail: its one line (exit 2, naming `names`).
fn refused(source: &str, dest: &str, auth: &Path, names: &str) -> String {
    let out = push(source, dest, &[], auth);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{dest}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{dest}: one line: {err}");
    assert!(err.contains(names), "{dest}: names {names}: {err}");
    assert!(out.stdout.is_empty(), "{dest}: no digest printed");
    err
}

/// The digest `skopeo inspect` sees for `reference` (`creds` user:password if any), or its error.
fn remote_digest(reference: &str, creds: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.arg(format!("--creds={c}"));
    }
    let out = cmd.arg(reference).output().expect("skopeo");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("skopeo json");
    Ok(v["Digest"].as_str().unwrap_or_default().to_string())
}

fn layout_digest(layout: &Path, tag: &str) -> String {
    unionfs::image::layout::open(layout, Some(tag))
        .expect("layout")
        .manifest_digest
}

/// How many blobs (layers and config) the image `tag` has.
fn blob_count(layout: &Path, tag: &str) -> usize {
    unionfs::image::layout::open(layout, Some(tag))
        .expect("layout")
        .layers
        .len()
        + 1
}

#[test]
fn a_pushed_image_has_the_layouts_digest_and_mounts_as_umoci_unpacks() {
    if !need() {
        return;
    }
    let img = images();
    let want = snapshot(&img.unpacked);
    let reg = Registry::start(&[]);
    let t = tempfile::tempdir().expect("tmp");
    let auth = no_auth(t.path());
    for tag in ["gz", "chunked"] {
        let reference = reg.reference(tag, tag);
        let before = reg.requests("PUT", "/blobs/uploads/").len();
        let digest = pushed(&oci(&img.layout, tag), &reference, &[], &auth);
        let uploads = reg.requests("PUT", "/blobs/uploads/").split_off(before);
        // The two images may share their config (it names the uncompressed layers).
        assert!(
            uploads.len() + 1 >= blob_count(&img.layout, tag) && uploads.iter().all(|s| *s == 201),
            "{tag}: every blob uploaded: {uploads:?}"
        );
        assert_eq!(digest, layout_digest(&img.layout, tag), "{tag}: the digest printed");
        assert_eq!(
            remote_digest(&reference, None),
            Ok(digest),
            "{tag}: skopeo sees the layout's manifest"
        );
        let cache = t.path().join(format!("cache-{tag}"));
        let m = mount(&reference, &cache, &t.path().join(tag), &auth);
        let d = diff(&want, &snapshot(&m.mnt));
        assert_eq!(m.unmount(), Some(0));
        assert!(
            d.is_empty(),
            "{tag}: the view differs from umoci unpack:\n{}",
            d.join("\n")
        );
        if tag == "chunked" {
            let image = unionfs::image::layout::open(&img.layout, Some(tag)).expect("layout");
            for l in &image.layers {
                let p = unionfs::image::layout::blob_path(&cache, &l.digest).expect("path");
                assert!(!p.exists(), "{}: read by range, never fetched whole", l.digest);
            }
        }
    }
}

#[test]
fn a_blob_the_repository_has_is_not_sent_and_one_another_has_is_mounted() {
    if !need() {
        return;
    }
    let img = images();
    let reg = Registry::start(&[]);
    let t = tempfile::tempdir().expect("tmp");
    let auth = no_auth(t.path());
    let (source, n) = (oci(&img.layout, "gz"), blob_count(&img.layout, "gz"));
    let digest = pushed(&source, &reg.reference("app", "gz"), &[], &auth);
    assert_eq!(reg.requests("PUT", "/blobs/uploads/"), vec![201; n], "first push");
    let heads = reg.requests("HEAD", "/blobs/").len();
    assert_eq!(
        pushed(&source, &reg.reference("app", "gz"), &[], &auth),
        digest,
        "again"
    );
    assert_eq!(reg.requests("HEAD", "/blobs/").len(), heads + n, "each blob asked for");
    assert_eq!(reg.requests("POST", "/blobs/").len(), n, "no upload started again");
    assert_eq!(reg.requests("PUT", "/blobs/").len(), n, "no blob sent again");

    let other = reg.reference("other", "gz");
    assert_eq!(pushed(&source, &other, &["--mount-from", "app"], &auth), digest);
    assert_eq!(
        reg.requests("POST", "mount="),
        vec![201; n],
        "every blob mounted from app"
    );
    assert_eq!(reg.requests("PUT", "/blobs/").len(), n, "no blob sent for the mount");
    assert_eq!(remote_digest(&other, None), Ok(digest.clone()));
    let m = mount(&other, &t.path().join("cache"), &t.path().join("mnt"), &auth);
    let d = diff(&snapshot(&img.unpacked), &snapshot(&m.mnt));
    assert_eq!(m.unmount(), Some(0));
    assert!(d.is_empty(), "the mounted blobs' view:\n{}", d.join("\n"));

    // A repository without the blobs: the session its failed mount opens takes the upload.
    let (mounts, puts) = (
        reg.requests("POST", "mount=").len(),
        reg.requests("PUT", "/blobs/").len(),
    );
    let third = reg.reference("third", "gz");
    assert_eq!(pushed(&source, &third, &["--mount-from", "nothere"], &auth), digest);
    assert_eq!(reg.requests("POST", "mount=").split_off(mounts), vec![202; n]);
    assert_eq!(reg.requests("PUT", "/blobs/").split_off(puts), vec![201; n], "uploaded");
    // Named before one that has them, its session is given up and the next one mounts.
    let fourth = reg.reference("fourth", "gz");
    let from = ["--mount-from", "nothere", "--mount-from", "app"];
    assert_eq!(pushed(&source, &fourth, &from, &auth), digest);
    let mut tried = reg.requests("POST", "mount=").split_off(mounts + n);
    tried.sort_unstable();
    assert_eq!(
        tried,
        [vec![201; n], vec![202; n]].concat(),
        "each blob: nothere, then app"
    );
    assert_eq!(
        reg.requests("DELETE", "/blobs/uploads/").len(),
        n,
        "the unused sessions"
    );
    assert_eq!(reg.requests("PUT", "/blobs/").len(), puts + n, "nothing uploaded");
    assert_eq!(remote_digest(&fourth, None), Ok(digest));
}

#[test]
fn committed_zstd_chunked_and_estargz_images_pushed_and_mounted_back_show_the_change_lazily() {
    if !need() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let layout = layout_copy(t.path());
    let upper = t.path().join("upper");
    std::fs::create_dir_all(upper.join("etc")).expect("mkdir upper");
    std::fs::write(upper.join("etc/hello"), "pushed\n").expect("write");
    std::fs::write(upper.join("etc/pushed"), "new\n").expect("write");
    let cache = t.path().join("cache");
    let reg = Registry::start(&[]);
    let auth = no_auth(t.path());
    for (compress, tag) in [("zstd:chunked", "new"), ("estargz", "esgz")] {
        tool(&[
            "commit",
            "--image",
            &oci(&layout, "gz"),
            "--cache",
            s(&cache),
            "--upper",
            s(&upper),
            "--tag",
            tag,
            "--compress",
            compress,
        ]);
        let reference = reg.reference("app", tag);
        let digest = pushed(&oci(&layout, tag), &reference, &[], &auth);
        assert_eq!(digest, layout_digest(&layout, tag), "{compress}");
        let cache2 = t.path().join(format!("cache-{tag}"));
        let m = mount(&reference, &cache2, &t.path().join(tag), &auth);
        let read = |p: &str| std::fs::read_to_string(m.path(p)).unwrap_or_else(|e| format!("{p}: {e}"));
        let (hello, added, new) = (read("etc/hello"), read("etc/added"), read("etc/pushed"));
        assert_eq!(m.unmount(), Some(0));
        assert_eq!(
            (hello.as_str(), new.as_str()),
            ("pushed\n", "new\n"),
            "{compress}: the upper's change"
        );
        assert_eq!(added, "added\n", "{compress}: the image below it");
        // The committed layer has a table of contents: read by range, never fetched whole.
        let image = unionfs::image::layout::open(&layout, Some(tag)).expect("layout");
        let top = image.layers.last().expect("a layer");
        let whole = unionfs::image::layout::blob_path(&cache2, &top.digest).expect("path");
        assert!(!whole.exists(), "{compress}: the committed layer was fetched whole");
        assert!(
            cache2
                .join("partial")
                .join(top.digest.trim_start_matches("sha256:"))
                .is_file(),
            "{compress}: the committed layer was read lazily"
        );
    }
}

/// An `auth.json` in `dir` with `user:password` for `reg`.
fn auth_json(dir: &Path, reg: &Registry, user_pass: &str) -> PathBuf {
    use base64::Engine as _;
    let a = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let f = dir.join("auth.json");
    let json = serde_json::json!({"auths": {reg.host(): {"auth": a}}});
    std::fs::write(&f, json.to_string()).expect("write auth.json");
    f
}

#[test]
fn credentials_come_from_auth_json_basic_or_bearer_and_none_is_401_and_nothing_pushed() {
    if !need() {
        return;
    }
    let img = images();
    let source = oci(&img.layout, "gz");
    let want = layout_digest(&img.layout, "gz");
    for (kind, reg, creds) in [
        ("basic", Registry::start(&[("alice", "s3cret")]), "alice:s3cret"),
        (
            "token",
            Registry::start_with(Auth::Token("bob", "t0ken"), None),
            "bob:t0ken",
        ),
    ] {
        let t = tempfile::tempdir().expect("tmp");
        let reference = reg.reference("private", "gz");
        let err = refused(&source, &reference, &no_auth(t.path()), &reference);
        assert!(err.contains("401") && err.contains("no-auth.json"), "{kind}: {err}");
        assert_eq!(reg.requests("PUT", "/").len(), 0, "{kind}: nothing sent");
        let after = remote_digest(&reference, Some(creds)).expect_err("nothing pushed");
        assert!(after.contains("unknown"), "{kind}: {after}");

        let tokens = reg.tokens_issued();
        let auth = auth_json(t.path(), &reg, creds);
        assert_eq!(pushed(&source, &reference, &[], &auth), want, "{kind}");
        assert_eq!(remote_digest(&reference, Some(creds)), Ok(want.clone()), "{kind}");
        if kind == "token" {
            assert!(reg.tokens_issued() > tokens, "the push got its token from the realm");
            // A mount from another repository asks for pull on it in the same token.
            let other = reg.reference("other", "gz");
            assert_eq!(pushed(&source, &other, &["--mount-from", "private"], &auth), want);
            let n = blob_count(&img.layout, "gz");
            assert_eq!(reg.requests("POST", "mount="), vec![201; n], "mounted with a token");
        }
    }
}

#[test]
fn an_unknown_tag_a_corrupt_blob_or_a_stopped_registry_is_one_line() {
    if !need() {
        return;
    }
    let mut reg = Registry::start(&[]);
    let t = tempfile::tempdir().expect("tmp");
    let auth = no_auth(t.path());
    let layout = layout_copy(t.path());
    let dest = reg.reference("app", "gz");
    let err = refused(&oci(&layout, "nope"), &dest, &auth, "nope");
    assert!(err.contains("no image tagged nope"), "{err}");

    // A layer whose bytes are not its digest (its size unchanged): the registry says so.
    let image = unionfs::image::layout::open(&layout, Some("gz")).expect("layout");
    let digest = &image.layers[0].digest;
    let p = unionfs::image::layout::blob_path(&layout, digest).expect("path");
    let mut bytes = std::fs::read(&p).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&p, &bytes).expect("corrupt the blob");
    let err = refused(&oci(&layout, "gz"), &dest, &auth, &dest);
    assert!(err.contains(digest.as_str()) && err.contains("DIGEST_INVALID"), "{err}");
    assert!(remote_digest(&dest, None).is_err(), "no manifest pushed");

    reg.stop();
    let err = refused(&oci(&images().layout, "gz"), &dest, &auth, &dest);
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn over_tls_the_registry_ca_comes_from_cert_dir() {
    if !need() {
        return;
    }
    let img = images();
    let t = tempfile::tempdir().expect("tmp");
    let (cert, key) = crate::registry::test_ca(t.path());
    let reg = Registry::start_with(Auth::None, Some((&cert, &key)));
    let (source, dest) = (oci(&img.layout, "gz"), reg.reference("app", "gz"));
    let run = |extra: &[&str]| {
        Command::new(bin())
            .args(["push", &source, &dest])
            .args(extra)
            .env("REGISTRY_AUTH_FILE", no_auth(t.path()))
            .output()
            .expect("run unionfs push")
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("TLS") && err.contains("--cert-dir") && err.contains(&dest),
        "{err}"
    );
    let ca = format!("--cert-dir={}", t.path().join("ca").display());
    let out = run(&[&ca]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(digest, layout_digest(&img.layout, "gz"));
    assert_eq!(remote_digest(&dest, None), Ok(digest));
}
