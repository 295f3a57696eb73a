//! docs/semantics.md, "On-disk formats", through real mounts: the markers we read in every layer
//! (opaque directories and whiteouts of every format, `.wh.` names hiding only the layers below
//! their own), the ones we write in the upper (overlay style and `--whiteouts=oci`), private
//! markers and xattrs never visible and never settable, and `.wh.` names refused; markers in odd
//! places in a hostile lower (`hostile_markers_in_odd_places`) change nothing else.

use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::Path;

use crate::common::*;

const ENOENT: i32 = libc::ENOENT;

#[test]
fn opaque_markers_of_every_format_in_a_lower() {
    #[derive(Debug, Clone, Copy)]
    enum Marker {
        Xattr(&'static str),
        OciFile,
    }
    for marker in [
        Marker::Xattr("trusted.overlay.opaque"),
        Marker::Xattr("user.overlay.opaque"),
        Marker::Xattr("user.fuseoverlayfs.opaque"),
        Marker::OciFile,
    ] {
        let l = Layers::new(3);
        l.put(0, "d/top", b"L0");
        for i in 0..20 {
            // Several entries, so the marker file is not necessarily listed first.
            l.put(0, &format!("d/t{i}"), b"t");
        }
        l.put(1, "d/top", b"L1");
        l.put(1, "d/hidden", b"L1");
        l.put(2, "d/deeper", b"L2");
        // A control directory without a marker merges as usual.
        l.put(0, "m/a", b"a");
        l.put(1, "m/b", b"b");
        match marker {
            Marker::Xattr(name) => xset(&l.lower(0, "d"), name, b"y").unwrap(),
            Marker::OciFile => l.put(0, "d/.wh..wh..opq", b""),
        }
        let sc = Scenario::new(&l);
        let mut expect: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
        expect.push("top".into());
        expect.sort();
        let check = |root: &Path, expect: &[String]| {
            assert_eq!(names(&root.join("d")), expect, "{marker:?}");
            assert_eq!(text(&root.join("d/top")), "L0", "{marker:?}");
            for hidden in ["hidden", "deeper", ".wh..wh..opq"] {
                assert_eq!(
                    err_code(std::fs::symlink_metadata(root.join("d").join(hidden))),
                    Some(ENOENT),
                    "{marker:?}: {hidden} must not be visible"
                );
            }
            let xs = xlist(&root.join("d"));
            assert!(
                xs.iter()
                    .all(|x| !x.contains("overlay") && !x.contains("fuseoverlayfs")),
                "{marker:?}: private xattrs listed: {xs:?}"
            );
            assert_eq!(names(&root.join("m")), ["a", "b"]);
        };
        let m = l.mount(&[]);
        check(&m.mnt, &expect);
        std::fs::write(m.path("d/new"), b"n").unwrap();
        expect.push("new".into());
        expect.sort();
        sc.ending(m)
            .view(|root| check(root, &expect))
            .named(format!("{marker:?}"))
            .end();
    }
}

#[test]
fn whiteouts_of_every_format_in_a_lower() {
    let l = Layers::new(2);
    for n in [
        "chr",
        "oci",
        "dir_chr/x",
        "dir_oci/x",
        "kept",
        "xd/f_x",
        "xd/other",
        "ud/f_u",
        "ud/other",
    ] {
        l.put(1, n, b"L1");
    }
    // char device 0/0
    mknod_whiteout(&l.lower(0, "chr"));
    mknod_whiteout(&l.lower(0, "dir_chr"));
    // OCI
    l.put(0, ".wh.oci", b"");
    l.put(0, ".wh.dir_oci", b"");
    // Kernel xattr whiteouts: zero-size files carrying overlay.whiteout, in a dir marked opaque=x.
    l.put(0, "xd/f_x", b"");
    xset(&l.lower(0, "xd/f_x"), "trusted.overlay.whiteout", b"").unwrap();
    xset(&l.lower(0, "xd"), "trusted.overlay.opaque", b"x").unwrap();
    l.put(0, "ud/f_u", b"");
    xset(&l.lower(0, "ud/f_u"), "user.overlay.whiteout", b"").unwrap();
    xset(&l.lower(0, "ud"), "user.overlay.opaque", b"x").unwrap();
    let sc = Scenario::new(&l);
    let check = |root: &Path, top: &[&str]| {
        assert_eq!(names(root), top);
        for gone in [
            "chr",
            "oci",
            "dir_chr",
            "dir_oci",
            ".wh.oci",
            ".wh.dir_oci",
            "xd/f_x",
            "ud/f_u",
        ] {
            assert_eq!(
                err_code(std::fs::symlink_metadata(root.join(gone))),
                Some(ENOENT),
                "{gone} must be hidden"
            );
        }
        // opaque=x is not opaque: the rest of the lower directory still shows.
        assert_eq!(names(&root.join("xd")), ["other"]);
        assert_eq!(names(&root.join("ud")), ["other"]);
    };
    let m = l.mount(&[]);
    check(&m.mnt, &["kept", "ud", "xd"]);
    // Re-creating hidden names through the view.
    std::fs::write(m.path("chr"), b"new").unwrap();
    std::fs::create_dir(m.path("dir_oci")).unwrap();
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["chr", "dir_oci", "kept", "ud", "xd"]);
            assert_eq!(
                names(&root.join("dir_oci")),
                Vec::<String>::new(),
                "recreated dir must not show x"
            );
            assert_eq!(text(&root.join("chr")), "new");
            assert_eq!(names(&root.join("xd")), ["other"]);
        })
        .end();
}

