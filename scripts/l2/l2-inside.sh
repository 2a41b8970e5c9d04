#!/bin/sh
# Keel's Linux end-to-end tests, run INSIDE the emulated arm64 host (L1) by
# scripts/l2-tests.sh: L1's /init sources this file (installed as /extra/l2-inside.sh by guest/l1host/build.sh --extra), with
# the `step` function of guest/l1host/init.sh. Each test is one L1 step; a test prints
# `L2-CHECK <test> ok|FAIL <what>` lines and exits non-zero if any check failed. The L2 guest
# is guest/linux's Debian arm64 kernel + initramfs (/l2), run by /bin/keel.
#
# Tests (in order; the disk tests depend on each other):
#   boot-smp-devices  2 vCPUs: KEEL-GUEST-READY, nproc 2, virtio blk/console/rng bound, the
#                     rng selected; writes pattern A to the disk; clean power-off (exit 0)
#   disk-after-poweroff  a new boot reads pattern A back; writes pattern B, `sync`, then
#                     resets at once (sysrq b: no clean shutdown; with on_reboot = "stop"
#                     keel exits 0 on the reset)
#   disk-after-sync-reset  a new boot reads pattern B back; writes pattern C, `sync`, and
#                     waits: L1 kills keel with SIGKILL once the guest said it synced
#   disk-after-sync-kill  a new boot reads pattern C back
#   reboot-in-place   `reboot -f` after writing a pattern: keel restarts the VM in place,
#                     the second boot finds the pattern and powers off (exit 0)
#   bad-config        refused before boot with exit 2: x86_64 guest, a non-Image kernel,
#                     a missing disk
#   net-ping-tcp      `keel up /extra/net-linux-arm64.toml`: VMs a and b on one network; a
#                     pings b (3/3) and sends it 4 MiB over TCP; both print the sha256, which
#                     must be equal; keel up exits 0 once both powered off
#   net-tap-uplink    `keel up` of one VM on a network whose uplink is L1's tap kt0 (needs
#                     the tun module: guest/l1host loads it); L1 gives kt0 10.0.0.254/24,
#                     sends the guest 1 MiB over TCP and checks the echo; the guest then
#                     sends 64 KiB to L1's TCP echo (t_tap)
#   vsock             `keel up` of three VMs with virtio-vsock: guest <-> guest echo for the
#                     allowed pair, guest -> host and host -> guest echo through the Unix
#                     sockets, a reset for the pair that is not allowed (t_vsock)
#   blk-forward       `keel up` of a storage VM (keel-agent) and two clients whose disks it
#                     serves: each writes, flushes and reads back 2 MiB in its own range; a
#                     write past its end is refused; the host file holds both, nothing else
#   blk-storage-restart  `keel daemon`: a client writes and reads a block every second; L1
#                     kills the storage VM's VMM (SIGKILL); the client's I/O fails (I/O
#                     error, no hang), the daemon restarts the storage VM (restart =
#                     "always") and the client's I/O works again
# Environment: L2_TIMEOUT (seconds per keel run, default 90), NET_TIMEOUT (seconds for the
# keel up of net-ping-tcp, default 180), KEEL (default /bin/keel).
# shellcheck shell=sh

KEEL=${KEEL:-/bin/keel}
L2_TIMEOUT=${L2_TIMEOUT:-90}
NET_TIMEOUT=${NET_TIMEOUT:-180}
W=/tmp/l2
mkdir -p $W
truncate -s 64M $W/disk.img

# system <name> <vcpus> <guest-shell-snippet> [kernel] [arch] [disk] [vm keys]: write
# $W/<name>.toml (the optional vm keys, e.g. 'on_reboot = "stop"', go into its [[vm]]).
system() {
    _cmd=$(printf '%s' "$3" | base64 | tr -d '\n')
    cat >"$W/$1.toml" <<TOML
[[vm]]
name = "$1"
arch = "${5:-aarch64}"
vcpus = $2
memory = "256M"
kernel = "${4:-/l2/vmlinuz}"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_cmd"
serial = "stdio"
${7:-}

[[vm.disk]]
path = "${6:-$W/disk.img}"
id = "data"

[[vm.console]]
output = "file:$W/$1-console.log"

[vm.rng]
TOML
}

# run <name>: run keel on $W/<name>.toml, output in $W/<name>.out, status in $rc.
run() {
    timeout "$L2_TIMEOUT" "$KEEL" run "$W/$1.toml" --stats >"$W/$1.out" 2>&1
    rc=$?
    # Show the guest's protocol lines and keel's own (the step prefixes them).
    grep -E '^(KEEL-|keel)' "$W/$1.out" | tr -d '\r'
    echo "keel exit status $rc"
}

