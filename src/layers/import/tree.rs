//! What an import has made, by name, and the directory it is working in.
//!
//! An archive's paths add up to its depth squared (every entry names its whole path), so
//! nothing here is keyed by path: what was made is a tree of names, and the importer works
//! in a directory reached one name at a time from the last one ([`Cursor`]), holding a bounded
//! number of fds (`descent.rs`), however deep the archive goes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::io::Result;

use super::{DirMeta, Made};
use crate::descent::{Descent, Frame, PathDir};
use crate::sys;

/// The layer's root in a [`Tree`].
pub(super) const ROOT: usize = 0;

/// A name below the layer's root.
pub(super) struct Node {
    pub parent: usize,
    pub depth: usize,
    pub name: Box<[u8]>,
    /// What the archive made there (None: nothing yet).
    pub made: Option<Made>,
    /// An entry of the archive names it (not only paths below it).
    pub explicit: bool,
    /// A directory's metadata, applied once everything below it exists.
    pub meta: Option<Box<DirMeta>>,
    /// Names below it, in the order they were made.
    pub children: Vec<usize>,
    names: HashMap<Box<[u8]>, usize>,
}

/// Every name the archive made, or made a directory for.
pub(super) struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                parent: ROOT,
                depth: 0,
                name: Box::default(),
                made: Some(Made::Dir),
                explicit: false,
                meta: None,
                children: Vec::new(),
                names: HashMap::new(),
            }],
        }
    }

    pub fn node(&self, id: usize) -> &Node {
        &self.nodes[id]
    }

    pub fn node_mut(&mut self, id: usize) -> &mut Node {
        &mut self.nodes[id]
    }

    pub fn child(&self, parent: usize, name: &[u8]) -> Option<usize> {
        self.nodes[parent].names.get(name).copied()
    }

    /// The node of `name` below `parent`, added if it is not there.
    pub fn add(&mut self, parent: usize, name: &[u8]) -> usize {
        if let Some(id) = self.child(parent, name) {
            return id;
        }
        let id = self.nodes.len();
        self.nodes.push(Node {
            parent,
            depth: self.nodes[parent].depth + 1,
            name: name.into(),
            made: None,
            explicit: false,
            meta: None,
            children: Vec::new(),
            names: HashMap::new(),
        });
        let p = &mut self.nodes[parent];
        p.names.insert(name.into(), id);
        p.children.push(id);
        id
    }

    /// The node at the relative path `names` (each a name), if there is one.
    pub fn find<'n>(&self, names: impl IntoIterator<Item = &'n [u8]>) -> Option<usize> {
        names.into_iter().try_fold(ROOT, |at, n| self.child(at, n))
    }

    /// The path of `id` (for messages: it costs the node's depth).
    pub fn path(&self, mut id: usize) -> Vec<u8> {
        let mut names = Vec::new();
        while id != ROOT {
            names.push(&*self.nodes[id].name);
            id = self.nodes[id].parent;
        }
        names.reverse();
        names.join(&b'/')
    }
}

/// A directory on the cursor's path.
struct Level {
    dir: PathDir,
    /// Its node in the [`Tree`].
    id: usize,
    /// The length of its path.
    rel_len: usize,
}

impl Frame for Level {
    fn park(&mut self, _child: &Self) -> Result<()> {
        self.dir.park()
    }
    fn unpark(&mut self, child: &Self) -> Result<()> {
        self.dir.unpark(child.dir.fd()?)
    }
}

/// The directory the importer works in, with the path to it from the layer's root.
pub(super) struct Cursor {
    path: Descent<Level>,
    /// Its path: names joined by '/' (empty at the root).
    rel: Vec<u8>,
}

impl Cursor {
    pub fn new(root: BorrowedFd<'_>) -> Result<Cursor> {
        let level = Level {
            dir: PathDir::dup(root)?,
            id: ROOT,
            rel_len: 0,
        };
        Ok(Cursor {
            path: Descent::new(level),
            rel: Vec::new(),
        })
    }

    fn last(&self) -> Result<&Level> {
        self.path.last().ok_or(rustix::io::Errno::BADF)
    }

    /// The directory.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        self.last()?.dir.fd()
    }

    /// Its node.
    pub fn id(&self) -> usize {
        self.path.last().map_or(ROOT, |l| l.id)
    }

    fn depth(&self) -> usize {
        self.path.len() - 1
    }

    /// How much of `target` (a path of names) is a path of whole names the cursor's path
    /// starts with too.
    fn common(&self, target: &[u8]) -> usize {
        let cur = &self.rel[..];
        let n = if target.starts_with(cur) {
            cur.len()
        } else {
            mismatch(cur, target)
        };
        let whole = |s: &[u8]| n == s.len() || s[n] == b'/';
        if whole(cur) && whole(target) {
            n
        } else {
            cur[..n].iter().rposition(|&b| b == b'/').unwrap_or(0)
        }
    }

    /// Goes up to the deepest directory whose path `target` starts with; returns its length.
    pub fn up_to_common(&mut self, target: &[u8]) -> Result<usize> {
        let n = self.common(target);
        while self.last()?.rel_len > n {
            self.leave()?;
        }
        Ok(n)
    }

    /// The node of the directory `target` as far as the tree knows it, without going there.
    pub fn resolve(&self, tree: &Tree, target: &[u8]) -> Option<usize> {
        let n = self.common(target);
        let levels = self.path.frames();
        let i = levels.partition_point(|l| l.rel_len < n);
        let from = levels.get(i).filter(|l| l.rel_len == n)?.id;
        let mut rest = target[n..].split(|&b| b == b'/').filter(|c| !c.is_empty());
        rest.try_fold(from, |at, c| tree.child(at, c))
    }

    /// Goes into the subdirectory `name` (node `id`) of the cursor's directory.
    pub fn enter(&mut self, name: &[u8], id: usize) -> Result<()> {
        let sub = sys::open_path_dir(self.fd()?, OsStr::from_bytes(name))?;
        if !self.rel.is_empty() {
            self.rel.push(b'/');
        }
        self.rel.extend_from_slice(name);
        let level = Level {
            dir: PathDir::new(sub),
            id,
            rel_len: self.rel.len(),
        };
        self.path.push(level)
    }

    /// Goes up one directory (not above the root).
    pub fn leave(&mut self) -> Result<()> {
        if self.depth() == 0 {
            return Ok(());
        }
        self.path.pop()?;
        let n = self.last()?.rel_len;
        self.rel.truncate(n);
        Ok(())
    }

    /// Goes to the directory `id` of `tree`, through their closest common directory.
    pub fn go_to(&mut self, tree: &Tree, id: usize) -> Result<()> {
        let mut down = Vec::new();
        let mut t = id;
        while tree.node(t).depth > self.depth() {
            down.push(t);
            t = tree.node(t).parent;
        }
        while self.depth() > tree.node(t).depth {
            self.leave()?;
        }
        while self.id() != t {
            self.leave()?;
            down.push(t);
            t = tree.node(t).parent;
        }
        for n in down.into_iter().rev() {
            self.enter(&tree.node(n).name, n)?;
        }
        Ok(())
    }

    /// Its path (names joined by '/').
    pub fn rel(&self) -> &[u8] {
        &self.rel
    }
}

/// Where `a` and `b` first differ (the shorter length if one starts the other): compared a
/// block at a time, as paths of deep archives are long.
fn mismatch(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}