#[test]
fn oci_whiteout_hides_only_layers_below_its_own() {
    let l = Layers::new(2);
    // Same layer: the entry stays visible next to its whiteout.
    l.put(0, "same", b"L0");
    l.put(0, ".wh.same", b"");
    l.put(1, "same", b"L1");
    // Below: hidden.
    l.put(0, ".wh.below", b"");
    l.put(1, "below", b"L1");
    l.put(0, "sub/.wh.below", b"");
    l.put(1, "sub/below", b"L1");
    l.put(1, "sub/kept", b"L1");
    // A directory entry next to its own whiteout is still visible and still merges with nothing
    // below it (the whiteout ends the merge).
    l.put(0, "dd/a", b"a");
    l.put(0, ".wh.dd", b"");
    l.put(1, "dd/b", b"b");
    let sc = Scenario::new(&l);
    let check = |root: &Path| {
        assert_eq!(names(root), ["dd", "same", "sub"]);
        assert_eq!(text(&root.join("same")), "L0");
        assert_eq!(err_code(std::fs::symlink_metadata(root.join("below"))), Some(ENOENT));
        assert_eq!(names(&root.join("sub")), ["kept"]);
        assert_eq!(names(&root.join("dd")), ["a"]);
    };
    let m = l.mount(&[]);
    sc.ending(m).view(check).end();
}

#[test]
fn private_markers_never_appear_in_readdir_lookup_or_listxattr() {
    let l = Layers::new(2);
    l.put(0, "f", b"f");
    for x in [
        "trusted.overlay.origin",
        "user.overlay.redirect",
        "user.fuseoverlayfs.origin",
        "user.unionfs.origin",
    ] {
        xset(&l.lower(0, "f"), x, b"private").unwrap();
    }
    xset(&l.lower(0, "f"), "user.visible", b"v").unwrap();
    xset(&l.lower(0, "f"), "trusted.visible", b"t").unwrap();
    l.put(0, "d/.wh.gone", b"");
    l.put(0, "d/.wh..wh..opq", b"");
    mknod_whiteout(&l.lower(0, "d/chr"));
    l.put(0, "d/kept", b"k");
    l.put(1, "d/gone", b"g");
    let sc = Scenario::new(&l);
    let check = |root: &Path| {
        assert_eq!(names(&root.join("d")), ["kept"]);
        assert_eq!(names(root), ["d", "f"]);
        for hidden in ["d/.wh.gone", "d/.wh..wh..opq", "d/chr", "d/gone"] {
            assert_eq!(
                err_code(std::fs::symlink_metadata(root.join(hidden))),
                Some(ENOENT),
                "{hidden}"
            );
        }
        assert_eq!(xlist(&root.join("f")), ["trusted.visible", "user.visible"]);
        for x in [
            "trusted.overlay.origin",
            "user.overlay.redirect",
            "user.fuseoverlayfs.origin",
            "user.unionfs.origin",
        ] {
            assert_eq!(
                xget_err(&root.join("f"), x),
                Err(libc::ENODATA),
                "{x} must read as absent"
            );
        }
        assert!(xlist(&root.join("d")).is_empty());
    };
    let m = l.mount(&[]);
    check(&m.mnt);
    // After a copy-up, our own metadata (if any) is not listed either.
    std::fs::OpenOptions::new().append(true).open(m.path("f")).unwrap();
    std::fs::write(m.path("d/new"), b"n").unwrap();
    std::fs::remove_file(m.path("d/new")).unwrap();
    assert!(exists_raw(&l.up("f")), "open for write must copy up");
    sc.ending(m).view(check).end();
}