failed=0
# check <test> <what> <command...>
check() {
    _t=$1 _w=$2
    shift 2
    if "$@" >/dev/null 2>&1; then
        echo "L2-CHECK $_t ok $_w"
    else
        echo "L2-CHECK $_t FAIL $_w"
        failed=1
    fi
}
has() { case $1 in *.*) _f=$W/$1 ;; *) _f=$W/$1.out ;; esac; tr -d '\r' <"$_f" | grep -qxF "$2"; }
has_re() { tr -d '\r' <"$W/$1.out" | grep -qE "$2"; }
has_re_cmd() { $1 2>&1 | grep -qE "$2"; }

t_boot() {
    failed=0
    system boot 2 "nproc; echo KEEL-PATTERN-A-\$(od -An -tx1 -N6 /dev/urandom | tr -d \" \\n\") >/tmp/p; dd if=/tmp/p of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; cat /tmp/p"
    run boot
    check boot "keel exit 0 (power-off)" [ "$rc" = 0 ]
    check boot "ready marker" has boot KEEL-GUEST-READY
    check boot "KEEL-NPROC 2" has boot "KEEL-NPROC 2"
    check boot "virtio-blk bound" has_re boot '^KEEL-VIRTIO virtio[0-9]+ device=0x0002 driver=virtio_blk$'
    check boot "virtio-console bound" has_re boot '^KEEL-VIRTIO virtio[0-9]+ device=0x0003 driver=virtio_console$'
    check boot "virtio-rng bound" has_re boot '^KEEL-VIRTIO virtio[0-9]+ device=0x0004 driver=virtio_rng$'
    check boot "rng selected" has_re boot '^KEEL-RNG virtio_rng'
    check boot "vda 65536 KiB" has boot "KEEL-BLOCK vda 65536"
    check boot "pattern written" has_re boot '^KEEL-PATTERN-A-[0-9a-f]{12}$'
    check boot "command exit 0" has boot "KEEL-CMD-EXIT 0"
    tr -d '\r' <"$W/boot.out" | grep -E '^KEEL-PATTERN-A-' >$W/pattern-a
    return $failed
}

t_poweroff() {
    failed=0
    system again 2 "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1; echo KEEL-PATTERN-B-\$(od -An -tx1 -N6 /dev/urandom | tr -d \" \\n\") >/tmp/p; dd if=/tmp/p of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; cat /tmp/p; sync; echo KEEL-SYNCED; echo b >/proc/sysrq-trigger; sleep 30" "" "" "" 'on_reboot = "stop"'
    run again
    check disk-after-poweroff "keel exit 0 (reset)" [ "$rc" = 0 ]
    check disk-after-poweroff "reboot reported" has_re again 'guest requested reboot'
    check disk-after-poweroff "pattern A read back" has again "$(cat $W/pattern-a)"
    check disk-after-poweroff "synced" has again KEEL-SYNCED
    check disk-after-poweroff "no clean power-off" sh -c "! grep -q KEEL-GUEST-POWEROFF $W/again.out"
    tr -d '\r' <"$W/again.out" | grep -E '^KEEL-PATTERN-B-' >$W/pattern-b
    return $failed
}

t_reset() {
    failed=0
    system third 1 "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1; echo KEEL-PATTERN-C-\$(od -An -tx1 -N6 /dev/urandom | tr -d \" \\n\") >/tmp/p; dd if=/tmp/p of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; cat /tmp/p; sync; echo KEEL-SYNCED; sleep 60"
    # keel in the background; SIGKILL once the guest has synced (at most L2_TIMEOUT s).
    "$KEEL" run "$W/third.toml" >"$W/third.out" 2>&1 &
    _pid=$!
    _n=0
    while [ $_n -lt $((L2_TIMEOUT * 10)) ] && ! grep -q KEEL-SYNCED "$W/third.out" && kill -0 $_pid 2>/dev/null; do
        usleep 100000
        _n=$((_n + 1))
    done
    kill -KILL $_pid 2>/dev/null
    wait $_pid
    rc=$?
    grep -E '^(KEEL-|keel)' "$W/third.out" | tr -d '\r'
    echo "keel exit status $rc"
    check disk-after-sync-reset "pattern B read back" has third "$(cat $W/pattern-b)"
    check disk-after-sync-reset "synced" has third KEEL-SYNCED
    check disk-after-sync-reset "keel killed (status 137)" [ "$rc" = 137 ]
    tr -d '\r' <"$W/third.out" | grep -E '^KEEL-PATTERN-C-' >$W/pattern-c
    return $failed
}

t_kill() {
    failed=0
    system fourth 1 "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1"
    run fourth
    check disk-after-sync-kill "keel exit 0" [ "$rc" = 0 ]
    check disk-after-sync-kill "pattern C read back" has fourth "$(cat $W/pattern-c)"
    return $failed
}

