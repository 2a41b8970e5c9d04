#!/usr/bin/env bash
# What cache colouring costs on seL4: system file, build time, image size and boot time,
# coloured vs uncoloured (bench/sel4_colour.py; bench/README.md). `make bench` runs it.
#   MICROKIT_SDK=/path/to/sdk bash bench/sel4-colour.sh     BENCH_RUNS=N (default 2)
# Without MICROKIT_SDK, the guest images or qemu-system-aarch64 it says so loudly, records the
# skip in $KEEL_SKIP_LOG when set, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

skip() {
    echo "" >&2
    echo "!!!!!!!! SKIP bench sel4-colour: $1 !!!!!!!!" >&2
    echo "" >&2
    if [ -n "${KEEL_SKIP_LOG:-}" ]; then
        echo "SKIP bench sel4-colour: $1" >> "$KEEL_SKIP_LOG"
    fi
    exit 0
}

[ -n "${MICROKIT_SDK:-}" ] || skip "MICROKIT_SDK is not set; the cost of cache colouring was NOT measured"
guest=${KEEL_CACHE:-$HOME/.cache/keel}/guest/arm64
if [ ! -f "$guest/vmlinuz" ] || [ ! -f "$guest/initrd.cpio.gz" ]; then
    skip "no guest in $guest (run guest/linux/build.sh arm64)"
fi
command -v qemu-system-aarch64 >/dev/null || skip "qemu-system-aarch64 is not installed"

keel=${KEEL:-${CARGO_TARGET_DIR:-target}/release/keel}
if [ ! -x "$keel" ]; then
    echo "bench sel4-colour: building keel ($keel)" >&2
    cargo build --release -p keel -q
fi
KEEL=$keel exec "${PYTHON:-python3}" bench/sel4_colour.py "$@"
