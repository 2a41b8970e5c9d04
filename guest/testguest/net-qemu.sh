#!/bin/sh
# Runs the test guest's `net` roles in several QEMU microvm instances joined
# by a QEMU multicast socket netdev (one shared segment, no switch: every
# frame reaches every VM, the sender included), and checks their output.
#
#   guest/testguest/run-qemu.sh's -N/-E options do the attaching; this script
#   only starts the VMs (in both orders, at different times) and greps.
#
#   guest/testguest/net-qemu.sh [-a kvm|tcg] [-k] [scenario...]
#
# Scenarios (default: all): ping, ping-late, big, none, none-fails, spoof,
# storm, ping-storm. -k keeps the VMs' output in a directory (printed).
# Exit status: 0 if every check passed, 1 otherwise.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
accel=
keep=no
while getopts a:k opt; do
    case $opt in
    a) accel="-a $OPTARG" ;;
    k) keep=yes ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- ping ping-late big none none-fails spoof storm ping-storm

(cd "$here" && cargo build --release --target x86_64-unknown-none -q)
out=$(mktemp -d)
[ "$keep" = yes ] || trap 'rm -rf "$out"' EXIT
# A multicast port of our own, so parallel runs (and other users) do not meet.
port=$((20000 + $$ % 20000))
failures=0

A=02:00:00:00:00:0a
B=02:00:00:00:00:0b
C=02:00:00:00:00:0c
D=02:00:00:00:00:0d
SPOOF=02:00:00:00:00:99
NOBODY=02:00:00:00:00:0e

# vm NAME MAC WORDS...: starts a VM in the background; its output goes to $out/NAME.
vm() {
    name=$1 mac=$2
    shift 2
    # shellcheck disable=SC2086
    (
        status=0
        "$here/run-qemu.sh" $accel -B -n -t 60 -N "socket,mcast=230.0.0.1:$port,localaddr=127.0.0.1" \
            -E "$mac" net "$@" >"$out/$name" 2>&1 || status=$?
        echo "exit=$status" >>"$out/$name"
    ) &
}

# expect NAME PATTERN: the VM's output has a line matching the grep pattern.
expect() {
    if grep -q -- "$2" "$out/$1"; then
        echo "  ok   $1: $2"
    else
        echo "  FAIL $1: no line matching '$2'"
        sed 's/^/       | /' "$out/$1"
        failures=$((failures + 1))
    fi
}