# The guest writes a random pattern to its disk, syncs and runs `reboot -f` (PSCI
# SYSTEM_RESET); keel restarts the VM in place (on_reboot = "restart", the default) and the
# second boot, under the same keel process, finds the pattern and powers off. Each line keel
# prints is stamped with L1's clock as it arrives ($W/reboot.out: "<ms> <line>").
t_reboot() {
    failed=0
    rm -f $W/reboot.img
    truncate -s 64M $W/reboot.img
    _cr=$(printf '\r')
    system reboot 1 "if dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1 | grep -q '^KEEL-REBOOT-PATTERN-'; then echo KEEL-FOUND \$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1); else echo KEEL-REBOOT-PATTERN-\$(od -An -tx1 -N6 /dev/urandom | tr -d \" \\n\") >/tmp/p; dd if=/tmp/p of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null; cat /tmp/p; sync; echo KEEL-REBOOTING; reboot -f; sleep 30; fi" "" "" $W/reboot.img
    {
        timeout "$L2_TIMEOUT" "$KEEL" run "$W/reboot.toml" 2>&1
        echo $? >$W/reboot.rc
    } | while IFS= read -r _l || [ -n "$_l" ]; do
        now_ms
        # shellcheck disable=SC2154 # set by now_ms, a function of guest/l1host/init.sh
        printf '%d %s\n' "$now_ms" "${_l%"$_cr"}"
    done >$W/reboot.out
    read -r rc <$W/reboot.rc
    cut -d' ' -f2- $W/reboot.out >$W/reboot.lines
    grep -E '^(KEEL-|keel)' $W/reboot.lines
    echo "keel exit status $rc"
    _pattern=$(grep -E '^KEEL-REBOOT-PATTERN-[0-9a-f]{12}$' $W/reboot.lines | head -n1)
    check reboot-in-place "keel exit 0 (power-off after the restart)" [ "$rc" = 0 ]
    check reboot-in-place "pattern written" [ -n "$_pattern" ]
    check reboot-in-place "guest rebooted" has reboot.lines KEEL-REBOOTING
    check reboot-in-place "keel restarted it once" has reboot.lines 'keel: vm "reboot": guest rebooted; restarting (1 of at most 5 per minute)'
    check reboot-in-place "READY twice" [ "$(grep -cx KEEL-GUEST-READY $W/reboot.lines)" = 2 ]
    check reboot-in-place "pattern found after the restart" has reboot.lines "KEEL-FOUND $_pattern"
    check reboot-in-place "clean power-off" has reboot.lines KEEL-GUEST-POWEROFF
    # Reset to keel's restart line, to the guest's first output, to READY (L1 clock, ms).
    awk '
        $2 == "KEEL-REBOOTING" && !r { r = $1 }
        r && restart && !first && $0 !~ /^[0-9]+ keel/ { first = $1 }
        r && /guest rebooted; restarting/ && !restart { restart = $1 }
        r && $2 == "KEEL-GUEST-READY" { ready = $1 }
        END { if (r && ready) printf "KEEL-REBOOT-TIMES reset->restart %d ms, ->first guest line %d ms, ->READY %d ms\n", restart - r, first - r, ready - r }
    ' $W/reboot.out
    return $failed
}

# refused <test> <what> <toml-name> [<text the error must contain>]: keel exits 2 at once
# with one error line.
refused() {
    timeout 30 "$KEEL" run "$W/$3.toml" >"$W/$3.out" 2>&1
    _rc=$?
    sed 's/^/  /' "$W/$3.out"
    check "$1" "$2: exit 2" [ "$_rc" = 2 ]
    check "$1" "$2: one error line" has_re "$3" '^keel: error: '
    check "$1" "$2: no boot" sh -c "! grep -q KEEL-GUEST-READY $W/$3.out"
    [ -z "$4" ] || check "$1" "$2: says '$4'" grep -qF "$4" "$W/$3.out"
}

# poke <file> <printf bytes> <offset>
# shellcheck disable=SC2059 # the bytes are given as printf escapes
poke() { printf "$2" | dd of="$1" bs=1 seek=$(($3)) conv=notrunc 2>/dev/null; }

