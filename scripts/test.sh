#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + model/property tests, real-mount integration
# tests (including the differential test against kernel overlayfs and the rootless test, which
# need root), and the README demo end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --release --locked
# Integration tests mount many filesystems; run test binaries one at a time but tests within
# a binary in parallel.
cargo test --release --locked -- --test-threads=4
