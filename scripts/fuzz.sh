#!/usr/bin/env bash
# Keel's fuzz targets (fuzz/fuzz_targets/*.rs; bodies and invariants in crates/keel-fuzz).
#
#   scripts/fuzz.sh --list                  the target names, one per line
#   scripts/fuzz.sh --quick TARGET...       what `make test` runs: replay the committed corpus
#                                           and regressions, then a short run (QUICK_SECONDS,
#                                           default 10 s) whose new inputs are thrown away
#   scripts/fuzz.sh [TARGET...]             a campaign (`make fuzz`): each target runs until
#                                           it has used FUZZ_CPU_SECONDS of CPU (default 1200 =
#                                           20 CPU-minutes; FUZZ_CPU_SECONDS=60 make fuzz for a
#                                           short one), then its corpus is minimised back into
#                                           fuzz/corpus/<target>/ and one summary line per
#                                           target goes to target/fuzz/campaign.md
#
# A crash stops that target: its input is kept under target/fuzz/artifacts/<target>/; fix the
# bug, copy the input to fuzz/regressions/<target>/ (replayed by `cargo test` from then on)
# and add a named unit test where the bug was.
#
# Needs a nightly toolchain and cargo-fuzz (scripts/setup.sh installs both). Without them it
# prints a loud SKIP line, appends it to $KEEL_SKIP_LOG when set, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD

