# shellcheck shell=bash
# shellcheck disable=SC2154 # log_name and deb_dir are set by the sourcing script
# Helpers shared by guest/linux/build.sh and guest/l1host/build.sh (sourced; part of the cache
# key of every image built with it). The caller sets:
#   log_name   the prefix of its messages (build.sh, l1host/build.sh)
#   deb_dir    where downloaded .deb files are kept

log() { printf '%s: %s\n' "$log_name" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "missing tool '$c'"
    done
}

# apt-get download as root warns that _apt cannot write here; the files are ours anyway.
apt_download() {
    local opts=()
    [[ $EUID -eq 0 ]] && opts=(-o APT::Sandbox::User=root)
    (cd "$deb_dir" && apt-get "${opts[@]}" -q download "$@" >&2)
}

# Make apt know the packages of a foreign Debian architecture (idempotent).
ensure_dpkg_arch() {
    local debarch=$1
    if [[ $debarch != "$(dpkg --print-architecture)" ]] &&
        ! dpkg --print-foreign-architectures | grep -qx "$debarch"; then
        [[ $EUID -eq 0 ]] || die "run as root once: dpkg --add-architecture $debarch && apt-get update"
        log "adding dpkg architecture $debarch"
        dpkg --add-architecture "$debarch"
        apt-get -q update >&2
    fi
}

# The .deb file for pkg (Package field) at version ver, of Debian arch debarch or
# architecture-independent, downloading it if needed.
deb_file() {
    local pkg=$1 ver=$2 debarch=$3 f
    for f in "$deb_dir/${pkg}_"*"_$debarch.deb" "$deb_dir/${pkg}_"*"_all.deb"; do
        [[ -e $f ]] || continue
        if [[ $(dpkg-deb -f "$f" Version) == "$ver" ]]; then
            printf '%s\n' "$f"
            return
        fi
    done
    apt_download "$pkg:$debarch=$ver"
    for f in "$deb_dir/${pkg}_"*"_$debarch.deb" "$deb_dir/${pkg}_"*"_all.deb"; do
        if [[ -e $f && $(dpkg-deb -f "$f" Version) == "$ver" ]]; then
            printf '%s\n' "$f"
            return
        fi
    done
    die "apt-get download $pkg:$debarch=$ver produced no .deb in $deb_dir"
}
