//! Layers as the tests describe them and the view they fold into (the rules of
//! docs/semantics.md, written independently of `src/union/index.rs`).

use super::*;

/// One entry of a layer, or of the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        xattr: Option<Vec<u8>>,
    },
    Dir {
        mode: u32,
        xattr: Option<Vec<u8>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Layers only: another name of the file at `to` in the same layer.
    HardLink {
        to: PathBuf,
    },
}

impl Node {
    pub fn kind(&self) -> Kind {
        match self {
            Node::File { .. } | Node::HardLink { .. } => Kind::File,
            Node::Dir { .. } => Kind::Dir,
            Node::Symlink { .. } => Kind::Symlink,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }
}

/// A layer: relative path -> entry. Whiteouts and opaque markers are written as their OCI
/// names (`.wh.NAME`, `.wh..wh..opq`, empty files); [`write_layer`] may encode them the overlay
/// way instead.
pub type Layer = BTreeMap<PathBuf, Node>;

/// How [`write_layer`] puts whiteouts and opaque markers on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `.wh.NAME` files and `.wh..wh..opq`.
    Oci,
    /// Char device 0/0 and `trusted.overlay.opaque=y` (needs root).
    Overlay,
    /// What a kernel overlay nested in a layer leaves: whiteouts as empty files carrying
    /// `user.overlay.whiteout` in a directory marked `user.overlay.opaque=x`; opaque
    /// directories as `user.overlay.opaque=y` (or the OCI marker where `x` is needed).
    XattrWhiteouts,
}

pub fn file(data: &[u8]) -> Node {
    Node::File {
        data: data.to_vec(),
        mode: 0o644,
        xattr: None,
    }
}

pub fn dir() -> Node {
    Node::Dir {
        mode: 0o755,
        xattr: None,
    }
}

pub fn symlink(target: &str) -> Node {
    Node::Symlink {
        target: target.as_bytes().to_vec(),
    }
}

/// The whiteout entry for `path` (`dir/.wh.name`).
pub fn whiteout_path(path: &Path) -> PathBuf {
    let (dir, name) = split(path);
    let mut n = OsString::from(WH);
    n.push(name);
    dir.join(n)
}

/// The opaque marker entry of `dir`.
pub fn opaque_path(dir: &Path) -> PathBuf {
    dir.join(OPQ)
}

/// A layer from `(path, node)` pairs (whiteouts and opaque markers by their OCI names).
pub fn layer(entries: &[(&str, Node)]) -> Layer {
    entries.iter().map(|(p, n)| (PathBuf::from(p), n.clone())).collect()
}

/// `(parent, last component)`; the parent of a top-level name is the empty path (the root).
pub fn split(p: &Path) -> (&Path, &OsStr) {
    (p.parent().unwrap_or(Path::new("")), p.file_name().unwrap_or_default())
}

/// Whether a name may not be created through the view (docs/semantics.md: it would read as a whiteout).
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH.as_bytes())
}

pub(super) fn children<'a>(layer: &'a Layer, dir: &'a Path) -> impl Iterator<Item = &'a OsStr> + 'a {
    layer
        .keys()
        .filter(move |k| k.parent() == Some(dir))
        .filter_map(|k| k.file_name())
}

/// The pseudo-entry `DIR/.wh..wh..redirect` of a layer: the `overlay.redirect` xattr of `DIR`
/// (its value is the entry's data). Reserved like the whiteout names, so never listed.
pub const REDIRECT: &str = ".wh..wh..redirect";
/// The pseudo-entry `DIR/.wh..wh..mc.NAME`: the file `DIR/NAME` carries `overlay.metacopy`.
pub const METACOPY: &str = ".wh..wh..mc.";

/// The redirect pseudo-entry of `p`.
pub fn redirect_path(p: &Path) -> PathBuf {
    p.join(REDIRECT)
}

/// The metacopy pseudo-entry of `p`.
pub fn metacopy_path(p: &Path) -> PathBuf {
    let (dir, name) = split(p);
    let mut n = OsString::from(METACOPY);
    n.push(name);
    dir.join(n)
}

/// Whether a layer entry name stands for a marker of its directory or a sibling (opaque,
/// redirect, metacopy) rather than a whiteout.
pub fn is_pseudo(name: &OsStr) -> bool {
    name == OPQ || name == REDIRECT || name.as_bytes().starts_with(METACOPY.as_bytes())
}

