#!/usr/bin/env bash
# Installs everything goldsmith and its test suite need on a fresh Debian 12 machine.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

# qemu-system-x86 alone would remove a backported qemu-utils; pin both to bookworm in
# one transaction (see DESIGN.md, "Facts about the build machines").
APT_PKGS=(
  qemu-system-x86 qemu-utils/bookworm ovmf
  mmdebstrap mtools dosfstools e2fsprogs fdisk gdisk systemd-boot-efi
  skopeo umoci docker-registry minisign zstd apt-utils dpkg-dev uidmap
  bubblewrap chromium curl ca-certificates
)

missing=0
for p in "${APT_PKGS[@]}"; do
  name=${p%%/*}
  dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" || missing=1
done
# The backported qemu-utils counts as "installed" but must be replaced by bookworm's.
if qemu-img --version 2>/dev/null | grep -q 'version 10'; then missing=1; fi
if [ "$missing" -eq 1 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${APT_PKGS[@]}"
fi

# Python tools used only by the tests to check our outputs with code we did not write.
PIP_PKGS=("moto[server]" standardwebhooks junitparser cyclonedx-python-lib jsonschema pyyaml prometheus_client)
if ! python3 -c 'import moto, standardwebhooks, junitparser, cyclonedx, jsonschema, yaml, prometheus_client' 2>/dev/null; then
  python3 -m pip install -q "${PIP_PKGS[@]}"
fi
