//! The offline layer tools (`unionfs diff`, `commit`, `import`, `size`, `layers`, `check`) on
//! uppers written by real mounts of unionfs, kernel overlayfs and fuse-overlayfs, checked
//! against independent tools: moby's `ChangesDirs` algorithm run on the mounted views (the way
//! Podman's naive diff works), umoci applying the committed layer, `du`, kernel overlayfs
//! mounting a repaired upper. Podman itself is the oracle in `podman_diff_matches`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::podman::{Podman, require_podman};
use common::{KernelOverlay, Layers, Mount, bin, is_mounted, lower_arg, mknod_whiteout, set_times, xset};

// ---- running the tools ------------------------------------------------------------------------

fn unionfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run unionfs")
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

/// Runs a tool that must succeed; returns its stdout.
fn tool<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let o = unionfs(args);
    assert!(
        o.status.success(),
        "unionfs {:?} failed ({}): {}",
        args,
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `CMD --lower LOWER --upper UPPER`, then `rest`: a tool's run on a stack of layers.
fn stack_args(cmd: &str, lower: &OsStr, upper: &OsStr, rest: &[&OsStr]) -> Vec<OsString> {
    [os(cmd), os("--lower"), lower, os("--upper"), upper]
        .iter()
        .chain(rest)
        .map(|a| a.to_os_string())
        .collect()
}

/// [`stack_args`] on the lowers (top first) and the upper of `l`.
fn args_on(cmd: &str, l: &Layers, rest: &[&OsStr]) -> Vec<OsString> {
    stack_args(cmd, &lower_arg(&l.lowers), l.upper.as_os_str(), rest)
}

/// [`args_on`] with the workdir of `l` too.
fn args_on_work(cmd: &str, l: &Layers, rest: &[&OsStr]) -> Vec<OsString> {
    let mut with_work = vec![os("--workdir"), l.work.as_os_str()];
    with_work.extend(rest);
    args_on(cmd, l, &with_work)
}

/// `commit` of the lowers, upper and workdir of `l` into `output`.
fn commit_args(l: &Layers, output: &Path) -> Vec<OsString> {
    args_on_work("commit", l, &[os("--output"), output.as_os_str()])
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

/// A fresh temporary directory named `prefix…`, removed on drop.
fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir")
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---- layers and changes ------------------------------------------------------------------------

const OLD: i64 = 1_600_000_000;

/// A valid VFS_CAP_REVISION_2 `security.capability` value (cap_net_raw, effective).
fn cap_value() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted: CAP_NET_RAW
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// Two lowers (lower0 on top) with files, modes, owners, links, xattrs, a FIFO, a whiteout
/// and an opaque directory; every mtime fixed in the past.
fn make_lowers(l: &Layers) {
    let b = 1; // bottom
    l.put(b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    l.put(b, "etc/hosts", b"127.0.0.1 localhost\n");
    l.put(b, "etc/group", b"root:x:0:\n");
    l.put(b, "usr/bin/tool", b"#!/bin/sh\necho tool\n");
    l.put(b, "usr/bin/same", b"unchanged\n");
    l.put(b, "usr/bin/ping", b"ping binary\n");
    l.put(b, "usr/lib/libx.so", &vec![7u8; 40_000]);
    std::fs::hard_link(l.lower(b, "usr/lib/libx.so"), l.lower(b, "usr/lib/libx.so.1")).expect("link");
    l.put(b, "var/old/x", b"x\n");
    l.put(b, "var/old/sub/y", b"y\n");
    l.put(b, "var/keep/k", b"k\n");
    l.put(b, "var/opq/hidden", b"hidden by lower0's opaque dir\n");
    l.put(b, "srv/suid", b"suid\n");
    l.put(b, "home/user/file", b"user's\n");
    l.put(b, "srv/data", b"data with two names\n");
    std::fs::hard_link(l.lower(b, "srv/data"), l.lower(b, "home/user/data.link")).expect("link");
    std::os::unix::fs::symlink("etc/passwd", l.lower(b, "link")).expect("symlink");
    sh(Command::new("mkfifo").arg(l.lower(b, "srv/fifo")));
    std::fs::set_permissions(l.lower(b, "usr/bin/tool"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(l.lower(b, "srv/suid"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::os::unix::fs::lchown(l.lower(b, "home/user"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::lchown(l.lower(b, "home/user/file"), Some(1000), Some(1000)).expect("chown");
    xset(&l.lower(b, "etc/hosts"), "user.origin", b"lower1").expect("xattr");
    let t = 0;
    l.put(t, "etc/top", b"top\n");
    l.put(t, "etc/hosts", b"127.0.0.1 localhost top\n");
    l.put(t, "opt/app/conf", b"conf\n");
    l.put(t, "var/opq/visible", b"visible\n");
    mknod_whiteout(&l.lower(t, "etc/group"));
    xset(&l.lower(t, "var/opq"), "trusted.overlay.opaque", b"y").expect("opaque");
    for lower in &l.lowers {
        let mut paths = Vec::new();
        collect_paths(lower, &mut paths);
        for p in paths.iter().rev() {
            set_times(p, OLD, OLD);
        }
    }
}

fn collect_paths(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        for c in v {
            collect_paths(&c, out);
        }
    }
}

/// The same changes on every implementation, through its mount at `m`.
fn make_changes(m: &Path) {
    core_changes(m);
    podman_differs(m);
}

/// The changes `podman diff` reports as `docker diff` does: Podman hides `/etc/hosts` (a file
/// it manages) and also reports `user.*` xattr changes as `C`.
fn podman_differs(m: &Path) {
    let p = |r: &str| m.join(r);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p("etc/hosts"))
        .expect("open");
    std::io::Write::write_all(&mut f, b"10.0.0.1 added\n").expect("append");
    drop(f);
    xset(&p("usr/lib/libx.so"), "user.test", b"1").expect("xattr");
}

/// Every other change.
fn core_changes(m: &Path) {
    let p = |r: &str| m.join(r);
    std::fs::write(p("etc/new"), b"new file\n").expect("write");
    std::fs::hard_link(p("etc/new"), p("etc/new.link")).expect("link");
    std::fs::set_permissions(p("usr/bin/tool"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::lchown(p("etc/passwd"), Some(1234), Some(5678)).expect("chown");
    std::fs::remove_file(p("var/old/x")).expect("rm");
    std::fs::remove_dir_all(p("var/old/sub")).expect("rm -r");
    std::fs::remove_dir_all(p("var/keep")).expect("rm -r");
    std::fs::create_dir(p("var/keep")).expect("mkdir");
    std::fs::write(p("var/keep/new"), b"recreated\n").expect("write");
    std::fs::create_dir_all(p("new/deep/dir")).expect("mkdir -p");
    std::fs::write(p("new/deep/dir/f"), b"deep\n").expect("write");
    std::os::unix::fs::symlink("../etc/passwd", p("new/ln")).expect("symlink");
    sh(Command::new("mkfifo").arg(p("new/fifo")));
    // Written through one name of a lower file with two: the other name (never looked up here)
    // shows the change too, through the mount's hard-link index in the workdir.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p("srv/data"))
        .expect("open");
    std::io::Write::write_all(&mut f, b"appended through srv/data\n").expect("append");
    drop(f);
    // Opened for writing, left as it was: copied up, not changed.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(p("usr/bin/same"))
            .expect("open rw"),
    );
    set_times(&p("etc/top"), OLD, OLD + 100);
    xset(&p("usr/bin/ping"), "security.capability", &cap_value()).expect("setcap");
    std::fs::remove_file(p("link")).expect("rm symlink");
    std::fs::remove_dir_all(p("opt")).expect("rm -r lower0 dir");
    std::fs::remove_file(p("var/opq/visible")).expect("rm");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Unionfs,
    /// unionfs mounted with `--whiteouts oci`: an OCI-style upper.
    UnionfsOci,
    Kernel,
    FuseOverlayfs,
}

const IMPLS: [Impl; 4] = [Impl::Unionfs, Impl::UnionfsOci, Impl::Kernel, Impl::FuseOverlayfs];

/// A fuse-overlayfs mount; dropping it unmounts.
struct FuseOverlay {
    mnt: PathBuf,
}

impl FuseOverlay {
    fn mount(lowers: &[PathBuf], upper_work: Option<(&Path, &Path)>, mnt: &Path) -> FuseOverlay {
        let mut o = OsString::from("lowerdir=");
        o.push(lower_arg(lowers));
        if let Some((u, w)) = upper_work {
            o.push(",upperdir=");
            o.push(u);
            o.push(",workdir=");
            o.push(w);
        }
        sh(Command::new("fuse-overlayfs").arg("-o").arg(&o).arg(mnt));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            assert!(Instant::now() < deadline, "fuse-overlayfs did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        FuseOverlay { mnt: mnt.to_path_buf() }
    }
}

impl Drop for FuseOverlay {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_mounted(&self.mnt) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Any of the three mounts, unmounted on drop.
#[allow(dead_code)]
enum AnyMount {
    Unionfs(Mount),
    Kernel(KernelOverlay),
    Fuse(FuseOverlay),
}

/// A read-only view of `lowers` (top first) through `imp`.
fn view(imp: Impl, lowers: &[PathBuf], mnt: &Path) -> AnyMount {
    std::fs::create_dir_all(mnt).expect("mkdir mnt");
    match imp {
        Impl::Unionfs | Impl::UnionfsOci => AnyMount::Unionfs(Mount::unionfs(lowers, None, &[], mnt)),
        Impl::Kernel => AnyMount::Kernel(KernelOverlay::mount(lowers, None, mnt).expect("kernel overlay")),
        Impl::FuseOverlayfs => AnyMount::Fuse(FuseOverlay::mount(lowers, None, mnt)),
    }
}

/// Layers with an upper written by `imp` making [`make_changes`].
fn changed_layers(imp: Impl) -> Layers {
    let l = Layers::new(2);
    make_lowers(&l);
    match imp {
        Impl::Unionfs | Impl::UnionfsOci => {
            let m = l.mount(if imp == Impl::UnionfsOci {
                &["--whiteouts", "oci"]
            } else {
                &[]
            });
            make_changes(&m.mnt);
            assert_eq!(m.unmount(), Some(0));
            if imp == Impl::UnionfsOci {
                assert!(u_exists(&l.upper.join(".wh.opt")), "an OCI-style upper");
            }
        }
        Impl::Kernel => {
            let k = KernelOverlay::mount(&l.lowers, Some((&l.upper, &l.work)), &l.mnt).expect("kernel overlay");
            make_changes(&k.mnt);
            drop(k);
        }
        Impl::FuseOverlayfs => {
            let f = FuseOverlay::mount(&l.lowers, Some((&l.upper, &l.work)), &l.mnt);
            make_changes(&f.mnt);
            drop(f);
        }
    }
    l
}

/// The container's view: for our uppers a mount with the upper and its workdir (the hard-link
/// index there is part of what the view shows; looking names up may link them into the upper,
/// so take it after the tools ran), for the others the upper as a read-only layer.
fn container_view(imp: Impl, l: &Layers, mnt: &Path) -> AnyMount {
    match imp {
        Impl::Unionfs | Impl::UnionfsOci => {
            std::fs::create_dir_all(mnt).expect("mkdir mnt");
            let extra: &[&str] = if imp == Impl::UnionfsOci {
                &["--whiteouts", "oci"]
            } else {
                &[]
            };
            AnyMount::Unionfs(Mount::unionfs(&l.lowers, Some((&l.upper, &l.work)), extra, mnt))
        }
        _ => view(imp, &with_upper(l), mnt),
    }
}

/// `upper` followed by the lowers: the container's view as read-only layers.
fn with_upper(l: &Layers) -> Vec<PathBuf> {
    std::iter::once(l.upper.clone())
        .chain(l.lowers.iter().cloned())
        .collect()
}

// ---- tree snapshots -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Obj {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    data: Vec<u8>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Everything a layer applier must reproduce: names, types, modes, owners, contents, symlink
/// targets, devices, xattrs (`user.*` and file capabilities; private ones never), hard-link groups.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    objs: BTreeMap<String, Obj>,
    links: BTreeSet<Vec<String>>,
}

/// The xattrs a layer carries: `user.*` and `security.capability`, not the unions' own.
fn xattrs_of(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut x = common::xattrs(p);
    x.retain(|n, _| n.starts_with("user.") || n == "security.capability");
    x
}

fn snapshot(root: &Path) -> Snapshot {
    let mut paths = Vec::new();
    collect_paths(root, &mut paths);
    let mut objs = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for p in paths.iter().skip(1) {
        let rel = p.strip_prefix(root).expect("prefix").to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {} (listed): {e}", p.display()));
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let (kind, data) = if ft.is_dir() {
            ('d', Vec::new())
        } else if ft.is_file() {
            ('f', std::fs::read(p).expect("read"))
        } else if ft.is_symlink() {
            (
                'l',
                std::fs::read_link(p).expect("readlink").as_os_str().as_bytes().to_vec(),
            )
        } else if ft.is_fifo() {
            ('p', Vec::new())
        } else if ft.is_char_device() {
            ('c', Vec::new())
        } else if ft.is_block_device() {
            ('b', Vec::new())
        } else {
            ('s', Vec::new())
        };
        if !ft.is_dir() && md.nlink() > 1 {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        objs.insert(
            rel,
            Obj {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                data,
                rdev: md.rdev(),
                xattrs: xattrs_of(p),
            },
        );
    }
    let links = inodes.into_values().filter(|v| v.len() > 1).collect();
    Snapshot { objs, links }
}

fn assert_same(what: &str, a: &Snapshot, b: &Snapshot) {
    if a == b {
        return;
    }
    let mut msg = String::new();
    for (k, v) in &a.objs {
        match b.objs.get(k) {
            None => msg.push_str(&format!("  only in first: {k} {v:?}\n")),
            Some(w) if w != v => msg.push_str(&format!("  differs: {k}\n    {v:?}\n    {w:?}\n")),
            _ => {}
        }
    }
    for k in b.objs.keys() {
        if !a.objs.contains_key(k) {
            msg.push_str(&format!("  only in second: {k}\n"));
        }
    }
    if a.links != b.links {
        msg.push_str(&format!("  hard-link groups: {:?} vs {:?}\n", a.links, b.links));
    }
    panic!("{what}: trees differ:\n{msg}");
}

// ---- moby's ChangesDirs, on two mounted trees (what `podman diff` runs with a mount_program) ---

struct Info {
    is_dir: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    mtime: (i64, i64),
    cap: Option<Vec<u8>>,
    children: BTreeMap<OsString, Info>,
}

fn info(p: &Path) -> Info {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    let mut children = BTreeMap::new();
    if md.is_dir() {
        for e in std::fs::read_dir(p).expect("read_dir") {
            let e = e.expect("entry");
            children.insert(e.file_name(), info(&e.path()));
        }
    }
    Info {
        is_dir: md.is_dir(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        cap: common::xget(p, "security.capability"),
        children,
    }
}

fn stat_different(o: &Info, n: &Info) -> bool {
    let same_time = o.mtime.0 == n.mtime.0 && (o.mtime.1 == n.mtime.1 || o.mtime.1 == 0 || n.mtime.1 == 0);
    o.mode != n.mode
        || o.uid != n.uid
        || o.gid != n.gid
        || o.rdev != n.rdev
        || (!o.is_dir && (!same_time || o.size != n.size))
}

fn add_changes(new: &Info, old: Option<&Info>, path: &str, added_self: bool, out: &mut Vec<String>) {
    let at = out.len();
    let mut added = added_self;
    if old.is_none() {
        out.push(format!("A {path}"));
        added = true;
    }
    let mut old_children: BTreeMap<&OsString, &Info> = BTreeMap::new();
    if let Some(o) = old {
        if new.is_dir {
            old_children = o.children.iter().collect();
        }
    }
    for (name, nc) in &new.children {
        let cp = format!("{path}/{}", name.to_string_lossy());
        let oc = old_children.remove(name);
        let mut child_added = false;
        if let Some(oc) = oc {
            if stat_different(oc, nc) || oc.cap != nc.cap {
                out.push(format!("C {cp}"));
                child_added = true;
            }
        }
        add_changes(nc, oc, &cp, child_added, out);
    }
    for name in old_children.keys() {
        out.push(format!("D {path}/{}", name.to_string_lossy()));
    }
    if out.len() > at && new.is_dir && !added && !path.is_empty() {
        out.insert(at, format!("C {path}"));
    }
}

/// `docker diff` of two trees.
fn changes_dirs(new: &Path, old: &Path) -> BTreeSet<String> {
    let (n, o) = (info(new), info(old));
    let mut out = Vec::new();
    add_changes(&n, Some(&o), "", true, &mut out);
    out.into_iter().collect()
}

fn diff_lines(stdout: &str) -> BTreeSet<String> {
    stdout.lines().map(str::to_string).collect()
}

// ---- tests --------------------------------------------------------------------------------------

/// `diff` equals moby's ChangesDirs of the image view and the container view, both mounted by
/// the implementation that wrote the upper; the output is sorted by path.
#[test]
fn diff_matches_changes_dirs_of_the_views() {
    for imp in IMPLS {
        let l = changed_layers(imp);
        let out = tool(&args_on_work("diff", &l, &[]));
        let lines: Vec<&str> = out.lines().collect();
        let mut sorted = lines.clone();
        sorted.sort_by(|a, b| a.as_bytes()[2..].cmp(&b.as_bytes()[2..]));
        assert_eq!(lines, sorted, "{imp:?}: diff output is not sorted by path");
        let ours = diff_lines(&out);
        let old_mnt = l.dir.path().join("view-old");
        let new_mnt = l.dir.path().join("view-new");
        let _old = view(imp, &l.lowers, &old_mnt);
        let _new = container_view(imp, &l, &new_mnt);
        let oracle = changes_dirs(&new_mnt, &old_mnt);
        assert_eq!(
            ours, oracle,
            "{imp:?}: unionfs diff vs ChangesDirs of the mounted views"
        );
        // And what the changes must give, so that a broken oracle cannot pass.
        for want in [
            "A /etc/new",
            "A /etc/new.link",
            "C /etc/hosts",
            "C /etc/passwd",
            "C /usr/bin/tool",
            "C /usr/bin/ping",
            "C /etc/top",
            "D /var/old/x",
            "D /var/old/sub",
            "C /var/keep",
            "A /var/keep/new",
            "D /var/keep/k",
            "A /new",
            "A /new/deep/dir/f",
            "A /new/fifo",
            "D /link",
            "D /opt",
            "D /var/opq/visible",
            "C /var",
            "C /srv/data",
        ] {
            assert!(ours.contains(want), "{imp:?}: missing '{want}' in:\n{out}");
        }
        // The other name of srv/data: we keep hard links at copy-up (the workdir's index shows
        // the copy there), kernel overlayfs and fuse-overlayfs break them.
        let ours_keep = matches!(imp, Impl::Unionfs | Impl::UnionfsOci);
        assert_eq!(ours.contains("C /home/user/data.link"), ours_keep, "{imp:?}: {out}");
        for never in [
            "C /usr/bin/same",
            "D /opt/app",
            "D /etc/group",
            "D /var/opq/hidden",
            "C /",
        ] {
            assert!(!ours.contains(never), "{imp:?}: unexpected '{never}' in:\n{out}");
        }
        let json = tool(&args_on("diff", &l, &[os("--json")]));
        let v: serde_json::Value = serde_json::from_str(&json).expect("diff --json");
        assert_eq!(
            v.as_array().map(|a| a.len()),
            Some(lines.len()),
            "{imp:?}: --json has every line"
        );
    }
}

/// Applies `layer` with umoci on an image whose one base layer is a tar (GNU tar, numeric
/// owners, xattrs) of the tree `base_tree`; returns the unpacked rootfs.
fn umoci_apply(work: &Path, base_tree: &Path, layer: &Path, tag: &str) -> PathBuf {
    let d = work.join(format!("oci-{tag}"));
    std::fs::create_dir_all(&d).expect("mkdir");
    let layout = d.join("layout");
    sh(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    let img = format!("{}:t", layout.display());
    sh(Command::new("umoci").args(["new", "--image", &img]));
    let base = d.join("base.tar");
    sh(Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=user.*",
            "--xattrs-include=security.capability",
            "-C",
        ])
        .arg(base_tree)
        .arg("-cf")
        .arg(&base)
        .arg("."));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img])
        .arg(&base));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img])
        .arg(layer));
    let bundle = d.join("bundle");
    sh(Command::new("umoci").args(["unpack", "--image", &img]).arg(&bundle));
    bundle.join("rootfs")
}

/// [`umoci_apply`] on the image made of the lowers of `l` (their view as the base layer).
fn umoci_apply_on_lowers(l: &Layers, layer: &Path, tag: &str) -> PathBuf {
    let base_mnt = l.dir.path().join(format!("base-view-{tag}"));
    let _v = view(Impl::Unionfs, &l.lowers, &base_mnt);
    umoci_apply(l.dir.path(), &base_mnt, layer, tag)
}

/// `layer` applied by umoci on the image made of the lowers of `l` gives the merged view of
/// the upper of `l` as `imp` mounts it.
fn assert_umoci_applies_to_the_view(imp: Impl, l: &Layers, layer: &Path) {
    let rootfs = umoci_apply_on_lowers(l, layer, &format!("{imp:?}"));
    let vm = l.dir.path().join("view");
    let _v = container_view(imp, l, &vm);
    assert_same(
        &format!("{imp:?}: umoci-applied layer vs merged view"),
        &snapshot(&rootfs),
        &snapshot(&vm),
    );
}

fn sha256_file(p: &Path) -> String {
    let o = sh(Command::new("sha256sum").arg(p));
    let s = String::from_utf8_lossy(&o.stdout);
    format!("sha256:{}", s.split_whitespace().next().unwrap_or(""))
}

fn tar_names(p: &Path) -> Vec<String> {
    let o = sh(Command::new("tar").arg("-tf").arg(p));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

/// `commit` applied by umoci on the image gives the merged view (names, types, modes, owners,
/// contents, symlinks, xattrs, hard-link groups); committing twice gives the same bytes; the
/// printed DiffID is the tar's sha256; no private xattrs, no useless markers, no sockets.
#[test]
fn commit_applied_by_umoci_equals_the_view() {
    if !have("umoci") {
        panic!("umoci is needed (scripts/setup.sh installs it)");
    }
    for imp in IMPLS {
        let l = changed_layers(imp);
        // A socket in the upper: a tar cannot carry it; the commit skips it with a warning.
        let sock_path = l.upper.join("new/sock");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind socket");
        let layer = l.dir.path().join("layer.tar");
        let o = unionfs(&commit_args(&l, &layer));
        assert!(
            o.status.success(),
            "{imp:?}: commit: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("new/sock: socket not committed"));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let diff_id = out.lines().last().unwrap_or("").to_string();
        assert_eq!(diff_id, sha256_file(&layer), "{imp:?}: the last line is the DiffID");
        // Twice: the same bytes.
        let again = l.dir.path().join("again.tar");
        tool(&commit_args(&l, &again));
        assert_eq!(
            std::fs::read(&layer).expect("read"),
            std::fs::read(&again).expect("read"),
            "{imp:?}: reproducible"
        );
        let names = tar_names(&layer);
        for must in [
            ".wh.link",
            ".wh.opt",
            "var/keep/.wh..wh..opq",
            "var/old/.wh.x",
            "var/old/.wh.sub",
            "var/opq/.wh.visible",
        ] {
            assert!(
                names.iter().any(|n| n == must),
                "{imp:?}: {must} missing from {names:?}"
            );
        }
        assert!(
            names
                .iter()
                .all(|n| !n.ends_with(".wh..opq") || n.ends_with(".wh..wh..opq")),
            "{imp:?}: {names:?}"
        );
        assert!(!names.iter().any(|n| n.ends_with("sock")), "{imp:?}: socket in the tar");
        let opq = names.iter().filter(|n| n.ends_with(".wh..wh..opq")).count();
        assert_eq!(
            opq, 1,
            "{imp:?}: only var/keep is opaque over an image directory: {names:?}"
        );
        let raw = std::fs::read(&layer).expect("read tar");
        for private in [
            &b"trusted.overlay"[..],
            b"user.overlay",
            b"user.unionfs",
            b"fuseoverlayfs",
        ] {
            assert!(
                !raw.windows(private.len()).any(|w| w == private),
                "{imp:?}: private xattr in the tar"
            );
        }
        assert!(
            raw.windows(b"SCHILY.xattr.user.test".len())
                .any(|w| w == b"SCHILY.xattr.user.test")
        );
        drop(_sock);
        std::fs::remove_file(&sock_path).expect("rm socket");
        if matches!(imp, Impl::Unionfs | Impl::UnionfsOci) {
            // The other name of srv/data, from the hard-link index: a link to the copy.
            assert!(names.iter().any(|n| n == "home/user/data.link"), "{imp:?}: {names:?}");
        }
        assert_umoci_applies_to_the_view(imp, &l, &layer);
    }
}

/// Compression and clamped timestamps are reproducible too; the blob digest is printed and right.
#[test]
fn commit_compressed_is_reproducible_and_clamped() {
    let l = changed_layers(Impl::Unionfs);
    for (c, magic) in [("gzip", &[0x1f, 0x8b][..]), ("zstd", &[0x28, 0xb5, 0x2f, 0xfd][..])] {
        let mut outs = Vec::new();
        for i in 0..2 {
            let f = l.dir.path().join(format!("layer-{c}-{i}"));
            let out = tool(&args_on(
                "commit",
                &l,
                &[
                    os("--output"),
                    f.as_os_str(),
                    os("--compress"),
                    os(c),
                    os("--timestamp"),
                    os("1000000000"),
                ],
            ));
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{out}");
            let blob = lines[0].split_whitespace().nth(1).unwrap_or("");
            assert_eq!(blob, sha256_file(&f), "blob digest");
            let bytes = std::fs::read(&f).expect("read");
            assert!(bytes.starts_with(magic));
            outs.push((bytes, lines[1].to_string()));
        }
        assert_eq!(outs[0], outs[1], "{c}: same upper, same blob");
        // Every mtime clamped: tar -tv shows no date after 2001-09-09.
        let o = sh(Command::new("tar")
            .arg("--full-time")
            .arg("-tvf")
            .arg(l.dir.path().join(format!("layer-{c}-0"))));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            assert!(
                line.contains(" 2001-09-09 ") || line.contains(" 2020-09-13 "),
                "not clamped: {line}"
            );
        }
    }
    // SOURCE_DATE_EPOCH does the same as --timestamp.
    let a = l.dir.path().join("sde-a");
    let b = l.dir.path().join("sde-b");
    tool(&args_on(
        "commit",
        &l,
        &[os("--output"), a.as_os_str(), os("--timestamp"), os("1000000000")],
    ));
    let o = Command::new(bin())
        .args(args_on("commit", &l, &[os("--output"), b.as_os_str()]))
        .env("SOURCE_DATE_EPOCH", "1000000000")
        .output()
        .expect("run");
    assert!(o.status.success());
    assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
}

/// `import` of a commit gives a layer whose union with the lowers is the original view, for
/// plain, gzip and zstd blobs; markers become the overlay ones.
#[test]
fn import_round_trip_gives_the_same_view() {
    for imp in [Impl::Unionfs, Impl::FuseOverlayfs, Impl::Kernel] {
        let l = changed_layers(imp);
        let vm = l.dir.path().join("view");
        let want = {
            let _v = container_view(imp, &l, &vm);
            snapshot(&vm)
        };
        for c in ["none", "gzip", "zstd"] {
            let layer = l.dir.path().join(format!("layer-{c}"));
            tool(&args_on(
                "commit",
                &l,
                &[os("--output"), layer.as_os_str(), os("--compress"), os(c)],
            ));
            let dir = l.dir.path().join(format!("imported-{c}"));
            let out = tool(&[os("import"), layer.as_os_str(), dir.as_os_str()]);
            assert!(out.contains("whiteouts"), "{out}");
            // Overlay markers: char 0/0 whiteouts and the opaque xattr; no .wh. names left.
            assert!(
                common::is_chr_whiteout(&dir.join("opt")),
                "{imp:?} {c}: whiteout for /opt"
            );
            assert_eq!(
                common::xget(&dir.join("var/keep"), "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..])
            );
            assert_eq!(
                oci_markers(&dir),
                Vec::<PathBuf>::new(),
                "{imp:?} {c}: OCI markers left"
            );
            let stack: Vec<PathBuf> = std::iter::once(dir.clone()).chain(l.lowers.iter().cloned()).collect();
            let im = l.dir.path().join(format!("imported-view-{c}"));
            let _v = view(Impl::Unionfs, &stack, &im);
            assert_same(
                &format!("{imp:?} {c}: imported layer over the lowers vs the original view"),
                &snapshot(&im),
                &want,
            );
            // The kernel reads the imported layer the same way.
            let km = l.dir.path().join(format!("kernel-view-{c}"));
            std::fs::create_dir_all(&km).expect("mkdir");
            let k = KernelOverlay::mount(&stack, None, &km).expect("kernel overlay over the imported layer");
            assert_same(
                &format!("{imp:?} {c}: kernel view of the imported layer"),
                &snapshot(&km),
                &want,
            );
            drop(k);
        }
    }
}

/// A tar entry with any name and link name (the tar crate's own setters refuse hostile ones).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    ty: tar::EntryType,
    link: &[u8],
    data: &[u8],
    pax: &[(&str, &[u8])],
) {
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().copied()).expect("pax");
    }
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(OLD as u64);
    h.set_size(data.len() as u64);
    if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
    }
    h.set_cksum();
    b.append(&h, data).expect("append");
}

fn write_tar(path: &Path, f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) {
    let mut b = tar::Builder::new(Vec::new());
    f(&mut b);
    std::fs::write(path, b.into_inner().expect("finish")).expect("write tar");
}

/// Hostile archives are refused with one line naming the entry and the reason, exit status 2,
/// and nothing is written outside the target (nor left in it).
#[test]
fn import_refuses_hostile_tars() {
    use tar::EntryType as T;
    let t = tempdir("unionfs-import");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    let abs_target = outside.join("abs-written");
    let abs = abs_target.as_os_str().as_bytes().to_vec();
    let out_dir = outside.as_os_str().as_bytes().to_vec();
    type Case = (&'static str, Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>, &'static str);
    let abs2 = abs.clone();
    let out2 = out_dir.clone();
    let cases: Vec<Case> = vec![
        (
            "absolute",
            Box::new(move |b| raw_entry(b, &abs2, T::Regular, b"", b"x", &[])),
            "absolute path",
        ),
        (
            "dotdot",
            Box::new(|b| raw_entry(b, b"a/../../outside/dotdot", T::Regular, b"", b"x", &[])),
            "'..'",
        ),
        (
            "below-symlink",
            Box::new(move |b| {
                raw_entry(b, b"lnk", T::Symlink, &out2, b"", &[]);
                raw_entry(b, b"lnk/below", T::Regular, b"", b"x", &[]);
            }),
            "below the symlink 'lnk'",
        ),
        (
            "hardlink-out",
            Box::new(|b| raw_entry(b, b"hl", T::Link, b"../outside/secret", b"", &[])),
            "hard link pointing out",
        ),
        (
            "hardlink-abs",
            Box::new(|b| raw_entry(b, b"hl", T::Link, b"/etc/passwd", b"", &[])),
            "hard link pointing out",
        ),
        (
            "hardlink-missing",
            Box::new(|b| raw_entry(b, b"hl", T::Link, b"nothing", b"", &[])),
            "did not create before it",
        ),
        (
            "duplicate",
            Box::new(|b| {
                raw_entry(b, b"dup", T::Regular, b"", b"1", &[]);
                raw_entry(b, b"dup", T::Regular, b"", b"2", &[]);
            }),
            "duplicate entry",
        ),
        (
            "private-xattr",
            Box::new(|b| {
                raw_entry(
                    b,
                    b"d",
                    T::Directory,
                    b"",
                    b"",
                    &[("SCHILY.xattr.trusted.overlay.opaque", b"y")],
                )
            }),
            "private union xattr",
        ),
        (
            "whiteout-device",
            Box::new(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(T::Char);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_size(0);
                h.set_device_major(0).expect("major");
                h.set_device_minor(0).expect("minor");
                b.append_data(&mut h, "wh", std::io::empty()).expect("append");
            }),
            "character device 0/0",
        ),
    ];
    for (name, build, why) in &cases {
        let tarp = t.path().join(format!("{name}.tar"));
        write_tar(&tarp, |b| {
            raw_entry(b, b"ok/", T::Directory, b"", b"", &[]);
            raw_entry(b, b"ok/file", T::Regular, b"", b"fine", &[]);
            build(b);
        });
        let target = t.path().join(format!("target-{name}"));
        let o = unionfs(&[os("import"), tarp.as_os_str(), target.as_os_str()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(
            err.contains(why) && err.contains(&*tarp.to_string_lossy()),
            "{name}: {err}"
        );
        assert!(
            !target.exists(),
            "{name}: the target was created and must be gone again"
        );
        assert_eq!(
            common::names(&outside),
            vec!["secret"],
            "{name}: wrote outside the target"
        );
        assert_eq!(std::fs::read(outside.join("secret")).expect("read"), b"secret");
    }
    // Device nodes need CAP_MKNOD: refused for a plain user, naming the entry.
    let (uid, gid) = common::user(common::USER_A);
    let tarp = t.path().join("dev.tar");
    write_tar(&tarp, |b| raw_entry(b, b"dev/null", T::Char, b"", b"", &[]));
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&tarp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let target = t.path().join("target-dev");
    let o = common::run_as(
        uid,
        gid,
        &bin().to_string_lossy(),
        &[os("import"), tarp.as_os_str(), target.as_os_str()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("'dev/null'") && err.contains("CAP_MKNOD"), "{err}");
    assert!(!target.exists());
    // A non-empty target is refused before reading anything.
    let full = t.path().join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("x"), b"x").expect("write");
    let o = unionfs(&[os("import"), tarp.as_os_str(), full.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert_eq!(common::names(&full), vec!["x"]);
}

/// `size` is `du`'s figure for the upper (hard links once, holes free) and for the whole
/// stack; `layers` counts entries, whiteouts and opaque directories per layer.
#[test]
fn size_and_layers_match_du_and_the_layers() {
    let l = changed_layers(Impl::Unionfs);
    // A sparse file: 64 MiB long, 4 KiB written.
    let m = l.mount(&[]);
    let f = std::fs::File::create(m.path("sparse")).expect("create");
    f.set_len(64 << 20).expect("truncate");
    std::os::unix::fs::FileExt::write_at(&f, &[1u8; 4096], 1 << 20).expect("write");
    drop(f);
    assert_eq!(m.unmount(), Some(0));
    let upper_du = du(&[&l.upper]);
    let all_du = du(&[&l.upper, &l.lowers[0], &l.lowers[1]]);
    let v: serde_json::Value = serde_json::from_str(&tool(&args_on("size", &l, &[os("--json")]))).expect("json");
    assert_eq!(v["upper_bytes"].as_u64(), Some(upper_du), "{v}");
    assert_eq!(v["virtual_bytes"].as_u64(), Some(all_du), "{v}");
    assert!(upper_du < 1 << 20, "holes are not counted: {upper_du}");
    let line = tool(&args_on("size", &l, &[]));
    assert_eq!(
        line.trim(),
        format!(
            "{} (virtual {})",
            unionfs::layers::human_size(upper_du),
            unionfs::layers::human_size(all_du)
        )
    );
    let rows: serde_json::Value = serde_json::from_str(&tool(&args_on("layers", &l, &[os("--json")]))).expect("json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["role"], "upper");
    assert_eq!(rows[0]["bytes"].as_u64(), Some(upper_du));
    // Upper whiteouts: var/old/x, var/old/sub, link, opt, var/opq/visible; opaque: var/keep.
    assert_eq!(rows[0]["whiteouts"].as_u64(), Some(5), "{rows:?}");
    assert_eq!(rows[0]["opaque_dirs"].as_u64(), Some(1), "{rows:?}");
    assert_eq!(rows[1]["whiteouts"].as_u64(), Some(1), "{rows:?}");
    assert_eq!(rows[1]["opaque_dirs"].as_u64(), Some(1), "{rows:?}");
    assert_eq!(rows[2]["entries"].as_u64(), Some(30), "{rows:?}");
    assert_eq!(rows[2]["bytes"].as_u64(), Some(du(&[&l.lowers[1]])));
    let table = tool(&args_on("layers", &l, &[]));
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().nth(1).is_some_and(|r| r.starts_with("upper")), "{table}");
}

/// Broken uppers (made on purpose, and fuse-overlayfs's own double markers) are reported one line
/// per problem with exit 1; `--repair` makes them canonical without changing the merged view;
/// kernel overlayfs then mounts the repaired upper and shows the same view.
#[test]
fn check_repair_keeps_the_view_and_kernel_mounts_it() {
    // 1. On purpose: every kind of problem.
    let l = Layers::new(2);
    make_lowers(&l);
    let u = |r: &str| l.upper.join(r);
    for d in ["etc", "var/old", "var/keep", "usr/bin", "new"] {
        std::fs::create_dir_all(u(d)).expect("mkdir");
    }
    std::fs::write(u("etc/.wh.passwd"), b"").expect("OCI whiteout in an overlay upper");
    mknod_whiteout(&u("etc/hosts"));
    std::fs::write(u("etc/.wh.hosts"), b"").expect("second marker");
    mknod_whiteout(&u("etc/nothing"));
    std::fs::write(u("var/keep/.wh..wh..opq"), b"").expect("opaque file");
    xset(&u("var/keep"), "trusted.overlay.opaque", b"y").expect("opaque xattr");
    std::fs::write(u("var/keep/new"), b"n").expect("write");
    mknod_whiteout(&u("var/keep/k"));
    xset(&u("var/old"), "user.fuseoverlayfs.opaque", b"y").expect("foreign opaque");
    std::fs::create_dir(u("usr/bin/sub")).expect("mkdir");
    std::fs::write(u("usr/.wh.bin"), b"").expect("present and whited out");
    std::fs::write(u("usr/bin/new"), b"n").expect("write");
    std::fs::write(u("new/f"), b"f").expect("write");
    xset(&u("new/f"), "user.unionfs.origin", b"bad").expect("malformed origin");
    std::fs::write(u("etc/top"), b"copied\n").expect("write");
    xset(&u("etc/top"), "user.unionfs.origin", &0xdead_beef_u64.to_le_bytes()).expect("origin nowhere");
    std::fs::create_dir_all(l.work.join("unionfs")).expect("mkdir");
    std::fs::write(l.work.join("unionfs/tmp-1"), b"scratch").expect("leftover");
    std::fs::create_dir_all(l.work.join("incompat/volatile")).expect("volatile leftover");
    let expect = [
        "etc/passwd: an OCI .wh. whiteout in an overlay-format upper",
        "etc/hosts: a name with 2 whiteout markers",
        "etc/nothing: whiteout hiding nothing",
        "var/keep: opaque directory with 2 markers",
        "var/keep/k: whiteout in a directory that hides the lowers anyway",
        "var/old: opaque marker user.fuseoverlayfs.opaque=y",
        "usr/bin: present and whited out",
        "new/f: malformed origin xattr",
        "etc/top: origin xattr user.unionfs.origin names inode",
        "unionfs/tmp-1: leftover",
        "incompat/volatile: a volatile kernel overlayfs mount",
    ];
    repair_and_compare(&l, &expect);

    // 2. A real fuse-overlayfs upper: its opaque directory carries the xattr, a .wh..wh..opq file
    // and a char-0/0 .wh..opq.
    let l = changed_layers(Impl::FuseOverlayfs);
    assert!(
        u_exists(&l.upper.join("var/keep/.wh..wh..opq")),
        "fuse-overlayfs wrote no .wh..wh..opq"
    );
    repair_and_compare(&l, &["var/keep: opaque directory with 2 markers"]);

    // 3. Clean uppers of unionfs and of the kernel: nothing to report.
    for imp in [Impl::Unionfs, Impl::Kernel] {
        let l = changed_layers(imp);
        assert_check_clean(&args_on_work("check", &l, &[]), &format!("{imp:?}"));
    }
}

/// Every `.wh.*` entry below `dir`.
fn oci_markers(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    collect_paths(dir, &mut all);
    all.into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".wh.")))
        .collect()
}

/// `check` with `args` finds nothing: exit status 0, nothing on stdout.
fn assert_check_clean(args: &[OsString], what: &str) {
    let o = unionfs(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(o.stdout.is_empty(), "{what}");
}

fn u_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn repair_and_compare(l: &Layers, expect: &[&str]) {
    let args = args_on_work("check", l, &[]);
    let vm = l.dir.path().join("check-view");
    let before = {
        let _v = view(Impl::Unionfs, &with_upper(l), &vm);
        snapshot(&vm)
    };
    let o = unionfs(&args);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{report}");
    for e in expect {
        assert!(
            report.lines().any(|line| line.contains(e)),
            "'{e}' not reported:\n{report}"
        );
    }
    let o = unionfs(&args_on_work("check", l, &[os("--repair")]));
    let repaired = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{repaired}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(repaired.lines().all(|l| l.ends_with("(repaired)")), "{repaired}");
    assert_check_clean(&args, "still broken");
    assert_eq!(
        oci_markers(&l.upper),
        Vec::<PathBuf>::new(),
        "OCI markers left in an overlay-format upper"
    );
    let after = {
        let _v = view(Impl::Unionfs, &with_upper(l), &vm);
        snapshot(&vm)
    };
    assert_same("view before and after repair", &before, &after);
    // Kernel overlayfs mounts the repaired upper (with its own fresh workdir), same view.
    let kw = l.dir.path().join("kernel-work");
    let km = l.dir.path().join("kernel-mnt");
    std::fs::create_dir_all(&kw).expect("mkdir");
    std::fs::create_dir_all(&km).expect("mkdir");
    let k = KernelOverlay::mount(&l.lowers, Some((&l.upper, &kw)), &km).expect("kernel mounts the repaired upper");
    assert_same("kernel overlayfs view of the repaired upper", &snapshot(&km), &before);
    drop(k);
}

/// Ctrl-C during a commit leaves neither the output nor a temporary file.
#[test]
fn commit_interrupted_leaves_nothing() {
    let l = Layers::new(1);
    let f = std::fs::File::create(l.upper.join("big")).expect("create");
    f.set_len(2 << 30).expect("sparse 2 GiB");
    drop(f);
    let out_dir = l.dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let out = out_dir.join("layer.tar.zst");
    let mut child = Command::new(bin())
        .args(args_on(
            "commit",
            &l,
            &[os("--output"), out.as_os_str(), os("--compress"), os("zstd")],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Once the temporary file exists the commit is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&out_dir).expect("ls").next().is_none() {
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(130), "interrupted commit exits 130");
    assert_eq!(common::names(&out_dir), Vec::<String>::new(), "nothing left behind");
}

/// Bad input: one line naming the path and the cause, exit status 2.
#[test]
fn bad_input_is_one_line_exit_2() {
    let l = Layers::new(1);
    let missing = l.dir.path().join("missing");
    let file = l.dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let lo = l.lowers[0].as_os_str();
    let out_missing = missing.join("x.tar");
    let new_dir = l.dir.path().join("new");
    let up = l.upper.as_os_str();
    let cases: Vec<(Vec<OsString>, String)> = vec![
        (
            stack_args("diff", lo, missing.as_os_str(), &[]),
            missing.display().to_string(),
        ),
        (
            stack_args("diff", file.as_os_str(), up, &[]),
            file.display().to_string(),
        ),
        (stack_args("size", lo, lo, &[]), l.lowers[0].display().to_string()),
        (
            stack_args("commit", lo, up, &[os("--output"), out_missing.as_os_str()]),
            out_missing.display().to_string(),
        ),
        (
            vec!["import".into(), missing.clone().into(), new_dir.clone().into()],
            missing.display().to_string(),
        ),
        (
            stack_args("check", lo, up, &[os("--workdir"), missing.as_os_str()]),
            missing.display().to_string(),
        ),
    ];
    for (args, path) in cases {
        let o = unionfs(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&path), "{args:?}: '{err}' does not name {path}");
    }
    assert!(
        !l.dir.path().join("new").exists(),
        "a failed import leaves no target behind"
    );
}

// ---- interruption, JSON, markers, kernel-only uppers, figures, progress ------------------------

/// A writable mount of `l` (its upper and workdir) at `l.mnt`, by `imp`.
fn writable(imp: Impl, l: &Layers) -> AnyMount {
    match imp {
        Impl::Unionfs => AnyMount::Unionfs(l.mount(&[])),
        Impl::UnionfsOci => AnyMount::Unionfs(l.mount(&["--whiteouts", "oci"])),
        Impl::Kernel => AnyMount::Kernel(
            KernelOverlay::mount(&l.lowers, Some((&l.upper, &l.work)), &l.mnt).expect("kernel overlay"),
        ),
        Impl::FuseOverlayfs => AnyMount::Fuse(FuseOverlay::mount(&l.lowers, Some((&l.upper, &l.work)), &l.mnt)),
    }
}

impl AnyMount {
    /// Unmounts; our daemon must exit cleanly.
    fn finish(self) {
        match self {
            AnyMount::Unionfs(m) => assert_eq!(m.unmount(), Some(0), "unionfs daemon exit status"),
            other => drop(other),
        }
    }
}

/// A tar holding one regular file `big` of `size` zero bytes, itself sparse (header, then a
/// hole for the data and the end-of-archive blocks): gigabytes to import, nothing on disk.
fn sparse_tar(path: &Path, size: u64) {
    let mut h = tar::Header::new_gnu();
    h.set_path("big").expect("path");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(OLD as u64);
    h.set_size(size);
    h.set_cksum();
    let mut f = std::fs::File::create(path).expect("create tar");
    std::io::Write::write_all(&mut f, h.as_bytes()).expect("write header");
    f.set_len(512 + size.div_ceil(512) * 512 + 1024).expect("sparse tar");
}

/// Starts `unionfs import TAR TARGET`, sends SIGINT once `TARGET/big` is being written, and
/// returns what the process did; None if it finished before the signal could be sent.
fn interrupt_import(tarp: &Path, target: &Path) -> Option<Output> {
    let mut child = Command::new(bin())
        .arg("import")
        .arg(tarp)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn import");
    let big = target.join("big");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::symlink_metadata(&big).is_ok_and(|m| m.len() > 0) {
        // try_wait reaps a finished child: from then on its pid must not be signalled.
        if child.try_wait().expect("try_wait").is_some() {
            let o = child.wait_with_output().expect("wait");
            assert!(
                o.status.success(),
                "import failed before SIGINT ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "the import never started writing {}",
            big.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let o = child.wait_with_output().expect("wait");
    if o.status.success() {
        // The signal arrived as the import was finishing: nothing interrupted.
        return None;
    }
    Some(o)
}

/// Ctrl-C during an import: exit 130 and no half-written layer, neither a target it created
/// (gone) nor one that was there empty (left empty).
#[test]
fn import_interrupted_leaves_nothing() {
    let t = tempdir("unionfs-import-int");
    let tarp = t.path().join("big.tar");
    let existing = t.path().join("existing");
    for (target, pre_existing) in [(t.path().join("created"), false), (existing.clone(), true)] {
        // Retried with a bigger archive if the import was done before the signal got there.
        let mut size: u64 = 1 << 30;
        let o = loop {
            sparse_tar(&tarp, size);
            if pre_existing {
                std::fs::create_dir_all(&target).expect("mkdir target");
            }
            if let Some(o) = interrupt_import(&tarp, &target) {
                break o;
            }
            assert!(size < 64 << 30, "import of {size} bytes always finished before SIGINT");
            std::fs::remove_dir_all(&target).expect("rm finished import");
            size *= 4;
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "interrupted import exits 130: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("interrupted"), "{err}");
        assert!(o.stdout.is_empty(), "no summary printed");
        if pre_existing {
            assert_eq!(
                common::names(&target),
                Vec::<String>::new(),
                "the empty target is left empty"
            );
        } else {
            assert!(!u_exists(&target), "the target the import created is gone");
        }
        let mut want = vec!["big.tar".to_string()];
        if pre_existing {
            want.push("existing".into());
        }
        assert_eq!(common::names(t.path()), want, "nothing else left beside the target");
    }
}

/// The tar entries of a layer blob (plain, gzip or zstd), as the tar crate reads them (PAX and
/// GNU long-name records belong to the entry they precede).
fn tar_entry_count(blob: &[u8]) -> u64 {
    let r: Box<dyn std::io::Read + '_> = match blob {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::Decoder::new(blob).expect("zstd")),
        _ => Box::new(blob),
    };
    let mut ar = tar::Archive::new(r);
    ar.entries()
        .expect("entries")
        .map(|e| {
            e.expect("tar entry");
        })
        .count() as u64
}

fn json_of<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> (Option<i32>, serde_json::Value) {
    let o = unionfs(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "unionfs {args:?}: stdout is not one JSON document ({e}):\n{out}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// `commit --json`, `import --json` and `check --json` print one JSON document with the figures
/// the text output has, and they are right: digests of the files, sizes, entry and marker counts.
#[test]
fn json_output_of_commit_import_and_check() {
    let l = changed_layers(Impl::Unionfs);
    let commit = |out: &Path, compress: &str, json: bool| {
        let mut a = commit_args(&l, out);
        a.extend(["--compress".into(), compress.into()]);
        if json {
            a.push("--json".into());
        }
        a
    };

    // commit, plain tar.
    let plain = l.dir.path().join("layer.tar");
    let (code, v) = json_of(&commit(&plain, "none", true));
    assert_eq!(code, Some(0), "{v}");
    let bytes = std::fs::read(&plain).expect("read layer");
    let sha = sha256_file(&plain);
    assert_eq!(v["diff_id"], sha.as_str(), "{v}");
    assert_eq!(v["digest"], sha.as_str(), "uncompressed: digest is the DiffID: {v}");
    assert_eq!(v["size"].as_u64(), Some(bytes.len() as u64), "{v}");
    assert_eq!(v["tar_size"].as_u64(), Some(bytes.len() as u64), "{v}");
    assert_eq!(v["media_type"], "application/vnd.oci.image.layer.v1.tar", "{v}");
    let names = tar_names(&plain);
    assert_eq!(v["entries"].as_u64(), Some(tar_entry_count(&bytes)), "{v}");
    assert_eq!(
        v["entries"].as_u64(),
        Some(names.len() as u64),
        "tar -t lists: {names:?}"
    );
    assert!(v.get("skipped_sockets").is_none(), "internal field in the JSON: {v}");
    let diff_id = sha;

    // commit, zstd: the same tar inside; the JSON agrees with the text lines.
    let zst = l.dir.path().join("layer.tar.zst");
    let (code, v) = json_of(&commit(&zst, "zstd", true));
    assert_eq!(code, Some(0), "{v}");
    let zbytes = std::fs::read(&zst).expect("read layer");
    assert_eq!(v["diff_id"], diff_id.as_str(), "same tar, same DiffID: {v}");
    assert_eq!(v["digest"], sha256_file(&zst).as_str(), "{v}");
    assert_eq!(v["size"].as_u64(), Some(zbytes.len() as u64), "{v}");
    assert_eq!(v["tar_size"].as_u64(), Some(bytes.len() as u64), "{v}");
    assert_eq!(v["media_type"], "application/vnd.oci.image.layer.v1.tar+zstd", "{v}");
    assert_eq!(v["entries"].as_u64(), Some(tar_entry_count(&zbytes)), "{v}");
    let zst2 = l.dir.path().join("layer2.tar.zst");
    let text = tool(&commit(&zst2, "zstd", false));
    let want = format!(
        "blob {} {} {}\n{}\n",
        v["digest"].as_str().unwrap_or(""),
        v["size"],
        v["media_type"].as_str().unwrap_or(""),
        diff_id
    );
    assert_eq!(text, want, "text output vs --json");

    // import: counts as the text line says, and as the archive and the new layer hold.
    let markers: Vec<&String> = names
        .iter()
        .filter(|n| n.rsplit('/').next().is_some_and(|b| b.starts_with(".wh.")))
        .collect();
    let opq = markers.iter().filter(|n| n.ends_with("/.wh..wh..opq")).count() as u64;
    let wh = markers.len() as u64 - opq;
    assert!(wh >= 5 && opq >= 1, "{names:?}");
    let dir = l.dir.path().join("imported");
    let (code, v) = json_of(&[os("import"), zst.as_os_str(), dir.as_os_str(), os("--json")]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["whiteouts"].as_u64(), Some(wh), "{v} vs {markers:?}");
    assert_eq!(v["opaque_dirs"].as_u64(), Some(opq), "{v} vs {markers:?}");
    let mut made = Vec::new();
    collect_paths(&dir, &mut made);
    let chr = made.iter().filter(|p| common::is_chr_whiteout(p)).count() as u64;
    assert_eq!(chr, wh, "char 0/0 whiteouts in the imported layer");
    let objects = made.len() as u64 - 1 - chr;
    assert_eq!(
        v["entries"].as_u64(),
        Some(objects),
        "{v}: objects in the imported layer"
    );
    let dir2 = l.dir.path().join("imported2");
    let line = tool(&[os("import"), zst.as_os_str(), dir2.as_os_str()]);
    assert_eq!(
        line.trim(),
        format!(
            "{}: {} entries, {} whiteouts, {} opaque directories",
            dir2.display(),
            v["entries"],
            v["whiteouts"],
            v["opaque_dirs"]
        )
    );

    // check: a clean upper, then two problems, then repaired.
    let check = args_on_work("check", &l, &[os("--json")]);
    let (code, v) = json_of(&check);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    let format = v["format"].as_str().unwrap_or("").to_string();
    assert!(format.starts_with("overlay"), "{v}");
    mknod_whiteout(&l.upper.join("etc/nothing"));
    std::fs::write(l.upper.join("var/keep/.wh..wh..opq"), b"").expect("second opaque marker");
    let (code, v) = json_of(&check);
    assert_eq!(code, Some(1), "problems found: {v}");
    assert_eq!(v["format"], format.as_str(), "{v}");
    let problems = v["problems"].as_array().expect("problems array");
    let expect = [
        ("etc/nothing", "whiteout hiding nothing"),
        ("var/keep", "opaque directory with 2 markers"),
    ];
    assert_eq!(problems.len(), expect.len(), "{v}");
    for (p, (path, what)) in problems.iter().zip(expect) {
        assert_eq!(p["path"], l.upper.join(path).to_string_lossy().as_ref(), "{v}");
        assert!(p["problem"].as_str().is_some_and(|s| s.contains(what)), "{what}: {v}");
        assert_eq!(p["repaired"], false, "{v}");
    }
    let (code, v) = json_of(&args_on_work("check", &l, &[os("--json"), os("--repair")]));
    assert_eq!(code, Some(0), "all repaired: {v}");
    let problems = v["problems"].as_array().expect("problems array");
    assert_eq!(problems.len(), expect.len(), "{v}");
    assert!(problems.iter().all(|p| p["repaired"] == true), "{v}");
    let (code, v) = json_of(&check);
    assert_eq!((code, &v["problems"]), (Some(0), &serde_json::json!([])), "{v}");
}

/// The `.wh.` entries of a tar listing.
fn tar_markers(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| n.rsplit('/').next().is_some_and(|b| b.starts_with(".wh.")))
        .cloned()
        .collect()
}

/// `commit` writes a whiteout only for a name the image has, and an opaque marker only over a
/// directory the image has: not for files created and deleted again, directories deleted and
/// made again, fuse-overlayfs's opaque new directories, nor markers planted in the upper for
/// names no lower shows (absent, or hidden by an opaque lower directory or by the upper's own
/// opaque directory).
#[test]
fn commit_writes_no_marker_for_what_no_lower_has() {
    for imp in [Impl::Unionfs, Impl::UnionfsOci, Impl::Kernel, Impl::FuseOverlayfs] {
        let l = Layers::new(2);
        l.put(1, "etc/a", b"a\n");
        l.put(1, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
        l.put(1, "etc/conf", b"conf\n");
        l.put(1, "keep/k", b"k\n");
        l.put(1, "srv/s", b"s\n");
        l.put(1, "var/opq/hidden", b"hidden\n");
        l.put(0, "var/opq/shown", b"shown\n");
        xset(&l.lower(0, "var/opq"), "trusted.overlay.opaque", b"y").expect("opaque lower dir");
        println!("{imp:?}"); // shown if the test fails
        let m = writable(imp, &l);
        let p = |r: &str| l.mnt.join(r);
        let written_and_removed = |r: &str, data: &[u8]| {
            std::fs::write(p(r), data).expect("write");
            std::fs::remove_file(p(r)).expect("rm");
        };
        let removed_and_made_again = |r: &str| {
            std::fs::remove_dir_all(p(r)).expect("rm -r");
            std::fs::create_dir(p(r)).expect("mkdir again");
        };
        // Legitimate markers: a lower file deleted, a lower directory deleted and made again.
        std::fs::remove_file(p("etc/a")).expect("rm lower file");
        removed_and_made_again("keep");
        // Nothing for these.
        written_and_removed("etc/tmp", b"t");
        std::fs::create_dir_all(p("nd/deep")).expect("mkdir -p");
        written_and_removed("nd/z", b"z");
        std::fs::create_dir(p("nd2")).expect("mkdir");
        std::fs::write(p("nd2/q"), b"q").expect("write");
        removed_and_made_again("nd2");
        std::fs::write(p("nd2/r"), b"r").expect("write");
        m.finish();
        if imp == Impl::FuseOverlayfs {
            assert_eq!(
                common::xget(&l.upper.join("nd"), "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..]),
                "fuse-overlayfs marks the new directory opaque (what this case is about)"
            );
        }
        // Planted: markers for names no lower shows, in the upper's own format.
        let u = |r: &str| l.upper.join(r);
        let oci = imp == Impl::UnionfsOci;
        let whiteout = |rel: &str| {
            if oci {
                let at = u(rel);
                let name = format!(".wh.{}", at.file_name().expect("name").to_string_lossy());
                std::fs::write(at.with_file_name(name), b"").expect("plant .wh. whiteout");
            } else {
                mknod_whiteout(&u(rel));
            }
        };
        let opaque = |rel: &str| {
            std::fs::create_dir_all(u(rel)).expect("mkdir");
            if oci {
                std::fs::write(u(rel).join(".wh..wh..opq"), b"").expect("plant .wh..wh..opq");
            } else {
                xset(&u(rel), "trusted.overlay.opaque", b"y").expect("plant opaque xattr");
            }
        };
        for d in ["etc", "nd", "var/opq"] {
            std::fs::create_dir_all(u(d)).expect("mkdir");
        }
        whiteout("ghost"); // absent everywhere
        whiteout("etc/ghost"); // in a lower directory, absent there
        whiteout("nd/ghost"); // in a new directory
        whiteout("var/opq/hidden"); // hidden by lower0's opaque var/opq already
        opaque("planted"); // a new directory
        opaque("etc/conf"); // a directory over a lower file: no lower directory to hide
        opaque("srv"); // legitimate (lower1 has srv), and it hides srv/s already:
        whiteout("srv/s");
        let layer = l.dir.path().join("layer.tar");
        tool(&commit_args(&l, &layer));
        let names = tar_names(&layer);
        let want: BTreeSet<String> = ["etc/.wh.a", "keep/.wh..wh..opq", "srv/.wh..wh..opq"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(tar_markers(&names), want, "{imp:?}: markers in the layer: {names:?}");
        for d in ["nd/", "nd/deep/", "nd2/", "nd2/r", "planted/", "etc/conf/", "srv/"] {
            assert!(
                names.iter().any(|n| n == d || n == d.trim_end_matches('/')),
                "{imp:?}: {d} missing from {names:?}"
            );
        }
        // And the layer means what the upper shows: applied by umoci, the merged view. Kernel
        // overlayfs lists a whiteout in a directory it does not merge (one no lower has, or an
        // opaque one: it reads those as they are) but then cannot stat it: not a view to
        // compare with.
        if imp == Impl::Kernel {
            for planted in ["nd/ghost", "srv/s"] {
                std::fs::remove_file(u(planted)).expect("rm planted whiteout");
            }
        }
        assert_umoci_applies_to_the_view(imp, &l, &layer);
    }
}

// Uppers kernel overlayfs wrote with metacopy and redirects: tests/layer_tools_indirect.rs.

/// `du -scB1` of `paths`.
fn du(paths: &[&Path]) -> u64 {
    let o = sh(Command::new("du").arg("-scB1").args(paths));
    let s = String::from_utf8_lossy(&o.stdout);
    s.lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("du total")
}

/// Objects of a layer: every path below the root but whiteouts (char 0/0, `.wh.NAME`) and
/// opaque marker files.
fn layer_objects(root: &Path) -> u64 {
    let mut all = Vec::new();
    collect_paths(root, &mut all);
    all.iter()
        .skip(1)
        .filter(|p| !common::is_chr_whiteout(p) && !p.file_name().is_some_and(|n| n.as_bytes().starts_with(b".wh.")))
        .count() as u64
}

/// `size` and `layers` on uppers kernel overlayfs and fuse-overlayfs wrote: `du`'s figures
/// (hard links once, holes free), the upper's objects, whiteouts and opaque directories.
#[test]
fn size_and_layers_on_kernel_and_fuse_overlayfs_uppers() {
    for imp in [Impl::Kernel, Impl::FuseOverlayfs] {
        let l = changed_layers(imp);
        let m = writable(imp, &l);
        let f = std::fs::File::create(l.mnt.join("sparse")).expect("create");
        f.set_len(64 << 20).expect("truncate");
        std::os::unix::fs::FileExt::write_at(&f, &[1u8; 4096], 1 << 20).expect("write");
        drop(f);
        m.finish();
        let upper_du = du(&[&l.upper]);
        let all_du = du(&[&l.upper, &l.lowers[0], &l.lowers[1]]);
        assert!(upper_du < 1 << 20, "{imp:?}: holes are not counted: {upper_du}");
        let v: serde_json::Value = serde_json::from_str(&tool(&args_on("size", &l, &[os("--json")]))).expect("json");
        assert_eq!(v["upper_bytes"].as_u64(), Some(upper_du), "{imp:?}: {v}");
        assert_eq!(v["virtual_bytes"].as_u64(), Some(all_du), "{imp:?}: {v}");
        assert_eq!(
            tool(&args_on("size", &l, &[])).trim(),
            format!(
                "{} (virtual {})",
                unionfs::layers::human_size(upper_du),
                unionfs::layers::human_size(all_du)
            ),
            "{imp:?}"
        );
        let rows: serde_json::Value =
            serde_json::from_str(&tool(&args_on("layers", &l, &[os("--json")]))).expect("json");
        let rows = rows.as_array().expect("array");
        assert_eq!(rows.len(), 3, "{imp:?}: {rows:?}");
        assert_eq!(rows[0]["role"], "upper");
        assert_eq!(rows[0]["bytes"].as_u64(), Some(upper_du), "{imp:?}: {rows:?}");
        assert_eq!(
            rows[0]["entries"].as_u64(),
            Some(layer_objects(&l.upper)),
            "{imp:?}: {rows:?}"
        );
        // Whiteouts: var/old/x, var/old/sub, link, opt, var/opq/visible; not the char-0/0
        // `.wh..opq` fuse-overlayfs puts in the first opaque directories it makes (var/keep,
        // new), which is part of its opaque marker; opaque: var/keep, and for fuse-overlayfs every
        // directory it made (new, new/deep, new/deep/dir).
        let mut all = Vec::new();
        collect_paths(&l.upper, &mut all);
        let fuse_opq = all
            .iter()
            .filter(|p| p.file_name() == Some(OsStr::new(".wh..opq")) && common::is_chr_whiteout(p))
            .count() as u64;
        assert_eq!(fuse_opq, if imp == Impl::FuseOverlayfs { 2 } else { 0 }, "{imp:?}");
        assert_eq!(rows[0]["whiteouts"].as_u64(), Some(5), "{imp:?}: {rows:?}");
        let opaque = if imp == Impl::FuseOverlayfs { 4 } else { 1 };
        assert_eq!(rows[0]["opaque_dirs"].as_u64(), Some(opaque), "{imp:?}: {rows:?}");
        for (i, lower) in l.lowers.iter().enumerate() {
            assert_eq!(rows[i + 1]["role"], format!("lower {i}"));
            assert_eq!(rows[i + 1]["bytes"].as_u64(), Some(du(&[lower])), "{imp:?}: {rows:?}");
            assert_eq!(rows[i + 1]["entries"].as_u64(), Some(layer_objects(lower)), "{imp:?}");
        }
        let table = tool(&args_on("layers", &l, &[]));
        assert_eq!(table.lines().count(), 4, "{imp:?}: {table}");
        let upper_row: Vec<&str> = table.lines().nth(1).unwrap_or("").split_whitespace().collect();
        assert_eq!(upper_row.first(), Some(&"upper"), "{table}");
        assert!(upper_row.contains(&upper_du.to_string().as_str()), "{imp:?}: {table}");
    }
}

/// Single-quoted for sh.
fn shq(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

/// Runs `unionfs ARGS` with stderr on a pseudo-terminal (`script`), stdout to /dev/null;
/// returns what the terminal got.
fn on_terminal(args: &[OsString]) -> String {
    let mut cmd = shq(bin().as_os_str());
    for a in args {
        cmd.push(' ');
        cmd.push_str(&shq(a));
    }
    cmd.push_str(" >/dev/null");
    let o = sh(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// On a terminal the tools draw a progress line on stderr (the tool's name, the entries done)
/// and clear it at the end; with stderr on a pipe they print nothing there; the layer written
/// is the same.
#[test]
fn progress_on_a_terminal_only() {
    assert!(have("script"), "script (util-linux) is needed");
    let l = Layers::new(1);
    l.put(0, "etc/passwd", b"root\n");
    // Enough for a run to take a moment (the spinner is drawn from its first tick anyway).
    for i in 0..500 {
        l.put(0, &format!("d{}/f{i}", i % 10), b"lower\n");
    }
    for i in 0..500 {
        std::fs::create_dir_all(l.upper.join(format!("n{}", i % 10))).expect("mkdir");
        std::fs::write(l.upper.join(format!("n{}/f{i}", i % 10)), b"upper\n").expect("write");
    }
    let tty_layer = l.dir.path().join("tty.tar");
    let pipe_layer = l.dir.path().join("pipe.tar");
    let commit = |out: &Path| args_on("commit", &l, &[os("--output"), out.as_os_str()]);
    let diff = args_on("diff", &l, &[]);
    let import_dir = l.dir.path().join("imported");
    let runs: [(&str, Vec<OsString>); 3] = [
        ("commit", commit(&tty_layer)),
        ("diff", diff.clone()),
        (
            "import",
            vec!["import".into(), pipe_layer.clone().into(), import_dir.clone().into()],
        ),
    ];
    // The pipe run first: the import below reads its layer.
    let o = unionfs(&commit(&pipe_layer));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "commit with stderr on a pipe: {:?}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = unionfs(&diff);
    assert!(
        o.status.success() && o.stdout.len() > 500 * 10,
        "diff lists the new files"
    );
    assert!(
        o.stderr.is_empty(),
        "diff with stderr on a pipe: {:?}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (name, args) in runs {
        let term = on_terminal(&args);
        let last = term
            .rfind(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name}: no progress line on the terminal: {term:?}"));
        assert!(term[last..].contains(" entries"), "{name}: {term:?}");
        assert!(
            term[last..].contains("\r\x1b[2K"),
            "{name}: the progress line is not cleared at the end: {term:?}"
        );
    }
    assert_eq!(
        std::fs::read(&tty_layer).expect("read"),
        std::fs::read(&pipe_layer).expect("read"),
        "the layer does not depend on the terminal"
    );
    let o = unionfs(&[
        os("import"),
        pipe_layer.as_os_str(),
        l.dir.path().join("imported2").as_os_str(),
    ]);
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "import with stderr on a pipe: {:?}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---- Podman ---------------------------------------------------------------------------------

/// The same changes in a Podman container (`podman create` + `podman mount`, unionfs as the
/// overlay driver's mount_program): `unionfs diff` on the layer directories `podman inspect`
/// names prints the same set of lines as `podman diff`; `unionfs commit` of that upper, applied
/// by umoci on the image, gives what `podman mount` shows.
#[test]
fn podman_diff_matches() {
    if !require_podman() {
        return;
    }
    let p = Podman::new(Some(bin()));
    // The image: the lowers' view as one base layer.
    let l = Layers::new(2);
    make_lowers(&l);
    let base = l.dir.path().join("base.tar");
    {
        let vm = l.dir.path().join("base-view");
        let _v = view(Impl::Unionfs, &l.lowers, &vm);
        sh(Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=user.*", "-C"])
            .arg(&vm)
            .arg("-cf")
            .arg(&base)
            .arg("."));
    }
    p.run(&["import", &base.to_string_lossy(), "localhost/unionfs-test-base:1"]);
    let container = |name: &str, changes: fn(&Path)| -> (String, String, BTreeSet<String>, BTreeSet<String>) {
        p.run(&["create", "--name", name, "localhost/unionfs-test-base:1", "/bin/sh"]);
        let merged = PathBuf::from(p.run(&["mount", name]));
        changes(&merged);
        p.run(&["umount", name]);
        let upper = p.run(&["inspect", name, "--format", "{{.GraphDriver.Data.UpperDir}}"]);
        let lower = p.run(&["inspect", name, "--format", "{{.GraphDriver.Data.LowerDir}}"]);
        let podman: BTreeSet<String> = p.run(&["diff", name]).lines().map(str::to_string).collect();
        let ours = diff_lines(&tool(&stack_args("diff", os(&lower), os(&upper), &[])));
        (upper, lower, podman, ours)
    };
    let (upper, lower, podman, ours) = container("c1", core_changes);
    assert_eq!(ours, podman, "unionfs diff vs podman diff");
    assert!(
        ours.contains("D /opt") && ours.contains("A /var/keep/new") && ours.contains("C /usr/bin/ping"),
        "{ours:?}"
    );
    // Where Podman differs (README: "diff and podman diff"): it hides /etc/hosts (but keeps its
    // parent), and reports user.* xattr changes.
    let (_, _, podman2, ours2) = container("c2", podman_differs);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(ours2, set(&["C /etc", "C /etc/hosts"]));
    assert_eq!(
        podman2,
        set(&[
            "C /etc",
            "C /usr",
            "C /usr/lib",
            "C /usr/lib/libx.so",
            "C /usr/lib/libx.so.1"
        ])
    );
    // `unionfs commit` of the container's upper, applied by umoci, is what Podman mounts.
    let layer = l.dir.path().join("c1.tar");
    tool(&stack_args(
        "commit",
        os(&lower),
        os(&upper),
        &[os("--output"), layer.as_os_str()],
    ));
    let rootfs = umoci_apply(l.dir.path(), Path::new(&lower), &layer, "podman");
    let merged = PathBuf::from(p.run(&["mount", "c1"]));
    let want = snapshot(&merged);
    p.run(&["umount", "c1"]);
    assert_same("umoci-applied commit vs podman mount", &snapshot(&rootfs), &want);
}