pub(crate) fn opaque_xattr(p: &Path) -> Option<Vec<u8>> {
    xget(p, "trusted.overlay.opaque")
}

#[test]
fn names_starting_with_dot_wh_are_refused_with_einval() {
    let l = Layers::new(1);
    l.put(0, "f", b"f");
    l.put(0, "d/g", b"g");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let einval = Some(libc::EINVAL);
    for dir in ["", "d/"] {
        let p = |n: &str| m.path(&format!("{dir}{n}"));
        assert_eq!(err_code(std::fs::write(p(".wh.f"), b"x")), einval, "create {dir}.wh.f");
        assert_eq!(err_code(std::fs::write(p(".wh..wh..opq"), b"")), einval);
        assert_eq!(err_code(std::fs::create_dir(p(".wh.dir"))), einval);
        assert_eq!(err_code(symlink("f", p(".wh.link"))), einval);
        assert_eq!(
            rerr(rustix::fs::mknodat(
                rustix::fs::CWD,
                p(".wh.fifo"),
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0
            )),
            einval
        );
        assert_eq!(err_code(std::fs::hard_link(m.path("f"), p(".wh.hard"))), einval);
        assert_eq!(err_code(std::fs::rename(m.path("f"), p(".wh.moved"))), einval);
        assert_eq!(err_code(std::fs::metadata(p(".wh.f"))), Some(ENOENT));
    }
    sc.ending(m)
        .view(|root| {
            assert_eq!(names(root), ["d", "f"]);
            assert_eq!(names(&root.join("d")), ["g"]);
            assert_eq!(std::fs::read(root.join("f")).unwrap(), b"f");
        })
        .upper(|up| {
            let raw: Vec<String> = names(up).into_iter().filter(|n| n.starts_with(".wh.")).collect();
            assert!(raw.is_empty(), "created in the upper: {raw:?}");
        })
        .end();
}

#[test]
fn oci_style_writes_dot_wh_files_and_opaque_markers() {
    let l = Layers::new(1);
    l.put(0, "f", b"f");
    l.put(0, "d/a", b"a");
    l.put(0, "e/b", b"b");
    l.put(0, "keep", b"k");
    let sc = Scenario::new(&l);
    let m = l.mount(&["--whiteouts=oci"]);
    std::fs::remove_file(m.path("f")).unwrap();
    std::fs::remove_dir_all(m.path("d")).unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::remove_file(m.path("e/b")).unwrap();
    let check = |root: &Path| {
        assert_eq!(names(root), ["d", "e", "keep"]);
        assert_eq!(names(&root.join("d")), Vec::<String>::new());
        assert_eq!(names(&root.join("e")), Vec::<String>::new());
    };
    let m = sc
        .ending(m)
        .view(check)
        .upper(|up| {
            let f = lstat(&up.join(".wh.f"));
            assert!(f.is_file() && f.len() == 0, "f must be hidden by an empty .wh.f");
            assert!(!exists_raw(&up.join("f")), "no device whiteout in OCI mode");
            assert!(lstat(&up.join("e/.wh.b")).is_file());
            assert!(!exists_raw(&up.join("e/b")));
            assert!(lstat(&up.join("d/.wh..wh..opq")).is_file(), "d must carry .wh..wh..opq");
            assert_eq!(opaque_xattr(&up.join("d")), None, "no opaque xattr in OCI mode");
            assert!(lstat(&up.join("d")).is_dir());
            let raw: Vec<_> = std::fs::read_dir(up)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_char_device())
                .map(|e| e.file_name())
                .collect();
            assert!(raw.is_empty(), "char devices in an OCI upper: {raw:?}");
        })
        .remount_with(&["--whiteouts=oci"])
        .remount();
    // The markers are read whatever style the next mount writes.
    sc.ending(m).view(check).end();
}

#[test]
fn private_xattrs_are_hidden_and_cannot_be_set() {
    let l = Layers::new(2);
    l.put(0, "d/top", b"t");
    l.put(1, "d/below", b"b");
    l.put(0, "f", b"f");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let private = [
        "trusted.overlay.opaque",
        "trusted.overlay.whiteout",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
        "user.unionfs.origin",
    ];
    for x in private {
        for p in ["d", "f"] {
            assert_eq!(rerr(xset(&m.path(p), x, b"y")), Some(libc::EPERM), "setting {x} on {p}");
        }
    }
    // Copy-ups happened meanwhile or now; our own metadata stays invisible.
    xset(&m.path("f"), "user.ok", b"1").unwrap();
    std::fs::write(m.path("d/new"), b"n").unwrap();
    let check = |root: &Path| {
        assert_eq!(
            names(&root.join("d")),
            ["below", "new", "top"],
            "d must not have become opaque"
        );
        assert_eq!(xlist(&root.join("f")), ["user.ok"]);
        assert_eq!(xlist(&root.join("d")), Vec::<String>::new());
        for x in private {
            assert_eq!(xget_err(&root.join("f"), x), Err(libc::ENODATA), "{x}");
        }
    };
    sc.ending(m).view(check).end();
}

