//! Hostile uppers: an initial upper crafted by someone else (docs/semantics.md, "Untrusted
//! uppers"), with redirect and metacopy markers that try to reach outside the layers. The
//! union must never read or list anything outside the layer directories; what it shows of a
//! crafted entry is either what the model's fold (following markers as kernel overlayfs does,
//! inside the layers) predicts, or an error among [`ALLOWED`].

use super::harness::{Op, apply_model, apply_union};
use super::*;

/// Content of the sentinel files next to the layer directories; no layer ever holds it.
pub const SENTINEL: &[u8] = b"sentinel: outside the layers";
/// Name of the sentinel files (at the temporary root and in `outside/`); no layer has it.
pub const SENTINEL_NAME: &str = "outside-sentinel";
/// Stands, in a crafted redirect, for the absolute path of `outside/` (known only once the
/// fixture's temporary directory exists).
pub const OUTSIDE: &str = "@OUTSIDE";

/// What the union may answer instead of the model's view for a crafted entry.
pub const ALLOWED: [i32; 5] = [libc::EIO, libc::EPERM, libc::ENOENT, libc::ENOTDIR, libc::ELOOP];

/// Redirect values a crafted upper directory (or file) may carry.
pub const REDIRECTS: [&str; 28] = [
    "/a",
    "b",
    "/a/b",
    "/c/d",
    "../outside",
    "/../outside",
    "/../outside-sentinel",
    "..",
    ".",
    "//a",
    "a/",
    "/a/",
    "a//b",
    "/esc",
    "/esc/outside-sentinel",
    "esc",
    "/lnk",
    "/lnk/a",
    "lnk",
    "/reg",
    "",
    "/",
    "a\0b",
    "@OUTSIDE",
    "/lower0/a",
    "/../upper/a",
    "LONG",
    "LONGNAME",
];

fn redirect_value(i: u8) -> Vec<u8> {
    match REDIRECTS[usize::from(i) % REDIRECTS.len()] {
        // Longer than the union writes (it copies instead), shorter than it reads; a value
        // longer than PATH_MAX does not fit in an ext4 xattr.
        "LONG" => "/a".repeat(1900).into_bytes(),
        // A component longer than NAME_MAX.
        "LONGNAME" => format!("/{}", "x".repeat(300)).into_bytes(),
        v => v.as_bytes().to_vec(),
    }
}

/// Entries every hostile case adds to its bottom lower layer, for markers to aim at: a
/// symlink out of the layers, a symlink to a directory of the layer, a regular file.
fn plant_lower(bottom: &mut Layer) {
    let entries = [
        ("esc", symlink("../outside")),
        ("lnk", symlink("a")),
        ("reg", file(b"reg")),
    ];
    for (p, n) in entries {
        bottom.entry(PathBuf::from(p)).or_insert(n);
    }
}

/// One crafted marker, from three bytes (kind, name, value).
fn plant_one(upper: &mut Layer, lowers: &mut [(Layer, Encoding)], (kind, n, v): (u8, u8, u8)) {
    const NAMES: [&str; 6] = ["a", "b", "c", "esc", "lnk", "reg"];
    let name = NAMES[usize::from(n) % NAMES.len()];
    let at = PathBuf::from(name);
    let mut add = |p: PathBuf, node: Node| {
        upper.entry(p).or_insert(node);
    };
    match kind % 6 {
        // A metacopy file (a lower file below, or none, or a symlink, or a directory).
        0 => {
            add(at.clone(), file(&[0; 3][..1 + usize::from(v % 3)]));
            add(metacopy_path(&at), file(b""));
        }
        // A metacopy file with two names (a hard link in the upper).
        1 => {
            add(at.clone(), file(b"\0\0"));
            if upper.get(&at).is_some_and(|n| matches!(n, Node::File { .. })) {
                upper
                    .entry(PathBuf::from("hl"))
                    .or_insert(Node::HardLink { to: at.clone() });
                upper.insert(metacopy_path(Path::new("hl")), file(b""));
            }
        }
        // A metacopy file whose data a redirect says is elsewhere.
        2 => {
            add(at.clone(), file(b"\0\0"));
            add(metacopy_path(&at), file(b""));
            add(redirect_path(&at), file(&redirect_value(v)));
        }
        // A redirected directory.
        3 | 4 => {
            add(at.clone(), dir());
            add(redirect_path(&at), file(&redirect_value(v)));
        }
        // A loop across layers: upper `name` -> `other`, the top lower's `other` -> `name`.
        _ => {
            let other = NAMES[usize::from(v) % 3];
            add(at.clone(), dir());
            add(redirect_path(&at), file(other.as_bytes()));
            if let Some((top, _)) = lowers.first_mut() {
                top.entry(PathBuf::from(other)).or_insert_with(dir);
                if top.get(Path::new(other)).is_some_and(Node::is_dir) {
                    top.insert(redirect_path(Path::new(other)), file(name.as_bytes()));
                }
            }
        }
    }
}