t_bad() {
    failed=0
    # An x86 bzImage header (boot flag, HdrS, protocol 2.15, loaded high, relocatable) that
    # the spec accepts as an x86_64 kernel: the refusal is the backend's.
    truncate -s 8192 $W/bzimage
    poke $W/bzimage '\004' 0x1f1
    poke $W/bzimage '\125\252' 0x1fe
    poke $W/bzimage 'HdrS\017\002' 0x202
    poke $W/bzimage '\001' 0x211
    poke $W/bzimage '\001' 0x236
    system bad-arch 1 true $W/bzimage x86_64
    refused bad-config "x86_64 guest on arm64" bad-arch 'arch "x86_64" cannot run on this aarch64 host'
    system bad-arch-kernel 1 true /l2/vmlinuz x86_64
    refused bad-config "x86_64 VM with an arm64 Image" bad-arch-kernel
    system bad-kernel 1 true /l2/initrd.cpio.gz
    refused bad-config "kernel that is no Image" bad-kernel
    system bad-disk 1 true /l2/vmlinuz aarch64 $W/missing.img
    refused bad-config "missing disk" bad-disk
    return $failed
}

# A storage VM and two clients under `keel up` (docs/driver-vms.md): store owns $W/store.img
# (64 MiB, serial "pool0") and serves a [0, 16M) and b [16M, 32M) through keel-agent. Each
# client writes 2 MiB of random bytes to the start of its disk with dd + fsync (a flush: the agent's fdatasync), drops its caches, reads them back and prints both
# sha256; then it tries to write one sector past its end (refused: an I/O error or no
# space). L1 stops keel up once both clients powered off and checks the host file: each
# client's bytes at its range's start, and nothing of a in b's range or past 32M.
blk_client() { # blk_client <name>: the client's guest script
    cat <<EOS
n=0
until dd if=/dev/vda of=/dev/null bs=4k count=1 2>/dev/null; do
    n=\$((n + 1)); [ \$n -lt 60 ] || { echo "BLKTEST $1 FAIL disk never answered"; exit 1; }
    sleep 1
done
echo "BLKTEST $1 ready after \$n"
echo "BLKTEST $1 size \$(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/p bs=64k count=32 2>/dev/null
echo "BLKTEST $1 wrote \$(sha256sum </tmp/p | cut -d' ' -f1)"
read -r t0 _ </proc/uptime
dd if=/tmp/p of=/dev/vda bs=64k conv=fsync 2>/dev/null || echo "BLKTEST $1 FAIL write"
read -r t1 _ </proc/uptime
echo 3 >/proc/sys/vm/drop_caches
echo "BLKTEST $1 read \$(dd if=/dev/vda bs=64k count=32 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "BLKTEST $1 write-ms \$((\${t1%.*}\${t1#*.}0 - \${t0%.*}\${t0#*.}0))"
if dd if=/dev/zero of=/dev/vda bs=512 count=1 seek=32768 conv=fsync 2>/dev/null; then
    echo "BLKTEST $1 past-end accepted"
else
    echo "BLKTEST $1 past-end refused"
fi
EOS
}

t_blkfwd() {
    failed=0
    truncate -s 64M $W/store.img
    _store=$(printf '%s' 'echo "BLKTEST store up"; while :; do sleep 1; done' | base64 | tr -d '\n')
    _a=$(blk_client a | base64 | tr -d '\n')
    _b=$(blk_client b | base64 | tr -d '\n')
    cat >$W/blk.toml <<TOML
[system]
name = "blk"

[[vm]]
name = "store"
arch = "aarch64"
memory = "192M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_store"
serial = "stdio"

[[vm.disk]]
path = "$W/store.img"
id = "pool0"

[[vm]]
name = "a"
arch = "aarch64"
memory = "128M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_a"
serial = "stdio"

[[vm.disk]]
served_by = "store"
size = "16M"

[[vm]]
name = "b"
arch = "aarch64"
memory = "128M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_b"
serial = "stdio"

[[vm.disk]]
served_by = "store"
start = "16M"
size = "16M"
TOML
    "$KEEL" up $W/blk.toml >$W/blk.out 2>&1 &
    _pid=$!
    _n=0
    while [ $_n -lt $((NET_TIMEOUT * 10)) ] && kill -0 $_pid 2>/dev/null &&
        [ "$(grep -cE '^\[[ab]\] KEEL-GUEST-POWEROFF' $W/blk.out)" -lt 2 ]; do
        usleep 100000
        _n=$((_n + 1))
    done
    kill -TERM $_pid 2>/dev/null
    wait $_pid
    rc=$?
    tr -d '\r' <$W/blk.out >$W/blk.lines
    grep -E 'BLKTEST|keel-agent|KEEL-CMD-EXIT|KEEL-GUEST-POWEROFF|keel' $W/blk.lines
    echo "keel up exit status $rc"
    for _c in a b; do
        # (check() uses _t and _w itself)
        _wr=$(sed -n "s/^\[$_c\] BLKTEST $_c wrote \([0-9a-f]\{64\}\)\$/\1/p" $W/blk.lines)
        _rd=$(sed -n "s/^\[$_c\] BLKTEST $_c read \([0-9a-f]\{64\}\)\$/\1/p" $W/blk.lines)
        check blk-forward "$_c: its disk is 16 MiB" has blk.lines "[$_c] BLKTEST $_c size 32768"
        check blk-forward "$_c: wrote 2 MiB" [ -n "$_wr" ]
        check blk-forward "$_c: read back what it wrote" [ "$_wr" = "$_rd" ]
        check blk-forward "$_c: a write past its end is refused" has blk.lines "[$_c] BLKTEST $_c past-end refused"
    done
    _w_a=$(sed -n 's/^\[a\] BLKTEST a wrote \([0-9a-f]\{64\}\)$/\1/p' $W/blk.lines)
    _w_b=$(sed -n 's/^\[b\] BLKTEST b wrote \([0-9a-f]\{64\}\)$/\1/p' $W/blk.lines)
    _ha=$(dd if=$W/store.img bs=64k count=32 2>/dev/null | sha256sum | cut -d' ' -f1)
    _hb=$(dd if=$W/store.img bs=64k skip=256 count=32 2>/dev/null | sha256sum | cut -d' ' -f1)
    _zero=$(dd if=/dev/zero bs=64k count=32 2>/dev/null | sha256sum | cut -d' ' -f1)
    _gap=$(dd if=$W/store.img bs=64k skip=32 count=224 2>/dev/null | tr -d '\000' | wc -c)
    _tail=$(dd if=$W/store.img bs=1M skip=32 2>/dev/null | tr -d '\000' | wc -c)
    check blk-forward "store.img holds a's bytes at 0 (flushed to the host file)" [ "$_ha" = "$_w_a" ]
    check blk-forward "store.img holds b's bytes at 16M" [ "$_hb" = "$_w_b" ]
    check blk-forward "nothing else of store.img was written" [ "$_gap$_tail" = 00 ]
    check blk-forward "a's bytes are not b's" [ "$_ha" != "$_zero" ]
    _ms=$(sed -n 's/^\[a\] BLKTEST a write-ms \([0-9]*\)$/\1/p' $W/blk.lines)
    [ -n "$_ms" ] && awk -v ms="$_ms" 'BEGIN { printf "L2-BLK-FORWARD 2 MiB written (fsync) in %d ms (%.2f MiB/s)\n", ms, (ms > 0 ? 2 * 1000 / ms : 0) }'
    if [ $failed != 0 ]; then
        echo "--- the last 40 console lines of keel up:"
        tail -n 40 $W/blk.lines
    fi
    return $failed
}

# blk_seen ok|err <n>: the client's serial log ($_log) has a BLKRESTART line of that kind
# with an index of at least n.
blk_seen() {
    tr -d '\r' <"$_log" 2>/dev/null | awk -v k="$1" -v n="$2" '$1 == "BLKRESTART" && $2 == k && $3 >= n { f = 1 } END { exit !f }'
}

# blk_wait <seconds> <command...>: until the command succeeds (checked every 0.1 s).
blk_wait() {
    _s=$1
    shift
    _n=0
    while [ $_n -lt $((_s * 10)) ]; do
        "$@" && return 0
        usleep 100000
        _n=$((_n + 1))
    done
    "$@"
}

# A storage VM killed under `keel daemon` and restarted by its policy: its client sees I/O
# errors while it is down, then works again (docs/driver-vms.md, "Trust").
t_blkrestart() {
    failed=0
    truncate -s 64M $W/store2.img
    _store=$(printf '%s' 'while :; do sleep 1; done' | base64 | tr -d '\n')
    _c=$(cat <<'EOS' | base64 | tr -d '\n'
i=0
while [ $i -lt 150 ]; do
    dd if=/dev/urandom of=/tmp/x bs=4k count=1 2>/dev/null
    if dd if=/tmp/x of=/dev/vda bs=4k count=1 seek=$i oflag=direct 2>/dev/null &&
        dd if=/dev/vda bs=4k count=1 skip=$i iflag=direct 2>/dev/null | cmp -s - /tmp/x; then
        echo "BLKRESTART ok $i"
    else
        echo "BLKRESTART err $i"
    fi
    i=$((i + 1))
    sleep 1
done
EOS
)
    cat >$W/blkr.toml <<TOML
[system]
name = "blkr"

[[vm]]
name = "store"
arch = "aarch64"
memory = "192M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_store"
restart = "always"

[[vm.disk]]
path = "$W/store2.img"
id = "pool0"

[[vm]]
name = "c"
arch = "aarch64"
memory = "128M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_c"

[[vm.disk]]
served_by = "store"
size = "8M"
TOML
    _st=$W/blkr-state
    rm -rf $_st
    "$KEEL" daemon $W/blkr.toml --state-dir $_st >$W/blkr-daemon.out 2>&1 &
    _d=$!
    _log=$_st/vms/c/serial.log
    check blk-storage-restart "the client's I/O works" blk_wait 120 blk_seen ok 2
    _old=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' $_st/vms/store/vmm.json)
    kill -KILL "$_old"
    echo "killed the storage VMM (pid $_old)"
    check blk-storage-restart "the client's I/O fails while the storage VM is down" blk_wait 60 blk_seen err 0
    _first=$(tr -d '\r' <"$_log" | sed -n 's/^BLKRESTART err \([0-9]*\)$/\1/p' | head -n1)
    check blk-storage-restart "then works again after its restart" blk_wait 120 blk_seen ok $((${_first:-0} + 1))
    _new=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' $_st/vms/store/vmm.json 2>/dev/null)
    check blk-storage-restart "the daemon restarted the storage VM (new pid $_new)" test -n "$_new" -a "$_new" != "$_old"
    kill -TERM $_d 2>/dev/null
    wait $_d
    # From the kill to the first ok after the errors (one line per second of the client).
    tr -d '\r' <"$_log" | awk '/^BLKRESTART err/ { e = 1 } e { print } e && /^BLKRESTART ok/ { exit }'
    grep -E 'restart|store' $W/blkr-daemon.out | head -n 10
    return $failed
}

# Two VMs on one network under `keel up` (examples/net-linux-arm64.toml, installed as
# /extra/net-linux-arm64.toml; its guest snippets are scripts/l2/net-a.sh and net-b.sh). keel
# up prefixes each console line with "[<vm>] ". Prints the transfer's time in a as
# `L2-NET-TCP <bytes> bytes in <ms> ms (<MiB/s> MiB/s)` (10 ms resolution, L2's clock).
t_net() {
    failed=0
    # ${KEEL_CACHE}/guest/arm64 of the example is L1's copy of the guest.
    mkdir -p /tmp/kc/guest
    ln -sfn /l2 /tmp/kc/guest/arm64
    KEEL_CACHE=/tmp/kc timeout "$NET_TIMEOUT" "$KEEL" up /extra/net-linux-arm64.toml >$W/net.out 2>&1
    rc=$?
    tr -d '\r' <$W/net.out >$W/net.lines
    grep -E 'NETTEST|KEEL-CMD-EXIT|KEEL-GUEST-POWEROFF|keel' $W/net.lines
    echo "keel up exit status $rc"
    _sa=$(sed -n 's/^\[a\] NETTEST a sha256 \([0-9a-f]\{64\}\)$/\1/p' $W/net.lines)
    _sb=$(sed -n 's/^\[b\] NETTEST b sha256 \([0-9a-f]\{64\}\)$/\1/p' $W/net.lines)
    check net-ping-tcp "keel up exit 0 (both VMs powered off)" [ "$rc" = 0 ]
    check net-ping-tcp "a: ping 3/3" has net.lines "[a] NETTEST a ping 3/3"
    check net-ping-tcp "a: sha256 of the 4 MiB sent" [ -n "$_sa" ]
    check net-ping-tcp "b: sha256 of what it received" [ -n "$_sb" ]
    check net-ping-tcp "b received what a sent" [ "$_sa" = "$_sb" ]
    check net-ping-tcp "b received 4194304 bytes" has net.lines "[b] NETTEST b size 4194304"
    check net-ping-tcp "both powered off" [ "$(grep -cE '^\[[ab]\] KEEL-GUEST-POWEROFF$' $W/net.lines)" = 2 ]
    _ms=$(sed -n 's/^\[a\] NETTEST a sent-ms \([0-9]*\)$/\1/p' $W/net.lines)
    if [ -n "$_ms" ] && [ "$_sa" = "$_sb" ]; then
        awk -v ms="$_ms" 'BEGIN { printf "L2-NET-TCP 4194304 bytes in %d ms (%.2f MiB/s)\n", ms, (ms > 0 ? 4 * 1000 / ms : 0) }'
    fi
    if [ $failed != 0 ]; then
        echo "--- the last 30 console lines of keel up:"
        tail -n 30 $W/net.lines
    fi
    return $failed
}

# One VM (10.0.0.2) on network lan, whose uplink is L1's tap kt0: keel up's switch creates
# the tap, L1 gives it 10.0.0.254/24 (keel up does not configure the host side). L1 sends 1
# MiB to the guest's TCP echo on port 5000 (keel-probe tcp-connect, L1 -> guest through the
# tap), then the guest sends 64 KiB to L1's echo on port 6000 (guest -> L1). Prints
# `L2-TAP <what> <bytes> bytes in <ms> ms`.
t_tap() {
    failed=0
    check net-tap-uplink "L1 has /dev/net/tun (tun module)" [ -c /dev/net/tun ]
    # The guest powers off only once no TCP socket is still closing (FIN_WAIT1, LAST_ACK,
    # CLOSING in /proc/net/tcp; 10 s at most): close() returns before the kernel has sent
    # the last of an echo, and a powered-off guest would leave L1 waiting for it.
    # shellcheck disable=SC2016 # expanded by the guest's shell
    _cmd=$(printf '%s' 'ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up; keel-probe tcp-listen 5000 1; keel-probe tcp-connect 10.0.0.254 6000 65536 60; n=0; while [ $n -lt 100 ] && grep -qE "^ *[0-9]+: [0-9A-F]+:[0-9A-F]+ [0-9A-F]+:[0-9A-F]+ (04|09|0B) " /proc/net/tcp; do usleep 100000; n=$((n + 1)); done' |
        base64 | tr -d '\n')
    cat >$W/tap.toml <<TOML
[system]
name = "tap"

[[network]]
name = "lan"
uplink = "tap:kt0"

[[vm]]
name = "g"
arch = "aarch64"
vcpus = 1
memory = "128M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_cmd"
serial = "stdio"

[[vm.net]]
network = "lan"
mac = "02:00:00:00:00:0b"
TOML
    /extra/keel-probe tcp-listen 6000 1 >$W/tap-echo.out 2>&1 &
    _echo=$!
    timeout "$NET_TIMEOUT" "$KEEL" up $W/tap.toml --stats >$W/tap.out 2>&1 &
    _up=$!
    _n=0
    while [ $_n -lt 300 ] && kill -0 $_up 2>/dev/null && ! [ -e /sys/class/net/kt0 ]; do
        usleep 100000
        _n=$((_n + 1))
    done
    check net-tap-uplink "keel up created the tap kt0" [ -e /sys/class/net/kt0 ]
    ip addr add 10.0.0.254/24 dev kt0 && ip link set kt0 up
    check net-tap-uplink "L1 gave kt0 10.0.0.254/24 and set it up" has_re_cmd "ip addr show kt0" 'inet 10\.0\.0\.254/24'
    /extra/keel-probe tcp-connect 10.0.0.2 5000 1048576 120 >$W/tap-host.out 2>&1
    end_up tap
    check net-tap-uplink "keel up exit 0 (the VM powered off)" [ "$rc" = 0 ]
    check net-tap-uplink "L1 -> guest: 1 MiB echoed whole through the tap" has_re tap-host '^KEEL-PROBE tcp-connect ip=10\.0\.0\.2 port=5000 bytes=1048576 echoed=1048576 mismatched=0 '
    check net-tap-uplink "the guest echoed L1's connection (from 10.0.0.254)" has_re tap '^\[g\] KEEL-PROBE tcp-echo port=5000 from=10\.0\.0\.254 bytes=1048576$'
    check net-tap-uplink "guest -> L1: 64 KiB echoed whole" has_re tap '^\[g\] KEEL-PROBE tcp-connect ip=10\.0\.0\.254 port=6000 bytes=65536 echoed=65536 mismatched=0 '
    check net-tap-uplink "L1's echo served the guest (from 10.0.0.2)" has_re tap-echo '^KEEL-PROBE tcp-echo port=6000 from=10\.0\.0\.2 bytes=65536$'
    check net-tap-uplink "the switch moved frames both ways on the uplink" has_re tap 'uplink tap:kt0: host_rx [1-9][0-9]* host_tx [1-9][0-9]* '
    sed -n 's/^KEEL-PROBE tcp-connect .* bytes=\([0-9]*\) .* ms=\([0-9.]*\) .*/L2-TAP L1->guest \1 bytes in \2 ms/p' $W/tap-host.out
    sed -n 's/^\[g\] KEEL-PROBE tcp-connect .* bytes=\([0-9]*\) .* ms=\([0-9.]*\) .*/L2-TAP guest->L1 \1 bytes in \2 ms/p' $W/tap.lines
    if [ $failed != 0 ]; then
        echo "--- the last 30 console lines of keel up:"
        tail -n 30 $W/tap.lines
    fi
    return $failed
}

# end_up NAME: after a `keel up` ($_up) with an L1 echo ($_echo) beside it, wait for keel up
# (its exit status in rc), stop the echo, write $W/NAME.lines (keel up's output without CRs)
# and show what the checks read: the probe lines and L1's side ($W/NAME-host.out,
# $W/NAME-echo.out).
end_up() {
    wait "$_up"
    rc=$?
    kill "$_echo" 2>/dev/null
    wait "$_echo" 2>/dev/null
    tr -d '\r' <"$W/$1.out" >"$W/$1.lines"
    grep -E 'KEEL-PROBE|KEEL-CMD-EXIT|KEEL-GUEST-POWEROFF|keel' "$W/$1.lines"
    cat "$W/$1-host.out" "$W/$1-echo.out"
    echo "keel up exit status $rc"
}

# vsock_vm <name> <cid> <guest-shell-snippet> [vm keys]: one [[vm]] with [vm.vsock] for
# t_vsock's system (on stdout).
vsock_vm() {
    _cmd=$(printf '%s' "$3" | base64 | tr -d '\n')
    cat <<TOML
[[vm]]
name = "$1"
arch = "aarch64"
vcpus = 1
memory = "128M"
kernel = "/l2/vmlinuz"
initrd = "/l2/initrd.cpio.gz"
cmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=$_cmd"
serial = "stdio"

[vm.vsock]
cid = $2
${4:-}

TOML
}

# Three VMs under `keel up` with virtio-vsock (docs/vsock.md): a (CID 3) and b (CID 4) are an
# allowed pair, c (CID 5) is not. b echoes two connections on port 5000 (keel-probe
# vsock-listen); a sends it 1 MiB and checks the echo (guest <-> guest over the pair's
# rings), then 64 KiB to host port 6000 (guest -> host: L1's echo at a.vsock_6000); L1 sends
# 256 KiB to b's port 5000 through b.vsock (host -> guest: CONNECT/OK); c's connection to b
# is reset by its own device. Prints `L2-VSOCK <what> <bytes> bytes in <ms> ms`.
t_vsock() {
    failed=0
    rm -f $W/a.vsock* $W/b.vsock*
    {
        printf '[system]\nname = "vsock"\n\n[vsock]\nallow = [["a", "b"]]\n\n'
        vsock_vm a 3 'keel-probe vsock-connect 4 5000 1048576 90; keel-probe vsock-connect 2 6000 65536 30' "socket = \"$W/a.vsock\""
        vsock_vm b 4 'keel-probe vsock-listen 5000 2' "socket = \"$W/b.vsock\""
        vsock_vm c 5 'keel-probe vsock-connect 4 5000 4096 0'
    } >$W/vsock.toml
    /extra/keel-probe unix-echo $W/a.vsock_6000 1 >$W/vsock-echo.out 2>&1 &
    _echo=$!
    timeout "$NET_TIMEOUT" "$KEEL" up $W/vsock.toml >$W/vsock.out 2>&1 &
    _up=$!
    /extra/keel-probe unix-connect $W/b.vsock 5000 262144 150 >$W/vsock-host.out 2>&1
    end_up vsock
    check vsock "keel up exit 0 (all VMs powered off)" [ "$rc" = 0 ]
    check vsock "a <-> b: 1 MiB echoed whole" has_re vsock '^\[a\] KEEL-PROBE vsock-connect cid=4 port=5000 bytes=1048576 echoed=1048576 mismatched=0 '
    check vsock "a -> host port 6000: 64 KiB echoed whole" has_re vsock '^\[a\] KEEL-PROBE vsock-connect cid=2 port=6000 bytes=65536 echoed=65536 mismatched=0 '
    check vsock "host -> b port 5000: 256 KiB echoed whole" has_re vsock-host '^KEEL-PROBE unix-connect .* bytes=262144 echoed=262144 mismatched=0 '
    check vsock "b saw a (CID 3) and the host (CID 2)" [ "$(grep -cE '^\[b\] KEEL-PROBE vsock-echo port=5000 from_cid=[23] ' $W/vsock.lines)" = 2 ]
    check vsock "c -> b (not an allowed pair): reset" has_re vsock '^\[c\] KEEL-PROBE vsock-connect cid=4 port=5000 refused=1 '
    check vsock "all three powered off" [ "$(grep -cE '^\[[abc]\] KEEL-GUEST-POWEROFF$' $W/vsock.lines)" = 3 ]
    sed -n 's/^\[a\] KEEL-PROBE vsock-connect cid=\([0-9]*\) port=[0-9]* bytes=\([0-9]*\) .* ms=\([0-9.]*\) .*/L2-VSOCK a->cid\1 \2 bytes in \3 ms/p' $W/vsock.lines
    sed -n 's/^KEEL-PROBE unix-connect .* bytes=\([0-9]*\) .* ms=\([0-9.]*\)$/L2-VSOCK host->b \1 bytes in \2 ms/p' $W/vsock-host.out
    if [ $failed != 0 ]; then
        echo "--- the last 30 console lines of keel up:"
        tail -n 30 $W/vsock.lines
    fi
    return $failed
}

step boot-smp-devices t_boot
step disk-after-poweroff t_poweroff
step disk-after-sync-reset t_reset
step disk-after-sync-kill t_kill
step bad-config t_bad
step reboot-in-place t_reboot
step net-ping-tcp t_net
step net-tap-uplink t_tap
step vsock t_vsock
step blk-forward t_blkfwd
step blk-storage-restart t_blkrestart