/// The redirect `layer` records for its entry `p`: `Ok(None)` without one, `Err` for a value
/// the union refuses (it answers EIO), else the components and whether they start at the roots.
fn redirect_at(layer: &Layer, p: &Path) -> Result<Option<(Vec<OsString>, bool)>, ()> {
    let Some(Node::File { data, .. }) = layer.get(&redirect_path(p)) else {
        return Ok(None);
    };
    let ok = |c: &[u8]| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255;
    if data.is_empty() || data.len() > 4096 || data.contains(&0) {
        return Err(());
    }
    let (rest, abs) = match data.strip_prefix(b"/") {
        Some(r) => (r, true),
        None => (&data[..], false),
    };
    let comps: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    if comps.iter().any(|c| !ok(c)) || (!abs && comps.len() != 1) {
        return Err(());
    }
    let comps = comps.into_iter().map(|c| OsStr::from_bytes(c).to_os_string()).collect();
    Ok(Some((comps, abs)))
}

/// A lookup path in the layers below: components from the parent's directory in each layer,
/// or from the layer roots.
#[derive(Clone)]
struct Want {
    comps: Vec<OsString>,
    from_root: bool,
}

impl Want {
    /// What lower layers look up after meeting `r` at the end of `self` (kernel overlayfs: a
    /// relative redirect replaces the last component, an absolute one the whole path).
    fn apply(&mut self, (comps, abs): (Vec<OsString>, bool)) {
        if abs {
            *self = Want { comps, from_root: true };
        } else {
            self.comps.pop();
            self.comps.extend(comps);
        }
    }
}

/// A lookup path walked in one layer.
enum Walk {
    Absent,
    /// A non-directory or a whiteout on the way: nothing below merges.
    Stop,
    /// The directory at the end (its path in the layer); `last` when nothing below it merges;
    /// the path the layers below look up next.
    Found {
        at: PathBuf,
        last: bool,
        next: Want,
    },
}

/// The result of folding layers into a view.
#[derive(Debug, Default)]
pub struct Fold {
    /// Visible path -> (layer holding the visible entry, its path there with hard links resolved).
    pub entries: BTreeMap<PathBuf, (usize, PathBuf)>,
    /// Visible directory (the root is "") -> the layer directories merged into it, top first.
    pub dirs: BTreeMap<PathBuf, Vec<(usize, PathBuf)>>,
    /// Visible metacopy files (top entry marked, not empty) -> where their data is, if anywhere.
    pub data: BTreeMap<PathBuf, Option<(usize, PathBuf)>>,
    /// Visible directories the union cannot look up (EIO): a redirect it refuses on the way.
    /// Their entries are not in the fold.
    pub broken: BTreeSet<PathBuf>,
    roots: Vec<usize>,
}

/// Folds layers (top first) into the view, by the rules of docs/semantics.md: the topmost entry
/// wins; a `.wh.N` hides `N` in the layers below its own only; a directory merges with
/// same-named directories below until one is opaque, a lower non-directory or a whiteout ends
/// the merge; a directory with a redirect (docs/semantics.md, "Directory renames") merges,
/// below its layer, the directories its redirect names instead of its namesakes.
pub fn fold(layers: &[Layer]) -> Fold {
    let mut roots = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        roots.push(i);
        if l.contains_key(Path::new(OPQ)) {
            break;
        }
    }
    let mut f = Fold {
        roots: roots.clone(),
        ..Fold::default()
    };
    let sources = roots.into_iter().map(|l| (l, PathBuf::new())).collect();
    fold_dir(layers, Path::new(""), sources, &mut f);
    f
}

