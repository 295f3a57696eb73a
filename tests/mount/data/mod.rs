//! docs/semantics.md, "Data", through real mounts, one subject a module.

mod atime;
mod direct_io;
mod errors;
mod files;
mod mapped_times;
mod passthrough;
mod xattr_race;
