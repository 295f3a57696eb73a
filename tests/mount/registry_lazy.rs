//! docs/semantics.md, "Images" (lazy layers): a registry image whose layers carry a table of
//! contents (zstd:chunked here) is mounted without fetching its layers: the table comes by one
//! range request at mount, file data by range requests as reads need it, every piece checked
//! against its digest. A registry that goes away leaves cached files readable and fails the
//! others with EIO after `--fetch-timeout`, until it is back; a registry that sends wrong bytes
//! never produces wrong file contents; a token that expires mid-mount is renewed.
//!
//! Each test starts its own `docker-registry` on a free loopback port (killed by its PID when
//! the test ends) and pushes the test image's `chunked` tag with `skopeo copy
//! --preserve-digests`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::liar::{Liar, Lie};
use crate::common::{Auth, Mount, Registry, registry_prerequisites};
use crate::images::{diff, images, prerequisites, snapshot};
use crate::registry::{age_all, cache_cmd, cache_items};

fn need() -> bool {
    prerequisites() && registry_prerequisites()
}

/// A foreground mount of `reference` with the cache `cache` at `mnt`, credentials from
/// `auth` only, and `opts` besides `--tls-verify=false`.
fn mount(reference: &str, cache: &Path, mnt: &Path, auth: &Path, opts: &[&str]) -> Mount {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    let mut args: Vec<OsString> = vec!["mount".into(), "--foreground".into(), "--image".into()];
    args.push(reference.into());
    args.push("--tls-verify=false".into());
    args.extend(opts.iter().map(OsString::from));
    args.extend(["--cache".into(), cache.into(), mnt.into()]);
    let auth = auth.display().to_string();
    Mount::start_with_env(&args, mnt, &[("REGISTRY_AUTH_FILE", &auth)])
}

/// The layer digests of the test image's `chunked` tag, base first.
fn chunked_layers() -> Vec<(String, u64)> {
    let image = unionfs::image::layout::open(&images().layout, Some("chunked")).expect("layout");
    image.layers.iter().map(|l| (l.digest.clone(), l.size)).collect()
}

