#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + model/property tests, real-mount integration
# tests (including the differential test against kernel overlayfs and the rootless tests, which
# need root), and the README demo end to end.
#
# Strict by default (UNIONFS_STRICT=1): a test whose prerequisite is missing (root, Podman,
# fuse-overlayfs, a test account...) fails naming it instead of skipping, so a pass means every
# test ran. UNIONFS_STRICT=0 lets such tests skip (they say "SKIPPED", under --nocapture).
set -euo pipefail
cd "$(dirname "$0")/.."
export UNIONFS_STRICT=${UNIONFS_STRICT:-1}
started=$SECONDS
# Packages, /dev/fuse and the test accounts, before any test runs (tests never create them).
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --release --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --tests: the library's and binary's unit tests and every integration test (there are no
# doctests). Mount tests within one binary run in parallel. --no-fail-fast: every test binary
# runs even when one fails, so the summary counts the whole suite.
set +e
cargo test --release --locked --tests --no-fail-fast -- --test-threads=4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Only libtest's own result lines: a test's output may contain "N passed" too.
results=$(grep -E '^test result: ' "$log" || true)
passed=$(grep -Eo '[0-9]+ passed' <<<"$results" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' <<<"$results" | awk '{s+=$1} END {print s+0}')
binaries=$(grep -c . <<<"$results" || true)
echo
echo "unionfs-suite: ${passed} passed, ${failed} failed"
echo "unionfs-suite: ${binaries} test binaries, strict=${UNIONFS_STRICT}, $((SECONDS - started)) s"
if [ "$status" -eq 0 ] && [ "$failed" -gt 0 ]; then status=1; fi
exit "$status"
