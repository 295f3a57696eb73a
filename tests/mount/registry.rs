//! docs/semantics.md, "Images" (registries): `unionfs mount --image docker://HOST/REPO:TAG`
//! shows the same view as the `oci:` layout the image was pushed from, for every compression,
//! as OCI or Docker schema 2 manifests, and by digest; the blobs land in the cache's blob store
//! once, so a second mount (or two first mounts at once) fetches each blob once; credentials
//! come from the containers `auth.json` (sent as Basic auth, or for a Bearer token from the
//! registry's token service); over TLS the registry's CA comes from `--cert-dir`;
//! and every way of not getting the image (no or wrong credentials, unknown tag or repository,
//! registry gone, a refused certificate, a blob whose bytes are not its digest, a media type or
//! platform we do not read) is one line naming the reference, exit 2, nothing mounted.
//!
//! Each test starts its own `docker-registry` on a free loopback port (killed by its PID when
//! the test ends) and pushes an image with `skopeo copy --preserve-digests`, each compression
//! to its own repository.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{Auth, Mount, Registry, bin, is_mounted, registry_prerequisites};
use crate::images::{Images, diff, images, prerequisites, snapshot};

fn need() -> bool {
    prerequisites() && registry_prerequisites()
}

/// How the tests reach a registry that speaks plain HTTP.
const PLAIN: &[&str] = &["--tls-verify=false"];

/// The arguments of a foreground mount of `reference` with the cache `cache` at `mnt`, with
/// `opts` (how to reach the registry).
fn mount_args(reference: &str, cache: &Path, mnt: &Path, opts: &[&str]) -> Vec<OsString> {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    let mut args: Vec<OsString> = vec!["mount".into(), "--foreground".into(), "--image".into()];
    args.push(reference.into());
    args.extend(opts.iter().map(OsString::from));
    args.extend(["--cache".into(), cache.into(), mnt.into()]);
    args
}

/// Mounts `reference`, with `auth_file` as the only place credentials may come from (never the
/// credentials of whoever runs the tests).
pub(crate) fn mount(reference: &str, cache: &Path, mnt: &Path, auth_file: &Path) -> Mount {
    mount_opts(reference, cache, mnt, auth_file, PLAIN)
}

fn mount_opts(reference: &str, cache: &Path, mnt: &Path, auth_file: &Path, opts: &[&str]) -> Mount {
    let auth = auth_file.display().to_string();
    let args = mount_args(reference, cache, mnt, opts);
    Mount::start_with_env(&args, mnt, &[("REGISTRY_AUTH_FILE", &auth)])
}

/// A mount that must fail: its output, after checking it is one line, exit 2, nothing mounted.
fn refused(reference: &str, cache: &Path, mnt: &Path, auth_file: &Path) -> String {
    refused_opts(reference, cache, mnt, auth_file, PLAIN)
}

fn refused_opts(reference: &str, cache: &Path, mnt: &Path, auth_file: &Path, opts: &[&str]) -> String {
    let mut args = mount_args(reference, cache, mnt, opts);
    args.remove(1); // not in the foreground: the whole command line's path
    let out: Output = Command::new(bin())
        .args(&args)
        .env("REGISTRY_AUTH_FILE", auth_file)
        .output()
        .expect("run unionfs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{reference}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{reference}: one line: {err}");
    assert!(err.contains(reference), "{reference}: names the reference: {err}");
    assert!(!is_mounted(mnt), "{reference}: nothing mounted");
    err
}

/// A registry with the image's `gz` tag pushed as `app:gz`; None when a prerequisite is missing.
fn with_app() -> Option<(&'static Images, Registry)> {
    if !need() {
        return None;
    }
    let img = images();
    let reg = Registry::start(&[]);
    reg.push(&img.layout, "gz", "app", &[]);
    Some((img, reg))
}

pub(crate) fn no_auth(dir: &Path) -> PathBuf {
    dir.join("no-auth.json")
}

