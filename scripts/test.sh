#!/usr/bin/env bash
# Runs every check of `make test` in order, keeps going after a failure so that one run
# reports everything, and ends with the summary line `N passed, N failed, N skipped`.
#
# Counting: each `cargo test` binary adds its passed/failed counts; each other step
# (fmt, clippy, cross-builds, shellcheck) counts as one check. A test that skips for a
# missing host feature appends its reason to $KEEL_SKIP_LOG: it is counted as skipped,
# not passed, and every reason is printed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

LOG_DIR=${KEEL_TEST_LOG_DIR:-target/test-logs}
mkdir -p "$LOG_DIR"
export KEEL_SKIP_LOG="$PWD/$LOG_DIR/skips.log"
: >"$KEEL_SKIP_LOG"

passed=0 failed=0
failures=()

step() { # step NAME CMD...: one check
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1)); echo "ok    $name ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "FAIL  $name ($((SECONDS - t0)) s): see $log"
    tail -n 30 "$log" | sed 's/^/      /'
  fi
}

cargo_tests() { # cargo_tests NAME ARGS...: count the tests of each test binary
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  local t0=$SECONDS
  cargo test "$@" >"$log" 2>&1
  local rc=$?
  local p f
  p=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^passed/) s += $i } END { print s + 0 }' "$log")
  f=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/) s += $i } END { print s + 0 }' "$log")
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
    # The build failed or a binary crashed: count it as one failure.
    f=1
  fi
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$f" = 0 ]; then
    echo "ok    $name: $p tests ($((SECONDS - t0)) s)"
  else
    failures+=("$name"); echo "FAIL  $name: $p passed, $f failed ($((SECONDS - t0)) s): see $log"
    grep -E -A15 '^failures:$|^---- |panicked|^error' "$log" | head -n 60 | sed 's/^/      /'
  fi
}

NOSTD_CRATES=(keel-core keel-virtio keel-net keel-vmm)

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
for c in "${NOSTD_CRATES[@]}"; do
  step "nostd-$c" cargo build -p "$c" --target aarch64-unknown-none
done
step nostd-keel-spec cargo build -p keel-spec --no-default-features --target aarch64-unknown-none
step testguest-fmt bash -c 'cd guest/testguest && cargo fmt -- --check'
step testguest-clippy bash -c 'cd guest/testguest && cargo clippy --release --target x86_64-unknown-none -- -D warnings'
step testguest-build bash -c 'cd guest/testguest && cargo build --release --target x86_64-unknown-none'
step probe-fmt bash -c 'cd guest/probe && cargo fmt -- --check'
step probe-clippy bash -c 'cd guest/probe && cargo clippy --release --all-targets --target aarch64-unknown-linux-musl -- -D warnings'
# From the repository root guest/probe's .cargo/config.toml does not apply: its unit tests
# build for the host.
cargo_tests probe-tests --manifest-path guest/probe/Cargo.toml
step shellcheck bash -c 'shellcheck -x scripts/*.sh guest/linux/*.sh guest/l1host/*.sh bench/*.sh guest/testguest/*.sh scripts/l2/*.sh guest/*.sh .ci/run'
# The Debian-built Linux guest images (cached under ~/.cache/keel by their inputs), booted
# under QEMU to check the /init protocol the end-to-end tests rely on.
step linux-guest-arm64 bash guest/linux/smoke-qemu.sh arm64
step linux-guest-x86_64 bash guest/linux/smoke-qemu.sh x86_64
cargo_tests tests --workspace
# The virtqueue's bounded exhaustive checks at their full (release) bounds
# (crates/keel-virtio/tests/exhaustive.rs; docs/virtio.md "Bounded exhaustive checks").
cargo_tests exhaustive --release -p keel-virtio --test exhaustive
# keel-core's and keel-virtio's unit tests under Miri (undefined behaviour in the unsafe
# guest-memory code); skipped, with a reason, without a nightly toolchain with miri.
step miri bash scripts/miri.sh
# The Spin models (crates/keel-net/model/ring.pml, crates/keel-virtio/model/notify.pml);
# skips without spin.
step model-check bash scripts/model-check.sh
# Every fuzz target (scripts/fuzz.sh): its committed corpus and regressions replayed by the
# libFuzzer build (AddressSanitizer), then a short run; skipped without nightly/cargo-fuzz.
# (`cargo test` above already replayed the same inputs on stable: crates/keel-fuzz.)
for t in $(bash scripts/fuzz.sh --list); do
  step "fuzz-$t" bash scripts/fuzz.sh --quick "$t"
done
# The benchmark harness works end to end (a smoke run: no figure is judged here).
step bench-quick env BENCH_QUICK=1 bash bench/run.sh

skipped=$(grep -c . "$KEEL_SKIP_LOG" || true)
if [ "$skipped" -gt 0 ]; then
  echo
  echo "SKIPPED ($skipped), each for a missing host feature:"
  sort "$KEEL_SKIP_LOG" | uniq -c | sed 's/^/  /'
  passed=$((passed - skipped))
fi
echo
[ "${#failures[@]}" -gt 0 ] && echo "failed steps: ${failures[*]}"
echo "keel-test: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
