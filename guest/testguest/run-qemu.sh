#!/bin/sh
# Runs Keel's x86_64 test guest under QEMU's microvm machine.
#
#   guest/testguest/run-qemu.sh [options] <tests> [extra cmdline words...]
#
# <tests> is the keeltest= list (e.g. all, or blk,rng,console,smp,irq,mmio-bench:1000).
# Options:
#   -a kvm|tcg     accelerator (default kvm; tcg if /dev/kvm is missing)
#   -d FILE        disk image (default: a fresh 1 MiB scratch image, deleted after)
#   -r             attach the disk read-only
#   -c FILE        where the virtio-console output goes (default: a temp file, printed after)
#   -s N           vCPUs (default 2)
#   -m SIZE        memory (default 64M)
#   -t SECONDS     wall-clock limit (default 120)
#   -n             no blk/rng/console devices (only serial/debug-exit, and -N's net device)
#   -N NETDEV      attach a virtio-net-device on a QEMU netdev: NETDEV is its -netdev
#                  options without id=, e.g. socket,mcast=230.0.0.1:34567,localaddr=127.0.0.1
#                  (every QEMU on that group and port shares one segment) or
#                  dgram,local.type=inet,local.host=127.0.0.1,local.port=P1,remote.type=inet,remote.host=127.0.0.1,remote.port=P2
#                  (two QEMUs, ports swapped in the other)
#   -E MAC         the net device's MAC address (default 02:00:00:00:00:01)
#   -B             do not (re)build the guest first
# Environment: QEMU (default qemu-system-x86_64), KEELTEST_ELF (default: the release build).
#
# Exit status: the guest's debug-exit code (0 PASS, 10 FAIL, 11 panic/exception,
# 3 corrupt test saw NEEDS_RESET); 124 timeout; 125 QEMU exited without the
# debug-exit device (reset, crash, bad option).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
accel=kvm
[ -w /dev/kvm ] || accel=tcg
disk=
readonly_disk=
console_out=
smp=2
mem=64M
limit=120
devices=yes
netdev=
mac=02:00:00:00:00:01
build=yes
while getopts a:d:rc:s:m:t:nN:E:B opt; do
    case $opt in
    a) accel=$OPTARG ;;
    d) disk=$OPTARG ;;
    r) readonly_disk=,readonly=on ;;
    c) console_out=$OPTARG ;;
    s) smp=$OPTARG ;;
    m) mem=$OPTARG ;;
    t) limit=$OPTARG ;;
    n) devices=no ;;
    N) netdev=$OPTARG ;;
    E) mac=$OPTARG ;;
    B) build=no ;;
    *) sed -n '2,29p' "$0" >&2; exit 125 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -lt 1 ]; then
    sed -n '2,29p' "$0" >&2
    exit 125
fi
tests=$1
shift
cmdline="keeltest=$tests${*:+ $*}"

elf=${KEELTEST_ELF:-$here/target/x86_64-unknown-none/release/keel-testguest}
if [ "$build" = yes ] && [ -z "${KEELTEST_ELF:-}" ]; then
    (cd "$here" && cargo build --release --target x86_64-unknown-none -q)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$disk" ]; then
    disk=$tmp/disk.img
    truncate -s 1M "$disk"
fi
show_console=no
if [ -z "$console_out" ]; then
    console_out=$tmp/console.out
    show_console=yes
fi
: >"$console_out"

cpu=max
# kvm_pvm (and some hosts) refuse QEMU's IA32_ARCH_CAPABILITIES write.
[ "$accel" = kvm ] && cpu=host,-arch-capabilities

set -- -M microvm,acpi=off,x-option-roms=off -accel "$accel" -cpu "$cpu" \
    -m "$mem" -smp "$smp" -nographic -nodefaults -serial stdio -no-reboot \
    -kernel "$elf" -append "$cmdline" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x01
if [ "$devices" = yes ]; then
    # QEMU's virtio-mmio defaults to the legacy (version 1) interface.
    set -- "$@" -global virtio-mmio.force-legacy=false \
        -drive "id=d0,file=$disk,format=raw,if=none$readonly_disk" \
        -device virtio-blk-device,drive=d0,serial=keeltest0 \
        -device virtio-rng-device \
        -device virtio-serial-device \
        -chardev "file,id=vc0,path=$console_out" \
        -device virtconsole,chardev=vc0
fi
if [ -n "$netdev" ]; then
    # The guest negotiates only VERSION_1, MAC, STATUS and MRG_RXBUF of what QEMU offers.
    set -- "$@" -global virtio-mmio.force-legacy=false \
        -netdev "$netdev,id=n0" \
        -device "virtio-net-device,netdev=n0,mac=$mac"
fi

status=0
timeout "$limit" "${QEMU:-qemu-system-x86_64}" "$@" </dev/null || status=$?
if [ "$show_console" = yes ] && [ -s "$console_out" ]; then
    sed 's/^/virtio-console> /' "$console_out"
fi
case $status in
124) echo "run-qemu: timed out after ${limit}s" >&2; exit 124 ;;
0) echo "run-qemu: QEMU exited without a debug-exit code" >&2; exit 125 ;;
esac
if [ $((status % 2)) -eq 1 ] && [ "$status" -lt 256 ]; then
    exit $(((status - 1) / 2))   # isa-debug-exit: QEMU exits with (code << 1) | 1
fi
echo "run-qemu: QEMU failed with status $status" >&2
exit 125
