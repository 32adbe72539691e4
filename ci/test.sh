#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs
# formatting, lints and every test (unit, integration, end-to-end with real QEMU boots).
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/install-deps.sh
# A clean clone gains nothing from incremental compilation, and its files cost gigabytes
# of a disk the tests need for images.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# --no-fail-fast: one run shows every failing test, not only the first binary's.
cargo test --all-targets --no-fail-fast "$@"
# A short bounded cargo-fuzz run of every parser (the proptest run above is in-process;
# this one is coverage-guided libFuzzer): any crash fails CI.
./ci/fuzz.sh "${GOLDSMITH_FUZZ_SECONDS:-15}"