pub(super) fn fold_dir(layers: &[Layer], dir: &Path, sources: Vec<(usize, PathBuf)>, f: &mut Fold) {
    let mut names = BTreeSet::new();
    for (l, lp) in &sources {
        names.extend(
            children(&layers[*l], lp)
                .filter(|n| !is_reserved(n))
                .map(OsStr::to_os_string),
        );
    }
    for name in names {
        let path = dir.join(&name);
        let Some((top, at, merge)) = fold_name(layers, &sources, &name, &f.roots) else {
            continue;
        };
        let canonical = match &layers[top][&at] {
            Node::HardLink { to } => to.clone(),
            _ => at.clone(),
        };
        if matches!(layers[top][&canonical], Node::File { ref data, .. } if !data.is_empty())
            && is_metacopy(&layers[top], &at, &canonical)
        {
            f.data.insert(path.clone(), metacopy_data(layers, &sources, top, &at));
        }
        f.entries.insert(path.clone(), (top, canonical));
        match merge {
            Ok(m) if !m.is_empty() => fold_dir(layers, &path, m, f),
            Ok(_) => {}
            Err(()) => {
                f.broken.insert(path);
            }
        }
    }
    f.dirs.insert(dir.to_path_buf(), sources);
}
/// Where the entry `name` of a directory merged from `sources` shows from: the top layer
/// and the entry's path there, and the layer directories it merges (`Err` when a redirect the
/// union refuses is on the way). `None` when no layer shows the name.
#[allow(clippy::type_complexity)]
fn fold_name(
    layers: &[Layer],
    sources: &[(usize, PathBuf)],
    name: &OsStr,
    roots: &[usize],
) -> Option<(usize, PathBuf, Result<Vec<(usize, PathBuf)>, ()>)> {
    let mut top: Option<(usize, PathBuf)> = None;
    let mut merge = Vec::new();
    for (l, lp) in sources {
        let layer = &layers[*l];
        let p = lp.join(name);
        match (&top, layer.get(&p)) {
            (None, Some(n)) => {
                top = Some((*l, p.clone()));
                if !n.is_dir() {
                    break;
                }
            }
            (Some(_), Some(n)) if n.is_dir() => {}
            // A lower non-directory below a directory ends the merge.
            (Some(_), Some(_)) => break,
            // A whiteout hides everything below its own layer.
            (_, None) if layer.contains_key(&whiteout_path(&p)) => break,
            (_, None) => continue,
        }
        merge.push((*l, p.clone()));
        // Beside its own layer's whiteout a directory stays visible, merging nothing below.
        if layer.contains_key(&opaque_path(&p)) || layer.contains_key(&whiteout_path(&p)) {
            break;
        }
        // The bottom layer has nothing below to redirect to (the union does not read it there).
        if *l + 1 < layers.len() {
            match redirect_at(layer, &p) {
                Ok(None) => {}
                Ok(Some(r)) => {
                    let mut want = Want {
                        comps: vec![name.to_os_string()],
                        from_root: false,
                    };
                    want.apply(r);
                    let followed = follow(layers, sources, roots, *l, want, &mut merge);
                    return top.map(|(t, a)| (t, a, followed.map(|()| merge)));
                }
                Err(()) => return top.map(|(t, a)| (t, a, Err(()))),
            }
        }
    }
    top.map(|(t, a)| (t, a, Ok(merge)))
}

/// Appends to `merge` the directories of the layers below `last` that `want` names (from the
/// parent's directories `sources`, or from the layer roots), as kernel overlayfs follows a
/// redirect: layer by layer, each layer's own redirects rewriting what the layers below it
/// look up, until an opaque directory, a whiteout or a non-directory.
fn follow(
    layers: &[Layer],
    sources: &[(usize, PathBuf)],
    roots: &[usize],
    mut last: usize,
    mut want: Want,
    merge: &mut Vec<(usize, PathBuf)>,
) -> Result<(), ()> {
    loop {
        let next = if want.from_root {
            roots.iter().find(|&&l| l > last).map(|&l| (l, PathBuf::new()))
        } else {
            sources.iter().find(|(l, _)| *l > last).cloned()
        };
        let Some((l, start)) = next else { return Ok(()) };
        last = l;
        match walk_layer(&layers[l], &start, &want)? {
            Walk::Absent => {}
            Walk::Stop => return Ok(()),
            Walk::Found { at, last: stop, next } => {
                merge.push((l, at));
                if stop {
                    return Ok(());
                }
                want = next;
            }
        }
    }
}

