//! What a layer holds, name by name: the catalog one pass over its tar (or its table of
//! contents) produces, and everything the union asks of a lower layer is answered from it.
//!
//! A layer's tar says what extracting it would make; the catalog records the result as a
//! tree: directories of entries sorted by name, each entry with the attributes `umoci unpack`
//! would give the extracted object and where its data lies. Tar semantics are applied as an
//! extractor applies them: a later entry of a path replaces an earlier one, a hard link shares
//! its target's object (attributes, data, and a link count of its names in the layer), missing
//! parent directories are made, `./` prefixes and trailing slashes mean nothing.
//!
//! Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are kept as the empty files the
//! tar holds: the union reads them by name, as it reads them in any layer directory.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The size of the pieces file data is verified and cached in.
pub const CHUNK: u64 = 1 << 20;

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    /// Not a regular file, or empty.
    None,
    /// Contiguous at `offset` in the decompressed stream, in [`CHUNK`]-sized pieces whose
    /// sha256 are `chunks` (the last one shorter).
    Stream { offset: u64, chunks: Vec<[u8; 32]> },
    /// In separately compressed pieces of the blob, as a table of contents lists them.
    Parts(Vec<Part>),
    /// Only through the tar entry whose header is at `header` in the decompressed stream (GNU
    /// sparse files: their data is not contiguous); `chunks` as for `Stream`.
    Extract { header: u64, chunks: Vec<[u8; 32]> },
}

/// A piece of a file in a table-of-contents layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Offset and length in the file.
    pub file_offset: u64,
    pub len: u64,
    /// Where its compressed frame (zstd) or member (gzip) starts in the blob, and how long it is.
    pub blob_offset: u64,
    pub blob_len: u64,
    /// Offset of the piece within what that frame decompresses to.
    pub skip: u64,
    /// sha256 of the piece's bytes; none for a run of zeros.
    pub digest: Option<[u8; 32]>,
}

/// An extended attribute: name and value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);

/// One name in a layer directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Box<[u8]>,
    /// The object's number in the layer: names of one object (hard links) share it.
    pub ino: u64,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub rdev: u64,
    /// Names the object has in the layer.
    pub nlink: u32,
    /// A symlink's target.
    pub target: Option<Box<[u8]>>,
    pub xattrs: Vec<Xattr>,
    /// A directory's id in the catalog.
    pub dir: Option<u32>,
    pub data: Data,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

/// A catalog being built from the entries of a tar, in tar order.
#[derive(Default)]
pub struct Builder {
    /// Every object, by position; replaced paths keep their slot (no longer reachable).
    objects: Vec<Entry>,
    /// Path (normalised, no leading `/` or `./`, no trailing `/`) → object.
    by_path: HashMap<Box<[u8]>, usize>,
    /// The layer's root, if the tar has an entry for it.
    root: Option<usize>,
}

/// The finished catalog: directory 0 is the root.
#[derive(Debug)]
pub struct Catalog {
    /// The root directory's own entry (its name is empty).
    pub root: Entry,
    /// Directories by id, each sorted by name.
    pub dirs: Vec<Vec<Entry>>,
    /// Objects (after hard links are counted).
    pub objects: u64,
}

/// Why a tar entry is refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("hard link {} points to {}, which is not in the layer before it", show(.0), show(.1))]
    DanglingLink(Vec<u8>, Vec<u8>),
    #[error("entry {}: the path leaves the layer", show(.0))]
    BadPath(Vec<u8>),
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `./a//b/` → `a/b`; `None` for a path that climbs out (`..`).
pub fn normalise(p: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out.join(&b'/'))
}

fn parent_of(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b"", p),
    }
}

impl Builder {
    /// Adds a tar entry at `path` (as written), with `e` its attributes (name unused).
    pub fn add(&mut self, path: &[u8], mut e: Entry) -> Result<(), CatalogError> {
        let p = normalise(path).ok_or_else(|| CatalogError::BadPath(path.to_vec()))?;
        if p.is_empty() {
            if e.is_dir() {
                e.nlink = 1;
                self.objects.push(e);
                self.root = Some(self.objects.len() - 1);
            }
            return Ok(());
        }
        e.nlink = 1;
        self.objects.push(e);
        let i = self.objects.len() - 1;
        self.objects[i].ino = i as u64 + 2;
        if let Some(old) = self.by_path.insert(p.into_boxed_slice(), i) {
            self.unlinked(old);
        }
        Ok(())
    }

