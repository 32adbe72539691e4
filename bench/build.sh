#!/usr/bin/env bash
# Build benchmark: prints times and ratios measured in one run (nothing is asserted).
#   cold build of `web` (empty layer cache)          vs. the plain-shell baseline
#   warm rebuild with nothing changed                 (target: under 5 s)
#   rebuild after a change in the top layer only      (target: under 30 % of cold)
#   qcow2: goldsmith's zstd -W -m 8 vs plain `qemu-img convert -c` (target: >= 2x faster)
# Usage: bench/build.sh [--skip-cold]     (needs root, network, ./ci/install-deps.sh done)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
GS="$PWD/target/release/goldsmith"
W=$(mktemp -d /var/tmp/gs-bench-XXXXXX)
trap 'rm -rf "$W"' EXIT
cp -a recipes images "$W/"
cat > "$W/goldsmith.toml" <<TOML
source_date_epoch = 1735689600
[cache]
dir = "$W/cache"
[store]
path = "$W/store"
TOML
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

cd "$W"
t0=$(now); "$GS" -q build web --format raw --format qcow2 >/dev/null; t1=$(now)
cold=$(secs "$t0" "$t1")
t0=$(now); "$GS" -q build web --format raw --format qcow2 >/dev/null; t1=$(now)
noop=$(secs "$t0" "$t1")
echo "<!-- bench $(date -u +%FT%TZ) -->" >> recipes/web/files/index.html.hbs
t0=$(now); "$GS" -q build web --format raw --format qcow2 >/dev/null; t1=$(now)
top=$(secs "$t0" "$t1")

# The plain-shell baseline: the same packages, mmdebstrap into a directory, mkfs.ext4 -d,
# a raw disk, qemu-img convert -c (ESP and GPT omitted: they cost well under a second).
PKGS=$(python3 - <<'PY'
import tomllib
pk = []
for l in ["debian-base", "hardening", "web"]:
    pk += tomllib.load(open(f"recipes/{l}/layer.toml", "rb")).get("packages", {}).get("install", [])
print(",".join(pk))
PY
)
t0=$(now)
mmdebstrap --quiet --variant=minbase --include="$PKGS" bookworm "$W/shell-tree" >/dev/null 2>&1
truncate -s 2G "$W/shell.raw"
mkfs.ext4 -q -F -d "$W/shell-tree" "$W/shell.raw" >/dev/null
qemu-img convert -f raw -O qcow2 -c "$W/shell.raw" "$W/shell.qcow2"
t1=$(now)
shell=$(secs "$t0" "$t1")

RAW=$(ls "$W"/target/goldsmith/web/*/web.raw | tail -1)
t0=$(now); qemu-img convert -f raw -O qcow2 -c "$RAW" "$W/plain.qcow2"; t1=$(now)
plain=$(secs "$t0" "$t1")
t0=$(now); qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd -W -m 8 "$RAW" "$W/fast.qcow2"; t1=$(now)
fast=$(secs "$t0" "$t1")

cat <<OUT
cold build of web (raw+qcow2):      ${cold}s   (shell baseline ${shell}s; ratio $(ratio "$cold" "$shell"), target <= 1.1)
warm no-op rebuild:                 ${noop}s   (target < 5 s)
top-layer change rebuild:           ${top}s   ($(ratio "$top" "$cold") of cold, target < 0.30)
qcow2 compression:                  ${fast}s vs plain qemu-img -c ${plain}s (speed-up $(ratio "$plain" "$fast")x, target >= 2)
OUT
