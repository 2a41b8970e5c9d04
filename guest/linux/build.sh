#!/usr/bin/env bash
# Build Keel's Linux guest images (kernel + busybox initramfs) from Debian packages only.
#
#   guest/linux/build.sh x86_64|arm64|all
#
# Output: ${KEEL_CACHE:-$HOME/.cache/keel}/guest/<arch>-<key>/{vmlinuz,initrd.cpio.gz,manifest.txt}
# and the symlink ${KEEL_CACHE}/guest/<arch> -> <arch>-<key>. The last line printed is the
# output directory (with `all`: one line per arch, the last arch last).
# <key> hashes the exact package versions, this script, init.sh, mkcpio.py,
# guest/build-lib.sh and guest/init-lib.sh (arm64 also guest/probe's sources and Cargo.lock:
# keel-probe is built with cargo into /bin/keel-probe; and the storage agent's sources:
# crates/keel-agent, keel-virtio, keel-core, the workspace's Cargo.toml, Cargo.lock and
# .cargo/config.toml: keel-agent is built with cargo into /bin/keel-agent); an existing
# output with the same key is reused. See README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KEEL_CACHE:-$HOME/.cache/keel}
guest_dir=$cache/guest
deb_dir=$guest_dir/debs

# Modules the initramfs loads (their dependencies are added from `modinfo -F depends`).
modules=(virtio_mmio virtio_pci virtio_blk virtio_console virtio_rng virtio_net
    vmw_vsock_virtio_transport)

log_name=build.sh
# shellcheck source=SCRIPTDIR/../build-lib.sh
. "$here/../build-lib.sh"

# Candidate versions of the given pkg:arch names, one line each in argument order
# ("(none)" when apt has none). One apt-cache call: each costs ~0.7 s.
candidates() {
    apt-cache policy "$@" 2>/dev/null | awk '/^  Candidate:/ { print $2 }'
}

# "<package> <version>" of the linux-image-6.1.0-N-<flavour> a metapackage version depends
# on; the metapackage pins the exact version with "(= V)".
resolve_kernel() {
    local meta=$1 ver=$2
    apt-cache show "$meta=$ver" |
        awk -F': ' '/^Depends:/ { print $2; exit }' |
        tr ',' '\n' |
        sed -nE 's/^ *(linux-image-[0-9][^ ]*) \(= ([^)]+)\).*/\1 \2/p' | head -n1
}

# Applet names of a busybox binary, one per line, read from its applet name table
# (a sorted, NUL-separated string starting "[\0[[\0"), so that a foreign-arch busybox
# needs no emulator. Checked against `busybox --list` when the binary can run here.
busybox_applets() {
    local bb=$1 list
    list=$(python3 - "$bb" <<'EOF'
import sys
d = open(sys.argv[1], "rb").read()
i = d.find(b"[\0[[\0")
if i < 0 or d.find(b"[\0[[\0", i + 1) >= 0:
    sys.exit("busybox applet table not found exactly once")
names = d[i:d.index(b"\0\0", i)].split(b"\0")
ok = all(n and all(0x21 <= c < 0x7f and c != 0x2f for c in n) for n in names)
if not ok or names != sorted(names) or len(names) < 50:
    sys.exit("busybox applet table looks wrong")
print("\n".join(n.decode() for n in names))
EOF
    ) || die "cannot read the applet list of $bb"
    if "$bb" true >/dev/null 2>&1; then
        [[ $list == "$("$bb" --list)" ]] || die "applet table of $bb differs from its --list"
    fi
    printf '%s\n' "$list"
}

# The files of guest/probe that decide the keel-probe binary, relative to guest/ (sorted).
probe_sources() {
    (cd "$here/.." && find probe/Cargo.toml probe/Cargo.lock probe/.cargo probe/src -type f | LC_ALL=C sort)
}

# Build keel-probe (guest/probe, a static aarch64-unknown-linux-musl binary) and print its path.
build_probe() {
    local cargo=cargo
    command -v cargo >/dev/null 2>&1 || cargo=$HOME/.cargo/bin/cargo
    [[ -x $(command -v "$cargo") ]] || die "missing tool 'cargo' (keel-probe; run scripts/setup.sh)"
    log "arm64: building keel-probe (guest/probe)"
    (cd "$here/../probe" && "$cargo" build --release --locked -q --target aarch64-unknown-linux-musl >&2) ||
        die "cargo build of guest/probe failed (rustup target add aarch64-unknown-linux-musl?)"
    printf '%s\n' "$here/../probe/target/aarch64-unknown-linux-musl/release/keel-probe"
}

