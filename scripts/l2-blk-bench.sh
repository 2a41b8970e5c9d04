#!/usr/bin/env bash
# Block I/O through a storage VM against a disk attached directly, inside the emulated
# arm64 host (scripts/l2/blk-bench.sh has the workload and the topology). Rounds alternate
# (through the storage VM, direct), N each (default 3), in one L1 run.
#
#   scripts/l2-blk-bench.sh [--runs N] [--log FILE]
#
# Prints per run the four figures, then a Markdown table (median / min / max) with MiB/s
# for the sequential runs and IOPS for the 4 KiB ones, and the ratio of the medians
# (through the storage VM / direct).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/l2-bench-lib.sh
. scripts/l2-bench-lib.sh
l2_bench_init l2-blk-bench "$@"
l2_bench_l1
cat >"$tmp/l1.sh" <<L1SCRIPT
. /extra/blk-bench.sh
i=1
while [ \$i -le $runs ]; do
blk_bench_round \$i
i=\$((i + 1))
done
L1SCRIPT
l2_bench_run "$tmp/l1.sh" $((120 + 400 * runs))

python3 - "$log" "$runs" <<'PY'
import re, statistics, sys
log, runs = sys.argv[1], int(sys.argv[2])
lines = open(log, errors="replace").read().splitlines()
res = {}
for l in lines:
    m = re.match(r"^(\w+-\d+) (\d+)\| (.*)$", l)
    if m:
        mm = re.match(r"^(?:\[c\] )?BLKBENCH (seqwrite|seqread|4kwrite|4kread) (\d+)$", m.group(3).rstrip("\r"))
        if mm:
            res.setdefault(m.group(1), {})[mm.group(1)] = int(mm.group(2))
    m = re.match(r"^L1-STEP-END (\w+-\d+) (\d+) (\d+)$", l)
    if m:
        res.setdefault(m.group(1), {})["status"] = int(m.group(2))
# MiB/s for 16 MiB, IOPS for 1024 requests.
def rate(name, ms):
    return 16000 / ms if name.startswith("seq") else 1024000 / ms
names = ("seqwrite", "seqread", "4kwrite", "4kread")
ok = True
med = {}
for v in ("fwd", "direct"):
    per = {n: [] for n in names}
    for i in range(1, runs + 1):
        r = res.get("%s-%d" % (v, i), {})
        good = r.get("status") == 0 and all(r.get(n, 0) > 0 for n in names)
        print("%s-%d: %s%s" % (v, i, ", ".join("%s %s ms" % (n, r.get(n)) for n in names), "" if good else "  FAILED"))
        ok = ok and good
        if good:
            for n in names:
                per[n].append(rate(n, r[n]))
    med[v] = per
print()
print("| workload | through the storage VM | direct | ratio (medians) |")
print("|---|---|---|---|")
for n in names:
    unit = "MiB/s" if n.startswith("seq") else "IOPS"
    cells = []
    for v in ("fwd", "direct"):
        xs = med[v][n]
        cells.append("%.1f (%.1f–%.1f) %s" % (statistics.median(xs), min(xs), max(xs), unit) if xs else "n/a")
    f, d = med["fwd"][n], med["direct"][n]
    ratio = "%.2f" % (statistics.median(f) / statistics.median(d)) if f and d else "n/a"
    print("| %s | %s | %s | %s |" % (n, cells[0], cells[1], ratio))
sys.exit(0 if ok else 1)
PY
