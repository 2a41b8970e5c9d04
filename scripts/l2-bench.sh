#!/usr/bin/env bash
# Boot time and peak RSS of Keel against Debian's arm64 QEMU (`-accel kvm`), both on the KVM
# of the emulated arm64 host (L1), in one L1 run, on the same L2 kernel and initramfs
# (guest/linux arm64): 2 vCPUs, 256 MiB, one 64 MiB virtio-blk disk, quiet console,
# keel.cmd = `nproc`. Runs alternate (keel, qemu, keel, …), N each (default 3).
# With LKVM=/path/to/static/arm64/lkvm, kvmtool is measured too (never built or downloaded).
#
#   scripts/l2-bench.sh [--runs N] [--log FILE]
#
# Per run: ms from the L1 step's start (the VMM's exec) to L2's KEEL-GUEST-READY and to the
# VMM's exit (L1's CLOCK_MONOTONIC), and the VMM's peak RSS (getrusage ru_maxrss through
# guest/l1host/l1-peak-rss). Prints a Markdown table (median/min/max) for docs/kvm.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/l2-bench-lib.sh
. scripts/l2-bench-lib.sh
l2_bench_init l2-bench "$@"
extras=()
vmms="keel qemu"
if [[ -n ${LKVM:-} ]]; then
    [[ -x $LKVM ]] || { echo "l2-bench: LKVM='$LKVM' is not an executable" >&2; exit 2; }
    extras+=(--extra "$LKVM")
    vmms+=" lkvm"
fi
lkvm_name=${LKVM:+${LKVM##*/}}
l2_bench_l1 "${extras[@]}"
# The L1 script (busybox sh; must stay below ~1400 bytes).
cat >"$tmp/l1.sh" <<L1SCRIPT
truncate -s 64M /tmp/d.img
c=\$(printf nproc | base64)
a="quiet loglevel=1 keel.cmd=\$c"
printf '[[vm]]\nname="b"\narch="aarch64"\nvcpus=2\nmemory="256M"\nkernel="/l2/vmlinuz"\ninitrd="/l2/initrd.cpio.gz"\ncmdline="console=ttyS0 %s"\nserial="stdio"\n[[vm.disk]]\npath="/tmp/d.img"\n' "\$a" >/tmp/b.toml
i=1
while [ \$i -le $runs ]; do
for v in $vmms; do
case \$v in
keel) step keel-\$i l1-peak-rss timeout 90 keel run /tmp/b.toml ;;
qemu) step qemu-\$i l1-peak-rss timeout 90 qemu-system-aarch64 -M virt,gic-version=3 -accel kvm -cpu host -m 256M -smp 2 -nographic -nic none -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.cpio.gz -drive if=none,id=d0,file=/tmp/d.img,format=raw -device virtio-blk-device,drive=d0 -append "console=ttyAMA0 \$a" ;;
lkvm) step lkvm-\$i l1-peak-rss timeout 90 /extra/${lkvm_name} run -c 2 -m 256 -k /l2/vmlinuz -i /l2/initrd.cpio.gz -d /tmp/d.img -p "console=ttyS0 \$a" ;;
esac
done
i=\$((i + 1))
done
L1SCRIPT
l2_bench_run "$tmp/l1.sh" $((120 + 100 * runs))

# shellcheck disable=SC2086 # one VMM name per word
python3 - "$log" "$runs" $vmms <<'PY'
import re, statistics, sys
log, runs, vmms = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
lines = open(log, errors="replace").read().splitlines()
res = {}
for l in lines:
    m = re.match(r"^(\w+-\d+) (\d+)\| (.*)$", l)
    if m:
        r = res.setdefault(m.group(1), {"out": []})
        text = m.group(3).rstrip("\r")
        r["out"].append(text)
        if text.endswith("KEEL-GUEST-READY") and "ready" not in r:
            r["ready"] = int(m.group(2))
        mm = re.match(r"L1-PEAK-RSS-KB (\d+) rusage", text)
        if mm:
            r["rss"] = int(mm.group(1))
    m = re.match(r"^L1-STEP-END (\w+-\d+) (\d+) (\d+)$", l)
    if m:
        r = res.setdefault(m.group(1), {"out": []})
        r["status"], r["exit"] = int(m.group(2)), int(m.group(3))
ok = True
rows = []
def f(xs, fmt="%.0f"):
    return " / ".join(fmt % x for x in (statistics.median(xs), min(xs), max(xs)))
for v in vmms:
    ready, exit_, rss = [], [], []
    for i in range(1, runs + 1):
        r = res.get("%s-%d" % (v, i), {"out": []})
        good = ("ready" in r and "KEEL-NPROC 2" in r["out"] and "KEEL-CMD-EXIT 0" in r["out"]
                and r.get("status") == 0 and "rss" in r)
        print("%s-%d: ready %s ms, exit %s ms, peak RSS %s KiB%s" % (
            v, i, r.get("ready"), r.get("exit"), r.get("rss"), "" if good else "  FAILED"))
        ok = ok and good
        if good:
            ready.append(r["ready"]); exit_.append(r["exit"]); rss.append(r["rss"] / 1024)
    if ready:
        rows.append("| %s | %d | %s | %s | %s |" % (v, len(ready), f(ready), f(exit_), f(rss, "%.1f")))
print()
print("| VMM | runs | start to KEEL-GUEST-READY, ms (median / min / max) | start to VMM exit, ms | peak RSS, MiB |")
print("|---|---|---|---|---|")
for r in rows:
    print(r)
for l in lines:
    if l.startswith("l1host/run.sh: "):
        print(l)
sys.exit(0 if ok else 1)
PY
