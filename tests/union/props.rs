//! Property tests: random lower layers and random operation sequences run on `unionfs::Union`
//! and on the reference model (`tests/model/`, the `unionfs-model` crate). After every step the
//! errno must be the model's and the whole view (names, types, data, link targets, modes,
//! `user.x`, inode numbers) must be the model's, both through the running union and through a fresh one over the same
//! directories (what a remount would show). The upper must be a valid layer that, folded over
//! the lowers by the model's own rules, shows the same view; the lowers must not change at all.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use unionfs::WhiteoutStyle;
use unionfs_model::harness::{self, Checks, Op, Opens, from_env, is_marker, p, run_case};
use unionfs_model::hostile;
use unionfs_model::*;

/// A path as generated: most pick from what the view shows at the time the step runs.
#[derive(Clone, Debug)]
enum PathGen {
    /// One of the visible paths.
    Existing(Index),
    /// A name in one of the visible directories (or the root).
    Child(Index, String),
    /// Any path of 1 to 3 components.
    Literal(PathBuf),
    /// One of the visible directories (a rename of one that merges lower directories writes a
    /// redirect).
    ExistingDir(Index),
}

impl PathGen {
    fn resolve(&self, m: &View) -> PathBuf {
        match self {
            PathGen::Existing(i) => {
                let all: Vec<&PathBuf> = m.names.keys().collect();
                if all.is_empty() {
                    PathBuf::from(NAMES[0])
                } else {
                    all[i.index(all.len())].clone()
                }
            }
            PathGen::Child(i, name) => {
                let mut dirs = vec![PathBuf::new()];
                dirs.extend(m.names.keys().filter(|p| m.get(p).is_some_and(Node::is_dir)).cloned());
                i.get(&dirs).join(name)
            }
            PathGen::Literal(p) => p.clone(),
            PathGen::ExistingDir(i) => {
                let dirs: Vec<&PathBuf> = m.names.keys().filter(|p| m.get(p).is_some_and(Node::is_dir)).collect();
                if dirs.is_empty() {
                    PathBuf::from(NAMES[0])
                } else {
                    dirs[i.index(dirs.len())].clone()
                }
            }
        }
    }
}

// ---- generators --------------------------------------------------------------------------------

/// Few names, so that layers collide and operations hit existing paths.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(String::from)
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(&b"xyz019"[..]), 0..6)
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(&[0o644, 0o600, 0o755, 0o444][..])
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop::sample::select(&[0o755, 0o700, 0o555, 0o2755][..])
}

fn xattr() -> impl Strategy<Value = Option<Vec<u8>>> {
    const VALUES: [&[u8]; 3] = [b"lo", b"lower", b""];
    prop::option::weighted(0.2, prop::sample::select(&VALUES[..]).prop_map(<[u8]>::to_vec))
}

fn target() -> impl Strategy<Value = String> {
    prop::sample::select(&["a", "../b", "/etc/passwd", "c/d"][..]).prop_map(String::from)
}

