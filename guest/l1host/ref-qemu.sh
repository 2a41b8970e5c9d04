#!/usr/bin/env bash
# Reference measurement: Debian's arm64 QEMU with KVM booting the L2 Linux guest inside the
# emulated arm64 host (L1).
#
#   guest/l1host/ref-qemu.sh [--runs N] [--cpu cortex-a57|max] [--l1 <l1-dir>] [--log FILE]
#
# Builds L1 (build.sh --keel none) unless --l1 is given, boots it once with run.sh, and in it
# boots L2 N times (default 3), one step each:
#   qemu-system-aarch64 -M virt,gic-version=3 -accel kvm -cpu host -m 256M -smp 2 -nographic
#     -kernel /l2/vmlinuz -initrd /l2/initrd.cpio.gz + a 64 MiB virtio-blk disk (virtio-mmio)
#     -append "console=ttyAMA0 quiet loglevel=1 keel.cmd=<base64 of 'nproc'>"
# under l1-peak-rss. Reports per run and as median/min/max: the time from the step's start
# (QEMU's exec in L1) to L2's KEEL-GUEST-READY line and to QEMU's exit (L1's CLOCK_MONOTONIC),
# QEMU's peak RSS (getrusage ru_maxrss; polled VmHWM for comparison), and L1's boot time
# (host: QEMU start to L1-READY; L1-UPTIME: L1's own uptime at L1-READY).
# Exits 0 if every L2 boot printed KEEL-GUEST-READY, "KEEL-NPROC 2", ran nproc (output 2),
# KEEL-CMD-EXIT 0 and QEMU exited 0.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    printf 'l1host/ref-qemu.sh: error: %s\n' "$*" >&2
    exit 2
}

runs=3 cpu=cortex-a57 l1='' log=''
while (($#)); do
    (($# >= 2)) || die "usage: ref-qemu.sh [--runs N] [--cpu cortex-a57|max] [--l1 <l1-dir>] [--log FILE]"
    case "$1" in
        --runs) runs=$2 ;;
        --cpu) cpu=$2 ;;
        --l1) l1=$2 ;;
        --log) log=$2 ;;
        *) die "unknown option '$1'" ;;
    esac
    shift 2
done
[[ $runs =~ ^[1-9]$ ]] || die "--runs '$runs' is not 1..9"
[[ -n $l1 ]] || l1=$("$here/build.sh" --keel none | tail -n1)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[[ -n $log ]] || log=$tmp/console.log
# The script runs in L1 (busybox sh, with step from L1's /init).
cat >"$tmp/l1-script.sh" <<EOF
truncate -s 64M /tmp/d.img
c=\$(printf nproc | base64)
i=1
while [ \$i -le $runs ]; do
step l2-qemu-\$i l1-peak-rss qemu-system-aarch64 -M virt,gic-version=3 -accel kvm -cpu host \\
 -m 256M -smp 2 -nographic -nic none -no-reboot \\
 -kernel /l2/vmlinuz -initrd /l2/initrd.cpio.gz \\
 -drive if=none,id=d0,file=/tmp/d.img,format=raw -device virtio-blk-device,drive=d0 \\
 -append "console=ttyAMA0 quiet loglevel=1 keel.cmd=\$c"
i=\$((i + 1))
done
EOF

set +e
"$here/run.sh" "$l1" "$tmp/l1-script.sh" --cpu "$cpu" --timeout $((120 + 90 * runs)) --log "$log"
run_status=$?
set -e

# Per-run figures from the log; then median/min/max.
python3 - "$log" "$runs" "$run_status" <<'EOF'
import re, statistics, sys

log, runs, run_status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lines = open(log, errors="replace").read().splitlines()
ok = run_status == 0
res = {}
for l in lines:
    m = re.match(r"^(l2-qemu-\d+) (\d+)\| (.*)$", l)
    if m:
        r = res.setdefault(m.group(1), {"out": []})
        r["out"].append(m.group(3))
        if m.group(3).rstrip().endswith("KEEL-GUEST-READY") and "ready" not in r:
            r["ready"] = int(m.group(2))
        mm = re.match(r"L1-PEAK-RSS-KB (\d+) (rusage|vmhwm)$", m.group(3))
        if mm:
            r[mm.group(2)] = int(mm.group(1))
    m = re.match(r"^L1-STEP-END (l2-qemu-\d+) (\d+) (\d+)$", l)
    if m:
        r = res.setdefault(m.group(1), {"out": []})
        r["status"], r["exit"] = int(m.group(2)), int(m.group(3))

def stats(xs):
    return "median %s  min %s  max %s" % (statistics.median(xs), min(xs), max(xs))

ready, exit_, rss, hwm = [], [], [], []
for i in range(1, runs + 1):
    name = "l2-qemu-%d" % i
    r = res.get(name)
    if r is None:
        print("%s: no output" % name)
        ok = False
        continue
    out = r["out"]
    checks = {
        "ready marker": "ready" in r,
        "KEEL-NPROC 2": "KEEL-NPROC 2" in out,
        "nproc printed 2": "2" in out,
        "KEEL-CMD-EXIT 0": "KEEL-CMD-EXIT 0" in out,
        "QEMU exit 0": r.get("status") == 0,
        "peak RSS": "rusage" in r,
    }
    bad = [k for k, v in checks.items() if not v]
    ok = ok and not bad
    print("%s: ready %s ms, exit %s ms, peak RSS %s KiB (polled VmHWM %s KiB)%s" % (
        name, r.get("ready"), r.get("exit"), r.get("rusage"), r.get("vmhwm"),
        "" if not bad else "  FAILED: " + ", ".join(bad)))
    if not bad:
        ready.append(r["ready"]); exit_.append(r["exit"]); rss.append(r["rusage"]); hwm.append(r["vmhwm"])
if ready:
    print("L2 (QEMU -accel kvm in L1), %d runs:" % len(ready))
    print("  step start -> KEEL-GUEST-READY ms: " + stats(ready))
    print("  step start -> QEMU exit        ms: " + stats(exit_))
    print("  peak RSS (ru_maxrss)          KiB: " + stats(rss))
    print("  peak RSS (polled VmHWM)       KiB: " + stats(hwm))
for l in lines:
    if l.startswith("L1-UPTIME ") or l.startswith("l1host/run.sh: L1-READY"):
        print("L1: " + l)
sys.exit(0 if ok else 1)
EOF
