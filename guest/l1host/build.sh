#!/usr/bin/env bash
# Build the emulated arm64 host ("L1") for Keel's tests, from Debian arm64 packages only.
#
#   guest/l1host/build.sh --keel <aarch64 keel binary>|none [--extra <file>]...
#
# Output: ${KEEL_CACHE:-$HOME/.cache/keel}/l1host/<key>/{vmlinuz,initrd.cpio.zst,manifest.txt}
# and the symlink ${KEEL_CACHE}/l1host/current -> <key>. The last line printed is the output dir.
#
# The L1 initramfs holds: static busybox, the L1 /init (init.sh), l1-peak-rss, the L2 guest
# (kernel + initrd from guest/linux/build.sh arm64) in /l2, the keel binary as /bin/keel (when
# given), --extra files in /extra, the kernel modules of l1_modules (tun) from the L2 kernel's
# .deb in /lib/modules, and Debian's arm64 qemu-system-aarch64 with every shared
# library it needs (found by walking ELF NEEDED entries through the extracted arm64 packages;
# the loader is /lib/ld-linux-aarch64.so.1, libraries are in /lib/aarch64-linux-gnu).
# The L1 kernel is the same Debian arm64 kernel as L2's (KVM is built in). See README.md.
#
# <key> hashes: the versions of busybox-static, of every package the QEMU closure uses and of
# the kernel package whose modules L1 loads (tun: see l1_modules) with the module list,
# build.sh, init.sh, l1-peak-rss, guest/linux/mkcpio.py, guest/{build,init}-lib.sh, the L2 images, the
# keel binary and the extra files (name + content). An existing output with the same key is reused.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
linux_dir=$here/../linux
cache=${KEEL_CACHE:-$HOME/.cache/keel}
l1_dir=$cache/l1host
deb_dir=$l1_dir/debs
debarch=arm64
# Kernel modules L1's /init loads (insmod, dependencies first), from the kernel package of the
# L2 image (L1 boots its vmlinuz): tun, for Keel's tap uplinks (docs/net.md). Their
# dependencies are added from `modinfo -F depends`.
l1_modules=(tun)
# Packages whose dependencies are never followed while resolving shared libraries: they hold
# data, firmware, QEMU's optional modules or maintainer-script tools, never a needed library.
skip_deps='^(qemu-|debconf|cdebconf|adduser|dpkg|install-info|iso-codes|.*-data$|.*-common$)'

log_name=l1host/build.sh
# shellcheck source=SCRIPTDIR/../build-lib.sh
. "$here/../build-lib.sh"

usage() {
    die "usage: build.sh --keel <aarch64 keel binary>|none [--extra <file>]..."
}

# "<name> <candidate>" for each package name given (arm64), "(none)" when apt has none.
candidates() {
    local args=() n
    for n in "$@"; do
        args+=("$n:$debarch")
    done
    apt-cache policy "${args[@]}" 2>/dev/null | awk '
        /^[^ ].*:$/ { name = $1; sub(/:$/, "", name); sub(/:[a-z0-9]+$/, "", name) }
        /^  Candidate:/ { print name, $2 }'
}


# NEEDED sonames of an ELF file, one per line.
elf_needed() {
    readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
}

# The program interpreter of an ELF file (empty for a static binary).
elf_interp() {
    readelf -l "$1" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p'
}

# Check that a file is an AArch64 ELF executable.
check_aarch64_elf() {
    local f=$1 what=$2
    [[ -f $f ]] || die "$what '$f' is not a file"
    readelf -h "$f" 2>/dev/null | grep -q 'Machine:.*AArch64' ||
        die "$what '$f' is not an AArch64 ELF file"
}

# --- the shared-library closure -------------------------------------------------------------
# Globals filled by resolve_closure: pkg_ver[name]=version of every extracted package,
# used_pkgs (names whose files the closure uses), lib_src[soname]=file in the pool,
# lib_pkg[soname]=package, interp (the loader path requested by the roots).
declare -A pkg_ver=() lib_src=() lib_pkg=() soname_index=() soname_pkg=()
used_pkgs=()
interp=

