#!/usr/bin/env bash
# Keel vs QEMU benchmark: see bench/README.md.
#   bash bench/run.sh                 full run (~20 min on 2 cores), writes bench/RESULTS.md and PNGs,
#                                     then bench/noisy.sh writes bench/NOISY.md
#   BENCH_QUICK=1 bash bench/run.sh   smoke check (< 2 min), writes bench/out-quick/
#   bash bench/run.sh budget          only the CPU-budget figure (Keel on Linux, needs root)
#   bash bench/run.sh api             only the admin API figures (bench/api.py: `keel daemon`,
#                                     and Firecracker's / Cloud Hypervisor's API when named)
# Builds keel and the test guest when they are missing; installs matplotlib when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Unless given, keel and the test guest are built from this tree (a no-op when up to date):
# a stale release binary would measure old code (it measured no budget at all once).
if [ -z "${KEEL:-}" ]; then
    cargo build --release -p keel -q
fi
if [ -z "${KEELTEST_ELF:-}" ]; then
    (cd guest/testguest && cargo build --release --target x86_64-unknown-none -q)
fi
python=${PYTHON:-python3}
if [ "${1:-}" = api ]; then  # needs neither QEMU nor matplotlib
    exec "$python" bench/api.py
fi
if ! command -v qemu-system-x86_64 >/dev/null && [ -z "${QEMU:-}" ]; then
    echo "bench: installing qemu-system-x86" >&2
    apt-get install -y -q qemu-system-x86 >/dev/null
fi

if ! "$python" -c 'import matplotlib' 2>/dev/null; then
    echo "bench: installing matplotlib (for the plots)" >&2
    "$python" -m pip install -q matplotlib 2>/dev/null \
        || "$python" -m pip install -q --break-system-packages matplotlib 2>/dev/null \
        || { apt-get install -y -q python3-matplotlib >/dev/null 2>&1 && python=/usr/bin/python3; } \
        || echo "bench: matplotlib could not be installed: no plots" >&2
fi
status=0
"$python" bench/bench.py "$@" || status=$?
# The admin API figures (bench/api.py, ~20 s; also in the smoke run): writes API.md, api.json.
if [ $# = 0 ]; then
    "$python" bench/api.py || status=1
fi
# The noisy-neighbour figure (seL4 and KVM, bench/noisy.sh): ~10 min, so not in the smoke run.
if [ "${BENCH_QUICK:-0}" = 0 ]; then
    bash bench/noisy.sh all | tee bench/NOISY.md || status=1
fi
exit "$status"
