#!/usr/bin/env bash
# Keel's Linux end-to-end tests on arm64 KVM, inside the emulated arm64 host (L1).
#
#   scripts/l2-tests.sh [--log FILE] [--timeout S]
#
# 1. builds the static arm64 keel (cargo, target aarch64-unknown-linux-musl, rust-lld);
# 2. builds (or reuses) the L1 image: guest/l1host/build.sh --keel <it> --extra
#    scripts/l2/l2-inside.sh (the tests, which run in L1 against guest/linux's arm64 guest);
# 3. boots L1 under qemu-system-aarch64 (guest/l1host/run.sh) and runs the tests there, one
#    L1 step each; prints one verdict line per test and `l2: N passed, N failed`.
# Exit status: 0 if every test passed, 1 if any failed, 77 (after a SKIPPED line) when
# qemu-system-aarch64 is missing, 2 on bad usage or a failed build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log='' timeout_s=900
while (($#)); do
    (($# >= 2)) || { echo "usage: scripts/l2-tests.sh [--log FILE] [--timeout S]" >&2; exit 2; }
    case "$1" in
        --log) log=$2 ;;
        --timeout) timeout_s=$2 ;;
        *) echo "l2: unknown option '$1'" >&2; exit 2 ;;
    esac
    shift 2
done

if ! command -v "${QEMU_SYSTEM:-qemu-system-aarch64}" >/dev/null 2>&1; then
    echo "l2: SKIPPED: qemu-system-aarch64 not found (apt-get install -y qemu-system-arm)"
    exit 77
fi

# The tests, in the order l2-inside.sh runs them.
tests=(boot-smp-devices disk-after-poweroff disk-after-sync-reset disk-after-sync-kill bad-config reboot-in-place
    net-ping-tcp net-tap-uplink vsock blk-forward blk-storage-restart)

# net-ping-tcp runs examples/net-linux-arm64.toml, whose keel.cmd= values must be
# scripts/l2/net-a.sh and net-b.sh without their comment lines (base64).
for vm in a b; do
    want=$(sed '/^#/d' "scripts/l2/net-$vm.sh" | base64 -w0)
    got=$(awk -v vm="$vm" '/^name = / { n = $3 } /^cmdline = / && n == "\"" vm "\"" { print }' \
        examples/net-linux-arm64.toml | sed -n 's/.*keel\.cmd=\([A-Za-z0-9+\/=]*\).*/\1/p')
    if [[ $got != "$want" ]]; then
        echo "l2: error: examples/net-linux-arm64.toml: vm $vm's keel.cmd= is not scripts/l2/net-$vm.sh (regenerate: sed '/^#/d' scripts/l2/net-$vm.sh | base64 -w0)" >&2
        exit 2
    fi
done

t0=$SECONDS
target=${CARGO_TARGET_DIR:-target}
# Symbols stripped: the binary goes into L1's initramfs.
if ! CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release -q -p keel \
    --target aarch64-unknown-linux-musl >&2; then
    echo "l2: error: building the arm64 keel failed" >&2
    exit 2
fi
keel=$target/aarch64-unknown-linux-musl/release/keel
# keel-probe also runs in L1 (/extra/keel-probe): the host side of the vsock test.
if ! (cd guest/probe && cargo build --release -q --locked >&2); then
    echo "l2: error: building keel-probe (guest/probe) failed" >&2
    exit 2
fi
# The extras every L1 image carries: one cached image serves all.
. scripts/l1-extras.sh
if ! l1=$(bash guest/l1host/build.sh --keel "$keel" "${L1_EXTRAS[@]}" | tail -n1); then
    echo "l2: error: building the L1 image failed" >&2
    exit 2
fi
echo "l2: arm64 keel and L1 image ready after $((SECONDS - t0)) s ($l1)" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[[ -n $log ]] || log=$tmp/console.log
printf '. /extra/l2-inside.sh\n' >"$tmp/l1-script.sh"
set +e
bash guest/l1host/run.sh "$l1" "$tmp/l1-script.sh" --timeout "$timeout_s" --log "$log" >/dev/null
run_status=$?
set -e

passed=0 failed=0
for t in "${tests[@]}"; do
    end=$(grep -E "^L1-STEP-END $t " "$log" | tail -n1 || true)
    if [[ -z $end ]]; then
        echo "l2: FAIL $t: did not run to its end (L1 run status $run_status)"
        failed=$((failed + 1))
        continue
    fi
    read -r _ _ st ms <<<"$end"
    if [[ $st == 0 ]]; then
        echo "l2: PASS $t ($ms ms)"
        passed=$((passed + 1))
    else
        echo "l2: FAIL $t (status $st, $ms ms):"
        grep -E "^$t [0-9]+\| L2-CHECK $t FAIL" "$log" | sed 's/^[^|]*| /    /' || true
        grep -E "^$t [0-9]+\| " "$log" | grep -v L2-CHECK | tail -n 15 | sed 's/^[^|]*| /      /' || true
        failed=$((failed + 1))
    fi
done
grep -E '^l1host/run.sh: ' "$log" | sed 's/^l1host\/run.sh: /l2: L1: /' || true
echo "l2: $passed passed, $failed failed ($((SECONDS - t0)) s)"
((failed == 0))
