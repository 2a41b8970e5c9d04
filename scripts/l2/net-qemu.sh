#!/usr/bin/env bash
# Check the guest side of net-ping-tcp without Keel: boot scripts/l2/net-a.sh and net-b.sh
# (the keel.cmd= of examples/net-linux-arm64.toml) in two arm64 guests under plain QEMU TCG
# joined by `-netdev socket` (a listens, b connects), and apply the checks of
# scripts/l2/l2-inside.sh's t_net: ping 3/3, both sha256 present and equal, 4194304 bytes
# received, both powered off. For editing the snippets; not part of `make test`.
#
#   scripts/l2/net-qemu.sh [--delay S]     (b starts S seconds after a, default 3)
#
# Exit status: 0 if every check passed, 1 if one failed, 2 on bad usage or a missing tool.
# Environment: QEMU_SYSTEM (default qemu-system-aarch64), KEEL_CACHE (see guest/linux).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

delay=3
if (($#)); then
    [[ $# == 2 && $1 == --delay && $2 =~ ^[0-9]+$ ]] || { echo "usage: scripts/l2/net-qemu.sh [--delay S]" >&2; exit 2; }
    delay=$2
fi
qemu=${QEMU_SYSTEM:-qemu-system-aarch64}
command -v "$qemu" >/dev/null 2>&1 || { echo "net-qemu: $qemu not found (apt-get install -y qemu-system-arm)" >&2; exit 2; }
img=$(bash guest/linux/build.sh arm64 | tail -n1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=$((20000 + RANDOM % 20000))

# vm <name> <netdev socket option>: boot one guest, its console lines prefixed "[<name>] "
# as keel up prints them.
vm() {
    local mac=02:00:00:00:00:0$1 cmd
    cmd=$(sed '/^#/d' "scripts/l2/net-$1.sh" | base64 -w0)
    timeout --kill-after=5 300 "$qemu" -M virt -cpu cortex-a57 -m 128M -smp 1 -nographic \
        -no-reboot -kernel "$img/vmlinuz" -initrd "$img/initrd.cpio.gz" \
        -netdev "socket,id=n0,$2" -device "virtio-net-device,netdev=n0,mac=$mac" \
        -append "console=ttyAMA0 quiet loglevel=1 keel.cmd=$cmd" </dev/null 2>&1 |
        tr -d '\r' | sed "s/^/[$1] /"
}
start=$EPOCHREALTIME
vm a "listen=127.0.0.1:$port" >"$tmp/a.log" &
sleep "$delay"
vm b "connect=127.0.0.1:$port" >"$tmp/b.log"
wait
cat "$tmp/a.log" "$tmp/b.log" >"$tmp/all.log"
grep -E 'NETTEST|KEEL-GUEST-POWEROFF' "$tmp/all.log"
awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "net-qemu: both guests ended after %.1f s\n", b - a }'

fails=0
check() {
    if "${@:2}"; then echo "net-qemu: ok   $1"; else echo "net-qemu: FAIL $1"; fails=$((fails + 1)); fi
}
sa=$(sed -n 's/^\[a\] NETTEST a sha256 \([0-9a-f]\{64\}\)$/\1/p' "$tmp/all.log")
sb=$(sed -n 's/^\[b\] NETTEST b sha256 \([0-9a-f]\{64\}\)$/\1/p' "$tmp/all.log")
check "a: ping 3/3" grep -qxF "[a] NETTEST a ping 3/3" "$tmp/all.log"
check "a: sha256 of the 4 MiB sent" test -n "$sa"
check "b: sha256 of what it received" test -n "$sb"
check "b received what a sent" test "$sa" = "$sb"
check "b received 4194304 bytes" grep -qxF "[b] NETTEST b size 4194304" "$tmp/all.log"
check "both powered off" test "$(grep -cE '^\[[ab]\] KEEL-GUEST-POWEROFF$' "$tmp/all.log")" = 2
((fails == 0))
