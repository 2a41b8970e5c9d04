# shellcheck shell=bash
# What the L2 benchmarks (scripts/l2-bench.sh, l2-net-bench.sh, l2-blk-bench.sh,
# l2-vsock-bench.sh) share: their options, the skip without QEMU, the arm64 keel, keel-probe
# and the L1 image, and one L1 run. Sourced from the repository's root:
#
#   l2_bench_init NAME "$@"      parse `--runs N` (1..9, default 3) and `--log FILE`; exit 77
#                                after a SKIPPED line without qemu-system-aarch64; build the
#                                arm64 keel and keel-probe. Sets: runs, log (default: a file
#                                in tmp), tmp (a directory removed at exit), target.
#   l2_bench_l1 [EXTRA ARG]...   the L1 image (guest/l1host/build.sh with the extras every
#                                image carries, scripts/l1-extras.sh, then these): sets l1.
#   l2_bench_run SCRIPT SECONDS  boot L1 with SCRIPT, its console into $log; never fails (the
#                                caller parses the log, which says what went wrong).

l2_bench_init() {
    local name=$1
    shift
    runs=3 log=''
    while (($#)); do
        (($# >= 2)) || { echo "usage: scripts/$name.sh [--runs N] [--log FILE]" >&2; exit 2; }
        case "$1" in
            --runs) runs=$2 ;;
            --log) log=$2 ;;
            *) echo "$name: unknown option '$1'" >&2; exit 2 ;;
        esac
        shift 2
    done
    [[ $runs =~ ^[1-9]$ ]] || { echo "$name: --runs '$runs' is not 1..9" >&2; exit 2; }
    if ! command -v "${QEMU_SYSTEM:-qemu-system-aarch64}" >/dev/null 2>&1; then
        echo "$name: SKIPPED: qemu-system-aarch64 not found (apt-get install -y qemu-system-arm)"
        exit 77
    fi
    target=${CARGO_TARGET_DIR:-target}
    # Symbols stripped: the binary goes into L1's initramfs.
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release -q -p keel --target aarch64-unknown-linux-musl
    # keel-probe runs in L1 too (/extra/keel-probe): the host side of vsock and tap transfers.
    (cd guest/probe && cargo build --release -q --locked)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # the directory is fixed now
    trap "rm -rf '$tmp'" EXIT
    [[ -n $log ]] || log=$tmp/console.log
}

# shellcheck disable=SC2120 # the extra arguments are optional
l2_bench_l1() {
    # The extras every L1 image carries: one cached image serves all.
    # shellcheck source=scripts/l1-extras.sh
    . scripts/l1-extras.sh
    l1=$(bash guest/l1host/build.sh --keel "$target/aarch64-unknown-linux-musl/release/keel" \
        "${L1_EXTRAS[@]}" "$@" | tail -n1)
}

l2_bench_run() {
    local status=0
    bash guest/l1host/run.sh "$l1" "$1" --timeout "$2" --log "$log" >/dev/null || status=$?
    echo "l2 bench: L1 ran the script (status $status, console: $log)" >&2
}
