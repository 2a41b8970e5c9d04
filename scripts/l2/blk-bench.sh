# shellcheck shell=sh
# Block I/O of a Linux VM through a storage VM against the same workload on a disk
# attached directly (docs/driver-vms.md), inside the emulated arm64 host (L1). Sourced by
# the L1 script of scripts/l2-blk-bench.sh (installed as /extra/blk-bench.sh), which calls
# `blk_bench_round <i>` once per round. A round runs, one after the other:
#   fwd-<i>     keel up: VM "store" (keel-agent, disk store.img 64 MiB) and VM "c", whose
#               32 MiB disk store serves; c runs the workload, then keel up is stopped
#   direct-<i>  keel run: VM "c" alone with a 32 MiB disk file of its own
# The workload (busybox dd, O_DIRECT, queue depth 1, 1 vCPU and 128 MiB for c):
#   seqwrite  16 MiB in 1 MiB writes, then fsync     seqread  16 MiB in 1 MiB reads
#   4kwrite   1024 writes of 4 KiB                   4kread   1024 reads of 4 KiB
# Each prints `BLKBENCH <name> <ms>` (L2's /proc/uptime, 10 ms resolution).

BB=/tmp/blkbench
mkdir -p $BB

blk_bench_guest() {
    cat <<'EOS'
n=0
until dd if=/dev/vda of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; do
    n=$((n + 1)); [ $n -lt 60 ] || { echo "BLKBENCH FAIL disk"; exit 1; }
    sleep 1
done
t() {
    read -r a _ </proc/uptime
    "$@" 2>/dev/null || echo "BLKBENCH FAIL $*"
    read -r b _ </proc/uptime
    echo $((${b%.*}${b#*.}0 - ${a%.*}${a#*.}0))
}
echo "BLKBENCH seqwrite $(t dd if=/dev/zero of=/dev/vda bs=1M count=16 oflag=direct conv=fsync)"
echo "BLKBENCH seqread $(t dd if=/dev/vda of=/dev/null bs=1M count=16 iflag=direct)"
echo "BLKBENCH 4kwrite $(t dd if=/dev/zero of=/dev/vda bs=4k count=1024 oflag=direct)"
echo "BLKBENCH 4kread $(t dd if=/dev/vda of=/dev/null bs=4k count=1024 iflag=direct)"
EOS
}

# blk_bench_vm <name> <memory> <keel.cmd base64>: a [[vm]] of the L2 guest
blk_bench_vm() {
    printf '[[vm]]\nname = "%s"\narch = "aarch64"\nmemory = "%s"\nkernel = "/l2/vmlinuz"\ninitrd = "/l2/initrd.cpio.gz"\ncmdline = "console=ttyS0 quiet loglevel=1 keel.cmd=%s"\nserial = "stdio"\n' "$1" "$2" "$3"
}

blk_bench_files() {
    truncate -s 64M $BB/store.img
    truncate -s 32M $BB/direct.img
    _c=$(blk_bench_guest | base64 | tr -d '\n')
    _s=$(printf '%s' 'while :; do sleep 1; done' | base64 | tr -d '\n')
    {
        blk_bench_vm store 192M "$_s"
        printf '[[vm.disk]]\npath = "%s"\nid = "pool0"\n' $BB/store.img
        blk_bench_vm c 128M "$_c"
        printf '[[vm.disk]]\nserved_by = "store"\nsize = "32M"\n'
    } >$BB/fwd.toml
    {
        blk_bench_vm c 128M "$_c"
        printf '[[vm.disk]]\npath = "%s"\n' $BB/direct.img
    } >$BB/direct.toml
}

# keel up of fwd.toml until c powered off (at most 240 s), then stop it.
blk_bench_fwd() {
    keel up $BB/fwd.toml >$BB/fwd.out 2>&1 &
    _p=$!
    _n=0
    while [ $_n -lt 2400 ] && kill -0 $_p 2>/dev/null && ! grep -q '^\[c\] KEEL-GUEST-POWEROFF' $BB/fwd.out; do
        usleep 100000
        _n=$((_n + 1))
    done
    kill -TERM $_p 2>/dev/null
    wait $_p
    tr -d '\r' <$BB/fwd.out | grep -E 'BLKBENCH|keel-agent|keel:'
    grep -q '^\[c\] BLKBENCH 4kread [0-9]' $BB/fwd.out
}

blk_bench_direct() {
    timeout 240 keel run $BB/direct.toml >$BB/direct.out 2>&1
    tr -d '\r' <$BB/direct.out | grep -E 'BLKBENCH|keel:'
    grep -q '^BLKBENCH 4kread [0-9]' $BB/direct.out
}

blk_bench_round() {
    [ -f $BB/fwd.toml ] || blk_bench_files
    step "fwd-$1" blk_bench_fwd
    step "direct-$1" blk_bench_direct
}
