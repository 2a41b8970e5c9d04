#!/bin/sh
# /init of the emulated arm64 host (L1) for Keel's tests. Installed by guest/l1host/build.sh.
#
# Protocol (see README.md), one marker per line on the console (ttyAMA0):
#   L1-KVM-OK | L1-KVM-MISSING     whether /dev/kvm exists
#   L1-MODULE-FAILED <name>: <why> a kernel module (tun) that insmod refused; boot goes on
#   L1-MODULES <name>... | none    the modules loaded
#   L1-CLOCK <source>              clock of the elapsed times (timer_list: CLOCK_MONOTONIC in
#                                  ns; uptime: /proc/uptime, 10 ms resolution)
#   L1-READY                       then the script runs; L1-UPTIME <s> follows
#   L1-STEP-BEGIN <name>           for each `step <name> <command...>` of the script
#   <name> <ms>| <line>            the step's stdout+stderr, <ms> since its begin
#   L1-STEP-END <name> <exit-status> <elapsed-ms>
#   L1-SCRIPT-EXIT <status>        the script's own exit status (255: undecodable)
#   L1-SUMMARY steps=<n> failed=<n>
#   L1-DONE                        then the kernel powers the machine off
# The script is the base64 (or base64url) of a shell script given as keel.cmd=<b64> on the
# kernel command line, the same encoding as guest/linux's /init. It runs in a subshell that
# has the shell functions `step` and `now_ms` (sets $now_ms to the clock in milliseconds).
# keel.shell on the command line starts a shell after the script (for debugging).
# shellcheck shell=sh
# shellcheck disable=SC2317 # step/now_ms are called from the decoded script

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
[ -x /bin/mount ] || /bin/busybox --install -s
# shellcheck source=SCRIPTDIR/../init-lib.sh
. /lib/keel/init-lib.sh

mount_basics
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm

# The empty line ends whatever the kernel left on the current line.
echo
if [ -c /dev/kvm ]; then
    echo "L1-KVM-OK"
else
    echo "L1-KVM-MISSING"
fi

# Kernel modules, dependencies first, one <release>/<name>.ko per line (build.sh: tun, which
# Keel's tap uplinks need). A failure is reported and boot goes on: only tap users need them.
mods=
while read -r _mod; do
    [ -n "$_mod" ] || continue
    _base=${_mod##*/}
    if _err=$(insmod "/lib/modules/$_mod" 2>&1); then
        mods="$mods ${_base%.ko}"
    else
        echo "L1-MODULE-FAILED ${_base%.ko}: insmod /lib/modules/$_mod: ${_err:-exit status $?}"
    fi
done </lib/modules/l1-load-order
echo "L1-MODULES${mods:- none}"

# Clock: CLOCK_MONOTONIC from the "now at <ns> nsecs" line of /proc/timer_list (busybox date
# has no %N), else /proc/uptime (10 ms). Only shell builtins: no fork per reading.
clock=uptime
if [ -r /proc/timer_list ]; then
    { read -r _ && read -r _ && read -r _ _ ns _; } </proc/timer_list
    case "$ns" in
        '' | *[!0-9]*) ;;
        *) clock=timer_list ;;
    esac
fi
echo "L1-CLOCK $clock"

# now_ms: set $now_ms to the clock in milliseconds.
now_ms() {
    if [ "$clock" = timer_list ]; then
        { read -r _ && read -r _ && read -r _ _ _ns _; } </proc/timer_list
        now_ms=$((_ns / 1000000))
    else
        read -r _up _ </proc/uptime
        _s=${_up%.*}
        _c=${_up#*.}
        now_ms=$((_s * 1000 + 1${_c} * 10 - 1000))
    fi
}

# step <name> <command...>: run the command with stdin /dev/null, prefix each line of its
# stdout+stderr with "<name> <ms since begin>| ", frame it with BEGIN/END markers.
cr=$(printf '\r')
step() {
    _name=$1
    case "$_name" in
        '' | *[!A-Za-z0-9_.-]*)
            echo "L1-STEP-BAD-NAME '$_name' (allowed: A-Z a-z 0-9 _ . -)"
            echo "bad-name" >>/run/l1-failed
            return 2
            ;;
    esac
    shift
    echo "step" >>/run/l1-steps
    echo "L1-STEP-BEGIN $_name"
    now_ms
    _t0=$now_ms
    {
        "$@" </dev/null 2>&1
        echo $? >/run/l1-step-status
    } | {
        while IFS= read -r _line || [ -n "$_line" ]; do
            now_ms
            printf '%s %d| %s\n' "$_name" $((now_ms - _t0)) "${_line%"$cr"}"
        done
    }
    now_ms
    _st=255
    read -r _st </run/l1-step-status
    rm -f /run/l1-step-status
    echo "L1-STEP-END $_name $_st $((now_ms - _t0))"
    [ "$_st" = 0 ] || echo "$_name" >>/run/l1-failed
    return "$_st"
}

read -r up _ </proc/uptime
echo "L1-READY"
echo "L1-UPTIME $up"

cmdline=$(cat /proc/cmdline)
: >/run/l1-steps
: >/run/l1-failed
script_status=
for arg in $cmdline; do
    case "$arg" in
        keel.cmd=*)
            if decode_keel_cmd "${arg#keel.cmd=}" /run/l1-script.sh; then
                # shellcheck disable=SC1091 # decoded at run time
                (. /run/l1-script.sh) </dev/null
                script_status=$?
            else
                echo "L1-SCRIPT-DECODE-ERROR"
                script_status=255
            fi
            echo "L1-SCRIPT-EXIT $script_status"
            ;;
    esac
done
[ -n "$script_status" ] || echo "L1-SCRIPT-NONE"

nsteps=0
while read -r _; do nsteps=$((nsteps + 1)); done </run/l1-steps
nfailed=0
while read -r _; do nfailed=$((nfailed + 1)); done </run/l1-failed
echo "L1-SUMMARY steps=$nsteps failed=$nfailed"

shell_if_asked "$cmdline" "L1-SHELL (exit the shell to power off)"

sync
echo "L1-DONE"
poweroff -f
sleep 1
echo "L1-POWEROFF-FAILED"
exit 1