    /// Adds a hard link at `path` to the object at `target` (earlier in the tar).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<(), CatalogError> {
        let p = normalise(path).ok_or_else(|| CatalogError::BadPath(path.to_vec()))?;
        let t = normalise(target).ok_or_else(|| CatalogError::BadPath(target.to_vec()))?;
        let &ti = self
            .by_path
            .get(t.as_slice())
            .ok_or_else(|| CatalogError::DanglingLink(path.to_vec(), target.to_vec()))?;
        let ti = self.object_of(ti);
        // A link entry is a name for the same object: the object's slot is shared by index.
        self.objects.push(Entry {
            nlink: 0,
            ino: ti as u64,
            dir: Some(u32::MAX),
            ..self.objects[ti].clone()
        });
        let i = self.objects.len() - 1;
        self.objects[ti].nlink += 1;
        if let Some(old) = self.by_path.insert(p.into_boxed_slice(), i) {
            self.unlinked(old);
        }
        Ok(())
    }

    /// Link slots (`dir == Some(u32::MAX)`) point at their object through `ino`.
    fn object_of(&self, i: usize) -> usize {
        let e = &self.objects[i];
        if e.dir == Some(u32::MAX) { e.ino as usize } else { i }
    }

    /// The name at slot `i` was replaced by a later entry of the same path.
    fn unlinked(&mut self, i: usize) {
        let o = self.object_of(i);
        self.objects[o].nlink = self.objects[o].nlink.saturating_sub(1);
    }

    /// Sorts names into directories, makes missing parents, and numbers directories.
    pub fn finish(self) -> Catalog {
        let Builder { objects, by_path, root } = self;
        let mut paths: Vec<(Box<[u8]>, usize)> = by_path.into_iter().collect();
        paths.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut dir_ids: HashMap<Vec<u8>, u32> = HashMap::new();
        dir_ids.insert(Vec::new(), 0);
        let mut dirs: Vec<Vec<Entry>> = vec![Vec::new()];
        // Directories first, so every child finds its parent's id (parents sort before children).
        for (p, i) in &paths {
            let e = &objects[*i];
            if e.dir != Some(u32::MAX) && e.is_dir() {
                ensure_dir(&mut dir_ids, &mut dirs, p);
            }
        }
        for (p, i) in &paths {
            let (parent, name) = parent_of(p);
            let pid = ensure_dir(&mut dir_ids, &mut dirs, parent);
            let slot = &objects[*i];
            let obj = if slot.dir == Some(u32::MAX) {
                &objects[slot.ino as usize]
            } else {
                slot
            };
            let mut e = obj.clone();
            e.name = name.into();
            e.dir = if e.is_dir() {
                dir_ids.get(p.as_ref()).copied()
            } else {
                None
            };
            dirs[pid as usize].push(e);
        }
        let implicit_base = objects.len() as u64 + 2;
        fill_implicit_dirs(&mut dirs, &dir_ids, implicit_base);
        for d in &mut dirs {
            d.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            d.dedup_by(|b, a| a.name == b.name);
        }
        count_subdirs(&mut dirs);
        let root = root
            .map(|i| objects[i].clone())
            .unwrap_or_else(|| implicit_dir(Vec::new()));
        Catalog {
            root: Entry {
                name: Box::default(),
                ino: 1,
                dir: Some(0),
                nlink: 2 + dirs[0].iter().filter(|e| e.is_dir()).count() as u32,
                data: Data::None,
                ..root
            },
            dirs,
            objects: implicit_base + dir_ids.len() as u64,
        }
    }
}

/// A directory's link count, as on a disk: itself, its `.`, and each subdirectory's `..`.
fn count_subdirs(dirs: &mut [Vec<Entry>]) {
    let subdirs: Vec<u32> = dirs
        .iter()
        .map(|d| d.iter().filter(|e| e.is_dir()).count() as u32)
        .collect();
    for d in dirs.iter_mut() {
        for e in d.iter_mut() {
            if let Some(id) = e.dir {
                e.nlink = 2 + subdirs[id as usize];
            }
        }
    }
}

