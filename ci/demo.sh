#!/usr/bin/env bash
# The main job on the bundled example, on a fresh Debian 12 machine: install what is
# needed, then build the `web` image, boot-test it under QEMU, publish it to the local
# store (artifacts/) and emit its rollout trigger (terraform/*.auto.tfvars.json).
set -euo pipefail
cd "$(dirname "$0")/.."
./ci/install-deps.sh
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 2
fi
cargo build --release --locked -q
GS=./target/release/goldsmith
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -E"
[ -f .goldsmith/keys/goldsmith.key ] || $GS keygen --out .goldsmith/keys/goldsmith.key >/dev/null
$GS validate
$SUDO $GS nightly web
echo
$GS list web
$GS rollout history
echo
echo "artifacts: $(ls -d artifacts/web/* 2>/dev/null | tail -1)"
echo "report:    $(ls -d artifacts/reports/* 2>/dev/null | tail -1)/index.html"
echo "trigger:   $(ls terraform/*.auto.tfvars.json 2>/dev/null | tr '\n' ' ')"
