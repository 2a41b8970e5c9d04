#!/usr/bin/env bash
# Where Keel's time goes, for bench/ANALYSIS.md. Needs valgrind and a C compiler
# (apt-get install -y valgrind gcc); `perf` has no hardware counters on this machine.
#   bash bench/profile.sh            (about 2 minutes; prints a summary, keeps raw files in $OUT)
# 1. user-space instructions per MMIO exit, Keel vs QEMU (callgrind: mmio-bench:10000 minus mmio-bench:0)
# 2. Keel's top functions for a 256 MiB sequential virtio-blk read (callgrind)
# 3. Keel's teardown with and without closing the KVM VM fd itself (an LD_PRELOAD shim
#    that turns close() of the "anon_inode:kvm-vm" fd into a no-op; the kernel closes it at exit)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
keel=${KEEL:-${CARGO_TARGET_DIR:-target}/release/keel}
qemu=${QEMU:-qemu-system-x86_64}
elf=${KEELTEST_ELF:-$root/guest/testguest/target/x86_64-unknown-none/release/keel-testguest}
OUT=${OUT:-$(mktemp -d /tmp/keel-profile.XXXXXX)}
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null
mkdir -p "$OUT"
python3 -c "
import os
b = os.urandom(1 << 20)
with open('$OUT/disk.img', 'wb') as f:
    for _ in range(256): f.write(b)
"
keel_toml() { # cmdline -> system file
    cat >"$OUT/k.toml" <<EOF
[[vm]]
name = "prof"
arch = "x86_64"
vcpus = 1
memory = "128M"
kernel = "$elf"
cmdline = "$1"
serial = "stdio"
[[vm.disk]]
path = "$OUT/disk.img"
EOF
    echo "$OUT/k.toml"
}
qemu_argv() {
    echo "$qemu -M microvm,acpi=off,x-option-roms=off -enable-kvm -cpu host,-arch-capabilities -m 128M -smp 1" \
        "-nographic -nodefaults -serial stdio -no-reboot -kernel $elf -append keeltest=$1" \
        "-device isa-debug-exit,iobase=0xf4,iosize=0x01 -global virtio-mmio.force-legacy=false" \
        "-drive id=d0,file=$OUT/disk.img,format=raw,if=none -device virtio-blk-device,drive=d0"
}
ir() { # log file -> total Ir
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$1" | tr -d ,
}
cg() { # name cmd... -> callgrind run, prints total Ir
    local name=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$name" "$@" </dev/null >"$OUT/$name.log" 2>&1 || true
    ir "$OUT/$name.log"
}

n=10000
echo "== 1. user-space instructions per MMIO read exit (callgrind Ir, mmio-bench:$n minus mmio-bench:0)"
k0=$(cg keel-mmio0 "$keel" run "$(keel_toml keeltest=mmio-bench:0)")
k1=$(cg keel-mmio "$keel" run "$(keel_toml keeltest=mmio-bench:$n)")
# shellcheck disable=SC2046
q0=$(cg qemu-mmio0 $(qemu_argv mmio-bench:0))
# shellcheck disable=SC2046
q1=$(cg qemu-mmio $(qemu_argv mmio-bench:$n))
echo "Keel: whole run $k0 Ir at N=0, $k1 at N=$n: $(((k1 - k0) / n)) Ir per exit"
echo "QEMU: whole run $q0 Ir at N=0, $q1 at N=$n: $(((q1 - q0) / n)) Ir per exit"
callgrind_annotate "$OUT/cg.keel-mmio" 2>/dev/null | sed -n '/file:function/,/^$/p' | head -14 | cut -c1-160 || true

echo "== 2. Keel, blkbench:read:1M over 256 MiB: top functions (user space only)"
cg keel-read "$keel" run "$(keel_toml keeltest=blkbench:read:1M)" >/dev/null
callgrind_annotate "$OUT/cg.keel-read" 2>/dev/null | sed -n '/file:function/,/^$/p' | head -8 | cut -c1-160 || true
grep -h "blkbench read" "$OUT/keel-read.log" | head -2 || true

echo "== 3. Keel teardown (guest's PASS line -> process reaped), 15 runs each"
cat >"$OUT/noclose.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* close() of the KVM VM fd does nothing: the kernel drops it when the process exits. */
int close(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    char path[64], link[64] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (readlink(path, link, sizeof link - 1) > 0 && strcmp(link, "anon_inode:kvm-vm") == 0)
        return 0;
    return real(fd);
}
EOF
cc -O2 -shared -fPIC -o "$OUT/noclose.so" "$OUT/noclose.c" -ldl
KEEL=$keel QEMU=$qemu ELF=$elf SHIM=$OUT/noclose.so DISK=$OUT/disk.img python3 - <<'EOF'
import os, statistics, sys, tempfile
from pathlib import Path
sys.path.insert(0, "bench")
import bench

class KeelEnv(bench.Keel):
    name = "Keel (closes the VM fd, as shipped)"
    def argv(self, g, w):
        return ["env"] + super().argv(g, w)

class KeelNoClose(bench.Keel):
    name = "Keel, VM fd left to exit"
    def argv(self, g, w):
        return ["env", "LD_PRELOAD=" + os.environ["SHIM"]] + super().argv(g, w)

elf = Path(os.environ["ELF"])
vmms = [KeelEnv(os.environ["KEEL"], elf), KeelNoClose(os.environ["KEEL"], elf), bench.Qemu(os.environ["QEMU"], elf)]
work = Path(tempfile.mkdtemp())
res = {v.name: [] for v in vmms}
for _ in range(15):
    for v in vmms:
        r = bench.run_once(v, bench.Guest("pause:0", disk=Path(os.environ["DISK"])), work)
        if not r.ok:
            sys.exit(f"{v.name}: {r.error}")
        t_pass = next(t for t, line in r.lines if line.startswith("keeltest: PASS"))
        res[v.name].append((r.exit_s - t_pass) * 1e3)
for name, vals in res.items():
    print(f"{name}: median {statistics.median(vals):.2f} ms (min {min(vals):.2f}, max {max(vals):.2f})")
EOF
echo "raw files: $OUT"