#[test]
fn every_compression_from_a_registry_shows_what_umoci_unpacks() {
    if !need() {
        return;
    }
    let img = images();
    let want = snapshot(&img.unpacked);
    let reg = Registry::start(&[]);
    let t = tempfile::tempdir().expect("tmp");
    // The layout's OCI manifests as they are, and the gzip image as a Docker schema 2 one.
    let docker = ["--format", "v2s2"];
    for (tag, repo, extra) in [
        ("gz", "gz", &[][..]),
        ("zst", "zst", &[]),
        ("chunked", "chunked", &[]),
        ("gz", "docker", &docker),
    ] {
        reg.push(&img.layout, tag, repo, extra);
        let m = mount(
            &reg.reference(repo, tag),
            &t.path().join(format!("cache-{repo}")),
            &t.path().join(repo),
            &no_auth(t.path()),
        );
        let d = diff(&want, &snapshot(&m.mnt));
        assert!(
            d.is_empty(),
            "{repo}: the view differs from umoci unpack:\n{}",
            d.join("\n")
        );
        assert_eq!(m.unmount(), Some(0));
    }
}

/// (path, inode, mtime in ns) of every file in `dir`: what a file replaced or rewritten changes.
fn files_in(dir: &Path) -> Vec<(PathBuf, u64, i64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("entry");
            let md = e.metadata().expect("stat");
            // Blobs and catalogs are written under a temporary name and renamed into place,
            // so one written again has another inode (a mount moves their mtime: last use).
            (e.path(), md.ino(), md.len() as i64)
        })
        .collect();
    out.sort();
    out
}

/// The files of the cache's blob store.
fn blob_files(cache: &Path) -> Vec<(PathBuf, u64, i64)> {
    files_in(&cache.join("blobs/sha256"))
}

#[test]
fn a_second_mount_by_tag_or_by_digest_fetches_no_blob() {
    let Some((img, reg)) = with_app() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    // Two first mounts at once on an empty cache: each blob is fetched by one of them only.
    let (a, b) = std::thread::scope(|s| {
        let one = |name: &'static str| {
            let (cache, t, r) = (&cache, t.path(), reg.reference("app", "gz"));
            s.spawn(move || mount(&r, cache, &t.join(name), &no_auth(t)))
        };
        let (a, b) = (one("m1"), one("m2"));
        (a.join().expect("first mount"), b.join().expect("second mount"))
    });
    let first = snapshot(&a.mnt);
    let d = diff(&first, &snapshot(&b.mnt));
    assert!(d.is_empty(), "two mounts at once, two views:\n{}", d.join("\n"));
    assert_eq!((a.unmount(), b.unmount()), (Some(0), Some(0)));
    let image = unionfs::image::layout::open(&img.layout, Some("gz")).expect("layout");
    let fetched = reg.blob_gets();
    assert_eq!(
        fetched,
        image.layers.len() + 1,
        "every layer and the config fetched once"
    );
    let stored = blob_files(&cache);
    // The layer tools read the same image from the same cache.
    let out = Command::new(bin())
        .args([
            "layers",
            "--json",
            "--tls-verify",
            "false",
            "--image",
            &reg.reference("app", "gz"),
            "--cache",
        ])
        .arg(&cache)
        .env("REGISTRY_AUTH_FILE", no_auth(t.path()))
        .output()
        .expect("unionfs layers");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Committing into a registry image is not there: refused at once, in one line.
    let upper = t.path().join("upper");
    std::fs::create_dir(&upper).expect("mkdir upper");
    let commit = Command::new(bin())
        .args([
            "commit",
            "--tls-verify",
            "false",
            "--tag",
            "v2",
            "--image",
            &reg.reference("app", "gz"),
        ])
        .arg("--upper")
        .arg(&upper)
        .output()
        .expect("unionfs commit");
    let err = String::from_utf8_lossy(&commit.stderr);
    assert!(
        commit.status.code() == Some(2) && err.trim().lines().count() == 1,
        "{err}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(image.layers.len()), "{rows}");
    let by_digest = format!("docker://{}/app@{}", reg.host(), image.manifest_digest);
    for (i, reference) in [&reg.reference("app", "gz"), &by_digest].iter().enumerate() {
        let m = mount(
            reference,
            &cache,
            &t.path().join(format!("again{i}")),
            &no_auth(t.path()),
        );
        let d = diff(&first, &snapshot(&m.mnt));
        assert!(d.is_empty(), "{reference}: another view:\n{}", d.join("\n"));
        assert_eq!(m.unmount(), Some(0));
        assert_eq!(reg.blob_gets(), fetched, "{reference}: no blob fetched again");
        assert_eq!(blob_files(&cache), stored, "{reference}: the blob store is untouched");
    }
    // By digest, everything is in the cache: the registry is not needed at all.
    let mut reg = reg;
    reg.stop();
    let m = mount(&by_digest, &cache, &t.path().join("offline"), &no_auth(t.path()));
    assert!(diff(&first, &snapshot(&m.mnt)).is_empty(), "offline: another view");
    assert_eq!(m.unmount(), Some(0));
}