# The file a path in an extracted package stands for: symlinks are followed inside the
# package's root (an absolute target such as /lib/aarch64-linux-gnu/x means <root>/lib/...).
pool_real() {
    local root=$1 f=$2 t hops=0
    while [[ -L $f ]]; do
        ((++hops <= 16)) || return 1
        t=$(readlink "$f")
        if [[ $t == /* ]]; then
            f=$root$t
        else
            f=${f%/*}/$t
        fi
    done
    [[ -f $f ]] || return 1
    printf '%s\n' "$f"
}

# Extract a package into the pool and index its shared libraries by file name
# (soname_index[name] is the real file, symlinks resolved).
pool_add() {
    local pkg=$1 ver=$2 pool=$3 deb f
    deb=$(deb_file "$pkg" "$ver" "$debarch")
    mkdir -p "$pool/$pkg"
    dpkg-deb -x "$deb" "$pool/$pkg"
    pkg_ver[$pkg]=$ver
    local b real
    while IFS= read -r f; do
        b=${f##*/}
        [[ -z ${soname_index[$b]:-} ]] || continue
        # A link to another package's file (or a dangling one) is not a library of this one.
        real=$(pool_real "$pool/$pkg" "$f") || continue
        soname_index[$b]=$real
        soname_pkg[$b]=$pkg
    done < <(find "$pool/$pkg"/{lib,usr/lib}{,/aarch64-linux-gnu} -maxdepth 1 \
        \( -type f -o -type l \) \( -name '*.so' -o -name '*.so.*' \) 2>/dev/null | sort)
}

# Walk NEEDED from the roots through the pool. Sets lib_src/lib_pkg for every soname found
# and missing to the unresolved sonames (space-separated, empty when all were found).
missing=
walk_needed() {
    lib_src=() lib_pkg=() missing=
    local queue=("$@") f s
    while ((${#queue[@]})); do
        f=${queue[0]}
        queue=("${queue[@]:1}")
        while IFS= read -r s; do
            [[ -n $s ]] || continue
            [[ -n ${lib_src[$s]:-} ]] && continue
            if [[ -n ${soname_index[$s]:-} ]]; then
                lib_src[$s]=${soname_index[$s]}
                lib_pkg[$s]=${soname_pkg[$s]}
                queue+=("${soname_index[$s]}")
            elif [[ " $missing " != *" $s "* ]]; then
                missing+="${missing:+ }$s"
            fi
        done < <(elf_needed "$f")
    done
}

# Package names (first installable alternative) of the Depends and Pre-Depends of a .deb.
deb_deps() {
    local deb=$1
    {
        dpkg-deb -f "$deb" Depends
        dpkg-deb -f "$deb" Pre-Depends
    } | tr ',' '\n' | sed -E 's/\([^)]*\)//g; s/:any//g; s/[[:space:]]+/ /g; s/^ //; s/ $//' |
        grep -v '^$' || true
}

# Resolve the shared libraries of the root ELF files (qemu-system-aarch64 and keel) into
# the pool. Extracts qemu-system-arm first, then follows the Depends of the packages whose
# libraries the closure uses until every NEEDED soname is found.
resolve_closure() {
    local pool=$1 qemu_ver=$2 keel=$3
    pool_add qemu-system-arm "$qemu_ver" "$pool"
    local roots=("$pool/qemu-system-arm/usr/bin/qemu-system-aarch64")
    [[ $keel != none ]] && roots+=("$keel")
    local r i
    interp=
    for r in "${roots[@]}"; do
        i=$(elf_interp "$r")
        [[ -z $i ]] && continue
        [[ -z $interp || $interp == "$i" ]] || die "roots ask for different loaders: $interp, $i"
        interp=$i
    done
    [[ $interp == /lib/ld-linux-aarch64.so.1 ]] ||
        die "qemu-system-aarch64 asks for loader '$interp', expected /lib/ld-linux-aarch64.so.1"

    local round expand=(qemu-system-arm) p d alt name
    declare -A tried=([qemu-system-arm]=1) expanded=()
    for round in 1 2 3 4 5 6 7 8 9 10; do
        # Dependencies of the packages in use that are not yet in the pool.
        local want=()
        declare -A wanted=()
        for p in "${expand[@]}"; do
            while IFS= read -r d; do
                # "a | b": the first alternative apt can install (checked below).
                for alt in ${d//|/ }; do
                    name=${alt%%:*}
                    [[ $name =~ $skip_deps ]] && break
                    [[ -n ${tried[$name]:-} || -n ${wanted[$name]:-} ]] && break
                    wanted[$name]=1
                    want+=("$name")
                    break
                done
            done < <(deb_deps "$(deb_file "$p" "${pkg_ver[$p]}" "$debarch")")
        done
        if ((${#want[@]})); then
            local n v
            while read -r n v; do
                tried[$n]=1
                [[ $v == "(none)" || -z $v ]] && continue
                pool_add "$n" "$v" "$pool"
            done < <(candidates "${want[@]}")
            for n in "${want[@]}"; do
                tried[$n]=1
            done
        fi
        walk_needed "${roots[@]}"
        [[ -z $missing ]] && break
        # Follow the dependencies of the packages now in use that were not followed yet.
        for p in "${expand[@]}"; do
            expanded[$p]=1
        done
        expand=()
        for p in "${lib_pkg[@]}"; do
            [[ -n ${expanded[$p]:-} || " ${expand[*]} " == *" $p "* ]] || expand+=("$p")
        done
        ((${#expand[@]})) || die "unresolved shared libraries: $missing"
        log "round $round: still missing $missing"
    done
    [[ -z $missing ]] || die "unresolved shared libraries after 10 rounds: $missing"
    [[ -n ${lib_src[ld-linux-aarch64.so.1]:-} ]] ||
        die "the loader ld-linux-aarch64.so.1 is not in the closure (libc6:$debarch missing?)"
    used_pkgs=(qemu-system-arm)
    for p in "${lib_pkg[@]}"; do
        [[ " ${used_pkgs[*]} " == *" $p "* ]] || used_pkgs+=("$p")
    done
    mapfile -t used_pkgs < <(printf '%s\n' "${used_pkgs[@]}" | sort)
}

# --- kernel modules ---------------------------------------------------------------------------
# Decompressed copies of l1_modules and their dependencies from the kernel package kdeb
# (release krel) in <staging>/lib/modules/<krel>/<name>.ko, and their load order (one
# <krel>/<name>.ko per line, dependencies first) in <staging>/lib/modules/l1-load-order.
# A module built into the kernel is left out. Sets mod_order.
mod_order=()
add_modules() {
    local kdeb=$1 krel=$2 staging=$3 work=$4
    local kdir=$work/kernel moddir=$work/kernel/lib/modules/$krel
    mkdir -p "$kdir" "$staging/lib/modules/$krel"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$kdir" "./lib/modules/$krel" ||
        die "cannot extract lib/modules/$krel from $kdeb"
    [[ -d $moddir/kernel && -f $moddir/modules.builtin ]] ||
        die "$kdeb has no lib/modules/$krel/{kernel,modules.builtin}"
    declare -A modpath=() state=()
    local f name
    while IFS= read -r f; do
        name=${f##*/}
        name=${name%%.ko*}
        modpath[${name//-/_}]=$f
    done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    mod_order=()
    visit_module() {
        local m=${1//-/_} deps d dst vermagic
        case "${state[$m]:-}" in
            visited) return ;;
            active) die "module dependency cycle at $m" ;;
        esac
        state[$m]=active
        if [[ -z ${modpath[$m]:-} ]]; then
            if grep -Eq "/${m//_/[-_]}\.ko$" "$moddir/modules.builtin"; then
                log "$m is built into the kernel"
                state[$m]=visited
                return
            fi
            die "module $m is neither in ${kdeb##*/} nor built in"
        fi
        # Decompressed: busybox insmod may not read compressed modules.
        dst=$staging/lib/modules/$krel/$m.ko
        case "${modpath[$m]}" in
            *.ko.xz) xz -dc "${modpath[$m]}" >"$dst" ;;
            *.ko.zst) zstd -qdc "${modpath[$m]}" >"$dst" ;;
            *.ko.gz) gzip -dc "${modpath[$m]}" >"$dst" ;;
            *) cp "${modpath[$m]}" "$dst" ;;
        esac
        vermagic=$(modinfo -F vermagic "$dst")
        [[ ${vermagic%% *} == "$krel" ]] || die "module $m is for kernel '${vermagic%% *}', L1 runs $krel"
        deps=$(modinfo -F depends "$dst")
        for d in ${deps//,/ }; do
            visit_module "$d"
        done
        state[$m]=visited
        mod_order+=("$m")
    }
    local m
    for m in "${l1_modules[@]}"; do
        visit_module "$m"
    done
    for m in "${mod_order[@]}"; do
        printf '%s/%s.ko\n' "$krel" "$m"
    done >"$staging/lib/modules/l1-load-order"
}

# --- main -----------------------------------------------------------------------------------
main() {
    local keel='' extras=()
    while (($#)); do
        case "$1" in
            --keel)
                (($# >= 2)) || usage
                keel=$2
                shift 2
                ;;
            --extra)
                (($# >= 2)) || usage
                extras+=("$2")
                shift 2
                ;;
            *) usage ;;
        esac
    done
    [[ -n $keel ]] || usage
    need apt-get apt-cache dpkg dpkg-deb readelf python3 zstd sha256sum find tar xz gzip
    command -v modinfo >/dev/null 2>&1 || die "missing tool 'modinfo' (apt-get install -y kmod)"
    if [[ $keel != none ]]; then
        check_aarch64_elf "$keel" "keel binary"
        keel=$(readlink -f "$keel")
    fi
    local e b
    declare -A extra_names=()
    for e in "${extras[@]}"; do
        [[ -f $e ]] || die "--extra '$e' is not a regular file"
        b=${e##*/}
        [[ -z ${extra_names[$b]:-} ]] || die "two --extra files are named '$b'"
        extra_names[$b]=1
    done
    mkdir -p "$l1_dir" "$deb_dir"
    ensure_dpkg_arch "$debarch"

    # The L2 guest (and L1 kernel) from guest/linux.
    local l2
    l2=$(bash "$linux_dir/build.sh" arm64 | tail -n1)
    [[ -s $l2/vmlinuz && -s $l2/initrd.cpio.gz ]] || die "guest/linux/build.sh arm64 gave no image in '$l2'"
    # The kernel package that vmlinuz came from, as its manifest records it: L1's modules are
    # taken from the very same .deb (guest/linux's download, fetched again if it is gone).
    local kpkg kver krel
    read -r kpkg kver < <(awk '$1 ~ /^linux-image-[0-9]/ { print $1, $2; exit }' "$l2/manifest.txt") || true
    krel=$(sed -n 's/^kernel release //p' "$l2/manifest.txt")
    [[ -n ${kpkg:-} && -n ${kver:-} && -n $krel ]] ||
        die "cannot read the kernel package, version and release from $l2/manifest.txt"

    local qemu_ver bb_ver n v
    while read -r n v; do
        case "$n" in
            qemu-system-arm) qemu_ver=$v ;;
            busybox-static) bb_ver=$v ;;
        esac
    done < <(candidates qemu-system-arm busybox-static)
    [[ ${qemu_ver:-(none)} != "(none)" ]] || die "apt has no candidate for qemu-system-arm:$debarch (apt-get update?)"
    [[ ${bb_ver:-(none)} != "(none)" ]] || die "apt has no candidate for busybox-static:$debarch (apt-get update?)"

    local keel_hash=none
    [[ $keel != none ]] && keel_hash=$(sha256sum <"$keel" | cut -d' ' -f1)

    # The packages of the QEMU closure, recorded by the last build for this QEMU version and
    # keel binary; their current candidate versions enter the key.
    local rec
    # Keyed by what the closure depends on: QEMU's version and keel's loader + NEEDED entries.
    local keel_needs=static
    if [[ $keel != none ]]; then
        keel_needs="$(elf_interp "$keel") $(elf_needed "$keel" | tr '\n' ' ')"
        [[ -n ${keel_needs// /} ]] || keel_needs=static
    fi
    rec=$l1_dir/closure-$(printf '%s\n' "$qemu_ver" "$keel_needs" | sha256sum | cut -c1-12).txt
    compute_key() {
        {
            printf 'busybox-static=%s\nqemu-system-arm=%s\nkeel=%s\n' "$bb_ver" "$qemu_ver" "$keel_hash"
            # A Debian package version is immutable: it pins the module files.
            printf '%s=%s\nmodules=%s\n' "$kpkg" "$kver" "${l1_modules[*]}"
            if [[ -s $rec ]]; then
                # shellcheck disable=SC2046 # one package name per word
                candidates $(cat "$rec")
            else
                echo "closure=unknown"
            fi
            sha256sum "$here/build.sh" "$here/init.sh" "$here/l1-peak-rss" "$linux_dir/mkcpio.py" "$here/../build-lib.sh" "$here/../init-lib.sh" \
                "$l2/vmlinuz" "$l2/initrd.cpio.gz" | cut -d' ' -f1
            for e in "${extras[@]}"; do
                printf 'extra %s %s\n' "${e##*/}" "$(sha256sum <"$e" | cut -d' ' -f1)"
            done
        } | sha256sum | cut -c1-12
    }
    local key out
    key=$(compute_key)
    out=$l1_dir/$key
    if [[ -s $rec && -s $out/vmlinuz && -s $out/initrd.cpio.zst && -s $out/manifest.txt ]]; then
        log "cached: $out"
        ln -sfn "$key" "$l1_dir/current"
        printf '%s\n' "$out"
        return
    fi

    log "building (qemu-system-arm $qemu_ver, busybox-static $bb_ver, keel ${keel_hash:0:12})"
    local work
    work=$(mktemp -d "$l1_dir/.work.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    local pool=$work/pool staging=$work/root
    mkdir -p "$pool"
    resolve_closure "$pool" "$qemu_ver" "$keel"
    printf '%s\n' "${used_pkgs[@]}" >"$rec"
    # The closure may differ from the recorded one: the key follows what was really used.
    key=$(compute_key)
    out=$l1_dir/$key

    mkdir -p "$staging"/{bin,dev,proc,sys,tmp,run,root,etc,l2,lib/aarch64-linux-gnu,usr/bin}
    dpkg-deb -x "$(deb_file busybox-static "$bb_ver" "$debarch")" "$work/busybox"
    install -m 0755 "$work/busybox/bin/busybox" "$staging/bin/busybox"
    # /init installs the other applet links at boot (busybox --install -s).
    ln -s busybox "$staging/bin/sh"
    ln -s bin "$staging/sbin"
    ln -s ../bin "$staging/usr/sbin"
    install -m 0755 "$here/init.sh" "$staging/init"
    install -D -m 0644 "$here/../init-lib.sh" "$staging/lib/keel/init-lib.sh"
    install -m 0755 "$here/l1-peak-rss" "$staging/bin/l1-peak-rss"
    install -m 0755 "$pool/qemu-system-arm/usr/bin/qemu-system-aarch64" "$staging/usr/bin/qemu-system-aarch64"
    local s
    for s in "${!lib_src[@]}"; do
        cp "${lib_src[$s]}" "$staging/lib/aarch64-linux-gnu/$s"
        chmod 0755 "$staging/lib/aarch64-linux-gnu/$s"
    done
    ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$staging/lib/ld-linux-aarch64.so.1"
    local kdeb
    kdeb=$(deb_dir=$cache/guest/debs deb_file "$kpkg" "$kver" "$debarch")
    add_modules "$kdeb" "$krel" "$staging" "$work"
    cp "$l2/vmlinuz" "$staging/l2/vmlinuz"
    cp "$l2/initrd.cpio.gz" "$staging/l2/initrd.cpio.gz"
    if [[ $keel != none ]]; then
        install -m 0755 "$keel" "$staging/bin/keel"
    fi
    if ((${#extras[@]})); then
        mkdir -p "$staging/extra"
        for e in "${extras[@]}"; do
            cp -p "$e" "$staging/extra/${e##*/}"
        done
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$staging/etc/passwd"
    printf 'root:x:0:\n' >"$staging/etc/group"

    mkdir -p "$work/out"
    # zstd -19: the smallest archive (25 MB against ~91 MB); run.sh decompresses it before
    # booting, because the TCG-emulated L1 kernel unpacks a plain cpio ~0.8 s faster.
    python3 "$linux_dir/mkcpio.py" "$staging" c:dev/console:600:5:1 c:dev/null:666:1:3 |
        zstd -q -19 -T0 >"$work/out/initrd.cpio.zst"
    # The same kernel as L2's: a hard link saves 33 MB per build where the cache allows it.
    ln -f "$l2/vmlinuz" "$work/out/vmlinuz" 2>/dev/null || cp "$l2/vmlinuz" "$work/out/vmlinuz"

    local f
    {
        printf 'Keel emulated arm64 host (L1), built %s by guest/l1host/build.sh\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'key %s\n\n' "$key"
        printf 'L2 guest: %s\n' "$l2"
        printf 'keel binary: %s (sha256 %s)\n\n' "$keel" "$keel_hash"
        printf 'packages (Debian %s):\n' "$debarch"
        printf '  %s %s\n' busybox-static "$bb_ver"
        for f in "${used_pkgs[@]}"; do
            printf '  %s %s\n' "$f" "${pkg_ver[$f]}"
        done
        printf '\nshared libraries (/lib/aarch64-linux-gnu):\n'
        for s in $(printf '%s\n' "${!lib_src[@]}" | sort); do
            printf '  %-32s %-24s %9s bytes\n' "$s" "${lib_pkg[$s]}" "$(stat -c %s "$staging/lib/aarch64-linux-gnu/$s")"
        done
        printf '\nkernel modules (%s %s, load order /lib/modules/l1-load-order):\n' "$kpkg" "$kver"
        for f in "${mod_order[@]}"; do
            printf '  %-16s %8s bytes  sha256 %s\n' "$f" "$(stat -c %s "$staging/lib/modules/$krel/$f.ko")" \
                "$(sha256sum <"$staging/lib/modules/$krel/$f.ko" | cut -d' ' -f1)"
        done
        printf '\nextra files (/extra):\n'
        for e in "${extras[@]}"; do
            printf '  %s\n' "${e##*/}"
        done
        printf '\nfiles:\n'
        printf '  %-16s %10s bytes  sha256 %s\n' \
            vmlinuz "$(stat -c %s "$work/out/vmlinuz")" "$(sha256sum <"$work/out/vmlinuz" | cut -d' ' -f1)" \
            initrd.cpio.zst "$(stat -c %s "$work/out/initrd.cpio.zst")" "$(sha256sum <"$work/out/initrd.cpio.zst" | cut -d' ' -f1)"
        printf '  initramfs unpacked: %s bytes\n' "$(du -sb "$staging" | cut -f1)"
    } >"$work/out/manifest.txt"

    rm -rf "$out"
    mv "$work/out" "$out"
    rm -rf "$work"
    trap - EXIT
    ln -sfn "$key" "$l1_dir/current"
    log "done: $(stat -c %s "$out/initrd.cpio.zst") bytes initramfs"
    printf '%s\n' "$out"
}

main "$@"
