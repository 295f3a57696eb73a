//! The test binaries' `common`: the `unionfs-testkit` crate of this directory (`src/`), under the
//! name the tests use (`mod common; use common::*;`).

pub use unionfs_testkit::*;
