#!/usr/bin/env bash
# Noisy neighbour: how much a memory thrasher in one VM slows a fixed memory workload in
# another VM on a different core, on seL4 (Microkit image under QEMU TCG, smp-debug kernel)
# and on Linux KVM (`keel up` inside the emulated arm64 host, L1). See bench/README.md.
#
#   bench/noisy.sh [sel4|kvm|all] [--log-dir DIR]      (default: all)
#
# Two Debian arm64 VMs (guest/linux with /bin/keel-probe, 1 vCPU, 128 MiB each):
#   a, placement.pcpus = [0]: waits D s, runs `keel-probe work W P` REPS times ("with b
#      thrashing"), waits until ALONE s after its start (b has powered off by then), runs it
#      REPS times again ("alone");
#   b, placement.pcpus = [1]: `keel-probe thrash TM T` (streaming writes over TM MiB for T s),
#      then powers off.
# The console order proves the phases: b's thrash-start line must come before a's first
# loaded run and b's end line after a's last loaded run and before a's first lone run;
# otherwise the row says "phases overlapped" and the script exits 1.
# Per platform: a's work time (median of REPS, wall clock, and run time = wall clock minus
# the gaps its vCPU did not run), the slowdown ratios, b's write rate.
# Exit status: 0 when every platform asked for ran and was valid or was skipped (seL4 without
# MICROKIT_SDK: a loud SKIP line, appended to $KEEL_SKIP_LOG when set), 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

which=all log_dir=''
while (($#)); do
    case "$1" in
        sel4 | kvm | all) which=$1 ;;
        --log-dir)
            (($# >= 2)) || { echo "usage: bench/noisy.sh [sel4|kvm|all] [--log-dir DIR]" >&2; exit 2; }
            log_dir=$2
            shift
            ;;
        *) echo "usage: bench/noisy.sh [sel4|kvm|all] [--log-dir DIR]" >&2; exit 2 ;;
    esac
    shift
done

W=16 P=8 REPS=3 TM=32 D=20 T=150 ALONE=190

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[[ -n $log_dir ]] || log_dir=$tmp
mkdir -p "$log_dir"

skip() {
    local line="SKIP bench/noisy.sh $1: $2"
    printf '\n!!!!!!!! %s !!!!!!!!\n\n' "$line" >&2
    [[ -z ${KEEL_SKIP_LOG:-} ]] || printf '%s\n' "$line" >>"$KEEL_SKIP_LOG"
}

# a's and b's keel.cmd snippets (busybox sh), base64.
a_cmd=$(printf '%s\n' \
    "read u _ </proc/uptime; t0=\${u%.*}" \
    "sleep $D; echo NOISY-PHASE loaded" \
    "i=0; while [ \$i -lt $REPS ]; do keel-probe work $W $P; i=\$((i+1)); done" \
    "echo NOISY-PHASE wait" \
    "while read u _ </proc/uptime; [ \$((\${u%.*} - t0)) -lt $ALONE ]; do sleep 1; done" \
    "echo NOISY-PHASE alone" \
    "i=0; while [ \$i -lt $REPS ]; do keel-probe work $W $P; i=\$((i+1)); done" | base64 -w0)
b_cmd=$(printf 'keel-probe thrash %s %s\n' "$TM" "$T" | base64 -w0)

# system.toml for the two VMs: $1 = kernel dir, $2 = extra cmdline prefix, $3 = extra VM lines.
system_toml() {
    local vm pcpu cmd
    printf '[system]\nname = "noisy"\n'
    for vm in a b; do
        if [[ $vm == a ]]; then pcpu=0 cmd=$a_cmd; else pcpu=1 cmd=$b_cmd; fi
        printf '\n[[vm]]\nname = "%s"\narch = "aarch64"\nvcpus = 1\nmemory = "128M"\n' "$vm"
        printf 'kernel = "%s/vmlinuz"\ninitrd = "%s/initrd.cpio.gz"\n' "$1" "$1"
        printf 'cmdline = "%squiet keel.cmd=%s"\nplacement = { pcpus = [%s] }\n%s' "$2" "$cmd" "$pcpu" "$3"
    done
}

status=0
results=()

run_sel4() {
    if [[ -z ${MICROKIT_SDK:-} ]]; then
        skip sel4 "MICROKIT_SDK is not set; the seL4 noisy-neighbour figure was NOT measured"
        return
    fi
    local g
    g=$(bash guest/linux/build.sh arm64 | tail -n1)
    cargo build --release -q -p keel
    local keel=${CARGO_TARGET_DIR:-target}/release/keel
    system_toml "$g" "" "" >"$tmp/noisy-sel4.toml"
    local img
    img=$("$keel" sel4 build "$tmp/noisy-sel4.toml" --config smp-debug --out "$tmp/sel4-out" | tail -n1)
    echo "noisy: seL4: booting $img (smp-debug)" >&2
    local rc=0
    "$keel" sel4 run "$img" --timeout 900 >"$log_dir/noisy-sel4.log" 2>&1 || rc=$?
    [[ $rc == 0 ]] || echo "noisy: seL4: keel sel4 run exited $rc (log $log_dir/noisy-sel4.log)" >&2
    results+=("seL4 (Microkit, QEMU TCG -smp 4, smp-debug)|$log_dir/noisy-sel4.log|$rc")
}

run_kvm() {
    local target=${CARGO_TARGET_DIR:-target}
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release -q -p keel --target aarch64-unknown-linux-musl
    bash guest/linux/build.sh arm64 >/dev/null
    # In L1 the guest is /l2 (guest/linux arm64, with keel-probe); serial on stdio.
    system_toml /l2 "console=ttyS0 loglevel=1 " $'serial = "stdio"\n' >"$tmp/noisy-kvm.toml"
    local l1
    l1=$(bash guest/l1host/build.sh --keel "$target/aarch64-unknown-linux-musl/release/keel" \
        --extra "$tmp/noisy-kvm.toml" | tail -n1)
    printf 'step noisy timeout 600 keel up /extra/noisy-kvm.toml\n' >"$tmp/l1.sh"
    echo "noisy: KVM: booting L1 $l1" >&2
    local rc=0
    bash guest/l1host/run.sh "$l1" "$tmp/l1.sh" --timeout 900 --log "$log_dir/noisy-kvm.log" >/dev/null || rc=$?
    [[ $rc == 0 ]] || echo "noisy: KVM: l1host/run.sh exited $rc (log $log_dir/noisy-kvm.log)" >&2
    results+=("Linux KVM (keel up in L1: QEMU TCG -smp 2, L1 kernel KVM)|$log_dir/noisy-kvm.log|$rc")
}

case $which in
    sel4) run_sel4 ;;
    kvm) run_kvm ;;
    all) run_sel4; run_kvm ;;
