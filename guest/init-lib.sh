# shellcheck shell=sh
# Shell functions shared by the /init of guest/linux and of guest/l1host (busybox sh).
# Installed as /lib/keel/init-lib.sh by both build.sh scripts, and part of both images' keys.

# The mounts every guest needs: /proc, /sys, /dev (+ /dev/pts), tmpfs on /tmp and /run.
mount_basics() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /tmp /run
    mount -t devpts devpts /dev/pts 2>/dev/null
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /run
}

# decode_keel_cmd <enc> <file>: write the script given as keel.cmd=<enc> (base64 or base64url)
# to <file>; fails (status 1) if <enc> is not valid.
decode_keel_cmd() {
    # busybox base64 -d skips characters outside the alphabet: refuse them here.
    case "$1" in
        *[!A-Za-z0-9+/=_-]*) return 1 ;;
    esac
    printf '%s' "$1" | tr -- '-_' '+/' | base64 -d >"$2" 2>/dev/null
}

# shell_if_asked <cmdline> <marker>: with keel.shell on the command line, print <marker> and
# run an interactive shell on the console.
shell_if_asked() {
    for _arg in $1; do
        case "$_arg" in
            keel.shell | keel.shell=1)
                echo "$2"
                setsid cttyhack sh
                ;;
        esac
    done
}