/// One entry with, for a directory, its contents relative to it.
fn entry(depth: u32) -> BoxedStrategy<(Node, Layer)> {
    let leaf = prop_oneof![
        4 => (data(), file_mode(), xattr()).prop_map(|(data, mode, xattr)| (Node::File { data, mode, xattr }, Layer::new())),
        1 => target().prop_map(|t| (symlink(&t), Layer::new())),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let dir = (dir_mode(), xattr(), prop::bool::weighted(0.15), dir_entries(depth - 1)).prop_map(
        |(mode, xattr, opaque, mut kids)| {
            if opaque {
                kids.insert(PathBuf::from(OPQ), file(b""));
            }
            (Node::Dir { mode, xattr }, kids)
        },
    );
    prop_oneof![3 => leaf, 2 => dir].boxed()
}

/// The contents of one directory: up to three names, each an entry, a whiteout or both
/// (an entry stays visible next to its own layer's whiteout).
fn dir_entries(depth: u32) -> BoxedStrategy<Layer> {
    let slot = (prop::option::weighted(0.85, entry(depth)), prop::bool::weighted(0.2));
    prop::collection::btree_map(name(), slot, 0..=3)
        .prop_map(|m| {
            let mut out = Layer::new();
            for (n, (e, wh)) in m {
                let p = PathBuf::from(n);
                if e.is_none() || wh {
                    out.insert(whiteout_path(&p), file(b""));
                }
                if let Some((node, kids)) = e {
                    out.extend(kids.into_iter().map(|(k, v)| (p.join(k), v)));
                    out.insert(p, node);
                }
            }
            out
        })
        .boxed()
}

/// A lower layer: a tree of depth up to 3, sometimes an opaque root, sometimes a second hard
/// link to one of its files, whiteouts encoded the OCI or the overlay way.
fn lower() -> impl Strategy<Value = (Layer, Encoding)> {
    (
        dir_entries(2),
        prop::bool::weighted(0.1),
        prop::option::weighted(0.3, any::<(Index, Index, Index)>()),
        prop::sample::select(&[Encoding::Oci, Encoding::Overlay, Encoding::XattrWhiteouts][..]),
    )
        .prop_map(|(mut l, opaque, link, enc)| {
            if opaque {
                l.insert(PathBuf::from(OPQ), file(b""));
            }
            if let Some((f, d, n)) = link {
                add_hard_link(&mut l, f, d, n);
            }
            // Whiteout devices need root.
            let root = whiteout_devices();
            (
                l,
                if enc == Encoding::Overlay && !root {
                    Encoding::Oci
                } else {
                    enc
                },
            )
        })
}

fn add_hard_link(l: &mut Layer, f: Index, d: Index, n: Index) {
    let files: Vec<PathBuf> = l
        .iter()
        .filter(|(p, v)| matches!(v, Node::File { .. }) && !is_marker(p))
        .map(|(p, _)| p.clone())
        .collect();
    let mut dirs = vec![PathBuf::new()];
    dirs.extend(l.iter().filter(|(_, v)| v.is_dir()).map(|(p, _)| p.clone()));
    if files.is_empty() {
        return;
    }
    let (to, dir) = (f.get(&files).clone(), d.get(&dirs).clone());
    let start = n.index(NAMES.len());
    let free = (0..NAMES.len())
        .map(|i| dir.join(NAMES[(start + i) % NAMES.len()]))
        .find(|p| !l.contains_key(p));
    if let Some(p) = free {
        l.insert(p, Node::HardLink { to });
    }
}

fn path() -> impl Strategy<Value = PathGen> {
    let component = || prop_oneof![30 => name(), 1 => Just(".wh.a".to_string())];
    let literal = prop::collection::vec(component(), 1..=3).prop_map(|v| PathGen::Literal(v.iter().collect()));
    prop_oneof![
        5 => any::<Index>().prop_map(PathGen::Existing),
        3 => (any::<Index>(), component()).prop_map(|(i, n)| PathGen::Child(i, n)),
        2 => literal,
    ]
}

fn op() -> impl Strategy<Value = Op<PathGen>> {
    let flags = prop_oneof![3 => Just(0), 1 => Just(RENAME_NOREPLACE), 1 => Just(RENAME_EXCHANGE)];
    let any_mode = prop::sample::select(&[0o644, 0o600, 0o755, 0o700, 0o555, 0o2755][..]);
    prop_oneof![
        3 => (path(), file_mode(), data()).prop_map(|(path, mode, data)| Op::CreateFile { path, mode, data }),
        3 => (path(), 0..8u64, data()).prop_map(|(path, offset, data)| Op::WriteFile { path, offset, data }),
        1 => (path(), 0..12u64).prop_map(|(path, len)| Op::Truncate { path, len }),
        3 => (path(), dir_mode()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        2 => path().prop_map(|path| Op::Unlink { path }),
        2 => path().prop_map(|path| Op::Rmdir { path }),
        4 => (path(), path(), flags).prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        // Directory moves, within their parent and elsewhere (redirects, relative and absolute).
        2 => (any::<Index>(), any::<Index>(), name()).prop_map(|(from, to, n)| Op::Rename {
            from: PathGen::ExistingDir(from),
            to: PathGen::Child(to, n),
            flags: 0,
        }),
        1 => (path(), target()).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => (path(), path()).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (path(), any_mode).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), data()).prop_map(|(path, value)| Op::SetXattr { path, value }),
        1 => path().prop_map(|path| Op::RemoveXattr { path }),
        2 => (0..2u8, path()).prop_map(|(slot, path)| Op::Open { slot, path }),
        2 => (0..2u8, 0..8u64, data()).prop_map(|(slot, offset, data)| Op::WriteHandle { slot, offset, data }),
        1 => (0..2u8, 0..12u64).prop_map(|(slot, len)| Op::TruncateHandle { slot, len }),
        1 => (0..2u8).prop_map(|slot| Op::Close { slot }),
        1 => Just(Op::Remount),
        1 => Just(Op::DropCaches),
        1 => Just(Op::Check),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=5000 for a longer hunt; 128 keeps the suite well under a minute.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        // Keep failing cases beside this file, in tests/union/props.proptest-regressions.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn union_matches_model(
        lowers in prop::collection::vec(lower(), 1..=3),
        style in prop::sample::select(&[WhiteoutStyle::Overlay, WhiteoutStyle::Oci][..]),
        checks in prop_oneof![7 => Just(Checks::Every), 3 => Just(Checks::Sparse)],
        opens in prop::sample::select(&[Opens::AsAsked, Opens::ReadWriteUpper][..]),
        ops in prop::collection::vec(op(), 1..25),
    ) {
        if let Err(e) = run_case(&lowers, style, checks, opens, from_env(), &ops, |m, op| op.map_paths(|p| p.resolve(m))) {
            return Err(TestCaseError::fail(e));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case is one mount and a short sequence: 96 cost a few seconds.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// A crafted upper (redirect and metacopy markers aimed outside the layers, at symlinks,
    /// at files, in loops): nothing outside the layers is ever shown, and every entry is the
    /// model's or, where markers are involved, an allowed error (`unionfs_model::hostile`).
    #[test]
    fn hostile_upper_stays_inside_layers(
        mut lowers in prop::collection::vec(lower(), 1..=2),
        picks in prop::collection::vec(any::<(u8, u8, u8)>(), 1..=4),
        style in prop::sample::select(&[WhiteoutStyle::Overlay, WhiteoutStyle::Oci][..]),
        ops in prop::collection::vec(op(), 0..8),
    ) {
        let upper = hostile::plant(&mut lowers, &picks);
        if let Err(e) = hostile::run_hostile(&lowers, &upper, style, &ops, |m, op| op.map_paths(|p| p.resolve(m))) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ---- regressions (shrunk cases of bugs found by the property test) -----------------------------

fn replay(lowers: Vec<(Layer, Encoding)>, ops: Vec<Op>) {
    harness::replay(lowers, WhiteoutStyle::Overlay, Checks::Every, ops);
}

/// The harness itself on a fixed three-layer stack (a whiteout hiding a lower file, an opaque
/// directory, a directory over a file, a hard link), across a remount.
#[test]
fn fixed_stack_matches_model() {
    let l0 = layer(&[
        ("a", dir()),
        ("a/x", file(b"top")),
        (".wh.b", file(b"")),
        ("c", file(b"c0")),
    ]);
    let l1 = layer(&[
        ("a", dir()),
        ("a/y", file(b"mid")),
        ("a/.wh..wh..opq", file(b"")),
        ("b", file(b"hidden")),
        ("d", file(b"d1")),
        ("e", Node::HardLink { to: p("d") }),
    ]);
    let l2 = layer(&[
        ("a", dir()),
        ("a/z", file(b"hidden by opaque")),
        ("c", dir()),
        ("c/q", file(b"")),
    ]);
    let enc = if whiteout_devices() {
        Encoding::Overlay
    } else {
        Encoding::Oci
    };
    replay(
        vec![(l0, Encoding::Oci), (l1, enc), (l2, Encoding::Oci)],
        vec![Op::Remount],
    );
}

/// Copy-up of a symlink (here for a refused setxattr, then for a rename) keeps its inode
/// number across remounts. Fixed in c27b473 (the origin is now recorded where a symlink can
/// carry it); found by `union_matches_model`.
#[test]
fn regression_symlink_keeps_ino_after_copy_up_and_remount() {
    replay(
        vec![(layer(&[("c", symlink("a"))]), Encoding::Oci)],
        vec![
            Op::SetXattr {
                path: p("c"),
                value: vec![],
            },
            Op::Remount,
            Op::Rename {
                from: p("c"),
                to: p("d"),
                flags: 0,
            },
            Op::Remount,
        ],
    );
}

/// A hard link to a symlink was listed by readdir as a regular file while lookup said symlink
/// (`NewObject::kind` answered `Kind::File` for every `Link`). Fixed in b0d1275; found by
/// `union_matches_model`.
#[test]
fn regression_hard_link_to_symlink_lists_as_file() {
    replay(
        vec![(layer(&[("a", symlink("a"))]), Encoding::Oci)],
        vec![Op::Link {
            from: p("a"),
            to: p("b"),
        }],
    );
}

/// Renaming a directory whose lower subdirectory holds a file with several names (here both
/// names are there; the other may be anywhere, even hidden) fails with ESTALE, leaving a
/// half-done copy-up, when the kernel holds no reference to that subdirectory: `copy_up_tree`
/// resolves `a/s` with no kernel lookups and copies `a/s/x` up; its `link_siblings` walks to
/// every name of the file through `a/s` and then prunes the nodes it walked, `a/s` included;
/// the next `resolve_child(a/s, "y")` of `copy_up_tree` answers ESTALE. Fixed by pinning nodes during internal walks.
#[test]
fn regression_rename_dir_with_hard_linked_lower_files() {
    let l = layer(&[
        ("a", dir()),
        ("a/s", dir()),
        ("a/s/x", file(b"1")),
        ("a/s/y", Node::HardLink { to: p("a/s/x") }),
    ]);
    replay(
        vec![(l, Encoding::Oci)],
        vec![
            Op::DropCaches,
            Op::Rename {
                from: p("a"),
                to: p("b"),
                flags: 0,
            },
        ],
    );
}

/// `renameat2(a, a, RENAME_NOREPLACE)` is EEXIST on Linux; `Union::rename` answers Ok because
/// it returns early for identical names before its NOREPLACE check. Through a mount the kernel
/// answers first, so only library users see it. Fixed.
#[test]
fn regression_rename_onto_itself_with_noreplace_is_eexist() {
    replay(
        vec![(layer(&[("a", file(b"x"))]), Encoding::Oci)],
        vec![Op::Rename {
            from: p("a"),
            to: p("a"),
            flags: RENAME_NOREPLACE,
        }],
    );
}

/// `link(dir, existing)` is EEXIST on Linux (the name is checked before the type of the
/// source); `Union::link` answers EPERM. Masked by the kernel through a mount. Fixed.
#[test]
fn regression_link_of_dir_onto_existing_name_is_eexist() {
    replay(
        vec![(layer(&[("d", dir()), ("f", file(b"x"))]), Encoding::Oci)],
        vec![Op::Link {
            from: p("d"),
            to: p("f"),
        }],
    );
}

/// `rename(missing, ".wh.x")` is ENOENT (the source is looked up first); `Union::rename`
/// checks the target name first and answers EINVAL. Masked by the kernel through a mount. Fixed.
#[test]
fn regression_rename_of_missing_name_to_whiteout_name_is_enoent() {
    replay(
        vec![(layer(&[]), Encoding::Oci)],
        vec![Op::Rename {
            from: p("x"),
            to: p(".wh.x"),
            flags: 0,
        }],
    );
}

/// Whether layers may hold whiteout devices (root); asked once, through the strict gate: a
/// strict run that is not root fails instead of generating only OCI whiteouts.
fn whiteout_devices() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| unionfs_testkit::require_root("whiteout devices in generated layers"))
}

/// A directory beside an OCI whiteout of its own name in the same layer shows (the whiteout
/// hides the layers below only); moved by a redirect, the redirect's walk must find it too
/// and merge nothing below it. Fixed.
#[test]
fn regression_exchange_of_a_directory_beside_its_own_oci_whiteout() {
    let l0 = layer(&[
        (".wh.a", file(b"")),
        ("a", dir()),
        ("a/a", Node::HardLink { to: p("b") }),
        ("b", file(b"")),
    ]);
    let l1 = layer(&[("c", dir())]);
    replay(
        vec![(l0, Encoding::Oci), (l1, Encoding::Oci)],
        vec![Op::Rename {
            from: p("a"),
            to: p("c"),
            flags: RENAME_EXCHANGE,
        }],
    );
}

/// Renames of merged lower directories leave redirects (relative in the same directory,
/// absolute elsewhere), and a metadata change below one a metacopy file: the upper on disk,
/// folded over the lowers by the model's own rules, must show the view.
#[test]
fn redirected_upper_folds_to_the_view() {
    let l0 = layer(&[
        ("a", dir()),
        ("a/x", file(b"x0")),
        ("a/s", dir()),
        ("a/s/t", file(b"t0")),
    ]);
    let l1 = layer(&[("a", dir()), ("a/y", file(b"y1")), ("b", dir())]);
    replay(
        vec![(l0, Encoding::Oci), (l1, Encoding::Oci)],
        vec![
            Op::Rename {
                from: p("a"),
                to: p("c"),
                flags: 0,
            },
            Op::Chmod {
                path: p("c/x"),
                mode: 0o600,
            },
            Op::Rename {
                from: p("c"),
                to: p("b/c"),
                flags: 0,
            },
            Op::Unlink { path: p("b/c/y") },
            Op::Rename {
                from: p("b/c/s"),
                to: p("s2"),
                flags: 0,
            },
            Op::Remount,
            Op::Rename {
                from: p("s2"),
                to: p("b/c/s"),
                flags: 0,
            },
        ],
    );
}

/// The model's fold alone: a relative redirect, an absolute one met on the way by a lower
/// layer's own redirect, an opaque directory ending the merge, a metacopy file's data.
#[test]
fn fold_follows_redirects() {
    let upper = layer(&[
        ("n", dir()),
        ("n/.wh..wh..redirect", file(b"a")),
        ("m", dir()),
        ("m/.wh..wh..redirect", file(b"/d/e")),
        ("m/f", file(b"\0\0")),
        ("m/.wh..wh..mc.f", file(b"")),
    ]);
    let l0 = layer(&[
        ("a", dir()),
        ("a/x", file(b"x")),
        ("d", dir()),
        ("d/.wh..wh..redirect", file(b"/g")),
        ("d/e", dir()),
        ("d/e/f", file(b"ef")),
    ]);
    let l1 = layer(&[
        ("a", dir()),
        ("a/.wh..wh..opq", file(b"")),
        ("a/y", file(b"y")),
        ("g", dir()),
        ("g/e", dir()),
        ("g/e/z", file(b"z")),
    ]);
    let l2 = layer(&[("a", dir()), ("a/hidden", file(b"h"))]);
    let got = fold_contents(&[upper, l0, l1, l2]);
    let names: Vec<String> = got.keys().map(|k| k.display().to_string()).collect();
    assert_eq!(
        names,
        [
            "a", "a/x", "a/y", "d", "d/e", "d/e/f", "d/e/z", "g", "g/e", "g/e/z", "m", "m/f", "m/z", "n", "n/x", "n/y"
        ]
    );
    assert_eq!(got[&p("m/f")], file(b"ef"));
}

/// A crafted metacopy file over a lower whiteout (an xattr whiteout: a zero-size regular file;
/// or an OCI `.wh.` file) showed the whiteout file as its data (nothing, under a size of one
/// byte). The data lookup now stops at a whiteout of any form, as kernel overlayfs does: EIO.
/// Found by `hostile_upper_stays_inside_layers`.
#[test]
fn regression_metacopy_over_a_lower_whiteout_is_not_its_data() {
    for enc in [Encoding::XattrWhiteouts, Encoding::Oci] {
        let mut lowers = vec![(layer(&[(".wh.c", file(b""))]), enc)];
        // A metacopy file `c` of one byte (`hostile::plant`'s kind 0, name 2).
        let upper = hostile::plant(&mut lowers, &[(0, 2, 0)]);
        assert!(upper.contains_key(&metacopy_path(&p("c"))));
        let none: &[Op] = &[];
        if let Err(e) = hostile::run_hostile(&lowers, &upper, WhiteoutStyle::Overlay, none, |_, op| op.clone()) {
            panic!("{e}");
        }
    }
}

/// A lower directory with a redirect beside its own layer's OCI whiteout merged the directory
/// its redirect names below; beside that whiteout it merges nothing below (the model's rule,
/// docs/semantics.md "Lookup"), redirect or not. Found by `hostile_upper_stays_inside_layers`.
#[test]
fn regression_redirect_beside_its_own_oci_whiteout_merges_nothing() {
    let lowers = vec![
        (
            layer(&[(".wh.c", file(b"")), ("c", dir()), ("c/.wh..wh..redirect", file(b"a"))]),
            Encoding::Oci,
        ),
        (layer(&[("a", dir()), ("a/a", file(b""))]), Encoding::Oci),
    ];
    let none: &[Op] = &[];
    for upper in [
        Layer::new(),
        layer(&[("a", dir()), ("a/.wh..wh..redirect", file(b"c"))]),
    ] {
        if let Err(e) = hostile::run_hostile(&lowers, &upper, WhiteoutStyle::Overlay, none, |_, op| op.clone()) {
            panic!("{e}");
        }
    }
}