for scenario in "$@"; do
    port=$((port + 1))
    echo "$scenario:"
    case $scenario in
    ping)  # echo up first, ping second
        vm b "$B" keeltest.net=echo keeltest.net-time=20000
        sleep 0.5
        vm a "$A" keeltest.net=ping keeltest.net-peer=$B keeltest.net-stop=$B
        wait
        expect a "^keeltest: net: ping $B sent=10 replies=10"
        expect a "^exit=0"
        expect b "^keeltest: net: echo requests=10 replies=10 end=stop"
        expect b "^keeltest: net: rx from $A frames=11 data=0"
        expect b "^exit=0"
        ;;
    ping-late)  # ping first: its requests go nowhere until echo is up
        vm a "$A" keeltest.net=ping keeltest.net-peer=$B keeltest.net-stop=$B keeltest.net-count=5
        sleep 2
        vm b "$B" keeltest.net=echo keeltest.net-time=20000
        wait
        expect a "^keeltest: net: ping $B sent=5 replies=5"
        expect a "^keeltest: net: ping $B tries=[0-9]"
        expect a "^exit=0"
        expect b "^keeltest: net: echo requests=5 replies=5 end=stop"
        expect b "^exit=0"
        ;;
    big)  # 1514-byte frames both ways
        vm b "$B" keeltest.net=echo keeltest.net-time=20000
        sleep 0.5
        vm a "$A" keeltest.net=ping keeltest.net-peer=$B keeltest.net-stop=$B keeltest.net-len=1514
        wait
        expect a "^keeltest: net: ping $B sent=10 replies=10"
        expect a "^exit=0"
        expect b "^exit=0"
        ;;
    none)  # nobody has address NOBODY; a lone listener hears nothing
        vm c "$C" keeltest.net=ping-expect-none keeltest.net-peer=$NOBODY keeltest.net-time=2000
        wait
        port=$((port + 1))
        vm d "$D" keeltest.net=listen-expect-none keeltest.net-time=2000
        wait
        expect c "^keeltest: net: ping $NOBODY sent=[1-9][0-9]* replies=0"
        expect c "^exit=0"
        expect d "^keeltest: net: listen frames=0 end=deadline"
        expect d "^keeltest: net: rx total frames=0 test=0 sources=0 bad=0"
        expect d "^exit=0"
        ;;
    none-fails)  # ping-expect-none at a VM that does answer fails (exit 10)
        vm b "$B" keeltest.net=echo keeltest.net-time=20000
        sleep 0.5
        vm c "$C" keeltest.net=ping-expect-none keeltest.net-peer=$B keeltest.net-time=1000 keeltest.net-stop=$B
        wait
        expect c "^keeltest: net: ping $B sent=[0-9]* replies=[1-9]"
        expect c "^keeltest: FAIL net: ping-expect-none"
        expect c "^exit=10"
        expect b "^exit=0"
        ;;
    spoof)  # QEMU's hub does not police source addresses: the spoofed frames arrive
        vm a "$A" keeltest.net=send keeltest.net-peer=$B keeltest.net-src=$SPOOF keeltest.net-count=5 keeltest.net-stop=$B
        sleep 1
        vm b "$B" keeltest.net=echo keeltest.net-time=20000
        wait
        expect a "^keeltest: net: send $B reachable tries=[1-9]"
        expect a "^keeltest: net: send $B src=$SPOOF frames=5"
        expect a "^exit=0"
        expect b "^keeltest: net: rx from $SPOOF frames=5 data=5"
        expect b "^keeltest: net: echo requests=1 replies=1 end=stop"
        expect b "^exit=0"
        ;;
    storm)  # a listener hears a storm; listen-expect-none fails on it
        vm c "$C" keeltest.net=listen keeltest.net-time=3000
        vm b "$B" keeltest.net=listen-expect-none keeltest.net-time=3000
        sleep 0.5
        vm d "$D" keeltest.net=storm keeltest.net-time=1500
        wait
        expect d "^keeltest: net: storm start src=$D len=64"
        expect d "^keeltest: net: storm sent=[1-9][0-9]* ms=[0-9]* end=deadline"
        expect d "^exit=0"
        expect c "^keeltest: net: rx from $D frames=[1-9][0-9]* data=[1-9]"
        expect c "^exit=0"
        expect b "^keeltest: FAIL net: listen-expect-none"
        expect b "^exit=10"
        ;;
    ping-storm)  # ping and echo while a storm runs; the pinger stops both
        vm d "$D" keeltest.net=storm keeltest.net-time=30000
        vm b "$B" keeltest.net=echo keeltest.net-time=30000
        sleep 1
        vm a "$A" keeltest.net=ping keeltest.net-peer=$B keeltest.net-count=20 keeltest.net-stop=$D,$B
        wait
        expect a "^keeltest: net: ping $B sent=20 replies=20"
        expect a "^keeltest: net: rx from $D frames=[1-9]"
        expect a "^exit=0"
        # Retries under the storm: B may see (and answer) more than 20 requests.
        expect b "^keeltest: net: echo requests=\\([2-9][0-9]\\) replies=\\1 end=stop"
        expect b "^keeltest: net: stopped by $A"
        expect b "^exit=0"
        expect d "^keeltest: net: storm sent=[1-9][0-9]* ms=[0-9]* end=stop"
        expect d "^exit=0"
        ;;
    *)
        echo "unknown scenario $scenario" >&2
        exit 2
        ;;
    esac
    if [ "$keep" = yes ]; then
        mkdir -p "$out/$scenario"
        mv "$out"/[a-d] "$out/$scenario/"
    else
        rm -f "$out"/[a-d]
    fi
done
[ "$keep" = no ] || echo "output kept in $out"
if [ "$failures" -ne 0 ]; then
    echo "net-qemu: $failures check(s) failed"
    exit 1
fi
echo "net-qemu: all checks passed"
