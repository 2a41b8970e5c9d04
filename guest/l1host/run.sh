#!/usr/bin/env bash
# Boot the emulated arm64 host (L1) under qemu-system-aarch64 (TCG) and run a script in it.
#
#   guest/l1host/run.sh <l1-dir> <script-file> [--timeout S] [--cpu cortex-a57|max]
#                       [--smp N] [--log FILE] [--append ARGS]
#
# <l1-dir> is what guest/l1host/build.sh printed. The script (sh, run by L1's /init in a
# subshell with the `step` and `now_ms` functions) goes base64-encoded on the kernel command
# line as keel.cmd=, so it must stay below ~1400 bytes. The serial console is streamed to
# stdout and to the log (default: a new file under ${TMPDIR:-/tmp}, named on stderr).
#
# Exit status: 0 if L1 reached L1-DONE, the script exited 0 and every step exited 0;
# 1 if a step or the script failed or L1-DONE is missing; 124 on timeout (default 600 s);
# 2 on bad usage. The last line on stderr summarises the run, with the host-side times from
# QEMU's start to L1-READY and to QEMU's exit.
# Environment: QEMU_SYSTEM (default qemu-system-aarch64).
set -euo pipefail

die() {
    printf 'l1host/run.sh: error: %s\n' "$*" >&2
    exit 2
}
usage() {
    die "usage: run.sh <l1-dir> <script-file> [--timeout S] [--cpu cortex-a57|max] [--smp N] [--log FILE] [--append ARGS]"
}

(($# >= 2)) || usage
l1=$1 script=$2
shift 2
timeout_s=600 cpu=cortex-a57 smp=2 log='' append=''
while (($#)); do
    (($# >= 2)) || usage
    case "$1" in
        --timeout) timeout_s=$2 ;;
        --cpu) cpu=$2 ;;
        --smp) smp=$2 ;;
        --log) log=$2 ;;
        --append) append=$2 ;;
        *) usage ;;
    esac
    shift 2
done
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "--timeout '$timeout_s' is not a positive number of seconds"
[[ $smp =~ ^[1-8]$ ]] || die "--smp '$smp' is not 1..8"
case "$cpu" in
    cortex-a57) cpu_arg=cortex-a57 ;;
    # Plain `max` computes pointer authentication with QARMA: ~3x slower under TCG.
    max) cpu_arg=max,pauth-impdef=on ;;
    *) die "--cpu '$cpu' is not cortex-a57 or max" ;;
esac
[[ -s $l1/vmlinuz && -s $l1/initrd.cpio.zst ]] || die "'$l1' has no vmlinuz + initrd.cpio.zst (run guest/l1host/build.sh)"
[[ -f $script ]] || die "script '$script' is not a file"
qemu=${QEMU_SYSTEM:-qemu-system-aarch64}
command -v "$qemu" >/dev/null 2>&1 || die "$qemu not found (apt-get install -y qemu-system-arm)"
command -v zstd >/dev/null 2>&1 || die "zstd not found (apt-get install -y zstd)"

cmd_b64=$(base64 -w0 <"$script")
# quiet + loglevel=1: every console byte is an exit to the TCG-emulated UART.
cmdline="console=ttyAMA0 quiet loglevel=1 ${append:+$append }keel.cmd=$cmd_b64"
# arm64 COMMAND_LINE_SIZE is 2048 bytes, QEMU's virt machine adds nothing to it.
((${#cmdline} < 2048)) ||
    die "script '$script' is too long for the kernel command line (${#cmdline} of 2047 bytes)"

# The kernel unpacks an uncompressed initramfs ~0.8 s faster than the zstd one (it runs
# TCG-emulated); zstd -d here takes ~0.15 s. The cache keeps only the small .zst.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/l1host-run.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
zstd -q -d -c "$l1/initrd.cpio.zst" >"$tmp/initrd.cpio" || die "cannot decompress $l1/initrd.cpio.zst"

if [[ -z $log ]]; then
    log=$(mktemp "${TMPDIR:-/tmp}/l1host-run.XXXXXX.log")
fi
printf 'l1host/run.sh: console log %s\n' "$log" >&2
: >"$log"

start=$EPOCHREALTIME
ready_at='' done_seen=0 script_exit='' qemu_status='' steps_failed=0 steps_ended=0
while IFS= read -r line; do
    line=${line%$'\r'}
    printf '%s\n' "$line" >>"$log"
    printf '%s\n' "$line"
    case "$line" in
        *L1-READY) [[ -n $ready_at ]] || ready_at=$EPOCHREALTIME ;;
        L1-DONE) done_seen=1 ;;
        "L1-SCRIPT-EXIT "*) script_exit=${line#L1-SCRIPT-EXIT } ;;
        "L1-STEP-END "*)
            steps_ended=$((steps_ended + 1))
            read -r _ _ st _ <<<"$line"
            [[ $st == 0 ]] || steps_failed=$((steps_failed + 1))
            ;;
        "L1-STEP-BAD-NAME "*) steps_failed=$((steps_failed + 1)) ;;
        "L1HOST-QEMU-STATUS "*) qemu_status=${line#L1HOST-QEMU-STATUS } ;;
    esac
done < <(
    set +e
    # shellcheck disable=SC2054 # the commas are QEMU's option syntax
    timeout --kill-after=5 "$timeout_s" "$qemu" \
        -M virt,virtualization=on,gic-version=3 -cpu "$cpu_arg" -m 2G -smp "$smp" \
        -nographic -nic none -no-reboot \
        -kernel "$l1/vmlinuz" -initrd "$tmp/initrd.cpio" -append "$cmdline" </dev/null 2>&1
    echo "L1HOST-QEMU-STATUS $?"
)
end=$EPOCHREALTIME

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
ready_s=never
[[ -n $ready_at ]] && ready_s="$(secs "$start" "$ready_at") s"
summary="L1-READY after $ready_s, QEMU ran $(secs "$start" "$end") s, steps=$steps_ended failed=$steps_failed script-exit=${script_exit:-none} qemu-status=${qemu_status:-none}"

status=0
if [[ $qemu_status == 124 || $qemu_status == 137 ]]; then
    summary+=" TIMEOUT after $timeout_s s"
    status=124
elif ((done_seen == 0)); then
    summary+=" L1-DONE MISSING"
    status=1
elif ((steps_failed > 0)) || [[ $script_exit != 0 ]]; then
    status=1
fi
printf 'l1host/run.sh: %s -> exit %d\n' "$summary" "$status" | tee -a "$log" >&2
exit "$status"