esac
((${#results[@]})) || exit 0

NOISY_DATE=$(date -u +%Y-%m-%dT%H:%MZ) NOISY_LOAD=$(cut -d' ' -f1-3 /proc/loadavg) \
    python3 - "$REPS" "$W" "$P" "$TM" "${results[@]}" <<'PY' || status=1
import os, re, statistics, sys
reps, w, p, tm = (int(x) for x in sys.argv[1:5])
ok = True
rows = []
for arg in sys.argv[5:]:
    name, log, rc = arg.split("|")
    # Console lines of VM a or b: "a| ..." (seL4 console) or "[a] ..." (keel up), anywhere in
    # the line (L1 prefixes its step name).
    ev = []
    pin = []
    for l in open(log, errors="replace").read().splitlines():
        m = re.search(r"(?:\[([ab])\] |\b([ab])\| )(.*)$", l)
        if m:
            ev.append((m.group(1) or m.group(2), m.group(3).rstrip("\r")))
        if "cannot pin" in l:
            pin.append(l.strip())
    phase, runs = None, {"loaded": [], "alone": []}
    idx = {}
    for i, (vm, text) in enumerate(ev):
        if vm == "a" and text.startswith("NOISY-PHASE "):
            phase = text.split()[1]
            idx.setdefault(phase, i)
        elif vm == "a" and text.startswith("KEEL-PROBE work ") and phase in runs:
            kv = dict(x.split("=", 1) for x in text.split()[2:] if "=" in x)
            runs[phase].append((float(kv["ms"]), float(kv["run_ms"]), i))
        elif vm == "b" and text.startswith("KEEL-PROBE thrash-start"):
            idx.setdefault("tstart", i)
        elif vm == "b" and text.startswith("KEEL-PROBE thrash "):
            kv = dict(x.split("=", 1) for x in text.split()[2:] if "=" in x)
            idx.setdefault("tend", i)
            idx["rate"] = float(kv["mib_per_s"])
    complete = len(runs["loaded"]) == reps and len(runs["alone"]) == reps and "tend" in idx
    valid = (complete and idx.get("tstart", 1 << 30) < idx["loaded"]
             and runs["loaded"][-1][2] < idx["tend"] < idx["alone"])
    why = "" if valid else (" (incomplete: exit %s, see %s)" % (rc, log) if not complete
                            else " (phases overlapped: b was not thrashing throughout a's loaded runs)")
    ok = ok and valid
    print("%s: a alone %s ms, a with b thrashing %s ms (wall clock); run time %s / %s ms; b %s MiB/s%s" % (
        name, [r[0] for r in runs["alone"]], [r[0] for r in runs["loaded"]],
        [r[1] for r in runs["alone"]], [r[1] for r in runs["loaded"]], idx.get("rate"), why))
    if not complete:
        continue
    med = lambda xs: statistics.median(xs)
    aw, lw = med([r[0] for r in runs["alone"]]), med([r[0] for r in runs["loaded"]])
    ar, lr = med([r[1] for r in runs["alone"]]), med([r[1] for r in runs["loaded"]])
    placement = "a pcpus=[0], b pcpus=[1]" + ("; pinning failed: " + pin[0] if pin else "")
    rows.append("| %s | %s | %.0f | %.0f | %.3f | %.0f | %.0f | %.3f | %.0f |%s" % (
        name, placement, aw, lw, lw / aw, ar, lr, lr / ar, idx.get("rate", float("nan")),
        "" if valid else " INVALID" + why))
print()
print("## Noisy neighbour (bench/noisy.sh), %s, host load average at the end %s (%d cores)" % (
    os.environ.get("NOISY_DATE"), os.environ.get("NOISY_LOAD"), os.cpu_count()))
print()
print("Fixed workload in a: `keel-probe work %d %d` (%d passes of a random cycle through %d MiB of cache lines); b: `keel-probe thrash %d` (streaming writes over %d MiB). Median of %d runs each." % (w, p, p, w, tm, tm, reps))
print()
print("| platform | placement | a alone, ms | a with b thrashing, ms | slowdown (wall) | a alone, run ms | a with b, run ms | slowdown (run time) | b writes, MiB/s |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(r)
sys.exit(0 if ok else 1)
PY
exit "$status"
