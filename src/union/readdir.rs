//! Directory listings: served from the directory's live index (`index.rs`), so listings never
//! repeat or skip a name while the directory changes, with attributes for READDIRPLUS.

use std::ffi::OsString;
use std::sync::atomic::Ordering;

use super::node::ROOT;
use super::{Union, index};
use crate::attr::{Attr, Kind};
use crate::error::{Errno, FsResult};

/// Entries read from the index per listing request: more than one reply page holds (about
/// 100 names).
const READDIR_CHUNK: usize = 256;

/// Where a listing goes (the FUSE reply, in the adapter).
pub trait DirSink {
    /// Offers one entry, with its attributes in a `plus` listing. Returns false when the entry
    /// did not fit; the listing ends there.
    fn add(&mut self, entry: &DirEntry, attr: Option<&Attr>) -> bool;
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Kind,
    /// Its readdir offset: a listing continued from offset `o` resumes with the first entry
    /// whose offset is greater than `o`.
    pub offset: u64,
}

impl Union {
    /// Opens a directory for listing.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        Ok(self.handles.open_dir(self.dir_node(ino)?))
    }

    /// Every entry after `offset` (0: from the start, with "." and "..").
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        self.readdir_chunk(fh, offset, usize::MAX)
    }

    /// At most `max` entries after `offset`, in offset order, read from the live directory.
    /// Offsets belong to the directory, not to a handle: an entry keeps its offset while it
    /// stays visible, and new entries get higher ones. So a listing continued from any offset,
    /// through any handle or the kernel's directory cache, returns each name that stays
    /// visible exactly once, and never a name that is gone.
    pub fn readdir_chunk(&self, fh: u64, offset: u64, max: usize) -> FsResult<Vec<DirEntry>> {
        let node = &self.handles.dir(fh)?;
        // Each listing started from the beginning tags the offsets it hands out with a number of
        // its own (above the position bits), and continues with the tag it was given. Any tag
        // resumes at the same position, but two listings never share an offset: the kernel's
        // directory cache appends a reply to its cached listing when the request's offset is
        // where the cache ends, so a shared offset would let a listing served before a change
        // complete a cache filled after it.
        let mask = (1u64 << index::COOKIE_BITS) - 1;
        let tag = if offset == 0 {
            (self.next_listing.fetch_add(1, Ordering::Relaxed) % (1 << (62 - index::COOKIE_BITS))) << index::COOKIE_BITS
        } else {
            offset & !mask
        };
        let offset = offset & mask;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                name: ".".into(),
                ino: node.ino,
                kind: Kind::Dir,
                offset: tag | 1,
            });
        }
        if offset < 2 {
            let parent = if node.ino == ROOT {
                ROOT
            } else {
                node.state.read().parent
            };
            out.push(DirEntry {
                name: "..".into(),
                ino: parent,
                kind: Kind::Dir,
                offset: tag | 2,
            });
        }
        let room = max.saturating_sub(out.len());
        self.with_index(node, |idx| {
            out.extend(idx.listing(offset, room).map(|(n, v)| DirEntry {
                name: n.to_os_string(),
                ino: v.ino,
                kind: v.kind,
                offset: tag | v.cookie,
            }));
        })?;
        Ok(out)
    }

    /// Lists directory handle `fh` from `offset` into `sink`, as many entries as it takes.
    ///
    /// With `plus`, every entry comes with its attributes, and each one the sink accepts counts
    /// as a kernel lookup of it (an entry that did not fit is not remembered). A name that
    /// vanished since the index was read is skipped; any other failure to look an entry up is an
    /// error of the listing (at its first entry; after some were accepted, the listing stops
    /// there and the next request, starting at that entry, fails), never a silent gap.
    pub fn readdir_into(&self, fh: u64, offset: u64, plus: bool, sink: &mut impl DirSink) -> FsResult<()> {
        let node = self.handles.dir(fh)?;
        if offset == 0 {
            // A listing that starts: the upper directory's access time (see `atime.rs`).
            self.listing_started(&node);
        }
        let dir = node.ino;
        let mut accepted = 0usize;
        for e in self.readdir_chunk(fh, offset, READDIR_CHUNK)? {
            if !plus {
                if !sink.add(&e, None) {
                    break;
                }
                continue;
            }
            let dot = e.name == "." || e.name == "..";
            let attr = if dot {
                self.getattr(e.ino)
            } else {
                self.resolve_child(dir, &e.name, 1).map(|(_, a)| a)
            };
            let attr = match attr {
                Ok(a) => a,
                // Gone since the index was read (or "..": above the root).
                Err(err) if err == Errno::ENOENT || err == Errno::ESTALE => continue,
                Err(err) if accepted == 0 => return Err(err),
                Err(_) => break,
            };
            if !sink.add(&e, Some(&attr)) {
                if !dot {
                    self.nodes.forget(attr.ino, 1);
                }
                break;
            }
            accepted += 1;
        }
        Ok(())
    }
}