/// Unmounts a background mount (whose daemon then exits) when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

#[test]
fn a_tag_is_resolved_once_and_the_daemon_mounts_that_manifest() {
    let Some((_img, reg)) = with_app() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let reference = reg.reference("app", "gz");
    let m = mount(&reference, &cache, &t.path().join("fg"), &no_auth(t.path()));
    let view = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(reg.manifest_gets("gz"), 1, "a foreground mount asks for the tag once");
    // In the background the command resolves the tag and hands the daemon the manifest's
    // digest: a tag moved meanwhile cannot change what gets mounted.
    let mnt = t.path().join("bg");
    let mut args = mount_args(&reference, &cache, &mnt, PLAIN);
    args.remove(1);
    let out = Command::new(bin())
        .args(&args)
        .env("REGISTRY_AUTH_FILE", no_auth(t.path()))
        .output()
        .expect("run unionfs");
    let _unmount = Unmount(mnt.clone());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        diff(&view, &snapshot(&mnt)).is_empty(),
        "the background mount shows the image"
    );
    assert_eq!(reg.manifest_gets("gz"), 2, "the daemon did not ask for the tag again");
}

/// `unionfs cache ARGS --cache CACHE`: its stdout, after checking it succeeded.
pub(crate) fn cache_cmd(args: &[&str], cache: &Path) -> String {
    let out = Command::new(bin())
        .arg("cache")
        .args(args)
        .arg("--cache")
        .arg(cache)
        .output()
        .expect("unionfs cache");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn cache_items(cache: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&cache_cmd(&["ls", "--json"], cache)).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

/// Moves every file's mtime below `dir` an hour back (past prune's one-minute grace).
pub(crate) fn age_all(dir: &Path) {
    let st = Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-exec", "touch", "-m", "-d", "1 hour ago", "{}", "+"])
        .status()
        .expect("find");
    assert!(st.success());
}

#[test]
fn cache_prune_keeps_what_a_mount_uses_and_removes_the_rest() {
    let Some((img, reg)) = with_app() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let m = mount(
        &reg.reference("app", "gz"),
        &cache,
        &t.path().join("m"),
        &no_auth(t.path()),
    );
    let view = snapshot(&m.mnt);
    let image = unionfs::image::layout::open(&img.layout, Some("gz")).expect("layout");
    let items = cache_items(&cache);
    let kind = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
    assert_eq!(
        kind("blob"),
        image.layers.len() + 2,
        "layers, config, manifest: {items:?}"
    );
    assert_eq!(kind("catalog"), image.layers.len(), "{items:?}");
    let busy = items.iter().filter(|i| i["in_use"] == true).count();
    assert_eq!(
        busy,
        2 * image.layers.len(),
        "the mount holds each layer's blob and catalog"
    );
    age_all(&cache);
    let out = cache_cmd(&["prune"], &cache);
    let left = cache_items(&cache);
    assert_eq!(
        left.iter().filter(|i| i["kind"] != "piece").count(),
        2 * image.layers.len(),
        "only what the mount uses is left: {out}\n{left:?}"
    );
    crate::images::drop_page_cache();
    assert!(diff(&view, &snapshot(&m.mnt)).is_empty(), "the mount reads on");
    assert_eq!(m.unmount(), Some(0));
    age_all(&cache);
    cache_cmd(&["prune"], &cache);
    assert!(cache_items(&cache).is_empty(), "nothing left once unmounted");
    let gets = reg.blob_gets();
    let m = mount(
        &reg.reference("app", "gz"),
        &cache,
        &t.path().join("again"),
        &no_auth(t.path()),
    );
    assert!(diff(&view, &snapshot(&m.mnt)).is_empty(), "a pruned image mounts again");
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(reg.blob_gets(), gets + image.layers.len() + 1, "fetched again");
}

#[test]
fn a_mount_holds_the_whole_cache_to_cache_size_keeping_what_it_uses() {
    let Some((img, reg)) = with_app() else {
        return;
    };
    reg.push(&img.layout, "zst", "appz", &[]);
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let m = mount(
        &reg.reference("app", "gz"),
        &cache,
        &t.path().join("gz"),
        &no_auth(t.path()),
    );
    assert_eq!(m.unmount(), Some(0));
    // The gzip image's layers (its config is the zstd image's too, and stays in use).
    let gz: Vec<serde_json::Value> = unionfs::image::layout::open(&img.layout, Some("gz"))
        .expect("layout")
        .layers
        .iter()
        .map(|l| serde_json::Value::from(l.digest.clone()))
        .collect();
    let held = |items: &[serde_json::Value]| items.iter().filter(|i| gz.contains(&i["digest"])).count();
    assert_eq!(
        held(&cache_items(&cache)),
        2 * gz.len(),
        "blobs and catalogs of the gzip layers"
    );
    age_all(&cache);
    // Far below what one image takes: everything unused goes, the new image's blobs stay.
    let small = ["--tls-verify=false", "--cache-size", "1M"];
    let m = mount_opts(
        &reg.reference("appz", "zst"),
        &cache,
        &t.path().join("zst"),
        &no_auth(t.path()),
        &small,
    );
    let left = cache_items(&cache);
    assert_eq!(
        held(&left),
        0,
        "the gzip layers' blobs and catalogs were removed: {left:?}"
    );
    let busy = left.iter().filter(|i| i["in_use"] == true).count();
    assert!(busy > 0, "the zstd image's blobs and catalogs stay: {left:?}");
    assert!(
        m.path("data").read_dir().expect("readdir").count() > 0,
        "the mount works"
    );
    assert_eq!(m.unmount(), Some(0));
}

/// The layer catalogs of the cache.
fn catalogs(cache: &Path) -> Vec<(PathBuf, u64, i64)> {
    files_in(&cache.join("layers"))
}

#[test]
fn layers_indexed_from_a_layout_serve_the_same_image_from_a_registry() {
    let Some((img, reg)) = with_app() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let m = crate::images::mount_image(&img.layout, "gz", &cache, &[], &t.path().join("oci"));
    let want = snapshot(&m.mnt);
    assert_eq!(m.unmount(), Some(0));
    let before = catalogs(&cache);
    let m = mount(
        &reg.reference("app", "gz"),
        &cache,
        &t.path().join("reg"),
        &no_auth(t.path()),
    );
    let d = diff(&want, &snapshot(&m.mnt));
    assert!(d.is_empty(), "the registry image shows another view:\n{}", d.join("\n"));
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(catalogs(&cache), before, "no layer indexed again");
}

#[test]
fn credentials_come_from_auth_json_and_none_is_one_line_naming_401() {
    if !need() {
        return;
    }
    let img = images();
    let reg = Registry::start(&[("alice", "s3cret")]);
    reg.push(&img.layout, "gz", "private", &["--dest-creds=alice:s3cret"]);
    let t = tempfile::tempdir().expect("tmp");
    let auth_json = |user_pass: &str| {
        use base64::Engine as _;
        let a = base64::engine::general_purpose::STANDARD.encode(user_pass);
        let f = t.path().join(format!("auth-{}.json", user_pass.len()));
        let json = serde_json::json!({"auths": {reg.host(): {"auth": a}}});
        std::fs::write(&f, json.to_string()).expect("write auth.json");
        f
    };
    let reference = reg.reference("private", "gz");
    let err = refused(
        &reference,
        &t.path().join("c0"),
        &t.path().join("m0"),
        &no_auth(t.path()),
    );
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");
    let err = refused(
        &reference,
        &t.path().join("c1"),
        &t.path().join("m1"),
        &auth_json("alice:wrong"),
    );
    assert!(
        err.contains("401") && err.contains("refused the credentials of alice"),
        "{err}"
    );
    let m = mount(
        &reference,
        &t.path().join("c2"),
        &t.path().join("m2"),
        &auth_json("alice:s3cret"),
    );
    assert_eq!(std::fs::read_to_string(m.path("etc/hello")).expect("read"), "changed\n");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn an_unknown_tag_or_repository_or_a_stopped_registry_is_one_line_and_nothing_mounted() {
    let Some((_, mut reg)) = with_app() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let (cache, mnt, auth) = (t.path().join("cache"), t.path().join("mnt"), no_auth(t.path()));
    let err = refused(&reg.reference("app", "nope"), &cache, &mnt, &auth);
    assert!(err.contains("tag nope") && err.contains("404"), "{err}");
    let err = refused(&reg.reference("nothing/here", "gz"), &cache, &mnt, &auth);
    assert!(err.contains("repository nothing/here") && err.contains("404"), "{err}");
    let reference = reg.reference("app", "gz");
    reg.stop();
    let err = refused(&reference, &cache, &mnt, &auth);
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn a_blob_the_registry_serves_corrupt_is_refused_naming_its_digest() {
    let Some((img, reg)) = with_app() else {
        return;
    };
    let image = unionfs::image::layout::open(&img.layout, Some("gz")).expect("layout");
    let digest = &image.layers[0].digest;
    let hex = digest.trim_start_matches("sha256:");
    // The registry serves a blob as it finds it in its storage.
    let data = reg
        .storage()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&data, &bytes).expect("corrupt the stored blob");
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let err = refused(
        &reg.reference("app", "gz"),
        &cache,
        &t.path().join("mnt"),
        &no_auth(t.path()),
    );
    assert!(err.contains(digest.as_str()) && err.contains("corrupt"), "{err}");
    assert!(
        !cache.join("blobs/sha256").join(hex).exists(),
        "a corrupt blob is not kept in the cache"
    );
}

#[test]
fn an_unsupported_media_type_or_no_manifest_for_this_platform_is_one_line() {
    if !registry_prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (layout, foreign) = crate::image_errors::refusable_layout(&t.path().join("layout"));
    let reg = Registry::start(&[]);
    let (cache, mnt, auth) = (t.path().join("cache"), t.path().join("mnt"), no_auth(t.path()));
    reg.push(&layout, "ok", "ok", &[]);
    let m = mount(&reg.reference("ok", "ok"), &cache, &mnt, &auth);
    assert_eq!(std::fs::read_to_string(m.path("f")).expect("read"), "hi\n");
    assert_eq!(m.unmount(), Some(0));
    for (tag, says, extra) in [
        ("bz2", "bzip2", &[][..]),
        ("foreign", foreign, &[]),
        ("list", foreign, &["--all"]),
    ] {
        reg.push(&layout, tag, tag, extra);
        let err = refused(&reg.reference(tag, tag), &cache, &mnt, &auth);
        assert!(err.contains(says), "{tag}: {err}");
    }
}

/// A CA (its certificate alone in `DIR/ca/ca.crt`) and a certificate it signed for 127.0.0.1:
/// (certificate, key) paths.
pub(crate) fn test_ca(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir.join("ca")).expect("mkdir");
    crate::images::sh(&format!(
        r#"cd {d}
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca/ca.crt -days 2 -subj /CN=unionfs-test-ca 2>/dev/null
openssl req $ec -keyout reg.key -out reg.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext
openssl x509 -req -in reg.csr -CA ca/ca.crt -CAkey ca.key -CAcreateserial -out reg.crt -days 2 -extfile ext 2>/dev/null
"#,
        d = dir.display()
    ));
    (dir.join("reg.crt"), dir.join("reg.key"))
}

#[test]
fn over_tls_the_registry_ca_comes_from_cert_dir_or_verification_is_off() {
    if !registry_prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (layout, _) = crate::image_errors::refusable_layout(&t.path().join("layout"));
    let (cert, key) = test_ca(t.path());
    let reg = Registry::start_with(Auth::None, Some((&cert, &key)));
    reg.push(&layout, "ok", "ok", &[]);
    let (reference, auth) = (reg.reference("ok", "ok"), no_auth(t.path()));
    let err = refused_opts(&reference, &t.path().join("c0"), &t.path().join("m0"), &auth, &[]);
    assert!(err.contains("TLS") && err.contains("--cert-dir"), "{err}");
    let ca = format!("--cert-dir={}", t.path().join("ca").display());
    for (i, opts) in [&[ca.as_str()][..], PLAIN].iter().enumerate() {
        let (cache, mnt) = (
            t.path().join(format!("c{}", i + 1)),
            t.path().join(format!("m{}", i + 1)),
        );
        let m = mount_opts(&reference, &cache, &mnt, &auth, opts);
        assert_eq!(std::fs::read_to_string(m.path("f")).expect("read"), "hi\n", "{opts:?}");
        assert_eq!(m.unmount(), Some(0));
    }
}

#[test]
fn a_bearer_token_comes_from_the_realm_the_registry_names_with_the_credentials() {
    if !registry_prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (layout, _) = crate::image_errors::refusable_layout(&t.path().join("layout"));
    let reg = Registry::start_with(Auth::Token("bob", "t0ken"), None);
    reg.push(&layout, "ok", "ok", &["--dest-creds=bob:t0ken"]);
    let reference = reg.reference("ok", "ok");
    let err = refused(
        &reference,
        &t.path().join("c0"),
        &t.path().join("m0"),
        &no_auth(t.path()),
    );
    assert!(err.contains("401"), "{err}");
    let auth = t.path().join("auth.json");
    let json = serde_json::json!({"auths": {reg.host(): {"auth": "Ym9iOnQwa2Vu"}}}); // bob:t0ken
    std::fs::write(&auth, json.to_string()).expect("write auth.json");
    let before = reg.tokens_issued();
    let m = mount(&reference, &t.path().join("c1"), &t.path().join("m1"), &auth);
    assert_eq!(std::fs::read_to_string(m.path("f")).expect("read"), "hi\n");
    assert_eq!(m.unmount(), Some(0));
    assert!(reg.tokens_issued() > before, "the mount got its token from the realm");
}

#[test]
fn a_damaged_manifest_or_config_in_the_cache_is_fetched_again() {
    if !registry_prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (layout, _) = crate::image_errors::refusable_layout(&t.path().join("layout"));
    let reg = Registry::start(&[]);
    reg.push(&layout, "ok", "ok", &[]);
    let (cache, auth) = (t.path().join("cache"), no_auth(t.path()));
    let m = mount(&reg.reference("ok", "ok"), &cache, &t.path().join("m1"), &auth);
    assert_eq!(m.unmount(), Some(0));
    let image = unionfs::image::layout::open(&layout, Some("ok")).expect("layout");
    for digest in [&image.manifest_digest, &image.config_digest] {
        let p = unionfs::image::layout::blob_path(&cache, digest).expect("path");
        let mut b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        b[1] ^= 0x01;
        std::fs::write(&p, &b).expect("damage");
    }
    let m = mount(&reg.reference("ok", "ok"), &cache, &t.path().join("m2"), &auth);
    assert_eq!(std::fs::read_to_string(m.path("f")).expect("read"), "hi\n");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_range_of_a_blob_is_exactly_those_bytes_or_refused() {
    if !registry_prerequisites() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (layout, _) = crate::image_errors::refusable_layout(&t.path().join("layout"));
    let reg = Registry::start(&[]);
    reg.push(&layout, "ok", "ok", &[]);
    let image = unionfs::image::layout::open(&layout, Some("ok")).expect("layout");
    let digest = &image.layers[0].digest;
    let blob = unionfs::image::layout::read_blob(&layout, digest).expect("blob");
    let opts = unionfs::registry::Options {
        tls_verify: false,
        ..Default::default()
    };
    let mut s = unionfs::registry::Session::new(&reg.reference("ok", "ok"), &opts).expect("reference");
    let n = blob.len() as u64;
    for (from, len) in [(0, 10), (100, 512), (n - 7, 7), (0, n)] {
        let got = unionfs::registry::fetch::range(&mut s, digest, from, len).expect("range");
        assert_eq!(got, blob[from as usize..(from + len) as usize], "{from}+{len}");
    }
    for (from, len) in [(n - 1, 10), (n + 5, 1), (0, 0)] {
        let e = unionfs::registry::fetch::range(&mut s, digest, from, len).expect_err("outside the blob");
        assert!(e.to_string().contains(digest.as_str()), "{e}");
    }
}
