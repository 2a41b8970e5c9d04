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
#              10.0.0.2: b echoes 1 connection on TCP port 5000 (keel-probe tcp-listen), a
#              sends it 4 MiB (keel-probe tcp-connect). L1 -> guest over the network needs an
#              uplink tap in L1; without the tun driver the round says so (VSOCKBENCH
#              host-net unavailable ...) and measures nothing there.
# Same probe, 64 KiB chunks, pattern and timing (arm64 virtual counter) on both paths; the
# probe's lines are `KEEL-PROBE <mode> ... bytes=N echoed=N mismatched=N ms=T ...`.
# 1 vCPU and 128 MiB per VM.

VB=/tmp/vsockbench
VB_BYTES=4194304
mkdir -p $VB

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
    {
        printf '[system]\nname = "net-bench"\n\n[[network]]\nname = "lan"\n\n'
        vsock_bench_vm a "ip addr add 10.0.0.1/24 dev eth0; ip link set eth0 up; keel-probe tcp-connect 10.0.0.2 5000 $VB_BYTES 90" \
            "$(printf '[[vm.net]]\nnetwork = "lan"\nmac = "02:00:00:00:00:0a"\n')"
        vsock_bench_vm b 'ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up; keel-probe tcp-listen 5000 1' \
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
    if grep -qw tun /proc/misc 2>/dev/null; then
        echo "VSOCKBENCH host-net unavailable: L1 has tun, but this bench wires no uplink"
    else
        echo "VSOCKBENCH host-net unavailable: L1's kernel has no tun driver (no tap uplink into the network)"
    fi
    vsock_bench_up net
    vsock_bench_wait net 2
    tr -d '\r' <$VB/net.out | grep -E 'KEEL-PROBE|keel:'
    grep -q "^\[a\] KEEL-PROBE tcp-connect .* echoed=$VB_BYTES mismatched=0 " $VB/net.out
}

vsock_bench_round() {
    [ -f $VB/vsock.toml ] || vsock_bench_files
    step "vsock-$1" vsock_bench_vsock
    step "net-$1" vsock_bench_net
}
