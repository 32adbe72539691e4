#!/usr/bin/env bash
# Bounded fuzzing of every parser with cargo-fuzz (libFuzzer): goldsmith.toml, layer.toml,
# image definitions, inventory.toml and templates, each through the real loader
# (src/fuzzing.rs). Fails if any target finds a crash; the crashing input is left in
# fuzz/artifacts/<target>/. Seeds are the example's own files.
# Usage: ci/fuzz.sh [SECONDS_PER_TARGET]   (default 20; e.g. 3600 for a real session)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz needs nightly-only flags (-Zsanitizer); on a stable toolchain they are
# allowed on a stable rustc through RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
seed() { # target, files...
  local dir="fuzz/corpus/$1"; shift
  mkdir -p "$dir"
  for f in "$@"; do cp "$f" "$dir/seed-$(echo "$f" | tr / _)"; done
}
seed config goldsmith.toml
seed inventory inventory.toml
seed layer recipes/*/layer.toml
seed image images/*.toml
seed template $(find recipes -name '*.hbs' -o -name '*.tmpl')
cargo fuzz build --release --debug-assertions
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in config layer image inventory template; do
  if ! cargo fuzz run --release --debug-assertions "$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: target $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  echo "fuzz: $t: $(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$') inputs in ${secs}s, no crash"
done
echo "fuzz: no crash in any target"
