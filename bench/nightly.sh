#!/usr/bin/env bash
# Nightly benchmark: how long a nightly of the bundled example takes when nothing changed
# upstream or in the recipes (target: well under 10 s), and how much of that is refreshing
# the package indexes and resolving every layer (target: a few seconds). Prints times
# measured in one run; asserts nothing. Needs root, network, ./ci/install-deps.sh done.
# Usage: bench/nightly.sh   (the first nightly builds and boots everything: minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
GS="$PWD/target/release/goldsmith"
W=$(mktemp -d /var/tmp/gs-bench-nightly-XXXXXX)
trap 'rm -rf "$W"' EXIT
cp -a recipes images inventory.toml "$W/"
cat > "$W/goldsmith.toml" <<TOML
source_date_epoch = 1735689600
inventory = "inventory.toml"
[cache]
dir = "$PWD/.goldsmith/cache"
[store]
path = "$W/store"
[signing]
key = "$W/k.key"
[sinks.tfvars.terraform]
dir = "$W/tf"
TOML
cd "$W"
"$GS" -q keygen --out k.key >/dev/null
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
t0=$(now); "$GS" -q nightly >/dev/null || true; t1=$(now)
first=$(secs "$t0" "$t1")
t0=$(now); "$GS" -q plan >/dev/null; t1=$(now)
plan=$(secs "$t0" "$t1")
t0=$(now); "$GS" -q nightly >/dev/null; t1=$(now)
noop=$(secs "$t0" "$t1")
cat <<OUT
first nightly (build, boot, publish everything):   ${first}s
plan (refresh indexes + resolve every layer):      ${plan}s   (target: a few seconds)
no-op nightly (nothing changed):                   ${noop}s   (target: well under 10 s)
OUT
