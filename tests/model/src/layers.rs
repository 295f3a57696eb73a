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

/// The result of folding layers into a view.
#[derive(Debug, Default)]
pub struct Fold {
    /// Visible path -> (layer holding the visible entry, its path there with hard links resolved).
    pub entries: BTreeMap<PathBuf, (usize, PathBuf)>,
    /// Visible directory (the root is "") -> the layers merged into it, top first.
    pub dirs: BTreeMap<PathBuf, Vec<usize>>,
}

/// Folds layers (top first) into the view, by the rules of docs/semantics.md: the topmost entry wins; a `.wh.N`
/// hides `N` in the layers below its own only; a directory merges with same-named directories
/// below until one is opaque, a lower non-directory or a whiteout ends the merge.
pub fn fold(layers: &[Layer]) -> Fold {
    let mut roots = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        roots.push(i);
        if l.contains_key(Path::new(OPQ)) {
            break;
        }
    }
    let mut f = Fold::default();
    fold_dir(layers, Path::new(""), roots, &mut f);
    f
}

pub(super) fn fold_dir(layers: &[Layer], dir: &Path, sources: Vec<usize>, f: &mut Fold) {
    let mut names = BTreeSet::new();
    for &l in &sources {
        names.extend(
            children(&layers[l], dir)
                .filter(|n| !is_reserved(n))
                .map(OsStr::to_os_string),
        );
    }
    for name in names {
        let path = dir.join(&name);
        let wh = whiteout_path(&path);
        let mut top: Option<usize> = None;
        let mut merge = Vec::new();
        for &l in &sources {
            let layer = &layers[l];
            match (top, layer.get(&path)) {
                (None, Some(n)) => {
                    top = Some(l);
                    if !n.is_dir() {
                        break;
                    }
                    merge.push(l);
                    if layer.contains_key(&opaque_path(&path)) {
                        break;
                    }
                }
                (Some(_), Some(n)) if n.is_dir() => {
                    merge.push(l);
                    if layer.contains_key(&opaque_path(&path)) {
                        break;
                    }
                }
                // A lower non-directory below a directory ends the merge.
                (Some(_), Some(_)) => break,
                (_, None) => {}
            }
            // Same-layer entry stays visible; everything below is hidden.
            if layer.contains_key(&wh) {
                break;
            }
        }
        let Some(l) = top else { continue };
        let canonical = match &layers[l][&path] {
            Node::HardLink { to } => to.clone(),
            _ => path.clone(),
        };
        f.entries.insert(path.clone(), (l, canonical));
        if !merge.is_empty() {
            fold_dir(layers, &path, merge, f);
        }
    }
    f.dirs.insert(dir.to_path_buf(), sources);
}

/// What the folded layers show: path -> entry (hard links resolved, no identities).
pub fn fold_contents(layers: &[Layer]) -> BTreeMap<PathBuf, Node> {
    fold(layers)
        .entries
        .into_iter()
        .map(|(p, (l, c))| (p, layers[l][&c].clone()))
        .collect()
}
