//! docs/semantics.md, "Directory renames", through real mounts: a lower or merged directory
//! renamed in O(1) with a redirect (the upper holds the directory and a whiteout, not the
//! tree), everything below it and every further rename working, after a remount too; kernel
//! overlayfs (`redirect_dir=on`) reading our uppers and we reading its; redirects in lower
//! layers; the `redirect_dir` option; hostile redirects (`hostile_*`) that never reach outside
//! the layers.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::common::*;

const REDIRECT: &str = "trusted.overlay.redirect";
const KERNEL_OPTS: &str = "redirect_dir=on,metacopy=off,index=off";

/// What a walk of a view shows of each path: type, size, contents (files), target (symlinks).
type Walk = BTreeMap<PathBuf, (char, u64, Vec<u8>)>;

/// Every object below `root` (a loop over a stack: trees may be deep).
fn walk(root: &Path) -> Walk {
    let mut out = Walk::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("below root").to_path_buf();
            let ft = md.file_type();
            let entry = if ft.is_dir() {
                todo.push(p.clone());
                ('d', 0, Vec::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    md.len(),
                    std::fs::read_link(&p)
                        .expect("readlink")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_file() {
                ('f', md.len(), std::fs::read(&p).expect("read"))
            } else if ft.is_char_device() {
                ('c', md.rdev(), Vec::new())
            } else {
                ('o', 0, Vec::new())
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Kernel overlayfs over `l`'s lowers and upper (ours unmounted), with redirects on; its own
/// workdir beside ours.
fn kernel(l: &Layers) -> Option<KernelOverlay> {
    if !require_root("kernel overlayfs") {
        return None;
    }
    let kwork = l.dir.path().join("kwork");
    let kmnt = l.dir.path().join("kmnt");
    for d in [&kwork, &kmnt] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    Some(KernelOverlay::mount_with(&l.lowers, Some((&l.upper, &kwork)), &kmnt, KERNEL_OPTS).expect("kernel overlay"))
}

/// Asserts that kernel overlayfs shows the same tree as `ours` (a walk of our view).
#[track_caller]
fn kernel_agrees(l: &Layers, ours: &Walk) {
    if let Some(k) = kernel(l) {
        assert_eq!(&walk(&k.mnt), ours, "kernel overlayfs (redirect_dir=on) over our upper");
    }
}

/// Names in the upper, recursively (raw).
fn upper_paths(l: &Layers) -> Vec<String> {
    let mut v: Vec<String> = walk(&l.upper).keys().map(|p| p.display().to_string()).collect();
    v.sort();
    v
}

#[test]
fn moving_a_lower_directory_of_2000_files_writes_only_the_directory() {
    let l = Layers::new(1);
    for i in 0..2000 {
        l.put(0, &format!("a/f{i}"), format!("content {i}").as_bytes());
    }
    l.put(0, "a/sub/deep", b"deep");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let before = walk(&m.path("a"));
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(walk(&m.path("b")), before);
    assert_eq!(upper_paths(&l), ["a", "b"], "only the directory and a whiteout");
    let whole = walk(&m.mnt);
    let m = sc
        .ending(m)
        .view(|root| {
            assert_eq!(names(root), ["b"]);
            assert_eq!(text(&root.join("b/f1999")), "content 1999");
            assert_eq!(text(&root.join("b/sub/deep")), "deep");
        })
        .upper(|up| {
            assert!(is_chr_whiteout(&up.join("a")));
            assert_eq!(xget(&up.join("b"), REDIRECT).as_deref(), Some(&b"a"[..]));
            assert_eq!(xget(&up.join("b"), "trusted.overlay.opaque"), None);
        })
        .remount();
    assert_eq!(walk(&m.mnt), whole, "after a remount");
    sc.finish(m);
    kernel_agrees(&l, &whole);
}

#[test]
fn whiteouts_and_opaque_directories_below_a_moved_merged_directory() {
    let l = Layers::new(2);
    l.put(0, "d/top", b"top");
    l.put(1, "d/top", b"hidden by top");
    l.put(1, "d/low", b"low");
    l.put(1, "d/gone", b"deleted through the view");
    l.put(1, "d/wh", b"whited out in lower0");
    mknod_whiteout(&l.lower(0, "d/wh"));
    l.put(0, "d/opq/mine", b"mine");
    l.put(1, "d/opq/hidden", b"hidden by an opaque dir");
    xset(&l.lower(0, "d/opq"), "trusted.overlay.opaque", b"y").unwrap();
    l.put(1, "d/redone/old", b"old");
    l.put(1, "e/decoy", b"must not merge into the moved directory");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::remove_file(m.path("d/gone")).unwrap();
    std::fs::remove_dir_all(m.path("d/redone")).unwrap();
    std::fs::create_dir(m.path("d/redone")).unwrap();
    std::fs::write(m.path("d/redone/new"), b"new").unwrap();
    std::fs::remove_dir_all(m.path("e")).unwrap();
    let before = walk(&m.path("d"));
    std::fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(walk(&m.path("e")), before);
    let check = |root: &Path| {
        assert_eq!(names(root), ["e"]);
        assert_eq!(names(&root.join("e")), ["low", "opq", "redone", "top"]);
        assert_eq!(text(&root.join("e/top")), "top");
        assert_eq!(names(&root.join("e/opq")), ["mine"]);
        assert_eq!(names(&root.join("e/redone")), ["new"]);
    };
    let whole = walk(&m.mnt);
    sc.ending(m)
        .view(check)
        .upper(|up| {
            assert_eq!(xget(&up.join("e"), REDIRECT).as_deref(), Some(&b"d"[..]));
            assert!(is_chr_whiteout(&up.join("d")));
        })
        .end();
    kernel_agrees(&l, &whole);
}

#[test]
fn further_renames_of_redirected_directories_and_their_parents() {
    let l = Layers::new(2);
    l.put(0, "p/a/x", b"x");
    l.put(1, "p/a/y", b"y");
    l.put(0, "p/b/z", b"z");
    l.put(1, "q/r/w", b"w");
    l.put(0, "s/t", b"t");
    l.put(0, "u/v", b"v");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let p = |s: &str| m.path(s);
    // Twice in one directory, then out of it, then its parent, then back.
    std::fs::rename(p("p/a"), p("p/a2")).unwrap();
    std::fs::rename(p("p/a2"), p("p/a3")).unwrap();
    std::fs::rename(p("p/a3"), p("a4")).unwrap();
    std::fs::rename(p("p"), p("p2")).unwrap();
    std::fs::rename(p("p2/b"), p("p2/b2")).unwrap();
    std::fs::rename(p("a4"), p("p2/a")).unwrap();
    // Into another redirected directory, and a child of a redirected directory moved out.
    std::fs::rename(p("q"), p("q2")).unwrap();
    std::fs::rename(p("s"), p("q2/r/s")).unwrap();
    std::fs::rename(p("q2/r"), p("r")).unwrap();
    // Back to its old name.
    std::fs::rename(p("u"), p("u2")).unwrap();
    std::fs::rename(p("u2"), p("u")).unwrap();
    let check = |root: &Path| {
        assert_eq!(names(root), ["p2", "q2", "r", "u"]);
        assert_eq!(names(&root.join("p2")), ["a", "b2"]);
        assert_eq!(names(&root.join("p2/a")), ["x", "y"]);
        assert_eq!(text(&root.join("p2/a/y")), "y");
        assert_eq!(names(&root.join("p2/b2")), ["z"]);
        assert_eq!(names(&root.join("q2")), Vec::<String>::new());
        assert_eq!(names(&root.join("r")), ["s", "w"]);
        assert_eq!(text(&root.join("r/s/t")), "t");
        assert_eq!(text(&root.join("u/v")), "v");
    };
    check(&m.mnt);
    let whole = walk(&m.mnt);
    sc.ending(m)
        .view(check)
        .upper(|up| {
            // A child moved out of a redirected parent names its lower path.
            assert_eq!(xget(&up.join("r"), REDIRECT).as_deref(), Some(&b"/q/r"[..]));
            assert_eq!(xget(&up.join("p2/a"), REDIRECT).as_deref(), Some(&b"/p/a"[..]));
            assert_eq!(xget(&up.join("r/s"), REDIRECT).as_deref(), Some(&b"/s"[..]));
            // Only directories: nothing of the moved trees was copied.
            assert!(!up.join("p2/a/x").exists() && !up.join("r/w").exists());
        })
        .end();
    kernel_agrees(&l, &whole);
}

#[test]
fn exchange_of_two_lower_directories() {
    let l = Layers::new(2);
    l.put(0, "x/in_x", b"x");
    l.put(1, "x/in_x_below", b"x1");
    l.put(1, "y/in_y", b"y");
    l.put(0, "d/z/in_z", b"z");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let ex = rustix::fs::RenameFlags::EXCHANGE;
    rustix::fs::renameat_with(rustix::fs::CWD, m.path("x"), rustix::fs::CWD, m.path("y"), ex).unwrap();
    rustix::fs::renameat_with(rustix::fs::CWD, m.path("x"), rustix::fs::CWD, m.path("d/z"), ex).unwrap();
    let check = |root: &Path| {
        assert_eq!(names(&root.join("y")), ["in_x", "in_x_below"]);
        assert_eq!(names(&root.join("x")), ["in_z"]);
        assert_eq!(names(&root.join("d/z")), ["in_y"]);
    };
    check(&m.mnt);
    let whole = walk(&m.mnt);
    sc.ending(m).view(check).end();
    kernel_agrees(&l, &whole);
}

#[test]
fn rmdir_of_a_redirected_directory_needs_its_merged_content_gone() {
    let l = Layers::new(1);
    l.put(0, "a/f", b"f");
    l.put(0, "a/sub/g", b"g");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(err_code(std::fs::remove_dir(m.path("b"))), Some(libc::ENOTEMPTY));
    std::fs::remove_file(m.path("b/f")).unwrap();
    assert_eq!(err_code(std::fs::remove_dir(m.path("b"))), Some(libc::ENOTEMPTY));
    std::fs::remove_dir_all(m.path("b/sub")).unwrap();
    std::fs::remove_dir(m.path("b")).unwrap();
    let whole = walk(&m.mnt);
    assert!(whole.is_empty(), "{whole:?}");
    sc.ending(m)
        .view(|root| assert_eq!(names(root), Vec::<String>::new()))
        .end();
    kernel_agrees(&l, &whole);
}

#[test]
fn children_of_a_redirected_directory_are_created_deleted_copied_up_and_linked() {
    let l = Layers::new(1);
    l.put(0, "a/keep", b"keep");
    l.put(0, "a/del", b"del");
    l.put(0, "a/edit", b"lower data");
    l.put(0, "a/linked", b"linked");
    l.put(0, "a/sub/inner", b"inner");
    std::fs::hard_link(l.lower(0, "a/linked"), l.lower(0, "a/sub/other_name")).unwrap();
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    std::fs::write(m.path("b/new"), b"new").unwrap();
    std::fs::remove_file(m.path("b/del")).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(m.path("b/edit")).unwrap();
    std::io::Write::write_all(&mut f, b" + more").unwrap();
    drop(f);
    std::fs::write(m.path("b/sub/inner"), b"rewritten").unwrap();
    std::fs::hard_link(m.path("b/keep"), m.path("b/sub/keep_link")).unwrap();
    std::fs::write(m.path("b/linked"), b"written through one name").unwrap();
    let check = |root: &Path| {
        assert_eq!(names(&root.join("b")), ["edit", "keep", "linked", "new", "sub"]);
        assert_eq!(text(&root.join("b/edit")), "lower data + more");
        assert_eq!(text(&root.join("b/sub/inner")), "rewritten");
        assert_eq!(text(&root.join("b/sub/other_name")), "written through one name");
        let (a, b) = (lstat(&root.join("b/keep")), lstat(&root.join("b/sub/keep_link")));
        assert_eq!(
            (a.ino(), a.nlink()),
            (b.ino(), 2),
            "a link made below a redirected directory"
        );
        assert_eq!(
            lstat(&root.join("b/linked")).ino(),
            lstat(&root.join("b/sub/other_name")).ino()
        );
    };
    check(&m.mnt);
    sc.ending(m)
        .view(check)
        .upper(|up| {
            assert!(
                is_chr_whiteout(&up.join("b/del")),
                "the deleted lower child keeps a whiteout"
            )
        })
        .end();
}

#[test]
fn reads_redirects_kernel_overlayfs_wrote() {
    if !require_root("kernel overlayfs") {
        return;
    }
    let l = Layers::new(2);
    l.put(0, "p/a/x", b"x");
    l.put(1, "p/a/y", b"y");
    l.put(1, "p/b/z", b"z");
    l.put(0, "q/c/w", b"w");
    l.put(1, "e/e1", b"e1");
    let sc = Scenario::new(&l);
    let kernel_view = {
        let k = kernel(&l).expect("root");
        let p = |s: &str| k.path(s);
        std::fs::rename(p("p/a"), p("p/a2")).unwrap(); // relative
        std::fs::rename(p("p/b"), p("b")).unwrap(); // absolute
        std::fs::rename(p("q"), p("p/a2/q")).unwrap(); // into a redirected directory
        std::fs::rename(p("p/a2/q/c"), p("c")).unwrap(); // out of a moved parent
        std::fs::remove_file(p("p/a2/y")).unwrap();
        std::fs::write(p("b/new"), b"new").unwrap();
        std::fs::rename(p("e"), p("e2")).unwrap();
        std::fs::remove_dir_all(p("e2")).unwrap();
        walk(&k.mnt)
    };
    assert_eq!(
        xget(&l.up("p/a2"), REDIRECT).as_deref(),
        Some(&b"a"[..]),
        "the kernel wrote redirects"
    );
    assert_eq!(xget(&l.up("b"), REDIRECT).as_deref(), Some(&b"/p/b"[..]));
    let m = l.mount(&[]);
    assert_eq!(walk(&m.mnt), kernel_view, "our view of the kernel's upper");
    // And we go on from there: a redirected directory moved again.
    std::fs::rename(m.path("p/a2"), m.path("a3")).unwrap();
    assert_eq!(names(&m.path("a3")), ["q", "x"]);
    sc.ending(m)
        .view(|root| assert_eq!(names(&root.join("a3")), ["q", "x"]))
        .end();
    let whole = walk(&l.mount(&[]).mnt);
    kernel_agrees(&l, &whole);
}

#[test]
fn redirects_in_a_lower_layer_that_was_an_upper() {
    if !require_root("kernel overlayfs") {
        return;
    }
    // A kernel overlay's upper, over `base`, becomes a lower over `base` of ours.
    let l = Layers::new(2);
    l.put(1, "a/sub/f", b"f");
    l.put(1, "a/g", b"g");
    l.put(1, "c/h", b"h");
    {
        let kwork = l.dir.path().join("kw0");
        let kmnt = l.dir.path().join("km0");
        std::fs::create_dir_all(&kwork).unwrap();
        std::fs::create_dir_all(&kmnt).unwrap();
        let k = KernelOverlay::mount_with(&l.lowers[1..], Some((&l.lowers[0], &kwork)), &kmnt, KERNEL_OPTS)
            .expect("kernel overlay");
        std::fs::rename(k.path("a"), k.path("b")).unwrap();
        std::fs::rename(k.path("c"), k.path("b/sub/c2")).unwrap();
    }
    assert_eq!(xget(&l.lower(0, "b"), REDIRECT).as_deref(), Some(&b"a"[..]));
    let reference = {
        let kmnt = l.dir.path().join("km1");
        std::fs::create_dir_all(&kmnt).unwrap();
        let k = KernelOverlay::mount_with(&l.lowers, None, &kmnt, "redirect_dir=follow,metacopy=off").expect("kernel");
        walk(&k.mnt)
    };
    assert_eq!(
        reference.get(Path::new("b/sub/c2/h")).map(|e| e.2.clone()),
        Some(b"h".to_vec())
    );
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    assert_eq!(walk(&m.mnt), reference);
    // Moved once more by us: the chain goes through both layers' redirects.
    std::fs::rename(m.path("b/sub"), m.path("sub2")).unwrap();
    assert_eq!(names(&m.path("sub2")), ["c2", "f"]);
    assert_eq!(xget(&l.up("sub2"), REDIRECT).as_deref(), Some(&b"/b/sub"[..]));
    let whole = walk(&m.mnt);
    sc.ending(m)
        .view(|root| assert_eq!(text(&root.join("sub2/c2/h")), "h"))
        .end();
    kernel_agrees(&l, &whole);
}

#[test]
fn redirect_dir_option_follow_nofollow_and_the_podman_form() {
    let l = Layers::new(1);
    l.put(0, "a/f", b"f");
    l.put(0, "c/g", b"g");
    l.put(0, "e/stale", b"stale");
    // follow: the move copies the tree and marks it opaque, as before redirects.
    let m = l.mount(&["--redirect-dir", "follow"]);
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(xget(&l.up("b"), REDIRECT), None);
    assert_eq!(text(&l.up("b/f")), "f");
    assert_eq!(m.unmount(), Some(0));
    // The fuse-overlayfs form (Podman's) follows but writes none by default...
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.lower_arg(),
        l.upper.display(),
        l.work.display()
    );
    let args: Vec<OsString> = vec!["-f".into(), "-o".into(), o.clone().into(), l.mnt.clone().into()];
    let m = Mount::start(&args, &l.mnt);
    std::fs::rename(m.path("c"), m.path("d")).unwrap();
    assert_eq!(xget(&l.up("d"), REDIRECT), None);
    assert_eq!(text(&l.up("d/g")), "g");
    assert_eq!(m.unmount(), Some(0));
    // ... unless asked.
    let with_on: Vec<OsString> = vec![
        "-f".into(),
        "-o".into(),
        format!("{o},redirect_dir=on").into(),
        l.mnt.clone().into(),
    ];
    let m = Mount::start(&with_on, &l.mnt);
    std::fs::rename(m.path("e"), m.path("e2")).unwrap();
    assert_eq!(xget(&l.up("e2"), REDIRECT).as_deref(), Some(&b"e"[..]));
    assert_eq!(names(&m.path("e2")), ["stale"]);
    assert_eq!(m.unmount(), Some(0));
    // nofollow: the redirected directory shows its own entries only.
    let m = l.mount(&["--redirect-dir", "nofollow"]);
    assert_eq!(names(&m.mnt), ["b", "d", "e2"]);
    assert_eq!(names(&m.path("e2")), Vec::<String>::new());
    assert_eq!(names(&m.path("b")), ["f"]);
    assert_eq!(m.unmount(), Some(0));
    // follow (and off) read it.
    for mode in ["follow", "off"] {
        let m = l.mount(&["--redirect-dir", mode]);
        assert_eq!(names(&m.path("e2")), ["stale"], "{mode}");
        assert_eq!(m.unmount(), Some(0));
    }
    let bad = Command::new(bin())
        .args(["mount", "--redirect-dir", "sometimes", "--lower"])
        .arg(l.lower_arg())
        .arg(&l.mnt)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

use std::process::Command;

/// An upper directory `x` with the redirect `value`, beside a lower that has `target/secret`.
fn hostile_case(value: &[u8]) -> Layers {
    let l = Layers::new(2);
    l.put(0, "target/secret", b"s");
    l.put(1, "x/own_lower", b"lower of x by name");
    std::fs::write(l.up("ok"), b"ok").unwrap();
    std::fs::create_dir(l.up("x")).unwrap();
    std::fs::write(l.up("x/mine"), b"m").unwrap();
    xset(&l.up("x"), REDIRECT, value).unwrap();
    l
}

#[test]
fn hostile_redirects_are_refused_and_never_leave_the_layers() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("outside"), b"o").unwrap();
    let refused: Vec<&[u8]> = vec![
        b"../target",
        b"/../target",
        b"/target/..",
        b"/./target",
        b"//target",
        b"/target/",
        b"a/b",
        b"/",
        b"",
        b"tar\0get",
    ];
    for value in refused {
        let l = hostile_case(value);
        let m = l.mount(&[]);
        let label = String::from_utf8_lossy(value);
        assert_eq!(
            err_code(std::fs::symlink_metadata(m.path("x"))),
            Some(libc::EIO),
            "{label}"
        );
        assert_eq!(err_code(std::fs::read_dir(m.path("x"))), Some(libc::EIO), "{label}");
        // The daemon serves on.
        assert_eq!(text(&m.path("ok")), "ok", "{label}");
        assert_eq!(m.unmount(), Some(0), "{label}");
    }
    over_long_redirect_is_refused();
    // A symlink on the path (to the lower's own directory, or out of the layers) is never
    // followed: the directory shows its upper entries only.
    for (link, value) in [
        (PathBuf::from("target"), &b"/s"[..]),
        (outside.path().to_path_buf(), b"/s"),
        (outside.path().to_path_buf(), b"s"),
    ] {
        let l = hostile_case(value);
        std::os::unix::fs::symlink(&link, l.lower(0, "s")).unwrap();
        let m = l.mount(&[]);
        assert_eq!(
            names(&m.path("x")),
            ["mine"],
            "{} via {link:?}",
            String::from_utf8_lossy(value)
        );
        assert_eq!(names(&m.mnt), ["ok", "s", "target", "x"]);
        assert_eq!(m.unmount(), Some(0));
    }
    // A chain: a lower's redirect through a symlink further down refuses too.
    let l = hostile_case(b"/hop");
    std::fs::create_dir(l.lower(0, "hop")).unwrap();
    xset(&l.lower(0, "hop"), REDIRECT, b"/lnk").unwrap();
    std::os::unix::fs::symlink(outside.path(), l.lower(1, "lnk")).unwrap();
    let m = l.mount(&[]);
    assert_eq!(names(&m.path("x")), ["mine"]);
    assert_eq!(m.unmount(), Some(0));
    // A redirect naming a file, or nothing, merges nothing.
    for value in [&b"/target/secret"[..], b"/missing"] {
        let l = hostile_case(value);
        let m = l.mount(&[]);
        assert_eq!(names(&m.path("x")), ["mine"], "{}", String::from_utf8_lossy(value));
        assert_eq!(m.unmount(), Some(0));
    }
    // A valid one is followed, and only it: not the namesake below.
    let l = hostile_case(b"/target");
    let m = l.mount(&[]);
    assert_eq!(names(&m.path("x")), ["mine", "secret"]);
    assert_eq!(m.unmount(), Some(0));
}

/// A value longer than any path (an ext4 upper cannot even store it; a tmpfs upper can).
fn over_long_redirect_is_refused() {
    let l = Layers::new(1);
    l.put(0, "target/secret", b"s");
    let t = l.dir.path().join("tmpfs");
    std::fs::create_dir(&t).unwrap();
    let _tmpfs = TmpfsGuard::mount(&t, "16m");
    let (up, work) = (t.join("upper"), t.join("work"));
    for d in [&up, &work, &up.join("x")] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(up.join("ok"), b"ok").unwrap();
    let long: Vec<u8> = std::iter::repeat_n(&b"/abcdefgh"[..], 600).flatten().copied().collect();
    xset(&up.join("x"), REDIRECT, &long).unwrap();
    let m = Mount::unionfs(&l.lowers, Some((&up, &work)), &[], &l.mnt);
    assert_eq!(err_code(std::fs::read_dir(m.path("x"))), Some(libc::EIO));
    assert_eq!(text(&m.path("ok")), "ok");
    assert_eq!(m.unmount(), Some(0));
}

#[test]
fn a_plain_user_daemon_writes_and_reads_user_xattr_redirects() {
    use crate::as_user::{UserMount, rootless_user, user_layers, user_sh_ok};
    if !require_root("setpriv to a plain user") {
        return;
    }
    let user = rootless_user();
    let l = user_layers(user, |l| {
        for i in 0..50 {
            l.put(0, &format!("a/f{i}"), b"x");
        }
        l.put(0, "a/sub/y", b"y");
    });
    let m = UserMount::start(user, &l, &[]);
    user_sh_ok(
        user,
        "mv \"$1/a\" \"$1/b\" && mkdir \"$1/c\" && mv \"$1/b/sub\" \"$1/c/sub2\"",
        &[m.mnt.as_os_str()],
    );
    let listing = user_sh_ok(user, "ls \"$1/b\" | wc -l; cat \"$1/c/sub2/y\"", &[m.mnt.as_os_str()]);
    assert_eq!(listing, "50\ny");
    m.finish();
    assert_eq!(xget(&l.up("b"), "user.overlay.redirect").as_deref(), Some(&b"a"[..]));
    assert_eq!(
        xget(&l.up("c/sub2"), "user.overlay.redirect").as_deref(),
        Some(&b"/a/sub"[..])
    );
    assert_eq!(xget(&l.up("b"), REDIRECT), None);
    assert!(!l.up("b/f0").exists(), "nothing copied");
    let m = UserMount::start(user, &l, &[]);
    let listing = user_sh_ok(user, "ls \"$1/b\" | wc -l; cat \"$1/c/sub2/y\"", &[m.mnt.as_os_str()]);
    assert_eq!(listing, "50\ny", "after a remount");
    m.finish();
}

/// The layer tools read what a rename by redirect left: `diff` shows the old name deleted and
/// the new one added with everything below it.
#[test]
fn the_layer_tools_read_our_redirects() {
    let l = Layers::new(1);
    l.put(0, "a/f", b"f");
    l.put(0, "a/sub/g", b"g");
    let m = l.mount(&[]);
    std::fs::rename(m.path("a"), m.path("b")).unwrap();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::rename(m.path("b/sub"), m.path("c/sub")).unwrap();
    assert_eq!(m.unmount(), Some(0));
    assert_eq!(xget(&l.up("c/sub"), REDIRECT).as_deref(), Some(&b"/a/sub"[..]));
    let out = Command::new(bin())
        .args(["diff", "--lower", &l.lower_arg(), "--upper"])
        .arg(&l.upper)
        .arg("--workdir")
        .arg(&l.work)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["A /b", "A /b/f", "A /c", "A /c/sub", "A /c/sub/g", "D /a"]);
}
