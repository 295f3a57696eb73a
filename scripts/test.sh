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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --tests: the library's and binary's unit tests and every integration test (there are no
# doctests). Mount tests within one binary run in parallel.
set +e
cargo test --release --locked --tests -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "unionfs-suite: ${passed} passed, ${failed} failed"
exit "$status"
