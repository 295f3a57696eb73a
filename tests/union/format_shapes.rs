//! docs/semantics.md, "On-disk formats" and "Lookup": one table of layer shapes (every marker
//! form we read, in every place it can stand) driven through both readers of layers, the union
//! core (its merged indexes, through the library) and the layer tools (`unionfs::layers::view`,
//! their per-name lookups). Both must show the same view, and the one the table expects.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use unionfs::layers::{Stack, view};
use unionfs::{Kind, MountConfig, ROOT, Union};

/// One thing in a layer.
#[derive(Clone, Copy)]
enum Item<'a> {
    Dir(&'a str),
    File(&'a str),
    /// A character device 0/0 at the path.
    CharWhiteout(&'a str),
    /// An OCI `.wh.NAME` beside the path.
    OciWhiteout(&'a str),
    /// A directory made opaque with this xattr.
    OpaqueXattr(&'a str, &'a str),
    /// A directory made opaque by a `.wh..wh..opq` file.
    OpaqueFile(&'a str),
    /// fuse-overlayfs's opaque directory: the xattr and a `.wh..opq` whiteout device.
    FuseOverlayfsOpaque(&'a str),
    /// Kernel overlayfs's whiteout inside a layer that is an overlay itself: a zero-size file
    /// with an `overlay.whiteout` xattr in a directory marked `overlay.opaque=x`.
    XattrWhiteout(&'a str, &'a str),
}

fn mknod_whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("mknod 0/0 (tests run as root)");
}

fn setx(p: &Path, name: &str, v: &[u8]) {
    rustix::fs::lsetxattr(p, name, v, rustix::fs::XattrFlags::empty()).expect("setxattr");
}

fn build(layer: &Path, items: &[Item<'_>]) {
    std::fs::create_dir_all(layer).expect("layer");
    for it in items {
        match *it {
            Item::Dir(p) => std::fs::create_dir_all(layer.join(p)).expect("dir"),
            Item::File(p) => {
                std::fs::create_dir_all(layer.join(p).parent().expect("parent")).expect("parent");
                std::fs::write(layer.join(p), p.as_bytes()).expect("file");
            }
            Item::CharWhiteout(p) => mknod_whiteout(&layer.join(p)),
            Item::OciWhiteout(p) => {
                let path = layer.join(p);
                let mut name = OsString::from(".wh.");
                name.push(path.file_name().expect("name"));
                std::fs::write(path.with_file_name(name), b"").expect(".wh. file");
            }
            Item::OpaqueXattr(d, x) => {
                std::fs::create_dir_all(layer.join(d)).expect("dir");
                setx(&layer.join(d), x, b"y");
            }
            Item::OpaqueFile(d) => {
                std::fs::create_dir_all(layer.join(d)).expect("dir");
                std::fs::write(layer.join(d).join(".wh..wh..opq"), b"").expect("opq");
            }
            Item::FuseOverlayfsOpaque(d) => {
                std::fs::create_dir_all(layer.join(d)).expect("dir");
                setx(&layer.join(d), "user.fuseoverlayfs.opaque", b"y");
                mknod_whiteout(&layer.join(d).join(".wh..opq"));
            }
            Item::XattrWhiteout(d, n) => {
                std::fs::create_dir_all(layer.join(d)).expect("dir");
                setx(&layer.join(d), "trusted.overlay.opaque", b"x");
                std::fs::write(layer.join(d).join(n), b"").expect("file");
                setx(&layer.join(d).join(n), "trusted.overlay.whiteout", b"");
            }
        }
    }
}

struct Shape<'a> {
    name: &'a str,
    /// Top first.
    layers: &'a [&'a [Item<'a>]],
    /// Directory → the names the view lists there.
    lists: &'a [(&'a str, &'a [&'a str])],
    /// Paths the view must not show.
    absent: &'a [&'a str],
}

const SHAPES: &[Shape<'static>] = &[
    Shape {
        name: "char-device whiteout hides below, not beside",
        layers: &[
            &[Item::CharWhiteout("a"), Item::File("b")],
            &[Item::File("a"), Item::File("c")],
        ],
        lists: &[("", &["b", "c"])],
        absent: &["a"],
    },
    Shape {
        name: "OCI whiteout hides below; an object in its own layer stays",
        layers: &[
            &[Item::OciWhiteout("a"), Item::OciWhiteout("keep"), Item::File("keep")],
            &[Item::File("a"), Item::File("keep")],
        ],
        lists: &[("", &["keep"])],
        absent: &["a", ".wh.a", ".wh.keep"],
    },
    Shape {
        name: "directories merge until an opaque one (every opaque form)",
        layers: &[
            &[Item::Dir("d"), Item::File("d/top")],
            &[Item::OpaqueXattr("d", "trusted.overlay.opaque"), Item::File("d/mid")],
            &[Item::Dir("d"), Item::File("d/hidden")],
        ],
        lists: &[("d", &["mid", "top"])],
        absent: &["d/hidden"],
    },
    Shape {
        name: "user.overlay.opaque, .wh..wh..opq and fuse-overlayfs's marker",
        layers: &[
            &[
                Item::OpaqueXattr("u", "user.overlay.opaque"),
                Item::OpaqueFile("o"),
                Item::FuseOverlayfsOpaque("f"),
            ],
            &[Item::File("u/x"), Item::File("o/x"), Item::File("f/x")],
        ],
        lists: &[("", &["f", "o", "u"]), ("u", &[]), ("o", &[]), ("f", &[])],
        absent: &["u/x", "o/x", "f/x", "o/.wh..wh..opq", "f/.wh..opq"],
    },
    Shape {
        name: "a file below a directory ends the merge; a directory below a file is hidden",
        layers: &[
            &[Item::Dir("d"), Item::File("d/a"), Item::File("f")],
            &[Item::File("d"), Item::Dir("f")],
            &[Item::Dir("d"), Item::File("d/b")],
        ],
        lists: &[("d", &["a"]), ("", &["d", "f"])],
        absent: &["d/b"],
    },
    Shape {
        name: "xattr whiteouts inside an opaque=x directory",
        layers: &[
            &[Item::XattrWhiteout("d", "gone"), Item::File("d/new")],
            &[Item::File("d/gone"), Item::File("d/kept")],
        ],
        lists: &[("d", &["kept", "new"])],
        absent: &["d/gone"],
    },
    Shape {
        name: "a whiteout of a directory hides its whole tree",
        layers: &[
            &[Item::OciWhiteout("tree")],
            &[Item::Dir("tree/sub"), Item::File("tree/sub/f")],
        ],
        lists: &[("", &[])],
        absent: &["tree", "tree/sub", "tree/sub/f"],
    },
];

/// The union core's view: lookups from the root, and listings (through the library).
struct CoreView {
    u: Union,
}

impl CoreView {
    fn ino_of(&self, path: &str) -> Option<(u64, Kind)> {
        let (mut ino, mut kind) = (ROOT, Kind::Dir);
        for c in path.split('/').filter(|c| !c.is_empty()) {
            let a = self.u.lookup(ino, OsStr::new(c)).ok()?;
            (ino, kind) = (a.ino, a.kind);
        }
        Some((ino, kind))
    }

    fn names(&self, dir: &str) -> Option<Vec<OsString>> {
        let (ino, kind) = self.ino_of(dir)?;
        if kind != Kind::Dir {
            return None;
        }
        let fh = self.u.opendir(ino).expect("opendir");
        let mut names: Vec<OsString> = self
            .u
            .readdir(fh, 0)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Some(names)
    }
}

#[test]
fn the_core_and_the_tools_read_every_shape_alike() {
    if !unionfs_testkit::require_root("the shapes' whiteout devices and trusted.* xattrs") {
        return;
    }
    for shape in SHAPES {
        let t = tempfile::tempdir().expect("tmp");
        let lowers: Vec<_> = (0..shape.layers.len())
            .map(|i| t.path().join(format!("l{i}")))
            .collect();
        for (l, items) in lowers.iter().zip(shape.layers) {
            build(l, items);
        }
        let core = CoreView {
            u: Union::new(&MountConfig::new(lowers.clone(), None)).expect("union"),
        };
        let tools = Stack::open(&lowers, None).expect("stack");
        for (dir, want) in shape.lists {
            let want: Vec<OsString> = want.iter().map(OsString::from).collect();
            assert_eq!(
                core.names(dir).as_ref(),
                Some(&want),
                "{}: the core lists {dir:?}",
                shape.name
            );
            let tl = view::names_at(&tools, dir.as_bytes()).expect("tools");
            assert_eq!(tl.as_ref(), Some(&want), "{}: the tools list {dir:?}", shape.name);
            for n in &want {
                let p = if dir.is_empty() {
                    n.clone()
                } else {
                    OsString::from(format!("{dir}/{}", n.to_string_lossy()))
                };
                let ck = core.ino_of(&p.to_string_lossy()).map(|(_, k)| k);
                let tk = view::kind_at(&tools, p.as_bytes()).expect("tools");
                assert!(ck.is_some(), "{}: the core finds {p:?}", shape.name);
                assert_eq!(ck, tk, "{}: kinds of {p:?}", shape.name);
            }
        }
        for p in shape.absent {
            assert_eq!(core.ino_of(p), None, "{}: the core shows {p}", shape.name);
            assert_eq!(
                view::kind_at(&tools, p.as_bytes()).expect("tools"),
                None,
                "{}: the tools show {p}",
                shape.name
            );
        }
    }
}