targets_all() {
  local f
  for f in fuzz/fuzz_targets/*.rs; do
    [ -e "$f" ] || continue
    basename "$f" .rs
  done
}

mode=campaign
case "${1:-}" in
  --list) targets_all; exit 0 ;;
  --quick) mode=quick; shift ;;
esac
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
  mapfile -t targets < <(targets_all)
fi

skip() {
  local msg="SKIP fuzz ${targets[*]}: $1; the fuzz targets were NOT run (their corpora still run in cargo test)"
  echo "!!!!!!!! $msg !!!!!!!!"
  if [ -n "${KEEL_SKIP_LOG:-}" ]; then echo "$msg" >>"$KEEL_SKIP_LOG"; fi
  exit 0
}
cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 || skip "cargo-fuzz is not installed (cargo install cargo-fuzz)"

TARGET_DIR=$ROOT/target/fuzz
TRIPLE=x86_64-unknown-linux-gnu
BIN_DIR=$TARGET_DIR/$TRIPLE/release
mkdir -p "$TARGET_DIR"

# Release with debug assertions and overflow checks, AddressSanitizer (cargo-fuzz's
# defaults), built once for all the targets asked for.
for t in "${targets[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz: no target '$t' (targets: $(targets_all | tr '\n' ' '))" >&2; exit 2; }
  echo "fuzz: building $t" >&2
  cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$TARGET_DIR" -a "$t" >&2
done

# Common libFuzzer flags: inputs up to 64 KiB, no leak detection (the bodies keep nothing),
# crash inputs kept per target.
flags() { # flags TARGET
  mkdir -p "$TARGET_DIR/artifacts/$1"
  echo "-max_len=65536 -detect_leaks=0 -print_final_stats=1 -artifact_prefix=$TARGET_DIR/artifacts/$1/"
}

failed=0

if [ "$mode" = quick ]; then
  secs=${QUICK_SECONDS:-10}
  for t in "${targets[@]}"; do
    bin=$BIN_DIR/$t
    mkdir -p "fuzz/corpus/$t"
    # 1. Every committed input, once.
    dirs=("fuzz/corpus/$t")
    if [ -d "fuzz/regressions/$t" ]; then dirs+=("fuzz/regressions/$t"); fi
    # shellcheck disable=SC2046 # flags is a word list
    if ! "$bin" $(flags "$t") -runs=0 "${dirs[@]}" >"$TARGET_DIR/$t.replay.log" 2>&1; then
      echo "FAIL  fuzz $t: a committed input breaks an invariant:"; tail -n 40 "$TARGET_DIR/$t.replay.log"; failed=1; continue
    fi
    # 2. A short run from the corpus, in a scratch copy (nothing is written back).
    work=$(mktemp -d)
    cp -r "fuzz/corpus/$t/." "$work/"
    # shellcheck disable=SC2046
    if ! "$bin" $(flags "$t") -max_total_time="$secs" "$work" >"$TARGET_DIR/$t.quick.log" 2>&1; then
      echo "FAIL  fuzz $t: crash within ${secs} s (input under target/fuzz/artifacts/$t/):"; tail -n 40 "$TARGET_DIR/$t.quick.log"; failed=1
    else
      echo "ok    fuzz $t: corpus replayed, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$TARGET_DIR/$t.quick.log" | awk '{ print $2 }') executions in ${secs} s"
    fi
    rm -rf "$work"
  done
  exit "$failed"
fi

# Campaign: each target until it has used FUZZ_CPU_SECONDS of CPU (user + system time of the
# libFuzzer process, read from /proc, so a loaded machine lengthens the wall time, not the
# amount of fuzzing).
cpu_limit=${FUZZ_CPU_SECONDS:-1200}
hz=$(getconf CLK_TCK)
summary=$TARGET_DIR/campaign.md
for t in "${targets[@]}"; do
  bin=$BIN_DIR/$t
  work=$TARGET_DIR/work/$t
  mkdir -p "$work" "fuzz/corpus/$t"
  cp -r "fuzz/corpus/$t/." "$work/" 2>/dev/null || true
  log=$TARGET_DIR/$t.campaign.log
  echo "fuzz: $t for $cpu_limit CPU-seconds (log: $log)" >&2
  # shellcheck disable=SC2046
  "$bin" $(flags "$t") "$work" fuzz/corpus/"$t" >"$log" 2>&1 &
  pid=$!
  cpu=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ -r "/proc/$pid/stat" ]; then
      # Fields 14 and 15: utime and stime in clock ticks (the command name is field 2 and
      # contains no spaces here).
      ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
      cpu=$((ticks / hz))
      if [ "$cpu" -ge "$cpu_limit" ]; then
        kill -INT "$pid" 2>/dev/null || true
        break
      fi
    fi
    sleep 2
  done
  rc=0
  wait "$pid" || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{ print $2 }' | tail -n 1)
  edges=$(grep -o 'Loaded 1 modules *([0-9]* inline 8-bit counters)' "$log" | grep -o '([0-9]*' | tr -d '(' | head -n 1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | awk '{ print $2 }')
  ft=$(grep -Eo 'ft: [0-9]+' "$log" | tail -n 1 | awk '{ print $2 }')
  # libFuzzer also keeps a "slow unit" (the slowest input once it takes more than 10 s of
  # wall time): on a loaded host that is the load, not the target. Reported apart; every
  # other artifact (crash-, leak-, timeout-, oom-) is a failure.
  crashes=$(find "$TARGET_DIR/artifacts/$t" -type f ! -name 'slow-unit-*' | wc -l)
  slow=$(find "$TARGET_DIR/artifacts/$t" -type f -name 'slow-unit-*' | wc -l)
  # Minimise the grown corpus back into the committed one.
  merged=$(mktemp -d)
  # shellcheck disable=SC2046
  "$bin" $(flags "$t") -merge=1 "$merged" "$work" >"$TARGET_DIR/$t.merge.log" 2>&1 || true
  if [ -n "$(ls -A "$merged")" ]; then
    rm -rf "fuzz/corpus/$t"; mkdir -p "fuzz/corpus/$t"; cp "$merged"/* "fuzz/corpus/$t/"
  fi
  rm -rf "$merged"
  n=$(find "fuzz/corpus/$t" -type f | wc -l)
  line="$t: ${execs:-?} executions in $cpu CPU-s, cov ${cov:-?} of ${edges:-?} edges, ft ${ft:-?}, corpus $n inputs, crashes $crashes, slow units $slow (exit $rc)"
  echo "$(date -u +%FT%TZ) $line" >>"$summary"
  echo "$line"
  if [ "$slow" != 0 ]; then
    echo "fuzz $t: $slow slow unit(s) under $TARGET_DIR/artifacts/$t/ (over 10 s of wall time once; replay one alone with: $bin -runs=10 FILE)"
  fi
  if [ "$rc" != 0 ] && [ "$crashes" != 0 ]; then
    echo "FAIL  fuzz $t: crash; inputs under $TARGET_DIR/artifacts/$t/"; failed=1
  fi
done
exit "$failed"
