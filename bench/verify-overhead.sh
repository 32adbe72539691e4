#!/usr/bin/env bash
# How much does goldsmith's readiness detection add to a boot?
#
# For the same disk image, measures
#   - baseline: a plain QEMU with the same virtual hardware (q35, OVMF, same accelerator,
#     memory, CPUs, disk, network, guest-agent channel; snapshot=on) that nobody talks
#     to, until the serial console first shows a login prompt;
#   - goldsmith: `goldsmith verify --artifact`'s boot_secs (QEMU start until the guest
#     agent answered and `systemctl is-system-running` reached `running`), and the wall
#     time of the whole command.
# and prints ready/login. Target: <= 1.1 (the checks add almost nothing).
#
# Usage: bench/verify-overhead.sh [DISK_IMAGE] [RUNS]
#   DISK_IMAGE defaults to the latest `web` build's qcow2 (target/goldsmith/web).
#   GOLDSMITH=path/to/goldsmith to use a given binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/.."

disk=${1:-}
runs=${2:-2}
if [ -z "$disk" ]; then
  latest=target/goldsmith/web/latest.json
  [ -f "$latest" ] || { echo "no web build: run 'goldsmith build web' or pass a disk image" >&2; exit 2; }
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["build_id"])' "$latest")
  disk=$(python3 -c 'import json,sys
b=json.load(open(sys.argv[1]))
print([a["path"] for a in b["artifacts"] if a["format"]=="qcow2"][0])' "target/goldsmith/web/$id/build.json")
  disk="target/goldsmith/web/$id/$disk"
fi
disk=$(realpath "$disk")
fmt=$(qemu-img info --output=json "$disk" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])')

if [ -z "${GOLDSMITH:-}" ]; then
  cargo build --release -q
  GOLDSMITH=target/release/goldsmith
fi
GOLDSMITH=$(realpath "$GOLDSMITH")

work=$(mktemp -d /tmp/goldsmith-bench-XXXXXX)
qpid=""
cleanup() { [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A project whose image declares no checks: only readiness is measured.
mkdir -p "$work/proj/recipes/base" "$work/proj/images"
printf 'build_dir = "builds"\n[cache]\ndir = "%s/cache"\n' "$PWD/.goldsmith" > "$work/proj/goldsmith.toml"
printf '[bootstrap]\ndistro = "debian"\nsuite = "bookworm"\n' > "$work/proj/recipes/base/layer.toml"
# One check reads the guest's uptime and when systemd finished booting (both on the
# guest's monotonic clock): their difference is how long after the boot really finished
# goldsmith noticed (plus the few milliseconds until the check ran).
cat > "$work/proj/images/bench.toml" <<'TOML'
layers = ["base"]
[vm]
memory_mib = 1024
cpus = 2
[[checks]]
name = "boot finished"
command = { argv = ["sh", "-c", "cut -d' ' -f1 /proc/uptime; systemctl show -p FinishTimestampMonotonic --value"] }
TOML

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

baseline() { # $1 = accelerator -> seconds until "login:" on the console
  local accel=$1 cpu=max
  [ "$accel" = kvm ] && cpu=host
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  rm -f "$work/console.log"
  local t0; t0=$(now)
  TMPDIR=$work qemu-system-x86_64 -machine q35 -accel "$accel" -cpu "$cpu" -m 1024 -smp 2 \
    -nodefaults -no-user-config -display none \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,unit=1,file="$work/vars.fd" \
    -drive file="$disk",format="$fmt",if=none,id=disk0,snapshot=on,cache=unsafe \
    -device virtio-blk-pci,drive=disk0,bootindex=0 -device virtio-rng-pci \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
    -chardev socket,id=qga0,path="$work/qga.sock",server=on,wait=off \
    -device virtio-serial-pci,id=vser0 \
    -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0 \
    -device pvpanic \
    -chardev file,id=con0,path="$work/console.log" -serial chardev:con0 -no-reboot &
  qpid=$!
  while ! grep -aq 'login:' "$work/console.log" 2>/dev/null; do
    kill -0 "$qpid" 2>/dev/null || { echo "baseline QEMU died" >&2; exit 1; }
    if awk "BEGIN { exit !($(now) - $t0 > 600) }"; then echo "baseline: no login prompt in 600s" >&2; exit 1; fi
    sleep 0.05
  done
  local t1; t1=$(now)
  kill -9 "$qpid"; wait "$qpid" 2>/dev/null || true; qpid=""
  calc "$t1 - $t0"
}

echo "image: $disk ($fmt), $runs run(s) each"
printf '%-4s %9s %9s %9s %9s %9s %7s %9s\n' run login_s ready_s total_s inrun_lg notice_s ratio ratio_sd
sum_ratio=0
for i in $(seq 1 "$runs"); do
  t0=$(now)
  "$GOLDSMITH" --config "$work/proj/goldsmith.toml" -q verify bench --artifact "$disk" --json > "$work/rec.json" || true
  t1=$(now)
  read -r passed accel ready inrun latency < <(python3 -c 'import json,re,sys
r=json.load(open(sys.argv[1])); b=r["boots"][0]
m=[re.search(r"login prompt after ([0-9.]+)s", c["detail"]) for c in b["checks"]]
m=[x.group(1) for x in m if x]
f=[re.search(r"stdout: ([0-9.]+) ⏎ ([0-9]+)", c["detail"]) for c in b["checks"] if c["name"]=="boot finished"]
lat=float(f[0].group(1))-int(f[0].group(2))/1e6 if f and f[0] else -1
print(r["passed"], b["accelerator"], b["boot_secs"] or 0, m[0] if m else 0, round(lat,3))' "$work/rec.json")
  [ "$passed" = True ] || { echo "goldsmith verify failed:" >&2; cat "$work/rec.json" >&2; exit 1; }
  login=$(baseline "$accel")
  ratio=$(calc "$ready / $login")
  sum_ratio=$(calc "$sum_ratio + $ratio")
  ratio_sd=$(calc "$ready / ($ready - $latency)")
  printf '%-4s %9.1f %9.1f %9.1f %9.1f %9.2f %7.3f %9.3f\n' "$i" "$login" "$ready" "$(calc "$t1 - $t0")" "$inrun" "$latency" "$ratio" "$ratio_sd"
done
mean=$(calc "$sum_ratio / $runs")
echo "accelerator: $accel"
echo "ratio ready/login (mean): $mean   target <= 1.1"
cat <<'TXT'
columns: login_s   baseline QEMU start -> first "login:" on the console
         ready_s   goldsmith's boot_secs: QEMU start -> agent answered and system running
         total_s   wall time of the whole `goldsmith verify` (probe, boot, check, teardown)
         inrun_lg  the login prompt of goldsmith's own boot, as its console watcher saw it
         notice_s  how long after systemd finished booting (guest clock) goldsmith knew
         ratio     ready_s / login_s (the target)
         ratio_sd  ready_s / (ready_s - notice_s): goldsmith vs. the guest's own boot end
A login prompt can come before the boot is finished (e.g. first-boot SSH host key
generation runs on): then ratio > ratio_sd, and the difference is the guest's, not ours.
TXT