/// A crafted upper from `picks` (and the lower entries its markers aim at, added to `lowers`).
pub fn plant(lowers: &mut [(Layer, Encoding)], picks: &[(u8, u8, u8)]) -> Layer {
    if let Some((bottom, _)) = lowers.last_mut() {
        plant_lower(bottom);
    }
    let mut upper = Layer::new();
    for &p in picks {
        plant_one(&mut upper, lowers, p);
    }
    upper
}

/// What the union showed at one path: the entry, or the errno of the first call that failed
/// (lookup, open, read, readlink, opendir, readdir).
type Shown = BTreeMap<PathBuf, Result<Node, i32>>;

/// The whole view read like `find | xargs cat`, going on past errors.
fn read_all(d: &mut Driver) -> Shown {
    let mut out = Shown::new();
    read_dir(d, ROOT, Path::new(""), &mut out);
    d.end_op();
    out
}

fn read_dir(d: &mut Driver, ino: u64, at: &Path, out: &mut Shown) {
    let entries = match d.u().opendir(ino) {
        Ok(fh) => {
            let r = d.u().readdir(fh, 0);
            d.u().release(fh);
            r
        }
        Err(e) => Err(e),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            out.insert(at.to_path_buf(), Err(e.code()));
            return;
        }
    };
    for e in entries.iter().filter(|e| e.name != "." && e.name != "..") {
        let p = at.join(&e.name);
        let node = match d.lookup(ino, &e.name) {
            Err(errno) => Err(errno),
            Ok(a) => match a.kind {
                Kind::File => d.read_ino(a.ino).map(|data| file(&data)),
                Kind::Symlink => d
                    .u()
                    .readlink(a.ino)
                    .map(|t| Node::Symlink { target: t })
                    .map_err(|e| e.code()),
                Kind::Dir => {
                    read_dir(d, a.ino, &p, out);
                    Ok(dir())
                }
                _ => Err(libc::EIO),
            },
        };
        // A directory that failed to list keeps its error.
        out.entry(p).or_insert(node);
    }
}

/// Whether what the union shows at `p` may differ from the model by an error: `p` or a
/// directory above it carries a marker (or merges a layer directory that does).
fn crafted(f: &Fold, layers: &[Layer], p: &Path) -> bool {
    let marked =
        |l: usize, at: &Path| layers[l].contains_key(&redirect_path(at)) || layers[l].contains_key(&metacopy_path(at));
    p.ancestors().filter(|a| !a.as_os_str().is_empty()).any(|a| {
        f.broken.contains(a)
            || f.data.contains_key(a)
            || f.entries.get(a).is_some_and(|(l, at)| marked(*l, at))
            || f.dirs.get(a).is_some_and(|v| v.iter().any(|(l, at)| marked(*l, at)))
    })
}

/// Whether no name of the object `e` finds metacopy data below.
fn metacopy_without_data_everywhere(f: &Fold, e: Option<&(usize, PathBuf)>) -> bool {
    f.entries
        .iter()
        .filter(|(_, x)| Some(*x) == e)
        .all(|(q, _)| f.data.get(q).is_some_and(Option::is_none))
}

/// The entry at `p` as its top layer holds it (a metacopy file's holes, not its lower data).
fn own_data<'a>(f: &Fold, layers: &'a [Layer], p: &Path) -> Option<&'a Node> {
    let (l, c) = f.entries.get(p)?;
    layers[*l].get(c)
}

/// The invariants of a crafted upper on what the union shows: nothing from outside the layers,
/// and every entry the model's or, where markers are involved, an allowed error.
fn check_shown(shown: &Shown, model: Option<(&Fold, &[Layer])>) -> Result<(), String> {
    for (p, r) in shown {
        if p.file_name().is_some_and(|n| n == SENTINEL_NAME) {
            return Err(format!("{}: a name from outside the layers is listed", p.display()));
        }
        if let Ok(Node::File { data, .. }) = r {
            if data.windows(SENTINEL.len()).any(|w| w == SENTINEL) {
                return Err(format!("{}: reads a file from outside the layers", p.display()));
            }
        }
        let Some((f, layers)) = model else { continue };
        let want = f.node(layers, p);
        let metacopy_without_data = f.data.get(p).is_some_and(Option::is_none);
        let ok = match (r, &want) {
            (Err(e), _) => ALLOWED.contains(e) && crafted(f, layers, p),
            (Ok(_), None) => false,
            // The union looks for a metacopy marker only on upper files with holes or a lower
            // namesake (a fully written file it made is never one): such a file shows its own
            // bytes, which are the upper's. Kernel overlayfs answers EIO.
            (Ok(got), Some(_)) if f.data.contains_key(p) && own_data(f, layers, p) == Some(got) => true,
            // A metacopy file with several upper names is one object: the union finds its data
            // by whichever name it met first.
            (Ok(Node::File { data, .. }), Some(_)) if f.data.contains_key(p) => {
                let same = f.entries.get(p);
                f.entries
                    .iter()
                    .filter(|(_, e)| Some(*e) == same)
                    .any(|(q, _)| matches!(f.node(layers, q), Some(Node::File { data: w, .. }) if w == *data))
                    && !metacopy_without_data_everywhere(f, same)
            }
            (Ok(_), Some(_)) if metacopy_without_data => false,
            (Ok(Node::Dir { .. }), Some(w)) => w.is_dir(),
            (Ok(Node::File { data, .. }), Some(Node::File { data: w, .. })) => data == w,
            (Ok(Node::File { data, .. }), Some(Node::HardLink { .. })) => f
                .entries
                .get(p)
                .and_then(|(l, c)| match &layers[*l][c] {
                    Node::File { data: w, .. } => Some(w == data),
                    _ => None,
                })
                .unwrap_or(false),
            (Ok(got), Some(w)) => got == w,
        };
        if !ok {
            return Err(format!("{}: the union shows {r:?}, the model {want:?}", p.display()));
        }
    }
    if let Some((f, layers)) = model {
        for p in f.entries.keys() {
            let hidden_by_error = p.ancestors().skip(1).any(|a| matches!(shown.get(a), Some(Err(_))));
            if !shown.contains_key(p) && !hidden_by_error && !crafted(f, layers, p) {
                return Err(format!("{}: the model shows it, the union does not", p.display()));
            }
        }
    }
    Ok(())
}

