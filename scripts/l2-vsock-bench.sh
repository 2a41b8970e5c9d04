#!/usr/bin/env bash
# vsock throughput against the same transfer over the network path, inside the emulated arm64
# host (L1, QEMU TCG running Keel's arm64 KVM backend). scripts/l2/vsock-bench.sh has the
# topology and the workload: two VMs a and b under `keel up`, and a 4 MiB echo (keel-probe:
# the sender writes 64 KiB chunks of a pattern, the peer echoes every byte, the sender reads
# the echo back and compares it) from a to b over vsock and from a to b over TCP on a Keel
# network; from L1 to b through b's vsock Unix socket (CONNECT/OK), and from L1 to b over TCP
# through a tap uplink (L1's kt0, 10.0.0.254) into the same network. Rounds alternate (vsock,
# net), N each (default 3), in one L1 run.
#
#   scripts/l2-vsock-bench.sh [--runs N] [--log FILE]
#
# MiB/s = 4 MiB / the sender's time from connected to the last echoed byte read (arm64
# virtual counter), so each byte crossed twice. A run counts only if every echo is whole
# (echoed = 4194304, mismatched = 0) and its step succeeded. Prints a Markdown table (median
# / min / max) and the ratio of the medians (vsock / network). L1 -> guest over the network
# needs the tun module in L1 (guest/l1host loads it); without it the table says so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/l2-bench-lib.sh
. scripts/l2-bench-lib.sh
l2_bench_init l2-vsock-bench "$@"
l2_bench_l1
cat >"$tmp/l1.sh" <<L1SCRIPT
. /extra/vsock-bench.sh
i=1
while [ \$i -le $runs ]; do
vsock_bench_round \$i
i=\$((i + 1))
done
L1SCRIPT
l2_bench_run "$tmp/l1.sh" $((120 + 500 * runs))

python3 - "$log" "$runs" <<'PY'
import re, statistics, sys
log, runs = sys.argv[1], int(sys.argv[2])
B = 4194304
lines = open(log, errors="replace").read().splitlines()
res, status, why, unavailable = {}, {}, None, set()
probe = re.compile(r"^(\[a\] )?KEEL-PROBE (vsock-connect|unix-connect|tcp-connect) .*"
                   r" bytes=(\d+) echoed=(\d+) mismatched=(\d+) ms=([0-9.]+)")
for l in lines:
    m = re.match(r"^((?:vsock|net)-\d+) \d+\| (.*)$", l)
    if m:
        body = m.group(2).rstrip("\r")
        p = probe.match(body)
        if p:
            # a's lines come through keel up ("[a] "), L1's own probe prints unprefixed.
            kind = "guest" if p.group(1) else "host"
            whole = int(p.group(3)) == B and int(p.group(4)) == B and int(p.group(5)) == 0
            ms = float(p.group(6))
            res.setdefault(m.group(1), {})[kind] = (B / 1048576 / (ms / 1000), whole, ms)
        u = re.match(r"^VSOCKBENCH host-net unavailable: (.*)$", body)
        if u:
            why = u.group(1)
            unavailable.add(m.group(1))
    m = re.match(r"^L1-STEP-END ((?:vsock|net)-\d+) (\d+) (\d+)$", l)
    if m:
        status[m.group(1)] = int(m.group(2))
ok = True
rates = {(p, k): [] for p in ("vsock", "net") for k in ("guest", "host")}
for i in range(1, runs + 1):
    for path in ("vsock", "net"):
        step = "%s-%d" % (path, i)
        # L1 -> b over the network is expected unless the round said it cannot be done.
        kinds = ("guest",) if step in unavailable else ("guest", "host")
        r = res.get(step, {})
        good = status.get(step) == 0 and all(k in r and r[k][1] for k in kinds)
        ok = ok and good
        print("%s: %s%s" % (step, ", ".join(
            "%s %s" % (k, "%.1f ms (%.2f MiB/s)%s" % (r[k][2], r[k][0], "" if r[k][1] else " NOT WHOLE") if k in r else "none")
            for k in kinds), "" if good else "  FAILED"))
        if good:
            for k in kinds:
                rates[(path, k)].append(r[k][0])
def cell(xs):
    return "%.2f (%.2f–%.2f)" % (statistics.median(xs), min(xs), max(xs)) if xs else "n/a"
print()
print("| transfer (4 MiB echo) | vsock MiB/s | network MiB/s | ratio (medians, vsock / network) |")
print("|---|---|---|---|")
for kind, label in (("guest", "guest a → guest b"), ("host", "host (L1) → guest b")):
    v, n = rates[("vsock", kind)], rates[("net", kind)]
    ratio = "%.2f" % (statistics.median(v) / statistics.median(n)) if v and n else "n/a"
    ncell = cell(n) if n or not why else "not measured: %s" % why
    print("| %s | %s | %s | %s |" % (label, cell(v), ncell, ratio))
sys.exit(0 if ok else 1)
PY
