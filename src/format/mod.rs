//! The on-disk format: the one place that knows how unionfs (and the layer formats it reads)
//! lays things out on disk. The daemon (`union`) and the offline tools (`layers`) both go
//! through it, so a format change is made here once.
//!
//! - [`markers`]: whiteouts and opaque directories, what a name in a layer directory is, and the
//!   stacking rule by which a name's entries in a directory's layers make the view;
//! - [`xattrs`]: the private xattr namespaces and the names we write;
//! - [`workdir`]: the workdir's layout (ours, kernel overlayfs's) and its default place;
//! - [`redirect`], [`metacopy`]: kernel overlayfs's redirected directories and metadata-only
//!   copies, which keep part of an object in a lower (the union writes and follows
//!   redirects; the layer tools read both);
//! - [`hardlink`]: the hard-link index's records; [`upper_id`]: which upper an index belongs to;
//! - [`ino`]: the view's inode numbers.

pub mod hardlink;
pub mod ino;
pub mod markers;
pub mod metacopy;
pub mod redirect;
pub mod upper_id;
pub mod workdir;
pub mod xattrs;