# The files that decide the keel-agent binary, relative to the repository root (sorted): the
# agent and the workspace crates it depends on, and the workspace's manifest, lock file and
# cargo configuration (profile, linker).
agent_sources() {
    (cd "$here/../.." && find Cargo.toml Cargo.lock .cargo/config.toml \
        crates/keel-agent crates/keel-virtio crates/keel-core -type f | LC_ALL=C sort)
}

# Build keel-agent (crates/keel-agent, a static aarch64-unknown-linux-musl binary, no debug
# info, stripped) and print its path. Its own target directory (target/guest) so that the
# profile overrides do not rebuild what other arm64 builds of the workspace share.
build_agent() {
    local cargo=cargo root
    command -v cargo >/dev/null 2>&1 || cargo=$HOME/.cargo/bin/cargo
    [[ -x $(command -v "$cargo") ]] || die "missing tool 'cargo' (keel-agent; run scripts/setup.sh)"
    root=$(cd "$here/../.." && pwd)
    log "arm64: building keel-agent (crates/keel-agent)"
    (cd "$root" && CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
        "$cargo" build --release --locked -q -p keel-agent --target aarch64-unknown-linux-musl \
        --target-dir "$root/target/guest" >&2) ||
        die "cargo build of keel-agent failed (rustup target add aarch64-unknown-linux-musl?)"
    printf '%s\n' "$root/target/guest/aarch64-unknown-linux-musl/release/keel-agent"
}

