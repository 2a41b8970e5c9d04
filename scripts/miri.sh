#!/usr/bin/env bash
# Runs the unit tests of the portable crates whose unsafe code touches guest memory or shared rings
# (keel-core: GuestRam; keel-virtio: virtqueues and devices over it; keel-net: frame rings,
# ports and the switch; keel-vmm: the VMM loop over them) under Miri, which
# reports undefined behaviour (aliasing violations, out-of-bounds or uninitialised reads,
# data races, leaks) that the normal test run cannot see.
#
# Needs a nightly toolchain with the miri component (scripts/setup.sh installs it). Without
# one it prints a SKIP line, appends it to $KEEL_SKIP_LOG when that is set, and exits 0.
# Tests Miri cannot run (child processes, host syscalls) are marked
# `#[cfg_attr(miri, ignore)]` in the code, each with the reason.
# Environment: MIRIFLAGS (extra Miri flags, appended to the defaults below).
set -euo pipefail
cd "$(dirname "$0")/.." || exit 1

if ! cargo +nightly miri --version >/dev/null 2>&1; then
  msg="SKIP: miri: no nightly toolchain with miri (rustup toolchain install nightly --component miri)"
  echo "$msg" >&2
  if [ -n "${KEEL_SKIP_LOG:-}" ]; then
    echo "$msg" >>"$KEEL_SKIP_LOG"
  fi
  exit 0
fi

# Stacked Borrows (Miri's default aliasing model) plus strict provenance: guest RAM is
# reached through raw pointers only, and none may be made up from an integer.
# Miri's data-race detector stays on: memory a guest or ring peer writes concurrently is
# copied with relaxed atomics (keel-core src/memory/copy.rs), and tests with a concurrent
# writer thread (memory::tests::copies_racing_with_a_guest_writer_*,
# ring::slot::tests::consumer_copying_slots_a_peer_rewrites_*) fail here with plain copies.
# Weak-memory emulation is off: those copies mix byte and word atomics on the same bytes (the
# unaligned head and tail of one copy are the aligned middle of another), and this Miri's
# store-buffer emulation panics on such mixed-size atomic stores ("cannot have partially
# overlapping store buffer", an internal compiler error, not a finding). Race detection does
# not depend on it; only the exploration of stale relaxed loads is lost.
export MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-disable-weak-memory-emulation ${MIRIFLAGS:-}"
# Builds Miri's standard library the first time (about a minute); a no-op afterwards.
cargo +nightly miri setup >&2
# cargo-miri's test "binaries" are stubs that record the directory to interpret the sources
# in and have no source dependencies, so cargo never rebuilds them: a target/miri copied from
# another checkout would silently test that checkout's sources. Drop stubs of another tree.
{ grep -l '^{"RunWith"' target/miri/*/debug/deps/* 2>/dev/null || true; } | while IFS= read -r stub; do
  if ! grep -q "\"--out-dir\",\"$PWD/target/miri" "$stub"; then
    echo "miri: dropping $stub (built for another checkout)" >&2
    rm -rf target/miri/*/debug/.fingerprint/*-"${stub##*-}" "$stub"
  fi
done
# keel-vmm has no unsafe code of its own, but its tests drive devices and dispatch over
# GuestRam (boot loading, device models), so they exercise keel-core's unsafe code more.
# keel-spec is not run: it has no unsafe code and touches no guest memory or shared window,
# so Miri would check no code of ours there, only third-party TOML parsing code.
for crate in keel-core keel-virtio keel-net keel-vmm; do
  echo "miri: cargo +nightly miri test -p $crate" >&2
  cargo +nightly miri test -p "$crate"
done
