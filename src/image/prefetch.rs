//! Prefetch lists: `unionfs mount --record FILE` writes the paths of the image files a
//! workload opened (one per line, relative to the view's root, in the order of first open), and
//! `--prefetch FILE` has the next mount fetch their chunks first, in the background, several
//! requests at once, while reads go on (a read that needs a block being prefetched waits for it
//! instead of asking again). Only lazily fetched layers have anything to prefetch.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::layer::ImageLayer;
use super::source::BLOCK;

/// Requests a prefetch keeps in flight at once: a slow link is filled by several, as a pull
/// does with layers.
const FETCHERS: usize = 4;
/// The most blocks one prefetch request asks for (neighbouring files are merged up to this).
const RUN: u64 = 16;

/// The paths of a prefetch list (empty lines and names with a NUL are skipped).
pub fn read_list(file: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let f = std::fs::File::open(file)?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line?;
        let p: Vec<u8> = line.strip_prefix(b"/").unwrap_or(&line).to_vec();
        if !p.is_empty() && !p.contains(&0) {
            out.push(p);
        }
    }
    Ok(out)
}

/// What a prefetch did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Prefetched {
    pub files: usize,
    pub requests: usize,
    pub failed: usize,
}

/// Fetches the blocks holding the data of `paths` (as the view shows them, `layers` top first).
/// Blocks already here cost nothing; a failure is logged and the rest goes on.
pub fn run(layers: &[&ImageLayer], paths: &[Vec<u8>]) -> Prefetched {
    let mut runs: Vec<(usize, u64, u64)> = Vec::new();
    let mut files = 0;
    for p in paths {
        // The path as the view shows it: the first layer that has it, unless one above hides it.
        let mut found = None;
        for (i, l) in layers.iter().enumerate() {
            match l.data_ranges(p) {
                Lookup::Here(r) => {
                    found = Some((i, r));
                    break;
                }
                Lookup::Hidden => break,
                Lookup::Absent => {}
            }
        }
        let Some((i, ranges)) = found.filter(|(i, r)| layers[*i].is_lazy() && !r.is_empty()) else {
            continue;
        };
        files += 1;
        for (at, len) in ranges {
            let (first, last) = (at / BLOCK, (at + len.max(1) - 1) / BLOCK);
            // Neighbouring files in the list (a directory's, in tar order) share a request.
            match runs.last_mut() {
                Some(r) if r.0 == i && first <= r.2 + 1 && first >= r.1 && last.max(r.2) - r.1 < RUN => {
                    r.2 = r.2.max(last)
                }
                _ => runs.push((i, first, last)),
            }
        }
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let logged = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..FETCHERS.min(runs.len()) {
            s.spawn(|| {
                while let Some(&(i, first, last)) = runs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = layers[i].prefetch(first * BLOCK, (last + 1 - first) * BLOCK) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if !logged.swap(true, Ordering::Relaxed) {
                            tracing::warn!("prefetch: {e} (the rest of the list is tried still)");
                        }
                    }
                }
            });
        }
    });
    Prefetched {
        files,
        requests: runs.len(),
        failed: failed.into_inner(),
    }
}

/// Where a path's data lies in one layer.
pub enum Lookup {
    /// The layer has the path: the (offset, length) ranges of the blob its data lies in (none
    /// for a file without data or anything but a regular file).
    Here(Vec<(u64, u64)>),
    /// The layer hides the path (a whiteout of it or of a directory above it).
    Hidden,
    /// Not in this layer: look below.
    Absent,
}

/// The record of a mount (`--record FILE`): paths appended as files are first opened.
pub struct Recorder {
    file: Mutex<std::fs::File>,
    /// The objects listed already (by the caller's key: an inode number).
    seen: Mutex<HashSet<u64>>,
    pub path: PathBuf,
}

impl Recorder {
    /// Starts the list `path` afresh.
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        Ok(Recorder {
            file: Mutex::new(std::fs::File::create(path)?),
            seen: Mutex::new(HashSet::new()),
            path: path.to_path_buf(),
        })
    }

    /// Appends the path `rel` gives (relative to the view's root) the first time `key` is
    /// noted. Names with a newline are left out: the list has no way to write them.
    pub fn note(&self, key: u64, rel: impl FnOnce() -> Option<PathBuf>) {
        if !self.seen.lock().insert(key) {
            return;
        }
        let Some(rel) = rel() else { return };
        let b = rel.as_os_str().as_bytes();
        if b.contains(&b'\n') {
            return;
        }
        let mut line = Vec::with_capacity(b.len() + 1);
        line.extend_from_slice(b);
        line.push(b'\n');
        // One write per line: a daemon killed mid-job leaves every line before it whole.
        if let Err(e) = self.file.lock().write_all(&line) {
            tracing::warn!("--record {}: {e}", self.path.display());
        }
    }
}
