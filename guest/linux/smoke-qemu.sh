#!/usr/bin/env bash
# Boot Keel's Linux guest image under QEMU (TCG) and check the /init protocol:
#
#   guest/linux/smoke-qemu.sh x86_64|arm64
#
# Builds (or reuses) the image with build.sh, boots it with a virtio disk, rng, net and
# console, passes a keel.cmd that exercises them and exits 7, and checks the KEEL-* markers,
# the command's output and status, and that the guest powers QEMU off. On x86_64 it also
# boots with acpi=off (the reset path must end QEMU) and on -M microvm (virtio-mmio found
# through ACPI). Prints the time from QEMU start to KEEL-GUEST-READY. Exits 0 if every
# check passed, 1 otherwise.
# Environment: QEMU_SYSTEM (the qemu-system-* binary), SMOKE_TIMEOUT (seconds, default
# 600 for x86_64, 180 for arm64), KEEL_CACHE (see build.sh), SMOKE_LOG (keep the console log).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    printf 'smoke-qemu.sh: error: %s\n' "$*" >&2
    exit 2
}

[[ $# -eq 1 ]] || die "usage: smoke-qemu.sh x86_64|arm64"
arch=$1
case "$arch" in
    x86_64) qemu_name=qemu-system-x86_64 default_timeout=600 ;;
    arm64) qemu_name=qemu-system-aarch64 default_timeout=180 ;;
    *) die "unknown arch '$arch' (x86_64|arm64)" ;;
esac

qemu=${QEMU_SYSTEM:-$qemu_name}
command -v "$qemu" >/dev/null 2>&1 ||
    die "$qemu not found (apt-get install -y qemu-system-arm qemu-system-x86, or set QEMU_SYSTEM)"

img=$("$here/build.sh" "$arch" | tail -n1)
[[ -s $img/vmlinuz && -s $img/initrd.cpio.gz ]] || die "build.sh gave no image in '$img'"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/mkdisk.sh" "$tmp/disk.img" 64M >/dev/null
printf 'KEEL-DISK-SIGNATURE\n' | dd of="$tmp/disk.img" conv=notrunc status=none

# The command: read the disk's first sector, 16 bytes of the virtio rng, list the
# interfaces, then exit 7 (the status must come back in KEEL-CMD-EXIT).
# shellcheck disable=SC2016 # expanded by the guest's shell
snippet='echo "smoke: disk says $(head -c 19 /dev/vda)"
echo "smoke: rng bytes $(head -c 16 /dev/hwrng | wc -c)"
ip link set eth0 up && echo "smoke: eth0 up"
exit 7'
cmd_b64=$(printf '%s' "$snippet" | base64 -w0)

# shellcheck disable=SC2054 # the commas are QEMU's option syntax
case "$arch" in
    arm64)
        console="console=ttyAMA0 quiet"
        args=(-M virt -cpu cortex-a57 -m 512M -smp 1
            -drive "if=none,id=d0,file=$tmp/disk.img,format=raw"
            -device virtio-blk-device,drive=d0
            -device virtio-rng-device
            -netdev user,id=n0 -device virtio-net-device,netdev=n0
            -device virtio-serial-device -chardev null,id=c0 -device virtconsole,chardev=c0)
        ;;
    x86_64)
        # Debian's x86 kernel finds virtio-mmio only through ACPI: use virtio-pci here.
        console="console=ttyS0 quiet"
        args=(-M q35 -accel tcg -m 512M -smp 1
            -drive "if=none,id=d0,file=$tmp/disk.img,format=raw"
            -device virtio-blk-pci,drive=d0
            -device virtio-rng-pci
            -netdev user,id=n0 -device virtio-net-pci,netdev=n0
            -device virtio-serial-pci -chardev null,id=c0 -device virtconsole,chardev=c0)
        ;;
esac

timeout_s=${SMOKE_TIMEOUT:-$default_timeout}

# boot <log> <extra kernel args> [extra QEMU args...]: boot once, console to stdout and <log>.
# Sets ready_at (empty if the ready marker never came) and end; the log's last line is
# KEEL-SMOKE-QEMU-STATUS <QEMU's exit status>.
boot() {
    local log=$1 append=$2 line
    shift 2
    : >"$log"
    start=$EPOCHREALTIME
    ready_at=
    while IFS= read -r line; do
        line=${line%$'\r'}
        printf '%s\n' "$line" >>"$log"
        printf '%s\n' "$line"
        # Firmware may leave escape sequences on the line before the marker's own.
        if [[ -z $ready_at && $line == *KEEL-GUEST-READY ]]; then
            ready_at=$EPOCHREALTIME
        fi
    done < <(
        set +e
        timeout --kill-after=5 "$timeout_s" "$qemu" -nographic -no-reboot \
            -kernel "$img/vmlinuz" -initrd "$img/initrd.cpio.gz" "${args[@]}" "$@" \
            -append "$console $append" </dev/null 2>&1
        echo "KEEL-SMOKE-QEMU-STATUS $?"
    )
    end=$EPOCHREALTIME
}

log=${SMOKE_LOG:-$tmp/console.log}
boot "$log" "keel.cmd=$cmd_b64"

