#!/usr/bin/env bash
# `make run`: boot examples/demo.toml (a Debian arm64 Linux VM that prints its kernel
# version, disks, network and virtio devices, then powers off) with the best route this
# machine has, and say in one line which route and why:
#   - direct: an arm64 host with a usable /dev/kvm runs `keel run examples/demo.toml`;
#   - emulated arm64 host: everywhere else (no /dev/kvm, a software KVM such as kvm_pvm, or an
#     x86 host, even with VT-x/AMD-V: the demo VM is arm64; examples/linux.toml is the x86
#     Linux VM, which finds its virtio-mmio devices through the ACPI tables Keel's x86
#     platform writes since 700e94a, not tried on x86 hardware here). The static arm64 keel
#     runs inside L1 (qemu-system-aarch64 TCG) on L1's KVM, see guest/l1host.
# The first run builds the guest images and L1 (Debian packages; about a minute); later runs
# reuse them. Exit status: keel's (0 when the guest powered off), 1 on a failed route.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache=${KEEL_CACHE:-$HOME/.cache/keel}
arch=$(uname -m)
kvm_usable() { [[ -r /dev/kvm && -w /dev/kvm ]]; }
software_kvm() { [[ -e /sys/module/kvm_pvm ]] || grep -qw '^kvm_pvm' /proc/modules 2>/dev/null; }

route=emulated
if [[ $arch == aarch64 ]] && kvm_usable && ! software_kvm; then
    route=direct
    why="arm64 host with /dev/kvm"
elif [[ $arch == aarch64 ]]; then
    why="/dev/kvm is not usable here"
elif ! kvm_usable; then
    why="/dev/kvm is absent or not accessible on this $arch host"
elif software_kvm; then
    why="/dev/kvm is a software KVM (kvm_pvm): a Linux guest's kernel code would be emulated instruction by instruction"
elif grep -qwE 'vmx|svm' /proc/cpuinfo; then
    why="hardware KVM on $arch, but the demo VM is arm64 (an x86 Linux VM runs directly with: keel run examples/linux.toml)"
else
    why="/dev/kvm without VT-x/AMD-V on this $arch host"
fi

if [[ $route == direct ]]; then
    echo "run-demo: route: directly on this host's KVM ($why)"
    bash guest/linux/build.sh arm64 >/dev/null
    mkdir -p "$cache/disks"
    [[ -e $cache/disks/demo.img ]] || bash guest/linux/mkdisk.sh "$cache/disks/demo.img" 64M >/dev/null
    cargo build --release -q -p keel
    exec "${CARGO_TARGET_DIR:-target}/release/keel" run examples/demo.toml
fi

echo "run-demo: route: inside the emulated arm64 host (qemu-system-aarch64 TCG, Keel on L1's KVM) because $why"
command -v qemu-system-aarch64 >/dev/null 2>&1 ||
    { echo "run-demo: error: qemu-system-aarch64 not found (make setup installs qemu-system-arm)" >&2; exit 1; }
t0=$SECONDS
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release -q -p keel --target aarch64-unknown-linux-musl
keel=${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-musl/release/keel
# keel-probe runs in L1 too (/extra/keel-probe). The same extras, in the same order, as
# scripts/l2-tests.sh, so all share one cached L1 image.
(cd guest/probe && cargo build --release -q --locked)
. scripts/l1-extras.sh
l1=$(bash guest/l1host/build.sh --keel "$keel" "${L1_EXTRAS[@]}" 2>/dev/null | tail -n1)
echo "run-demo: arm64 keel and L1 ready after $((SECONDS - t0)) s; booting L1, then the demo VM in it"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# In L1: ${KEEL_CACHE} of demo.toml points at L1's copy of the guest and a fresh disk.
cat >"$tmp/l1-script.sh" <<'L1'
mkdir -p /tmp/kc/guest /tmp/kc/disks
ln -s /l2 /tmp/kc/guest/arm64
truncate -s 64M /tmp/kc/disks/demo.img
KEEL_CACHE=/tmp/kc step demo timeout 90 keel run /extra/demo.toml --stats
L1
set +e
bash guest/l1host/run.sh "$l1" "$tmp/l1-script.sh" --timeout 180 --log "$tmp/console.log" 2>"$tmp/run.err" |
    sed -n 's/^demo [0-9]*| //p' | tr -d '\r'
set -e
status=$(sed -n 's/^L1-STEP-END demo \([0-9]*\) \([0-9]*\)$/\1 \2/p' "$tmp/console.log")
if [[ -z $status ]]; then
    echo "run-demo: error: the demo did not run to its end in L1:" >&2
    tail -n 5 "$tmp/run.err" "$tmp/console.log" >&2
    exit 1
fi
read -r rc ms <<<"$status"
echo "run-demo: keel exited $rc after $ms ms in L1; $((SECONDS - t0)) s in all"
exit "$rc"
