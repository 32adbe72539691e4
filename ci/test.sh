#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs
# formatting, lints and every test (unit, integration, end-to-end with real QEMU boots).
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/install-deps.sh
# A clean clone gains nothing from incremental compilation, and its files cost gigabytes
# of a disk the tests need for images.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A clean clone's run peaks at about 11 GB (its build, test images, the layer cache, the
# fuzz build), on a disk that may be shared with other jobs: say how much there is, so
# that a "No space left on device" in a test is read for what it is.
avail_gb=$(( $(df -Pk . | awk 'NR==2 {print $4}') / 1048576 ))
echo "ci: ${avail_gb} GB free on $(df -P . | awk 'NR==2 {print $6}') (the suite needs about 11 GB)"
if [ "$avail_gb" -lt 12 ]; then
  echo "ci: warning: less than 12 GB free; tests may fail with 'No space left on device'" >&2
fi
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# --no-fail-fast: one run shows every failing test, not only the first binary's.
cargo test --all-targets --no-fail-fast "$@"
# On CI the test data (images, the layer cache: several GB) is not needed once the tests
# have passed; free it before the fuzz build, so that the run's peak is one of the two.
# (Files a rootless test left under other uids may resist a non-root user: not fatal.)
if [ "${CI:-}" = true ]; then
  rm -rf target/tmp 2>/dev/null || echo "ci: some of target/tmp could not be removed" >&2
fi
# A short bounded cargo-fuzz run of every parser (the proptest run above is in-process;
# this one is coverage-guided libFuzzer): any crash fails CI.
./ci/fuzz.sh "${GOLDSMITH_FUZZ_SECONDS:-15}"