first_start=$start first_end=$end first_ready_at=$ready_at
fails=0
check() {
    local what=$1 pattern=$2
    if grep -Eq -- "$pattern" "$log"; then
        printf 'smoke: ok   %s\n' "$what"
    else
        printf 'smoke: FAIL %s (no line matching /%s/)\n' "$what" "$pattern"
        fails=$((fails + 1))
    fi
}
check "ready marker" '^KEEL-GUEST-READY$'
check "all modules loaded" '^KEEL-MODULES loaded=[1-9][0-9]* failed=0$'
check "uname" '^KEEL-UNAME 6\.'
check "nproc" '^KEEL-NPROC 1$'
check "virtio-blk disk (64 MiB)" '^KEEL-BLOCK vda 65536$'
check "virtio-net interface" '^KEEL-NET eth0 52:54:00:'
check "virtio-blk bound" '^KEEL-VIRTIO virtio[0-9]+ device=0x0002 driver=virtio_blk$'
check "virtio-net bound" '^KEEL-VIRTIO virtio[0-9]+ device=0x0001 driver=virtio_net$'
check "virtio-console bound" '^KEEL-VIRTIO virtio[0-9]+ device=0x0003 driver=virtio_console$'
check "virtio-rng bound" '^KEEL-VIRTIO virtio[0-9]+ device=0x0004 driver=virtio_rng$'
check "virtio-rng selected" '^KEEL-RNG virtio_rng\.0$'
check "vsock device" '^KEEL-VSOCK /dev/vsock$'
check "cmd read the disk" '^smoke: disk says KEEL-DISK-SIGNATURE$'
check "cmd read the rng" '^smoke: rng bytes 16$'
check "cmd brought eth0 up" '^smoke: eth0 up$'
check "cmd exit status" '^KEEL-CMD-EXIT 7$'
check "poweroff marker" '^KEEL-GUEST-POWEROFF$'
check "QEMU exited by itself" '^KEEL-SMOKE-QEMU-STATUS 0$'

if [[ $arch == x86_64 ]]; then
    # x86 without ACPI has no power-off method: /init must reset instead (QEMU -no-reboot
    # then exits) rather than halt for ever.
    timeout_s=120 boot "$tmp/noacpi.log" "acpi=off" >/dev/null
    if grep -q '^KEEL-GUEST-POWEROFF$' "$tmp/noacpi.log" &&
        grep -q '^KEEL-SMOKE-QEMU-STATUS 0$' "$tmp/noacpi.log"; then
        printf 'smoke: ok   acpi=off: reset instead of power-off, QEMU exited\n'
    else
        printf 'smoke: FAIL acpi=off: no reset after KEEL-GUEST-POWEROFF:\n'
        tail -n5 "$tmp/noacpi.log"
        fails=$((fails + 1))
    fi
    # virtio-mmio on x86: QEMU microvm describes its virtio-mmio devices in ACPI, which is
    # how Debian's x86 kernel finds them (no VIRTIO_MMIO_CMDLINE_DEVICES).
    # Debian's cloud kernel 6.1.192 (2026-11) hangs calibrating the TSC on a bare microvm
    # ("tsc: Unable to calibrate against PIT", then nothing): give it the legacy timers.
    # Even with them, calibrating against the PIT fails when the host is loaded (TCG runs
    # the PIT on the host clock), and with no HPET or PM timer on microvm the kernel then
    # hangs (seen in CI; reproduced with 6 guests and 2 busy loops on 2 cores). Telling it
    # the TSC frequency skips the calibration: tsc_early_khz.
    # shellcheck disable=SC2054 # the commas are QEMU's option syntax
    args=(-M microvm,pit=on,pic=on,rtc=on -accel tcg -m 512M -smp 1
        -drive "if=none,id=d0,file=$tmp/disk.img,format=raw"
        -device virtio-blk-device,drive=d0
        -device virtio-rng-device
        -netdev user,id=n0 -device virtio-net-device,netdev=n0)
    timeout_s=120 boot "$tmp/microvm.log" "tsc_early_khz=2000000" >/dev/null
    microvm_ok=0
    for want in '^KEEL-GUEST-READY$' '^KEEL-MODULES loaded=[1-9][0-9]* failed=0$' \
        '^KEEL-BLOCK vda 65536$' '^KEEL-VIRTIO virtio[0-9]+ device=0x0002 driver=virtio_blk$' \
        '^KEEL-VIRTIO virtio[0-9]+ device=0x0001 driver=virtio_net$' \
        '^KEEL-VIRTIO virtio[0-9]+ device=0x0004 driver=virtio_rng$' \
        '^KEEL-GUEST-POWEROFF$' '^KEEL-SMOKE-QEMU-STATUS 0$'; do
        grep -Eq -- "$want" "$tmp/microvm.log" || {
            printf 'smoke: FAIL microvm (virtio-mmio via ACPI): no line matching /%s/\n' "$want"
            microvm_ok=1
        }
    done
    if ((microvm_ok == 0)); then
        microvm_ready=$(awk -v a="$start" -v b="${ready_at:-$end}" 'BEGIN { printf "%.2f", b - a }')
        printf 'smoke: ok   microvm: virtio-mmio blk/net/rng found via ACPI, ready after %s s\n' "$microvm_ready"
    else
        fails=$((fails + 1))
    fi
    # boot() moved start/end/ready_at: report the first boot's times.
    start=$first_start end=$first_end ready_at=$first_ready_at
fi

total=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
if [[ -n $ready_at ]]; then
    ready=$(awk -v a="$start" -v b="$ready_at" 'BEGIN { printf "%.2f", b - a }')
    printf 'smoke: %s ready after %s s, QEMU exited after %s s (TCG, %s)\n' "$arch" "$ready" "$total" "${qemu##*/}"
else
    printf 'smoke: %s never became ready; QEMU ran %s s\n' "$arch" "$total"
fi
if ((fails > 0)); then
    printf 'smoke: %s: %d check(s) failed\n' "$arch" "$fails"
    exit 1
fi
printf 'smoke: %s: all checks passed\n' "$arch"