/// Where the registry keeps the blob `digest` (it serves what it finds there).
fn stored_blob(reg: &Registry, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    reg.storage()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

/// Reads `rel` through the mount: its bytes, or the errno.
fn read(m: &Mount, rel: &str) -> Result<Vec<u8>, i32> {
    std::fs::read(m.path(rel)).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// A registry serving the test image's `chunked` tag as `lazy:chunked`; None when a
/// prerequisite is missing.
fn serving() -> Option<Registry> {
    if !need() {
        return None;
    }
    let reg = Registry::start(&[]);
    reg.push(&images().layout, "chunked", "lazy", &[]);
    Some(reg)
}

/// `lazy:chunked` of `reg` mounted at `dir/NAME` with the cache `dir/cache`, no credentials.
fn mount_lazy(reg: &Registry, dir: &Path, name: &str, opts: &[&str]) -> Mount {
    let (cache, auth) = (dir.join("cache"), dir.join("no-auth.json"));
    mount(&reg.reference("lazy", "chunked"), &cache, &dir.join(name), &auth, opts)
}

/// The pieces of the content cache of `cache` (files of its fan-out directories).
fn pieces(cache: &Path) -> Vec<PathBuf> {
    let dirs = std::fs::read_dir(cache.join("content")).into_iter().flatten().flatten();
    let dirs = dirs.filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
    dirs.flat_map(|d| {
        std::fs::read_dir(d.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    })
    .collect()
}

fn expected(rel: &str) -> Vec<u8> {
    let p = images().unpacked.join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_chunked_image_is_mounted_without_its_layers_and_read_by_range() {
    let Some(reg) = serving() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let m = mount_lazy(&reg, t.path(), "mnt", &[]);
    let layers = chunked_layers();
    let total: u64 = layers.iter().map(|l| l.1).sum();
    for (digest, _) in &layers {
        let p = unionfs::image::layout::blob_path(&cache, digest).expect("path");
        assert!(
            !p.exists(),
            "{digest}: a layer with a table of contents is not fetched whole"
        );
    }
    let (at_mount, n) = reg.blob_bytes_sent(206);
    assert!(n >= layers.len(), "one range for each layer's table at mount: {n}");
    assert_eq!(reg.blob_bytes_sent(200).1, 1, "only the config fetched whole");
    assert_eq!(read(&m, "etc/hello"), Ok(expected("etc/hello")));
    let (one_file, _) = reg.blob_bytes_sent(206);
    assert!(
        one_file < total / 2,
        "reading one small file fetched {one_file} of the layers' {total} bytes ({at_mount} at mount)"
    );
    // Everything, compared with what `umoci unpack` gives.
    let d = diff(&snapshot(&images().unpacked), &snapshot(&m.mnt));
    assert!(
        d.is_empty(),
        "the lazy view differs from umoci unpack:\n{}",
        d.join("\n")
    );
    // Every block came once, though the kernel reads a file's pages on several threads.
    let (fetched, _) = reg.blob_bytes_sent(206);
    assert!(fetched <= total, "{fetched} bytes fetched for layers of {total}");
    // Small chunks are decoded from the fetched blocks, not kept again decoded.
    for f in pieces(&cache) {
        let n = std::fs::metadata(&f).expect("stat").len();
        assert!(n >= 256 << 10, "{}: a {n}-byte piece in the content cache", f.display());
    }
    assert_eq!(m.unmount(), Some(0));
    // A second mount reads what the first fetched (`CACHE/partial/`): nothing fetched again.
    let (before, _) = reg.blob_bytes_sent(206);
    let m = mount_lazy(&reg, t.path(), "mnt2", &[]);
    assert_eq!(read(&m, "data/big"), Ok(expected("data/big")));
    assert_eq!(read(&m, "bin/busybox"), Ok(expected("bin/busybox")));
    assert_eq!(reg.blob_bytes_sent(206).0, before, "a warm cache fetches no range");
    // What was fetched is one entry per layer read, held while a mount uses it.
    let partial = |items: &[serde_json::Value]| -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = items
            .iter()
            .filter(|i| i["kind"] == "partial")
            .map(|i| (i["digest"].as_str().unwrap_or("").to_string(), i["in_use"] == true))
            .collect();
        v.sort();
        v
    };
    let held = partial(&cache_items(&cache));
    assert!(
        !held.is_empty() && held.iter().all(|(d, used)| *used && layers.iter().any(|l| &l.0 == d)),
        "{held:?}"
    );
    assert_eq!(m.unmount(), Some(0));
    // Pruned once unused: the next mount fetches again, and still reads the image's bytes.
    age_all(&cache);
    cache_cmd(&["prune"], &cache);
    assert!(partial(&cache_items(&cache)).is_empty(), "pruned");
    let m = mount_lazy(&reg, t.path(), "mnt3", &[]);
    assert_eq!(read(&m, "data/big"), Ok(expected("data/big")));
    assert!(reg.blob_bytes_sent(206).0 > before, "fetched again after the prune");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_registry_gone_fails_uncached_reads_with_eio_after_the_timeout_until_it_is_back() {
    let Some(mut reg) = serving() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let m = mount_lazy(&reg, t.path(), "mnt", &["--fetch-timeout", "2"]);
    // etc/hello is in the top layer; data/big and bin/busybox only in the base layer, which
    // nothing has read yet.
    assert_eq!(read(&m, "etc/hello"), Ok(expected("etc/hello")));
    reg.stop();
    assert_eq!(
        read(&m, "etc/hello"),
        Ok(expected("etc/hello")),
        "a cached file stays readable"
    );
    let t0 = Instant::now();
    assert_eq!(read(&m, "data/big"), Err(libc::EIO), "an uncached file fails");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(60),
        "the read gave up after the timeout, not at once nor never: {waited:?}"
    );
    // The mount stays usable meanwhile: names and attributes come from the catalogs.
    assert!(std::fs::metadata(m.path("bin/busybox")).is_ok());
    assert!(std::fs::read_dir(m.path("etc")).is_ok());
    reg.restart();
    assert_eq!(read(&m, "data/big"), Ok(expected("data/big")), "readable again");
    assert_eq!(read(&m, "bin/busybox"), Ok(expected("bin/busybox")));
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn wrong_bytes_from_the_registry_are_eio_never_other_contents() {
    let Some(reg) = serving() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let m = mount_lazy(&reg, t.path(), "mnt", &[]);
    // The base layer's stored blob damaged after its table was read: its file chunks lie
    // before the table, so the middle of the blob is file data.
    let (base, _) = chunked_layers().remove(0);
    let data = stored_blob(&reg, &base);
    let good = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mut bad = good.clone();
    for k in 1..8 {
        bad[good.len() * k / 10] ^= 0x55;
    }
    std::fs::write(&data, &bad).expect("damage the stored blob");
    let files = ["data/big", "bin/busybox"];
    let mut failed = 0;
    for f in files {
        match read(&m, f) {
            Ok(b) => assert!(b == expected(f), "{f}: other contents than the image's"),
            Err(e) => {
                assert_eq!(e, libc::EIO, "{f}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "a damaged chunk must fail a read");
    std::fs::write(&data, &good).expect("repair the stored blob");
    for f in files {
        assert_eq!(
            read(&m, f),
            Ok(expected(f)),
            "{f}: the right bytes once the registry has them"
        );
    }
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_token_that_expires_mid_mount_is_renewed() {
    if !need() {
        return;
    }
    let img = images();
    let reg = Registry::start_with(Auth::Token("bob", "t0ken"), None);
    reg.push(&img.layout, "chunked", "lazy", &["--dest-creds=bob:t0ken"]);
    let t = tempfile::tempdir().expect("tmp");
    let auth = t.path().join("auth.json");
    let json = serde_json::json!({"auths": {reg.host(): {"auth": "Ym9iOnQwa2Vu"}}}); // bob:t0ken
    std::fs::write(&auth, json.to_string()).expect("write auth.json");
    reg.token_lifetime(2);
    let m = mount(
        &reg.reference("lazy", "chunked"),
        &t.path().join("cache"),
        &t.path().join("mnt"),
        &auth,
        &[],
    );
    assert_eq!(read(&m, "etc/hello"), Ok(expected("etc/hello")));
    let before = reg.tokens_issued();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        read(&m, "data/big"),
        Ok(expected("data/big")),
        "read with a renewed token"
    );
    assert!(reg.tokens_issued() > before, "a new token was asked for");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_recorded_list_is_fetched_first_by_the_next_mount() {
    let Some(mut reg) = serving() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let list = t.path().join("job.files");
    let record = format!("--record={}", list.display());
    let m = mount_lazy(&reg, &t.path().join("first"), "mnt", &[&record]);
    assert_eq!(read(&m, "etc/hello"), Ok(expected("etc/hello")));
    assert_eq!(read(&m, "data/big"), Ok(expected("data/big")));
    assert_eq!(read(&m, "etc/hello"), Ok(expected("etc/hello")), "listed once");
    assert_eq!(m.unmount(), Some(0));
    let listed = std::fs::read_to_string(&list).expect("the record");
    assert_eq!(listed, "etc/hello\ndata/big\n", "the files opened, in order");
    // A fresh cache: the list's data comes in the background before anything reads it.
    let before = reg.blob_bytes_sent(206).0;
    let prefetch = format!("--prefetch={}", list.display());
    let m = mount_lazy(&reg, &t.path().join("second"), "mnt", &[&prefetch, "--fetch-timeout=1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = reg.blob_bytes_sent(206).0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = reg.blob_bytes_sent(206).0;
        if (now == seen && now > before) || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    let big = std::fs::metadata(images().unpacked.join("data/big"))
        .expect("stat")
        .len();
    assert!(
        seen - before > big / 4,
        "the listed files were fetched without a read: {} bytes",
        seen - before
    );
    reg.stop();
    assert_eq!(
        read(&m, "data/big"),
        Ok(expected("data/big")),
        "prefetched, read offline"
    );
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn prefetch_and_record_are_for_images_and_an_unreadable_list_refuses_the_mount() {
    let Some(reg) = serving() else {
        return;
    };
    let t = tempfile::tempdir().expect("tmp");
    let missing = t.path().join("no-such.files");
    std::fs::create_dir_all(t.path().join("mnt")).expect("mkdir");
    let out = std::process::Command::new(crate::common::bin())
        .args([
            "mount",
            "--image",
            &reg.reference("lazy", "chunked"),
            "--tls-verify=false",
        ])
        .arg(format!("--prefetch={}", missing.display()))
        .arg("--cache")
        .arg(t.path().join("cache"))
        .arg(t.path().join("mnt"))
        .env("REGISTRY_AUTH_FILE", t.path().join("no-auth.json"))
        .output()
        .expect("unionfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such.files"), "names the list: {err}");
    assert!(!crate::common::is_mounted(&t.path().join("mnt")));
    let out = std::process::Command::new(crate::common::bin())
        .args(["mount", "--lower", "/tmp"])
        .arg(format!("--record={}", t.path().join("r").display()))
        .arg(t.path().join("mnt"))
        .output()
        .expect("unionfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--record") && err.contains("--image"), "{err}");
}

#[test]
fn a_registry_that_sends_the_whole_blob_or_a_short_range_gives_eio_never_other_bytes() {
    let Some(reg) = serving() else {
        return;
    };
    let liar = Liar::start(reg.port());
    let t = tempfile::tempdir().expect("tmp");
    let reference = format!("docker://{}/lazy:chunked", liar.host());
    let (cache, auth) = (t.path().join("cache"), t.path().join("no-auth.json"));
    let m = mount(&reference, &cache, &t.path().join("mnt"), &auth, &["--fetch-timeout=1"]);
    for (lie, file) in [(Lie::WholeBlob, "data/big"), (Lie::ShortRange, "bin/busybox")] {
        liar.set(lie);
        assert_eq!(read(&m, file), Err(libc::EIO), "{lie:?}: {file}");
    }
    liar.set(Lie::Honest);
    for f in ["data/big", "bin/busybox"] {
        assert_eq!(read(&m, f), Ok(expected(f)), "{f}: right once the registry is");
    }
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_plain_user_mounts_a_registry_image_lazily_through_fusermount3() {
    let Some(reg) = serving() else {
        return;
    };
    let user = crate::as_user::rootless_user();
    let l = crate::as_user::user_layers(user, |_| {});
    let cache = l.dir.path().join("cache");
    let list = l.dir.path().join("job.files");
    let (cache_s, list_s) = (cache.display().to_string(), list.display().to_string());
    let reference = reg.reference("lazy", "chunked");
    let m = crate::as_user::UserMount::start(
        user,
        &l,
        &[
            "--image",
            &reference,
            "--tls-verify=false",
            "--cache",
            &cache_s,
            "--record",
            &list_s,
        ],
    );
    let got = crate::as_user::user_sh_ok(
        user,
        "cat \"$1/etc/hello\" \"$1/data/big\" | sha256sum",
        &[m.mnt.as_os_str()],
    );
    let want = crate::images::sh(&format!(
        "cat {0}/etc/hello {0}/data/big | sha256sum",
        images().unpacked.display()
    ))
    .stdout;
    assert_eq!(got, String::from_utf8_lossy(&want), "the user reads the image's bytes");
    m.finish();
    // What the user's daemon fetched and listed is the user's.
    use std::os::unix::fs::MetadataExt;
    let partials: Vec<_> = std::fs::read_dir(cache.join("partial"))
        .expect("partial")
        .flatten()
        .collect();
    assert!(!partials.is_empty(), "fetched lazily");
    for p in &partials {
        assert_eq!(p.metadata().expect("stat").uid(), user.0, "{:?}", p.path());
    }
    assert_eq!(std::fs::read_to_string(&list).expect("record"), "etc/hello\ndata/big\n");
}
