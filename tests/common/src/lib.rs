//! `unionfs-testkit`: what the tests that mount for real share, one subject a module. The test
//! binaries reach it as `common` (`mod common;` includes `tests/common/mod.rs`, which re-exports
//! this crate), so `use common::*;` brings every helper below.
//!
//! - [`layers`]: layer fixtures (lowers, upper, workdir, mountpoint in a temporary directory);
//! - [`mount`]: the mount guard (a daemon this process started, always torn down) and remounts;
//! - [`scenario`]: the ending most mount tests share (check, remount, check, lowers unchanged);
//! - [`tree`] and [`xattr`]: snapshots of views and layers, names, markers, extended attributes;
//! - [`io`]: errnos, shared mappings, running a program just written, aligned buffers;
//! - [`prereq`] and [`users`]: the one gate every skip goes through, the test accounts;
//! - [`kernel`]: kernel overlayfs and tmpfs mounts as guards;
//! - [`registry`]: a real registry (`docker-registry`) on a loopback port, as a guard, and
//!   [`token`], the token service of one with token auth; [`liar`], a proxy that makes it lie;
//! - [`rng`], and the scenarios of [`deep`] trees, [`direct_io`] and the [`podman`] store.
//!
//! A crate rather than a module each test binary compiles: every binary uses part of it, and a
//! library's public items are never dead code.

pub mod deep;
pub mod direct_io;
pub mod io;
pub mod kernel;
pub mod layers;
pub mod liar;
pub mod mount;
pub mod podman;
pub mod prereq;
pub mod registry;
pub mod rng;
pub mod scenario;
pub mod token;
pub mod tree;
pub mod users;
pub mod xattr;

pub use io::*;
pub use kernel::*;
pub use layers::*;
pub use mount::*;
pub use prereq::*;
pub use registry::*;
pub use rng::*;
pub use scenario::*;
pub use tree::*;
pub use users::*;
pub use xattr::*;