/// Whiteout and opaque markers in odd places: `.wh..wh..opq` at a layer root, a `.wh.` file whose
/// target exists nowhere, a char 0/0 whiteout hiding nothing in the top lower, an opaque xattr on
/// a regular file, a nested `.wh..wh..opq` inside an opaque directory.
#[test]
fn hostile_markers_in_odd_places() {
    let l = Layers::new(3);
    // Root of lower1 is opaque (OCI marker): lower2's root entries are hidden.
    std::fs::write(l.lower(1, ".wh..wh..opq"), b"").unwrap();
    l.put(1, "from1", b"1");
    l.put(2, "from2", b"2");
    l.put(2, "o/x", b"hidden by opaque o");
    l.put(2, "o/sub/y", b"hidden by opaque o");
    // .wh. file whose target exists nowhere; char 0/0 whiteout hiding nothing in the top lower.
    std::fs::write(l.lower(0, ".wh.ghost"), b"").unwrap();
    mknod_whiteout(&l.lower(0, "nothing"));
    // Opaque xattr on a regular file.
    l.put(0, "plainfile", b"plain");
    xset(&l.lower(0, "plainfile"), "trusted.overlay.opaque", b"y").unwrap();
    // Opaque dir with a nested opaque marker; lower1 has entries under both.
    l.put(0, "o/mine", b"mine");
    l.put(0, "o/sub/mine2", b"mine2");
    xset(&l.lower(0, "o"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(l.lower(0, "o/sub/.wh..wh..opq"), b"").unwrap();
    l.put(1, "o/hidden1", b"hidden");
    l.put(1, "o/sub/hidden2", b"hidden");
    let sc = Scenario::new(&l);
    let m = l.mount(&[]);
    let check = |root: &Path| {
        assert_eq!(names(root), ["from1", "o", "plainfile"], "root view");
        assert!(
            gone(&root.join("from2")),
            "lower2 visible through an opaque lower1 root"
        );
        assert!(gone(&root.join("ghost")) && gone(&root.join("nothing")) && gone(&root.join(".wh.ghost")));
        assert!(gone(&root.join(".wh..wh..opq")));
        assert_eq!(std::fs::read(root.join("plainfile")).unwrap(), b"plain");
        assert!(
            !xlist(&root.join("plainfile")).iter().any(|x| x.contains("overlay")),
            "private xattr visible"
        );
        assert_eq!(names(&root.join("o")), ["mine", "sub"]);
        assert_eq!(names(&root.join("o/sub")), ["mine2"]);
    };
    check(&m.mnt);
    // Create over the ghost names, use the odd file, copy up in the opaque dirs.
    std::fs::write(m.path("ghost"), b"g").unwrap();
    std::fs::write(m.path("nothing"), b"n").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("plainfile"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
        .unwrap();
    std::fs::write(m.path("o/sub/new"), b"new").unwrap();
    std::fs::remove_file(m.path("o/sub/mine2")).unwrap();
    assert_eq!(names(&m.path("o/sub")), ["new"]);
    assert_healthy(&m);
    let m = sc
        .ending(m)
        .view(|root| {
            assert_eq!(names(root), ["from1", "ghost", "nothing", "o", "plainfile"]);
            assert_eq!(std::fs::read(root.join("ghost")).unwrap(), b"g");
            assert_eq!(std::fs::read(root.join("nothing")).unwrap(), b"n");
            assert_eq!(std::fs::read(root.join("plainfile")).unwrap(), b"plain+");
            assert_eq!(names(&root.join("o/sub")), ["new"]);
            assert_eq!(names(&root.join("o")), ["mine", "sub"]);
        })
        .remount();
    std::fs::remove_file(m.path("ghost")).unwrap();
    std::fs::remove_dir_all(m.path("o")).unwrap();
    assert_healthy(&m);
    sc.ending(m)
        .view(|root| assert_eq!(names(root), ["from1", "nothing", "plainfile"]))
        .after(|| assert_eq!(upper_format_problems(&l.upper), Vec::<String>::new()))
        .end();
}
