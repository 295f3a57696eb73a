//! The layer tools on uppers that kernel overlayfs wrote with `metacopy=on,redirect_dir=on`
//! (issue 23, item 4): metacopy files (a chown, chmod or utimes of a lower file copies up only
//! its metadata; the data stays in the lower) and redirected directories (a renamed lower or
//! merged directory keeps its content in the lower under the old name). `diff` shows the view,
//! `commit` writes a layer that umoci applies into the kernel's own view, `check` finds
//! redirects and metacopy files whose lower part is gone (and `--repair` drops the redirects),
//! `size` counts a metacopy file as metadata, and hostile redirect values are refused.
//!
//! The uppers are made by the kernel itself, through a mount this test makes (the guard unmounts
//! on drop); only the hostile values, which no kernel writes, are set by hand.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{KernelOverlay, Layers, bin, lower_arg, require_program, require_root, xset};

// ---- running things ------------------------------------------------------------------------

fn unionfs(args: &[OsString]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unionfs")
}

/// `CMD --lower L0:L1 --upper U [--workdir W] REST...` on the layers of `l` (`size` takes no
/// workdir).
fn args(cmd: &str, l: &Layers, rest: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![cmd.into(), "--lower".into(), lower_arg(&l.lowers), "--upper".into()];
    a.push(l.upper.clone().into_os_string());
    if cmd != "size" {
        a.push("--workdir".into());
        a.push(l.work.clone().into_os_string());
    }
    a.extend(rest.iter().map(OsString::from));
    a
}

