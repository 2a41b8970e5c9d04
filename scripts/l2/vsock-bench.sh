# shellcheck shell=sh
# vsock throughput against the same transfer over a VM network, inside the emulated arm64
# host (L1). Sourced by the L1 script of scripts/l2-vsock-bench.sh (installed as
# /extra/vsock-bench.sh), which calls `vsock_bench_round <i>` once per round. A round runs:
#   vsock-<i>  keel up: VMs a (CID 3) and b (CID 4), [vsock] allow = [["a", "b"]], each with
#              a host socket. b echoes 2 connections on port 5000 (keel-probe vsock-listen);
#              a sends it 4 MiB and reads the echo back (keel-probe vsock-connect); once a has
#              its result, L1 sends b 4 MiB through b's Unix socket (keel-probe unix-connect:
#              CONNECT 5000 / OK, then the same echo)
#   net-<i>    keel up: the same two VMs on one [[network]] "lan" (switch), 10.0.0.1 and
#              10.0.0.2, whose uplink is L1's tap kt0 (10.0.0.254): b echoes 2 connections on
#              TCP port 5000 (keel-probe tcp-listen); a sends it 4 MiB (keel-probe
#              tcp-connect); once a has its result, L1 sends b 4 MiB the same way through
#              the tap. Without /dev/net/tun in L1 (no tun module) the network has no uplink,
#              b echoes 1 connection and the round says so (VSOCKBENCH host-net unavailable
#              ...) and measures nothing for L1.
# Same probe, 64 KiB chunks, pattern and timing (arm64 virtual counter) on both paths; the
# probe's lines are `KEEL-PROBE <mode> ... bytes=N echoed=N mismatched=N ms=T ...`.
# 1 vCPU and 128 MiB per VM.

VB=/tmp/vsockbench
VB_BYTES=4194304
VB_TAP=kt0
VB_HOST_IP=10.0.0.254
mkdir -p $VB
# Guest snippet: wait (10 s at most) until no TCP socket is still closing with data or its FIN
# unacknowledged (FIN_WAIT1 04, LAST_ACK 09, CLOSING 0B in /proc/net/tcp). An echo server's
# close() returns before its kernel has sent the last of the echo: a guest that powered off
# right after `keel-probe tcp-listen` ended left L1's sender waiting for ~130 KB that never
# came (seen: b done, L1's socket in FIN_WAIT2 for good).
# shellcheck disable=SC2016 # expanded by the guest's shell
VB_DRAIN='n=0; while [ $n -lt 100 ] && grep -qE "^ *[0-9]+: [0-9A-F]+:[0-9A-F]+ [0-9A-F]+:[0-9A-F]+ (04|09|0B) " /proc/net/tcp; do usleep 100000; n=$((n + 1)); done'

# vsock_bench_vm <name> <guest snippet> [extra vm lines]
vsock_bench_vm() {
    printf '[[vm]]\nname = "%s"\narch = "aarch64"\nvcpus = 1\nmemory = "128M"\nkernel = "/l2/vmlinuz"\ninitrd = "/l2/initrd.cpio.gz"\ncmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=%s"\nserial = "stdio"\n%s\n' \
        "$1" "$(printf '%s' "$2" | base64 | tr -d '\n')" "${3:-}"
}

vsock_bench_files() {
    {
        printf '[system]\nname = "vsock-bench"\n\n[vsock]\nallow = [["a", "b"]]\n\n'
        vsock_bench_vm a "keel-probe vsock-connect 4 5000 $VB_BYTES 90" \
            "$(printf '[vm.vsock]\ncid = 3\nsocket = "%s"\n' $VB/a.vsock)"
        vsock_bench_vm b 'keel-probe vsock-listen 5000 2' \
            "$(printf '[vm.vsock]\ncid = 4\nsocket = "%s"\n' $VB/b.vsock)"
    } >$VB/vsock.toml
    # L1's side of the network: a tap uplink, if L1 has the tun driver.
    if [ -c /dev/net/tun ]; then
        _uplink="uplink = \"tap:$VB_TAP\"" _conns=2
    else
        _uplink='' _conns=1
    fi
    {
        printf '[system]\nname = "net-bench"\n\n[[network]]\nname = "lan"\n%s\n\n' "$_uplink"
        vsock_bench_vm a "ip addr add 10.0.0.1/24 dev eth0; ip link set eth0 up; keel-probe tcp-connect 10.0.0.2 5000 $VB_BYTES 90" \
            "$(printf '[[vm.net]]\nnetwork = "lan"\nmac = "02:00:00:00:00:0a"\n')"
        vsock_bench_vm b "ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up; keel-probe tcp-listen 5000 $_conns; $VB_DRAIN" \
            "$(printf '[[vm.net]]\nnetwork = "lan"\nmac = "02:00:00:00:00:0b"\n')"
    } >$VB/net.toml
}