build_arch() {
    local arch=$1 debarch meta kflavour
    case "$arch" in
        x86_64)
            debarch=amd64
            # The cloud flavour: built for VMs (virtio, 8250, ACPI, PVH; ext4 built in), a
            # 27 MB package against ~70 MB for the generic kernel with its hardware drivers.
            meta=linux-image-cloud-amd64
            kflavour=cloud-amd64
            ;;
        arm64)
            debarch=arm64
            meta=linux-image-arm64
            kflavour=arm64
            ;;
        *) die "unknown arch '$arch' (x86_64|arm64|all)" ;;
    esac
    ensure_dpkg_arch "$debarch"

    local versions meta_ver kpkg kver bb_ver
    versions=$(candidates "$meta:$debarch" "busybox-static:$debarch")
    if [[ $versions != *[0-9]*$'\n'*[0-9]* ]]; then
        [[ $EUID -eq 0 ]] || die "apt has no $debarch candidates for $meta, busybox-static: run apt-get update"
        log "apt has no $debarch candidates for $meta, busybox-static yet: apt-get update"
        apt-get -q update >&2
        versions=$(candidates "$meta:$debarch" "busybox-static:$debarch")
    fi
    { read -r meta_ver && read -r bb_ver; } <<<"$versions" || true
    [[ ${meta_ver:-(none)} != "(none)" ]] || die "apt has no candidate for $meta:$debarch"
    [[ ${bb_ver:-(none)} != "(none)" ]] || die "apt has no candidate for busybox-static:$debarch"
    read -r kpkg kver < <(resolve_kernel "$meta:$debarch" "$meta_ver") || true
    [[ ${kpkg:-} == linux-image-*-"$kflavour" && -n ${kver:-} ]] ||
        die "cannot resolve $meta=$meta_ver to a versioned kernel package (got '${kpkg:-}')"

    local key out
    key=$(
        {
            printf 'arch=%s\n%s=%s\n%s=%s\nbusybox-static=%s\nmodules=%s\n' \
                "$arch" "$meta" "$meta_ver" "$kpkg" "$kver" "$bb_ver" "${modules[*]}"
            sha256sum "$here/build.sh" "$here/init.sh" "$here/mkcpio.py" "$here/../build-lib.sh" "$here/../init-lib.sh" | cut -d' ' -f1
            if [[ $arch == arm64 ]]; then
                (cd "$here/.." && probe_sources | xargs sha256sum)
                (cd "$here/../.." && agent_sources | xargs sha256sum)
            fi
        } | sha256sum | cut -c1-12
    )
    out=$guest_dir/$arch-$key
    if [[ -s $out/vmlinuz && -s $out/initrd.cpio.gz && -s $out/manifest.txt ]]; then
        log "$arch: cached ($kpkg $kver, busybox-static $bb_ver)"
        ln -sfn "$arch-$key" "$guest_dir/$arch"
        printf '%s\n' "$out"
        return
    fi

    log "$arch: building $kpkg $kver + busybox-static $bb_ver"
    mkdir -p "$deb_dir"
    local kdeb bbdeb work
    kdeb=$(deb_file "$kpkg" "$kver" "$debarch")
    bbdeb=$(deb_file busybox-static "$bb_ver" "$debarch")
    work=$(mktemp -d "$guest_dir/.work-$arch.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now: it is local
    trap "rm -rf '$work'" EXIT

    dpkg-deb -x "$kdeb" "$work/kernel"
    dpkg-deb -x "$bbdeb" "$work/busybox"
    local kbuild moddir
    kbuild=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
    [[ $(wc -l <<<"$kbuild") -eq 1 && -n $kbuild ]] || die "expected one module tree in $kdeb, got: $kbuild"
    moddir=$work/kernel/lib/modules/$kbuild
    [[ -s $work/kernel/boot/vmlinuz-$kbuild ]] || die "$kdeb has no boot/vmlinuz-$kbuild"

    # Index module files by module name ('-' and '_' are the same to the kernel).
    declare -A modpath=()
    local f name
    while IFS= read -r f; do
        name=${f##*/}
        name=${name%%.ko*}
        modpath[${name//-/_}]=$f
    done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

    # Decompressed copy of a module (busybox insmod may not read compressed modules).
    local staging=$work/root
    mkdir -p "$staging/lib/modules/$kbuild"
    plain_module() {
        local src=$1 dst=$staging/lib/modules/$kbuild/$2.ko
        case "$src" in
            *.ko.xz) xz -dc "$src" >"$dst" ;;
            *.ko.zst) zstd -qdc "$src" >"$dst" ;;
            *.ko.gz) gzip -dc "$src" >"$dst" ;;
            *) cp "$src" "$dst" ;;
        esac
    }

    # Depth-first walk: dependencies before the module itself.
    declare -A state=()
    local order=()
    visit() {
        local m=${1//-/_} deps d
        case "${state[$m]:-}" in
            visited) return ;;
            active) die "module dependency cycle at $m" ;;
        esac
        state[$m]=active
        if [[ -z ${modpath[$m]:-} ]]; then
            if grep -Eq "/${m//_/[-_]}\.ko$" "$moddir/modules.builtin"; then
                log "$arch: $m is built into the kernel"
                state[$m]=visited
                return
            fi
            die "module $m is neither in $kpkg nor built in"
        fi
        plain_module "${modpath[$m]}" "$m"
        deps=$(modinfo -F depends "$staging/lib/modules/$kbuild/$m.ko")
        for d in ${deps//,/ }; do
            visit "$d"
        done
        state[$m]=visited
        order+=("$m")
    }
    local m
    for m in "${modules[@]}"; do
        visit "$m"
    done
    for m in "${order[@]}"; do
        printf '%s/%s.ko\n' "$kbuild" "$m"
    done >"$staging/lib/modules/keel-load-order"

    # Busybox, its applet links, /init and the mount points.
    mkdir -p "$staging"/{bin,dev,proc,sys,tmp,run,root,etc,usr}
    install -m 0755 "$work/busybox/bin/busybox" "$staging/bin/busybox"
    local applet applets napplets=0
    applets=$(busybox_applets "$work/busybox/bin/busybox")
    while IFS= read -r applet; do
        [[ $applet == busybox ]] && continue
        ln -s busybox "$staging/bin/$applet"
        napplets=$((napplets + 1))
    done <<<"$applets"
    ln -s bin "$staging/sbin"
    ln -s ../bin "$staging/usr/bin"
    ln -s ../bin "$staging/usr/sbin"
    install -m 0755 "$here/init.sh" "$staging/init"
    install -D -m 0644 "$here/../init-lib.sh" "$staging/lib/keel/init-lib.sh"
    if [[ $arch == arm64 ]]; then
        local probe
        probe=$(build_probe)
        install -m 0755 "$probe" "$staging/bin/keel-probe"
        local agent
        agent=$(build_agent)
        install -m 0755 "$agent" "$staging/bin/keel-agent"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$staging/etc/passwd"
    printf 'root:x:0:\n' >"$staging/etc/group"

    mkdir -p "$work/out"
    python3 "$here/mkcpio.py" "$staging" c:dev/console:600:5:1 c:dev/null:666:1:3 |
        gzip -9 -n >"$work/out/initrd.cpio.gz"
    cp "$work/kernel/boot/vmlinuz-$kbuild" "$work/out/vmlinuz"

    {
        printf 'Keel %s guest, built %s by guest/linux/build.sh\n' "$arch" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'key %s\n\n' "$key"
        printf 'packages (Debian %s):\n' "$debarch"
        printf '  %s %s\n' "$meta" "$meta_ver" "$kpkg" "$kver" busybox-static "$bb_ver"
        printf '  .deb: %s (%s bytes)\n' "${kdeb##*/}" "$(stat -c %s "$kdeb")" \
            "${bbdeb##*/}" "$(stat -c %s "$bbdeb")"
        printf '\nkernel release %s\n\nfiles:\n' "$kbuild"
        printf '  %-16s %10s bytes  sha256 %s\n' \
            vmlinuz "$(stat -c %s "$work/out/vmlinuz")" "$(sha256sum <"$work/out/vmlinuz" | cut -d' ' -f1)" \
            initrd.cpio.gz "$(stat -c %s "$work/out/initrd.cpio.gz")" "$(sha256sum <"$work/out/initrd.cpio.gz" | cut -d' ' -f1)"
        printf '\nbusybox applets linked: %d\n' "$napplets"
        printf '\nmodules (load order, /lib/modules/keel-load-order):\n'
        for m in "${order[@]}"; do
            printf '  %-36s %8s bytes\n' "$m" "$(stat -c %s "$staging/lib/modules/$kbuild/$m.ko")"
        done
        if [[ $arch == arm64 ]]; then
            printf '\n/bin/keel-probe %s bytes  sha256 %s\n' "$(stat -c %s "$staging/bin/keel-probe")" \
                "$(sha256sum <"$staging/bin/keel-probe" | cut -d' ' -f1)"
            printf '/bin/keel-agent %s bytes  sha256 %s\n' "$(stat -c %s "$staging/bin/keel-agent")" \
                "$(sha256sum <"$staging/bin/keel-agent" | cut -d' ' -f1)"
        fi
        printf '\nsource hashes (sha256):\n'
        (cd "$here/.." && sha256sum linux/build.sh linux/init.sh linux/mkcpio.py build-lib.sh init-lib.sh) | sed 's/^/  /'
        if [[ $arch == arm64 ]]; then
            (cd "$here/.." && probe_sources | xargs sha256sum) | sed 's/^/  /'
            printf '  %s  keel-agent sources (%s files under crates/keel-{agent,virtio,core}, Cargo.toml, Cargo.lock, .cargo/config.toml)\n' \
                "$(cd "$here/../.." && agent_sources | xargs sha256sum | sha256sum | cut -d' ' -f1)" \
                "$(agent_sources | wc -l)"
        fi
    } >"$work/out/manifest.txt"

    rm -rf "$out"
    mv "$work/out" "$out"
    rm -rf "$work"
    trap - EXIT
    ln -sfn "$arch-$key" "$guest_dir/$arch"
    log "$arch: done"
    printf '%s\n' "$out"
}

usage() {
    log "usage: build.sh x86_64|arm64|all"
    exit 2
}

main() {
    [[ $# -eq 1 ]] || usage
    need apt-get apt-cache dpkg dpkg-deb python3 gzip xz sha256sum find
    command -v modinfo >/dev/null 2>&1 || die "missing tool 'modinfo' (apt-get install -y kmod)"
    mkdir -p "$guest_dir"
    case "$1" in
        all)
            build_arch x86_64
            build_arch arm64
            ;;
        x86_64 | arm64) build_arch "$1" ;;
        *) usage ;;
    esac
}

main "$@"