/// Runs a tool that must succeed; its stdout.
fn tool(a: &[OsString]) -> String {
    let o = unionfs(a);
    assert!(
        o.status.success(),
        "unionfs {a:?} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_string).collect()
}

// ---- kernel overlayfs ------------------------------------------------------------------------

const INDIRECT: &str = "metacopy=on,redirect_dir=on,index=off";

/// Kernel overlayfs over the layers of `l` with metacopy and redirects (`extra`: more options).
fn kernel_mount(l: &Layers, mnt: &Path, extra: &str) -> KernelOverlay {
    std::fs::create_dir_all(mnt).expect("mkdir mountpoint");
    let opts = if extra.is_empty() {
        INDIRECT.to_string()
    } else {
        format!("{INDIRECT},{extra}")
    };
    KernelOverlay::mount_with(&l.lowers, Some((&l.upper, &l.work)), mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// The kernel's read-only view of the lowers alone (following redirects and metacopy files in
/// lowers that were uppers).
fn kernel_lowers_view(l: &Layers, mnt: &Path) -> KernelOverlay {
    std::fs::create_dir_all(mnt).expect("mkdir mountpoint");
    KernelOverlay::mount_with(&l.lowers, None, mnt, "metacopy=on,redirect_dir=follow").unwrap_or_else(|e| panic!("{e}"))
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    common::all_xattrs(p).get(name).cloned()
}

/// Two lowers (lower0 on top), then changes made through kernel overlayfs: metacopy files
/// (chown, utimes, chmod), a merged directory renamed in its parent (relative redirect), a
/// directory renamed inside it (nested), a metacopy file and a deletion inside a renamed
/// directory, a directory renamed across directories into a renamed one (absolute redirects),
/// and a directory renamed onto a deleted lower directory (it must hide that one).
fn kernel_upper() -> Layers {
    let l = Layers::new(2);
    for (rel, data) in [
        ("f", &b"data of f\n"[..]),
        ("t/file", b"touched\n"),
        ("d/y", b"y, a lower file\n"),
        ("d/sub/x", b"x\n"),
        ("d/gone", b"deleted in the renamed directory\n"),
        ("p/q/r", b"r\n"),
        ("p/keep", b"k\n"),
        ("m/w", b"w\n"),
        ("old/o", b"the deleted directory's\n"),
        ("k/kk", b"renamed onto old\n"),
    ] {
        l.put(1, rel, data);
    }
    l.put(0, "d/z", b"z, from the top lower\n");
    std::os::unix::fs::symlink("y", l.lower(1, "d/link")).expect("symlink");
    for f in ["f", "d/y", "d/sub/x"] {
        xset(&l.lower(1, f), "user.note", f.as_bytes()).expect("xattr");
    }
    l.put(0, "d/sub/x2", b"x2\n");
    let m = l.dir.path().join("changing");
    let k = kernel_mount(&l, &m, "");
    let p = |r: &str| m.join(r);
    std::os::unix::fs::chown(p("f"), Some(1000), Some(1000)).expect("chown");
    common::set_times(&p("t/file"), 1_500_000_000, 1_500_000_000);
    std::fs::rename(p("d"), p("e")).expect("rename a merged dir in its parent");
    std::fs::set_permissions(p("e/y"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::remove_file(p("e/gone")).expect("rm");
    std::fs::write(p("e/new"), b"new\n").expect("write");
    std::fs::rename(p("e/sub"), p("e/sub2")).expect("rename inside a renamed dir");
    std::fs::rename(p("p/q"), p("m/q2")).expect("rename across dirs");
    std::fs::create_dir(p("n")).expect("mkdir");
    std::fs::rename(p("m"), p("n/m2")).expect("rename into a new dir");
    std::fs::remove_dir_all(p("old")).expect("rm -r");
    std::fs::rename(p("k"), p("old")).expect("rename onto a deleted dir");
    drop(k);
    l
}

/// The kernel wrote what this test is about (else it would prove nothing).
fn assert_kernel_wrote_indirect(l: &Layers) {
    let u = |r: &str| l.upper.join(r);
    for f in ["f", "t/file", "e/y"] {
        assert!(xattr(&u(f), "trusted.overlay.metacopy").is_some(), "{f}: no metacopy");
        assert_eq!(
            std::fs::read(u(f)).expect("read").iter().filter(|&&b| b != 0).count(),
            0,
            "{f}: data copied up"
        );
    }
    assert_eq!(
        xattr(&u("e"), "trusted.overlay.redirect").as_deref(),
        Some(&b"d"[..]),
        "relative"
    );
    assert_eq!(
        xattr(&u("n/m2"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/m"[..]),
        "absolute"
    );
    assert_eq!(
        xattr(&u("n/m2/q2"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/p/q"[..])
    );
    assert!(xattr(&u("e/sub2"), "trusted.overlay.redirect").is_some(), "nested");
    assert!(
        xattr(&u("old"), "trusted.overlay.redirect").is_some(),
        "onto a deleted dir"
    );
}

// ---- diff ------------------------------------------------------------------------------------

/// What `diff` prints for [`kernel_upper`].
fn kernel_upper_diff() -> BTreeSet<String> {
    [
        "C /f",
        "C /t",
        "C /t/file",
        "D /d",
        "A /e",
        "A /e/link",
        "A /e/new",
        "A /e/sub2",
        "A /e/sub2/x",
        "A /e/sub2/x2",
        "A /e/y",
        "A /e/z",
        "D /k",
        "D /m",
        "A /n",
        "A /n/m2",
        "A /n/m2/q2",
        "A /n/m2/q2/r",
        "A /n/m2/w",
        "C /old",
        "A /old/kk",
        "D /old/o",
        "C /p",
        "D /p/q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `diff` shows the view: metacopy files changed, a renamed directory deleted at its old name
/// and added with all it holds at the new one (lower content at the redirect, the upper's own
/// entries, whiteouts, nested redirects), a directory renamed onto a deleted one as a change of
/// its children.
#[test]
fn diff_of_kernel_metacopy_and_redirect_uppers() {
    if !require_root("kernel overlayfs mounts") {
        return;
    }
    let l = kernel_upper();
    assert_kernel_wrote_indirect(&l);
    let out = tool(&args("diff", &l, &[]));
    let want = kernel_upper_diff();
    assert_eq!(lines(&out), want, "diff:\n{out}");
}

// ---- commit ----------------------------------------------------------------------------------

/// What a layer applier must reproduce: kind, mode, owner, size, content or link target,
/// `user.*` xattrs.
type Snapshot = BTreeMap<String, (char, u32, u32, u32, u64, Vec<u8>, BTreeMap<String, Vec<u8>>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let (kind, data) = if ft.is_dir() {
                todo.push(p.clone());
                ('d', Vec::new())
            } else if ft.is_file() {
                ('f', std::fs::read(&p).expect("read"))
            } else if ft.is_symlink() {
                (
                    'l',
                    std::os::unix::ffi::OsStrExt::as_bytes(std::fs::read_link(&p).expect("readlink").as_os_str())
                        .to_vec(),
                )
            } else {
                ('o', Vec::new())
            };
            let size = if ft.is_dir() { 0 } else { md.size() };
            let rel = p.strip_prefix(root).expect("prefix").to_string_lossy().into_owned();
            let mut xattrs = common::xattrs(&p);
            xattrs.retain(|n, _| n.starts_with("user."));
            out.insert(rel, (kind, md.mode() & 0o7777, md.uid(), md.gid(), size, data, xattrs));
        }
    }
    out
}

/// umoci applies `layer` on an image whose base layer is a tar of `base` (the lowers' view).
fn umoci_apply(work: &Path, base: &Path, layer: &Path) -> PathBuf {
    let layout = work.join("layout");
    sh(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    let img = format!("{}:t", layout.display());
    sh(Command::new("umoci").args(["new", "--image", &img]));
    let base_tar = work.join("base.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=user.*", "-C"])
        .arg(base)
        .arg("-cf")
        .arg(&base_tar)
        .arg("."));
    for t in [&base_tar, &layer.to_path_buf()] {
        sh(Command::new("umoci").args(["raw", "add-layer", "--image", &img]).arg(t));
    }
    let bundle = work.join("bundle");
    sh(Command::new("umoci").args(["unpack", "--image", &img]).arg(&bundle));
    bundle.join("rootfs")
}

fn tar_names(p: &Path) -> BTreeSet<String> {
    let o = sh(Command::new("tar").arg("-tf").arg(p));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

/// `commit` writes a layer that, applied by umoci on the lowers' image, gives exactly what the
/// kernel shows for the upper (metacopy files with their lower data, redirected directories in
/// full); a redirected directory is marked opaque only where it hides an image directory.
#[test]
fn commit_of_kernel_metacopy_and_redirect_uppers_applies_to_the_view() {
    if !require_root("kernel overlayfs mounts") || !require_program("umoci", "umoci") {
        return;
    }
    let l = kernel_upper();
    assert_kernel_wrote_indirect(&l);
    let layer = l.dir.path().join("layer.tar");
    tool(&args("commit", &l, &["--output", layer.to_str().expect("utf-8")]));
    let names = tar_names(&layer);
    for want in [
        "old/.wh..wh..opq",
        ".wh.d",
        ".wh.m",
        ".wh.k",
        "p/.wh.q",
        "e/sub2/x",
        "e/z",
        "n/m2/q2/r",
        "f",
    ] {
        assert!(names.contains(want), "no {want} in the layer: {names:?}");
    }
    for never in ["e/.wh..wh..opq", "n/m2/.wh..wh..opq", "e/gone", "e/sub", "e/.wh.gone"] {
        assert!(!names.contains(never), "{never} in the layer: {names:?}");
    }
    let base_mnt = l.dir.path().join("base");
    let base = kernel_lowers_view(&l, &base_mnt);
    let rootfs = umoci_apply(l.dir.path(), &base.mnt, &layer);
    drop(base);
    let view_mnt = l.dir.path().join("view");
    let view = kernel_mount(&l, &view_mnt, "ro");
    let (applied, shown) = (snapshot(&rootfs), snapshot(&view.mnt));
    assert_eq!(
        shown.get("f").map(|o| o.5.clone()),
        Some(b"data of f\n".to_vec()),
        "the kernel's view"
    );
    assert_eq!(shown.get("f").map(|o| o.2), Some(1000));
    assert_same(&applied, &shown);
}

/// The umoci-applied layer (`applied`) is the kernel's view (`shown`), entry by entry.
fn assert_same(applied: &Snapshot, shown: &Snapshot) {
    if applied != shown {
        let keys: BTreeSet<&String> = applied.keys().chain(shown.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| applied.get(*k) != shown.get(*k))
            .map(|k| format!("{k}: applied {:?} / kernel {:?}", applied.get(k), shown.get(k)))
            .collect();
        panic!(
            "umoci-applied layer differs from the kernel's view:\n{}",
            diffs.join("\n")
        );
    }
}

// ---- check -----------------------------------------------------------------------------------

/// `check` of a kernel upper whose lower parts were removed behind its back: a redirect that
/// points nowhere, a metacopy file whose data is gone, one whose data changed size. `--repair`
/// drops the redirect (the directory then shows its upper content only) and says so; the
/// metacopy files stay reported.
#[test]
fn check_finds_dangling_redirects_and_metacopy_files_without_data() {
    if !require_root("kernel overlayfs mounts") {
        return;
    }
    let l = kernel_upper();
    assert!(
        tool(&args("check", &l, &[])).is_empty(),
        "a fresh kernel upper is clean"
    );
    std::fs::remove_dir_all(l.lower(1, "p/q")).expect("rm redirect target");
    // old (the renamed k) over the image's own old: repair must keep that one hidden.
    std::fs::remove_dir_all(l.lower(1, "k")).expect("rm redirect target");
    std::fs::remove_file(l.lower(1, "f")).expect("rm metacopy data");
    std::fs::write(l.lower(1, "t/file"), b"another size\n").expect("rewrite lower");
    // e/y's data is d/y (e is the renamed d): now a directory.
    std::fs::remove_file(l.lower(1, "d/y")).expect("rm");
    std::fs::create_dir(l.lower(1, "d/y")).expect("mkdir");
    let not_regular = format!(
        "kernel overlayfs metacopy file without its data ({} is not a regular file)",
        l.lower(1, "d/y").display()
    );
    let q2 = l.upper.join("n/m2/q2");
    let want = [
        (l.upper.join("e/y"), not_regular.as_str()),
        (
            q2.clone(),
            "kernel overlayfs redirect \"/p/q\" points nowhere (no lower has /p/q)",
        ),
        (
            l.upper.join("f"),
            "kernel overlayfs metacopy file without its data (no lower has /f)",
        ),
        (
            l.upper.join("t/file"),
            "kernel overlayfs metacopy file of 8 bytes whose lower data has 13 bytes",
        ),
    ];
    let report = |repair: bool| {
        let rest: &[&str] = if repair { &["--repair"] } else { &[] };
        let o = unionfs(&args("check", &l, rest));
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // What cannot be committed is refused, naming it.
    let layer = l.dir.path().join("layer.tar");
    let o = unionfs(&args("commit", &l, &["--output", layer.to_str().expect("utf-8")]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "commit: {err}");
    assert!(
        err.contains(&format!(
            "{}: kernel overlayfs metacopy file without its data",
            l.upper.join("e/y").display()
        )),
        "commit: {err}"
    );
    assert!(!layer.exists(), "no layer left behind");
    let first = report(false);
    for (p, msg) in &want {
        let line = first
            .lines()
            .find(|s| s.starts_with(&format!("{}: {msg}", p.display())));
        assert!(
            line.is_some_and(|s| !s.ends_with("(repaired)")),
            "no '{msg}' for {}:\n{first}",
            p.display()
        );
    }
    let repaired = report(true);
    let line = |out: &str, p: &Path| {
        out.lines()
            .find(|s| s.starts_with(&format!("{}: ", p.display())))
            .map(str::to_string)
    };
    let old = l.upper.join("old");
    let old_line = line(&repaired, &old).unwrap_or_default();
    assert!(
        old_line.starts_with(&format!(
            "{}: kernel overlayfs redirect \"k\" points nowhere",
            old.display()
        )) && old_line.contains("marks the directory opaque")
            && old_line.ends_with("(repaired)"),
        "old: {repaired}"
    );
    assert_eq!(xattr(&old, "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&old, "trusted.overlay.redirect"), None);
    let q2_line = line(&repaired, &q2).unwrap_or_default();
    assert!(
        q2_line.ends_with("(repaired)") && q2_line.contains("repair drops it"),
        "the redirect: {repaired}"
    );
    assert!(
        !line(&repaired, &l.upper.join("f"))
            .unwrap_or_default()
            .ends_with("(repaired)")
    );
    assert_eq!(xattr(&q2, "trusted.overlay.redirect"), None, "the redirect is dropped");
    let after = report(false);
    assert_eq!(line(&after, &q2), None, "nothing left at n/m2/q2:\n{after}");
    assert!(
        line(&after, &l.upper.join("f")).is_some(),
        "the lost data stays reported:\n{after}"
    );
    // The repaired directory shows its upper content only, to the tools and to the kernel.
    let m = l.dir.path().join("after");
    let k = kernel_mount(&l, &m, "ro");
    assert_eq!(common::names(&k.mnt.join("n/m2/q2")), Vec::<String>::new());
    assert_eq!(
        common::names(&k.mnt.join("old")),
        Vec::<String>::new(),
        "the image's old/o stays hidden"
    );
    let diff = lines(&tool(&args("diff", &l, &[])));
    assert!(
        diff.contains("A /n/m2/q2") && !diff.contains("A /n/m2/q2/r"),
        "{diff:?}"
    );
}

// ---- size ------------------------------------------------------------------------------------

fn du(paths: &[&Path]) -> u64 {
    let o = sh(Command::new("du").arg("-scB1").args(paths));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("du total")
}

/// `size` counts a chown'ed 10 MiB lower file, which the kernel copied up as a metacopy file,
/// as its metadata only, as `du` does: the data is the lower's, counted once in the virtual size.
#[test]
fn size_counts_a_metacopy_file_as_metadata() {
    if !require_root("kernel overlayfs mounts") {
        return;
    }
    let l = Layers::new(2);
    let big: Vec<u8> = (0..10u32 << 20).map(|i| (i % 251) as u8).collect();
    l.put(1, "big", &big);
    let m = l.dir.path().join("changing");
    let k = kernel_mount(&l, &m, "");
    std::os::unix::fs::chown(m.join("big"), Some(1000), None).expect("chown");
    drop(k);
    assert!(
        xattr(&l.upper.join("big"), "trusted.overlay.metacopy").is_some(),
        "no metacopy copy-up"
    );
    assert_eq!(std::fs::metadata(l.upper.join("big")).expect("stat").len(), 10 << 20);
    let v: serde_json::Value = serde_json::from_str(&tool(&args("size", &l, &["--json"]))).expect("json");
    let upper = v["upper_bytes"].as_u64().expect("upper_bytes");
    assert!(upper < 64 << 10, "a metacopy file's data is not the upper's: {v}");
    assert_eq!(upper, du(&[&l.upper]), "{v}");
    let all = du(&[&l.upper, &l.lowers[0], &l.lowers[1]]);
    assert_eq!(v["virtual_bytes"].as_u64(), Some(all), "{v}");
    assert!(
        all - upper >= 10 << 20,
        "the lower's data counts in the virtual size: {v}"
    );
}

// ---- hostile redirects -------------------------------------------------------------------------

/// Redirect values no kernel writes, set by hand on an upper directory `u/x`: refused by
/// `diff` and `commit` (one line naming the directory and the value, exit 2, nothing read
/// outside the layers, no layer written), reported by `check` and dropped by `--repair`.
#[test]
fn hostile_redirects_are_refused_naming_the_path() {
    if !require_root("trusted.* xattrs") {
        return;
    }
    let secret = tempfile::tempdir().expect("tmp");
    std::fs::write(secret.path().join("secret"), b"outside the layers\n").expect("write");
    let cases: [(&str, &[u8]); 6] = [
        ("a relative value with '..'", b"../../etc"),
        ("'..' in an absolute value", b"/a/../b"),
        ("an empty component", b"/a//b"),
        ("a symlink in a lower", b"/s/inner"),
        ("a symlink as the target", b"/s"),
        ("a loop: the upper inside a lower", b"/up"),
    ];
    for (what, value) in cases {
        let l = Layers::new(2);
        l.put(1, "a/b/f", b"f\n");
        l.put(1, "b/g", b"g\n");
        std::os::unix::fs::symlink(secret.path(), l.lower(0, "s")).expect("symlink");
        // The upper is lower1/up, so the "loop" redirect reaches the upper's own root.
        let upper = l.lowers[1].join("up");
        std::fs::create_dir_all(upper.join("x")).expect("mkdir");
        std::fs::write(upper.join("x/own"), b"own\n").expect("write");
        xset(&upper.join("x"), "trusted.overlay.redirect", value).expect("set redirect");
        let stack = |cmd: &str, rest: &[&OsStr]| -> Vec<OsString> {
            let mut a: Vec<OsString> = vec![cmd.into(), "--lower".into(), lower_arg(&l.lowers), "--upper".into()];
            a.push(upper.clone().into_os_string());
            a.extend(rest.iter().map(|s| s.to_os_string()));
            a
        };
        let at = upper.join("x").display().to_string();
        let shown = format!("{:?}", String::from_utf8_lossy(value));
        let out = l.dir.path().join("layer.tar");
        for a in [
            stack("diff", &[]),
            stack("commit", &[OsStr::new("--output"), out.as_os_str()]),
        ] {
            let o = unionfs(&a);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(2),
                "{what}: {a:?}: {err}{}",
                String::from_utf8_lossy(&o.stdout)
            );
            assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
            assert!(
                err.contains(&format!("{at}: ")) && err.contains(&shown),
                "{what}: names neither {at} nor {shown}: {err}"
            );
            assert!(
                !String::from_utf8_lossy(&o.stdout).contains("secret"),
                "{what}: read outside the layers"
            );
            assert!(!out.exists(), "{what}: a layer was written");
        }
        let o = unionfs(&stack("check", &[]));
        let report = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{what}: {report}");
        assert!(
            report
                .lines()
                .any(|s| s.starts_with(&format!("{at}: kernel overlayfs redirect {shown} is hostile"))),
            "{what}: {report}"
        );
        tool(&stack("check", &[OsStr::new("--repair")]));
        assert_eq!(
            xattr(&upper.join("x"), "trusted.overlay.redirect"),
            None,
            "{what}: dropped"
        );
        let diff = tool(&stack("diff", &[]));
        assert!(diff.contains("A /x/own") && !diff.contains("secret"), "{what}: {diff}");
    }
}

// ---- a lower that was a kernel upper -----------------------------------------------------------

/// The upper of [`kernel_upper`] as the top lower of a new stack (its redirects and metacopy
/// files now in a lower), and a new upper the kernel wrote over it: a metacopy copy-up of a
/// file a lower redirect shows, a rename inside a directory a chain of lower redirects makes,
/// a deletion below a lower redirect.
fn kernel_upper_over_an_upper() -> (Layers, Layers) {
    let first = kernel_upper();
    let mut l = Layers::new(0);
    l.lowers = vec![first.upper.clone(), first.lowers[0].clone(), first.lowers[1].clone()];
    let m = l.dir.path().join("changing");
    let k = kernel_mount(&l, &m, "");
    let p = |r: &str| m.join(r);
    std::os::unix::fs::chown(p("e/z"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::chown(p("e/y"), Some(1001), Some(1001)).expect("chown a lower metacopy file");
    std::fs::rename(p("e/sub2"), p("e/sub3")).expect("rename");
    std::fs::remove_file(p("n/m2/q2/r")).expect("rm");
    std::fs::rename(p("n/m2"), p("m3")).expect("rename a redirected dir");
    drop(k);
    (first, l)
}

/// `diff` and `commit` follow redirects and metacopy files found in a lower (a lower that was
/// itself an upper) as the kernel does: the diff names what changed in the view, and the
/// committed layer applied by umoci gives the kernel's view.
#[test]
fn redirects_and_metacopy_files_in_a_lower() {
    if !require_root("kernel overlayfs mounts") || !require_program("umoci", "umoci") {
        return;
    }
    let (_first, l) = kernel_upper_over_an_upper();
    assert!(xattr(&l.upper.join("e/z"), "trusted.overlay.metacopy").is_some());
    assert!(xattr(&l.upper.join("e/sub3"), "trusted.overlay.redirect").is_some());
    let out = tool(&args("diff", &l, &[]));
    let want: BTreeSet<String> = [
        "C /e",
        "C /e/y",
        "C /e/z",
        "D /e/sub2",
        "A /e/sub3",
        "A /e/sub3/x",
        "A /e/sub3/x2",
        "C /n",
        "D /n/m2",
        "A /m3",
        "A /m3/w",
        "A /m3/q2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(lines(&out), want, "diff:\n{out}");
    let layer = l.dir.path().join("layer.tar");
    tool(&args("commit", &l, &["--output", layer.to_str().expect("utf-8")]));
    let base_mnt = l.dir.path().join("base");
    let base = kernel_lowers_view(&l, &base_mnt);
    let rootfs = umoci_apply(l.dir.path(), &base.mnt, &layer);
    drop(base);
    let view_mnt = l.dir.path().join("view");
    let view = kernel_mount(&l, &view_mnt, "ro");
    let (applied, shown) = (snapshot(&rootfs), snapshot(&view.mnt));
    assert_eq!(
        shown.get("e/z").map(|o| o.5.clone()),
        Some(b"z, from the top lower\n".to_vec())
    );
    assert_same(&applied, &shown);
}

// ---- the user.overlay.* form -------------------------------------------------------------------

/// The same upper with its kernel xattrs in the `user.overlay.*` form (kernel overlayfs's
/// `userxattr`, which refuses metacopy and redirects itself, but other writers use it): read the
/// same, `diff` prints the same and `check` finds nothing.
#[test]
fn user_overlay_xattrs_read_like_trusted_ones() {
    if !require_root("kernel overlayfs mounts") {
        return;
    }
    let l = kernel_upper();
    let mut moved = 0;
    let mut todo = vec![l.upper.clone()];
    while let Some(p) = todo.pop() {
        if p.is_dir() && !p.is_symlink() {
            todo.extend(
                std::fs::read_dir(&p)
                    .expect("readdir")
                    .map(|e| e.expect("entry").path()),
            );
        }
        for (name, value) in common::all_xattrs(&p) {
            let Some(kind) = name.strip_prefix("trusted.overlay.") else {
                continue;
            };
            if ["redirect", "metacopy", "opaque"].contains(&kind) {
                xset(&p, &format!("user.overlay.{kind}"), &value).expect("set user.overlay.*");
                sh(Command::new("setfattr").arg("-h").arg("-x").arg(&name).arg(&p));
                moved += 1;
            }
        }
    }
    assert!(moved >= 8, "only {moved} kernel xattrs");
    assert_eq!(
        xattr(&l.upper.join("e"), "user.overlay.redirect").as_deref(),
        Some(&b"d"[..])
    );
    let out = tool(&args("diff", &l, &[]));
    assert_eq!(lines(&out), kernel_upper_diff(), "diff:\n{out}");
    assert_eq!(tool(&args("check", &l, &[])), "", "check");
}
