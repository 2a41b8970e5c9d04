#!/usr/bin/env bash
# Runs the unit tests of the portable crates whose unsafe code touches guest memory or shared rings
# (keel-core: GuestRam; keel-virtio: virtqueues and devices over it; keel-net: frame rings,
# ports and the switch) under Miri, which
# reports undefined behaviour (aliasing violations, out-of-bounds or uninitialised reads,
# leaks) that the normal test run cannot see.
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
export MIRIFLAGS="-Zmiri-strict-provenance ${MIRIFLAGS:-}"
# Builds Miri's standard library the first time (about a minute); a no-op afterwards.
cargo +nightly miri setup >&2
for crate in keel-core keel-virtio keel-net; do
  echo "miri: cargo +nightly miri test -p $crate" >&2
  cargo +nightly miri test -p "$crate"
done