# vsock_bench_up <name> <pattern>: keel up of $VB/<name>.toml in the background ($_up),
# output in $VB/<name>.out; vsock_bench_wait <name> <n>: until n VMs powered off (300 s at
# most), then stop it.
vsock_bench_up() {
    keel up "$VB/$1.toml" >"$VB/$1.out" 2>&1 &
    _up=$!
}
vsock_bench_wait() {
    _n=0
    while [ $_n -lt 3000 ] && kill -0 "$_up" 2>/dev/null &&
        [ "$(tr -d '\r' <"$VB/$1.out" | grep -c 'KEEL-GUEST-POWEROFF$')" -lt "$2" ]; do
        usleep 100000
        _n=$((_n + 1))
    done
    kill -TERM "$_up" 2>/dev/null
    wait "$_up"
}

vsock_bench_vsock() {
    rm -f $VB/a.vsock* $VB/b.vsock*
    vsock_bench_up vsock
    # The host's transfer starts once a's is over: b serves its connections one by one.
    _n=0
    while [ $_n -lt 1500 ] && kill -0 "$_up" 2>/dev/null &&
        ! grep -q '^\[a\] KEEL-PROBE vsock-connect' $VB/vsock.out; do
        usleep 200000
        _n=$((_n + 1))
    done
    /extra/keel-probe unix-connect $VB/b.vsock 5000 $VB_BYTES 60 >$VB/host.out 2>&1
    vsock_bench_wait vsock 2
    tr -d '\r' <$VB/vsock.out | grep -E 'KEEL-PROBE|keel:'
    cat $VB/host.out
    grep -q "^\[a\] KEEL-PROBE vsock-connect .* echoed=$VB_BYTES mismatched=0 " $VB/vsock.out &&
        grep -q "^KEEL-PROBE unix-connect .* echoed=$VB_BYTES mismatched=0 " $VB/host.out
}

vsock_bench_net() {
    rm -f $VB/host-net.out
    vsock_bench_up net
    if grep -q '^uplink = ' $VB/net.toml; then
        # The switch process creates the tap; L1 gives it its address (keel up does not).
        _n=0
        while [ $_n -lt 300 ] && kill -0 "$_up" 2>/dev/null && ! [ -e /sys/class/net/$VB_TAP ]; do
            usleep 100000
            _n=$((_n + 1))
        done
        if ip addr add $VB_HOST_IP/24 dev $VB_TAP && ip link set $VB_TAP up; then
            echo "VSOCKBENCH host-net tap $VB_TAP $VB_HOST_IP/24"
            # As over vsock: L1's transfer starts once a's is over.
            _n=0
            while [ $_n -lt 1500 ] && kill -0 "$_up" 2>/dev/null &&
                ! grep -q '^\[a\] KEEL-PROBE tcp-connect' $VB/net.out; do
                usleep 200000
                _n=$((_n + 1))
            done
            echo "VSOCKBENCH host-net a's transfer over, L1 sends"
            /extra/keel-probe tcp-connect 10.0.0.2 5000 $VB_BYTES 60 >$VB/host-net.out 2>&1
        else
            echo "VSOCKBENCH error: the tap $VB_TAP did not appear or cannot be configured"
        fi
    else
        echo "VSOCKBENCH host-net unavailable: L1 has no /dev/net/tun (tun module not loaded), so no tap uplink into the network"
    fi
    vsock_bench_wait net 2
    tr -d '\r' <$VB/net.out | grep -E 'KEEL-PROBE|keel:'
    [ -f $VB/host-net.out ] && cat $VB/host-net.out
    grep -q "^\[a\] KEEL-PROBE tcp-connect .* echoed=$VB_BYTES mismatched=0 " $VB/net.out || return 1
    if grep -q '^uplink = ' $VB/net.toml; then
        grep -q "^KEEL-PROBE tcp-connect .* echoed=$VB_BYTES mismatched=0 " $VB/host-net.out 2>/dev/null
    fi
}

vsock_bench_round() {
    [ -f $VB/vsock.toml ] || vsock_bench_files
    step "vsock-$1" vsock_bench_vsock
    step "net-$1" vsock_bench_net
}
