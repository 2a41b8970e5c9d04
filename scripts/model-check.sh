#!/usr/bin/env bash
# Model-checks Keel's Spin models: the frame ring protocol (crates/keel-net/model/ring.pml)
# and the virtqueue's used-buffer notification with event index
# (crates/keel-virtio/model/notify.pml). One pan run per property; fails on any error,
# prints the states each run explored (each run takes a few seconds at most). Without
# spin (Debian package `spin`, installed by scripts/setup.sh) or gcc it prints a loud SKIP
# line, appends it to $KEEL_SKIP_LOG when set, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=(crates/keel-net/model/ring.pml crates/keel-virtio/model/notify.pml)

for tool in spin gcc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    msg="SKIP model-check: '$tool' is not installed (apt-get install -y spin gcc); the ring and virtqueue notification protocols were NOT model-checked"
    echo "!!!!!!!! $msg !!!!!!!!"
    if [ -n "${KEEL_SKIP_LOG:-}" ]; then echo "$msg" >>"$KEEL_SKIP_LOG"; fi
    exit 0
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for m in "${MODELS[@]}"; do cp "$m" "$work/"; done
cd "$work"

failed=0

# check MODEL NAME EXPECT SPIN_FLAGS GCC_FLAGS PAN_FLAGS: MODEL is a file name of MODELS;
# EXPECT is "pass" (errors: 0) or "fail" (the property must be violated: proves the check
# can see the bug it is about).
check() {
  local model=$1 name="$1: $2" expect=$3 spin_flags=$4 gcc_flags=$5 pan_flags=$6 out states line
  # shellcheck disable=SC2086 # the flag lists are word lists
  spin $spin_flags -a "$model" >spin.log 2>&1 || { echo "FAIL  $name: spin -a failed"; cat spin.log; failed=1; return; }
  # shellcheck disable=SC2086
  gcc -O2 $gcc_flags -o pan pan.c 2>gcc.log || { echo "FAIL  $name: gcc failed"; cat gcc.log; failed=1; return; }
  # shellcheck disable=SC2086
  out=$(./pan $pan_flags 2>&1 || true)
  states=$(echo "$out" | awk '/states, stored/ { print $1; exit }')
  if echo "$out" | grep -q "max search depth too small"; then
    echo "FAIL  $name: search depth too small ($states states)"; failed=1; return
  fi
  if [ "$expect" = pass ] && echo "$out" | grep -q "errors: 0$"; then
    echo "ok    $name: errors: 0, $states states stored"
  elif [ "$expect" = fail ] && echo "$out" | grep -Eq "errors: [1-9]"; then
    echo "ok    $name: violation found as expected, $states states stored"
  else
    echo "FAIL  $name (expected $expect):"; while IFS= read -r line; do echo "      $line"; done <<<"$out"; failed=1
  fi
}

SAFE="-DSAFETY -DNOCLAIM"
check ring.pml "honest: no loss/duplication/reordering, no deadlock, no lost wake-up" pass "" "$SAFE" "-m1000000"
check ring.pml "honest: every frame is eventually delivered (LTL all_delivered)" pass "" "" "-m1000000 -a -N all_delivered"
check ring.pml "hostile producer: bounded, in-window, always terminates" pass "-DHOSTILE_PRODUCER" "$SAFE" "-m1000000"
check ring.pml "hostile consumer: producer never blocks, every frame sent or dropped" pass "-DHOSTILE_CONSUMER" "$SAFE" "-m1000000"
check ring.pml "sanity: consumer without recheck loses a wake-up (assertion)" fail "-DBUG_NO_RECHECK" "$SAFE" "-m1000000 -E"
check ring.pml "sanity: consumer without recheck deadlocks (invalid end state)" fail "-DBUG_NO_RECHECK" "$SAFE" "-m1000000 -A"

check notify.pml "honest: no lost wake-up (assertion, invalid end states), at most one interrupt per arming" pass "" "$SAFE" "-m1000000"
check notify.pml "honest: every completion is eventually consumed (LTL all_consumed)" pass "" "" "-m1000000 -a -N all_consumed"
check notify.pml "sanity: device without the fence leaves the driver asleep (invalid end state)" fail "-DBUG_NO_FENCE" "$SAFE" "-m1000000 -A"
check notify.pml "sanity: device without the fence breaks all_consumed (LTL)" fail "-DBUG_NO_FENCE" "" "-m1000000 -a -N all_consumed"
check notify.pml "sanity: driver without re-check loses a wake-up (assertion)" fail "-DBUG_NO_RECHECK" "$SAFE" "-m1000000 -E"
check notify.pml "sanity: driver without re-check sleeps forever (invalid end state)" fail "-DBUG_NO_RECHECK" "$SAFE" "-m1000000 -A"

if [ "$failed" != 0 ]; then
  echo "model-check: FAILED"
  exit 1
fi
echo "model-check: all properties hold"
