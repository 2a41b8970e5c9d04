# shellcheck shell=bash
# The files every L1 image carries (guest/l1host/build.sh --extra), in one order: the image
# is cached by its inputs, so every script that builds it passes exactly this list and one
# cached image serves the L2 tests, the L2 benchmarks and the demo. Sourced (from the
# repository root) by scripts/l2-tests.sh, l2-bench.sh, l2-net-bench.sh, l2-blk-bench.sh,
# l2-vsock-bench.sh and run-demo.sh; keel-probe (L1_PROBE) must be built first.
# shellcheck disable=SC2034 # used by the scripts that source this file
L1_PROBE=guest/probe/target/aarch64-unknown-linux-musl/release/keel-probe
# shellcheck disable=SC2034
L1_EXTRAS=(--extra scripts/l2/l2-inside.sh --extra examples/demo.toml
    --extra examples/net-linux-arm64.toml --extra "$L1_PROBE" --extra scripts/l2/blk-bench.sh
    --extra scripts/l2/vsock-bench.sh)
