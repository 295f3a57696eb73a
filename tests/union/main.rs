//! `unionfs::Union` as a library (no FUSE, no mount), against the reference model of the
//! `unionfs-model` crate (`tests/model/`): deterministic tests of single rules (`library`),
//! random layers and operation sequences (`props`), the fuzzer's findings (`fuzz_regressions`),
//! and one table of layer shapes read by the core and the layer tools alike (`format_shapes`).
//! One binary: none of these tests changes anything its process shares (each works on temporary
//! layers and `Union` values of its own).

mod format_shapes;
mod fuzz_regressions;
mod library;
mod props;