/// Runs one case over a crafted upper: the view before any operation against the model's
/// fold, then `steps`, each answering the model's errno until one names a crafted entry (that
/// one may answer an error of [`ALLOWED`] instead; later ones are not compared), with the view
/// read after each, never showing anything from outside the layers, a remount's view too; the
/// lowers never change, no panic, and the node table drains at the end.
pub fn run_hostile<T>(
    lowers: &[(Layer, Encoding)],
    upper: &Layer,
    style: WhiteoutStyle,
    steps: &[T],
    resolve: impl Fn(&View, &T) -> Op,
) -> Result<(), String> {
    let mut fx = Fixture::new(lowers);
    fx.style = style;
    let upper = fx.plant_upper(upper);
    let before = fx.snapshot_lowers(Atimes::Files);
    let mut all = vec![upper.clone()];
    all.extend(fx.layers.iter().cloned());
    let f = fold(&all);
    let context = |ran: &[Op], e: String| {
        format!("{e}\nlowers: {lowers:?}\nupper: {upper:?}\nstyle: {style:?}\noperations run: {ran:#?}")
    };
    let mut d = fx.mount();
    check_shown(&read_all(&mut d), Some((&f, &all))).map_err(|e| context(&[], e))?;
    let mut model = View::from_layers(&all);
    let mut ran = Vec::new();
    // Until an operation names a crafted entry, the union answers as the model; after that the
    // model only proposes paths (a crafted entry may fail where the model's succeeds).
    let mut diverged = false;
    for step in steps {
        let op = resolve(&model, step);
        ran.push(op.clone());
        let want = apply_model(&mut model, &op).map_err(|f| f.errno);
        let got = apply_union(&mut d, &op);
        d.end_op();
        if !diverged {
            diverged = op_paths(&op).iter().any(|p| crafted(&f, &all, p));
            let allowed = diverged && got.is_err_and(|e| ALLOWED.contains(&e));
            if want != got && !allowed {
                let e = format!("{op:?}: model says {want:?}, union says {got:?}");
                return Err(context(&ran, e));
            }
        }
        check_shown(&read_all(&mut d), None).map_err(|e| context(&ran, format!("after {op:?}: {e}")))?;
    }
    let mut fresh = Driver::new(&fx.second_config());
    check_shown(&read_all(&mut fresh), None).map_err(|e| context(&ran, format!("remounted: {e}")))?;
    for (i, (b, a)) in before.iter().zip(fx.snapshot_lowers(Atimes::Files)).enumerate() {
        let diff = diff_snapshots(b, &a);
        if !diff.is_empty() {
            return Err(context(&ran, format!("lower layer {i} changed:\n{}", diff.join("\n"))));
        }
    }
    d.close_all();
    d.forget_all();
    match d.u().live_nodes() {
        1 => Ok(()),
        n => Err(context(
            &ran,
            format!("{n} nodes live after every lookup was forgotten"),
        )),
    }
}

/// The paths an operation names.
fn op_paths(op: &Op) -> Vec<&Path> {
    match op {
        Op::CreateFile { path, .. }
        | Op::WriteFile { path, .. }
        | Op::Truncate { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Unlink { path }
        | Op::Rmdir { path }
        | Op::Symlink { path, .. }
        | Op::Chmod { path, .. }
        | Op::SetXattr { path, .. }
        | Op::RemoveXattr { path }
        | Op::Open { path, .. } => vec![path],
        Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
        Op::WriteHandle { .. }
        | Op::TruncateHandle { .. }
        | Op::Close { .. }
        | Op::Remount
        | Op::DropCaches
        | Op::Check => Vec::new(),
    }
}