/// Walks `want` down from `start` in one layer, never through a non-directory.
fn walk_layer(layer: &Layer, start: &Path, want: &Want) -> Result<Walk, ()> {
    let mut cur = start.to_path_buf();
    let mut next = Want {
        comps: Vec::new(),
        from_root: want.from_root,
    };
    let mut opaque_above = false;
    for (i, c) in want.comps.iter().enumerate() {
        cur.push(c);
        let whited = layer.contains_key(&whiteout_path(&cur));
        match layer.get(&cur) {
            None if whited => return Ok(Walk::Stop),
            None => return Ok(Walk::Absent),
            Some(n) if !n.is_dir() => return Ok(Walk::Stop),
            Some(_) => {}
        }
        let opaque = whited || layer.contains_key(&opaque_path(&cur));
        if i + 1 < want.comps.len() {
            opaque_above |= opaque;
        } else if opaque {
            return Ok(Walk::Found {
                at: cur,
                last: true,
                next,
            });
        }
        next.comps.push(c.clone());
        if let Some(r) = redirect_at(layer, &cur)? {
            next.apply(r);
        }
    }
    Ok(Walk::Found {
        at: cur,
        last: opaque_above,
        next,
    })
}

/// Whether the file at `at` (`canonical` with hard links resolved) carries the metacopy
/// marker: the xattr is the inode's, so any of its names may say so.
fn is_metacopy(layer: &Layer, at: &Path, canonical: &Path) -> bool {
    layer.contains_key(&metacopy_path(at))
        || layer.contains_key(&metacopy_path(canonical))
        || layer.iter().any(|(p, n)| {
            matches!(n, Node::HardLink { to } if to == canonical) && layer.contains_key(&metacopy_path(p))
        })
}

/// Where the data of the metacopy file `at` of layer `top` (in a directory merged from
/// `sources`) is: the first regular file at its name (or where its own redirect says) in the
/// layers below, skipping metacopy files, stopping at a whiteout or another kind of entry.
fn metacopy_data(layers: &[Layer], sources: &[(usize, PathBuf)], top: usize, at: &Path) -> Option<(usize, PathBuf)> {
    let (_, name) = split(at);
    let dirs: Vec<(usize, PathBuf)> = match redirect_at(&layers[top], at).ok()? {
        None => sources.iter().filter(|(l, _)| *l != top).cloned().collect(),
        Some((comps, false)) => {
            let leaf = comps.first()?;
            return data_in(layers, sources.iter().filter(|(l, _)| *l != top).cloned(), leaf);
        }
        Some((mut comps, true)) => {
            let leaf = comps.pop()?;
            let dir: PathBuf = comps.iter().collect();
            let dirs = (0..layers.len()).filter(|&l| l != top).filter(|&l| {
                dir.ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .all(|a| layers[l].get(a).is_some_and(Node::is_dir))
            });
            return data_in(layers, dirs.map(|l| (l, dir.clone())), &leaf);
        }
    };
    data_in(layers, dirs.into_iter(), name)
}

fn data_in(layers: &[Layer], dirs: impl Iterator<Item = (usize, PathBuf)>, leaf: &OsStr) -> Option<(usize, PathBuf)> {
    for (l, d) in dirs {
        let p = d.join(leaf);
        match layers[l].get(&p) {
            None if layers[l].contains_key(&whiteout_path(&p)) => return None,
            None => continue,
            Some(Node::File { .. }) if layers[l].contains_key(&metacopy_path(&p)) => continue,
            Some(Node::File { .. }) => return Some((l, p)),
            Some(Node::HardLink { to }) => return Some((l, to.clone())),
            Some(_) => return None,
        }
    }
    None
}

impl Fold {
    /// The visible entry at `path` (hard links resolved, a metacopy file with its lower data).
    pub fn node(&self, layers: &[Layer], path: &Path) -> Option<Node> {
        let (l, c) = self.entries.get(path)?;
        let mut node = layers[*l][c].clone();
        if let (Some(Some((dl, dp))), Node::File { data, .. }) = (self.data.get(path), &mut node) {
            if let Node::File { data: lower, .. } = &layers[*dl][dp] {
                data.clone_from(lower);
            }
        }
        Some(node)
    }
}

/// What the folded layers show: path -> entry (hard links resolved, metacopy files with their
/// lower data, no identities).
pub fn fold_contents(layers: &[Layer]) -> BTreeMap<PathBuf, Node> {
    let f = fold(layers);
    f.entries
        .keys()
        .filter_map(|p| Some((p.clone(), f.node(layers, p)?)))
        .collect()
}