/// The id of directory `p`, made (empty) with its missing ancestors if new. Iterative: a
/// path's depth is input.
fn ensure_dir(ids: &mut HashMap<Vec<u8>, u32>, dirs: &mut Vec<Vec<Entry>>, p: &[u8]) -> u32 {
    let mut missing = Vec::new();
    let mut q = p;
    while !ids.contains_key(q) {
        missing.push(q);
        q = parent_of(q).0;
    }
    for m in missing.into_iter().rev() {
        dirs.push(Vec::new());
        ids.insert(m.to_vec(), dirs.len() as u32 - 1);
    }
    ids[p]
}

/// A directory made only because a path below it was in the tar: `0755`, root's, no time,
/// as extractors make missing parents.
fn implicit_dir(name: Vec<u8>) -> Entry {
    Entry {
        name: name.into(),
        ino: 0,
        mode: S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: (0, 0),
        rdev: 0,
        nlink: 1,
        target: None,
        xattrs: Vec::new(),
        dir: None,
        data: Data::None,
    }
}

/// Adds an entry in its parent for every directory that has an id but no entry; their object
/// numbers start at `base`.
fn fill_implicit_dirs(dirs: &mut [Vec<Entry>], ids: &HashMap<Vec<u8>, u32>, base: u64) {
    let mut missing: Vec<(&Vec<u8>, u32)> = Vec::new();
    for (p, &id) in ids {
        if p.is_empty() {
            continue;
        }
        let (parent, name) = parent_of(p);
        let pid = ids[parent];
        if !dirs[pid as usize].iter().any(|e| &*e.name == name && e.dir == Some(id)) {
            missing.push((p, id));
        }
    }
    // Numbered after every object of the tar, in a stable order.
    missing.sort();
    for (n, (p, id)) in missing.into_iter().enumerate() {
        let (parent, name) = parent_of(p);
        let pid = ids[parent];
        let mut e = implicit_dir(name.to_vec());
        e.dir = Some(id);
        e.ino = base + n as u64;
        // A non-directory entry of the same name would make this path both: the directory wins,
        // as an extractor that made the parent for a later entry leaves it.
        dirs[pid as usize].retain(|x| &*x.name != name);
        dirs[pid as usize].push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32) -> Entry {
        Entry {
            mode: S_IFREG | mode,
            ..implicit_dir(Vec::new())
        }
    }

    fn names(c: &Catalog, dir: u32) -> Vec<String> {
        c.dirs[dir as usize].iter().map(|e| show(&e.name)).collect()
    }

    #[test]
    fn paths_are_normalised_and_climbing_out_is_refused() {
        assert_eq!(normalise(b"./a//b/"), Some(b"a/b".to_vec()));
        assert_eq!(normalise(b"/"), Some(Vec::new()));
        assert_eq!(normalise(b"a/../../b"), None);
    }

    #[test]
    fn later_entries_replace_and_links_share_their_object() {
        let mut b = Builder::default();
        b.add(b"./etc/", implicit_dir(Vec::new())).expect("dir");
        b.add(b"etc/a", file(0o644)).expect("a");
        b.link(b"etc/b", b"etc/a").expect("b");
        b.add(b"etc/c", file(0o600)).expect("c");
        b.add(b"etc/c", file(0o640)).expect("c again");
        b.add(b"deep/er/f", file(0o644)).expect("implied parents");
        let c = b.finish();
        assert_eq!(names(&c, 0), ["deep", "etc"]);
        let etc = c.dirs[0][1].dir.expect("etc is a dir");
        assert_eq!(names(&c, etc), ["a", "b", "c"]);
        let d = &c.dirs[etc as usize];
        assert_eq!((d[0].ino, d[0].nlink), (d[1].ino, 2));
        assert_eq!(d[2].mode & 0o777, 0o640);
        assert_eq!(d[2].nlink, 1);
        let deep = c.dirs[0][0].dir.expect("deep");
        assert_eq!(names(&c, deep), ["er"]);
        assert!(b_err(b"x", b"nowhere"));
    }

    fn b_err(p: &[u8], t: &[u8]) -> bool {
        matches!(Builder::default().link(p, t), Err(CatalogError::DanglingLink(..)))
    }
}
