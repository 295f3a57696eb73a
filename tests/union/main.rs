//! `unionfs::Union` as a library (no FUSE, no mount), against the reference model of the
//! `unionfs-model` crate (`tests/model/`): deterministic tests of single rules (`library`),
//! random layers and operation sequences (`props`), and the fuzzer's findings (`fuzz_regressions`).
//! One binary: none of these tests changes anything its process shares (each works on temporary
//! layers and `Union` values of its own).

mod fuzz_regressions;
mod library;
mod props;
