#!/usr/bin/env bash
# VM-to-VM TCP inside the emulated arm64 host (L1): the 4 MiB transfer of
# examples/net-linux-arm64.toml (busybox nc from a to b, 1 vCPU and 128 MiB each, the same
# L2 kernel, initramfs and guest snippets) on Keel (`keel up`: two VMM processes and a
# switch process) against two Debian arm64 QEMUs on L1's KVM joined by `-netdev socket`
# (QEMU's userspace TCP tunnel; L1 has tun but no bridge or vhost-net modules). Runs alternate
# (keel, qemu, keel, …), N each (default 3), in one L1 run.
#
#   scripts/l2-net-bench.sh [--runs N] [--log FILE]
#
# Per run: the transfer's time as a measures it (`NETTEST a sent-ms`, L2's /proc/uptime,
# 10 ms resolution) -> MiB/s, the ping round trip, and the step's wall time (L1 clock). A run
# counts only if b's sha256 equals a's. Prints a Markdown table (median/min/max).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/l2-bench-lib.sh
. scripts/l2-bench-lib.sh
l2_bench_init l2-net-bench "$@"
l2_bench_l1
# The L1 script (busybox sh; must stay below ~1400 bytes). QEMU's console is its PL011
# (ttyAMA0); b listens, a connects once b's socket is there.
cat >"$tmp/l1.sh" <<L1SCRIPT
ip link set lo up
mkdir -p /tmp/kc/guest
ln -s /l2 /tmp/kc/guest/arm64
t=/extra/net-linux-arm64.toml
c() { sed -n "/^name = \"\$1\"/,/^cmdline/s/^cmdline = \"console=ttyS0 \(.*\)\"\$/console=ttyAMA0 \1/p" \$t; }
q() { timeout 180 qemu-system-aarch64 -M virt,gic-version=3 -accel kvm -cpu host -m 128M -smp 1 -nographic -nic none -no-reboot -kernel /l2/vmlinuz -initrd /l2/initrd.cpio.gz -netdev socket,id=n,\$2 -device virtio-net-device,netdev=n,mac=02:00:00:00:00:0\$1 -append "\$(c \$1)" 2>&1 | sed "s/^/[\$1] /"; }
qp() {
q b listen=127.0.0.1:5555 &
n=0
while ! netstat -ltn | grep -q ':5555 ' && [ \$n -lt 400 ]; do usleep 50000; n=\$((n + 1)); done
q a connect=127.0.0.1:5555
wait
}
i=1
while [ \$i -le $runs ]; do
KEEL_CACHE=/tmp/kc step keel-\$i timeout 180 keel up \$t
step qemu-\$i qp
i=\$((i + 1))
done
L1SCRIPT
l2_bench_run "$tmp/l1.sh" $((120 + 200 * runs))

python3 - "$log" "$runs" <<'PY'
import re, statistics, sys
log, runs = sys.argv[1], int(sys.argv[2])
lines = open(log, errors="replace").read().splitlines()
res = {}
for l in lines:
    m = re.match(r"^(\w+-\d+) (\d+)\| (.*)$", l)
    if m:
        r = res.setdefault(m.group(1), {})
        text = m.group(3).rstrip("\r")
        for key, pat in (("sha_a", r"^\[a\] NETTEST a sha256 ([0-9a-f]{64})$"),
                         ("sha_b", r"^\[b\] NETTEST b sha256 ([0-9a-f]{64})$"),
                         ("ms", r"^\[a\] NETTEST a sent-ms (\d+)$"),
                         ("rtt", r"^\[a\] NETTEST a rtt min/avg/max = [0-9.]+/([0-9.]+)/")):
            mm = re.match(pat, text)
            if mm:
                r[key] = mm.group(1)
    m = re.match(r"^L1-STEP-END (\w+-\d+) (\d+) (\d+)$", l)
    if m:
        r = res.setdefault(m.group(1), {})
        r["status"], r["wall"] = int(m.group(2)), int(m.group(3))
ok = True
rows = []
def f(xs, fmt="%.0f"):
    return " / ".join(fmt % x for x in (statistics.median(xs), min(xs), max(xs)))
for v in ("keel", "qemu"):
    ms, mibs, rtt, wall = [], [], [], []
    for i in range(1, runs + 1):
        r = res.get("%s-%d" % (v, i), {})
        good = (r.get("status") == 0 and "sha_a" in r and r.get("sha_a") == r.get("sha_b")
                and int(r.get("ms", 0)) > 0 and "rtt" in r)
        print("%s-%d: 4 MiB in %s ms, ping avg %s ms, step %s ms%s" % (
            v, i, r.get("ms"), r.get("rtt"), r.get("wall"), "" if good else "  FAILED"))
        ok = ok and good
        if good:
            ms.append(int(r["ms"])); mibs.append(4000 / int(r["ms"]))
            rtt.append(float(r["rtt"])); wall.append(r["wall"] / 1000)
    if ms:
        rows.append("| %s | %d | %s | %s | %s | %s |" % (
            v, len(ms), f(ms), f(mibs, "%.2f"), f(rtt, "%.1f"), f(wall, "%.1f")))
print()
print("| VMMs | runs | 4 MiB a→b, ms (median / min / max) | MiB/s | ping avg, ms | whole run, s |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(r)
for l in lines:
    if l.startswith("l1host/run.sh: "):
        print(l)
sys.exit(0 if ok else 1)
PY
