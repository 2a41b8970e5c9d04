#!/bin/busybox sh
# Keel guest /init (busybox initramfs). Installed as /init by guest/linux/build.sh.
# Protocol (see README.md): prints KEEL-* marker lines on the console, starts the
# storage agent (/bin/keel-agent) in the background if the kernel command line has
# keel.blk=, runs the base64-encoded shell snippet given as keel.cmd=<base64> on the
# kernel command line, prints KEEL-CMD-EXIT <status>, then KEEL-GUEST-POWEROFF and
# powers off (a storage VM without keel.cmd waits for its agent first).
# shellcheck shell=sh

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH
# The image ships the applet symlinks; this only runs if they are missing.
[ -x /bin/mount ] || /bin/busybox --install -s
# shellcheck source=SCRIPTDIR/../init-lib.sh
. /lib/keel/init-lib.sh

mount_basics

cmdline=$(cat /proc/cmdline)

# Modules, in dependency order, one path per line (written by build.sh).
loaded=0
failed=0
while read -r mod; do
    [ -n "$mod" ] || continue
    if insmod "/lib/modules/$mod" 2>/dev/null; then
        loaded=$((loaded + 1))
    else
        failed=$((failed + 1))
        echo "KEEL-MODULE-FAILED $mod"
    fi
done </lib/modules/keel-load-order

# The empty line ends whatever firmware or the kernel left on the current line.
echo
echo "KEEL-GUEST-READY"
read -r up _ </proc/uptime
echo "KEEL-UPTIME $up"
echo "KEEL-MODULES loaded=$loaded failed=$failed"
echo "KEEL-UNAME $(uname -r)"
echo "KEEL-NPROC $(nproc)"
# /proc/partitions: major minor #blocks(KiB) name
while read -r major _ blocks name; do
    case "$major" in
        major | "") continue ;;
    esac
    echo "KEEL-BLOCK $name $blocks"
done </proc/partitions
for n in /sys/class/net/*; do
    [ -e "$n" ] || continue
    echo "KEEL-NET ${n##*/} $(cat "$n/address" 2>/dev/null)"
done
[ -c /dev/vsock ] && echo "KEEL-VSOCK /dev/vsock"
# Every virtio device found on any transport, with its device id and bound driver.
for v in /sys/bus/virtio/devices/virtio*; do
    [ -e "$v" ] || continue
    drv=none
    [ -e "$v/driver" ] && drv=$(basename "$(readlink "$v/driver")")
    echo "KEEL-VIRTIO ${v##*/} device=$(cat "$v/device") driver=$drv"
done
if [ -r /sys/class/misc/hw_random/rng_current ]; then
    echo "KEEL-RNG $(cat /sys/class/misc/hw_random/rng_current)"
fi

# The storage agent of a storage driver VM (docs/driver-vms.md): serves the block requests
# of the clients named by keel.blk= (it reads /proc/cmdline itself). Its output goes to
# the console.
agent_pid=
case " $cmdline " in
    *" keel.blk="*)
        if [ -x /bin/keel-agent ]; then
            keel-agent </dev/null &
            agent_pid=$!
            echo "KEEL-AGENT-STARTED $agent_pid"
        else
            echo "KEEL-AGENT-MISSING"
        fi
        ;;
esac

# keel.cmd=<base64 of a shell snippet>; base64url (-_) is accepted too.
status=
for arg in $cmdline; do
    case "$arg" in
        keel.cmd=*)
            if decode_keel_cmd "${arg#keel.cmd=}" /tmp/keel-cmd.sh; then
                echo "KEEL-CMD-START"
                sh /tmp/keel-cmd.sh </dev/null
                status=$?
            else
                echo "KEEL-CMD-DECODE-ERROR"
                status=255
            fi
            echo "KEEL-CMD-EXIT $status"
            ;;
    esac
done

shell_if_asked "$cmdline" "KEEL-SHELL (exit the shell to power off)"

# A storage VM with nothing else to run (no keel.cmd, no keel.shell) serves until its agent
# ends.
if [ -n "$agent_pid" ] && [ -z "$status" ]; then
    case " $cmdline " in
        *" keel.shell "* | *" keel.shell=1 "*) ;;
        *)
            wait "$agent_pid"
            echo "KEEL-AGENT-EXIT $?"
            ;;
    esac
fi

sync
echo "KEEL-GUEST-POWEROFF"
# Without a kernel power-off method `poweroff -f` halts for ever instead of failing.
# On x86 that method is ACPI: without ACPI (/sys/firmware/acpi), reset instead (the
# kernel's reboot falls back to the i8042 reset that Keel reports as a reboot request).
case "$(uname -m)" in
    x86_64 | i?86) [ -d /sys/firmware/acpi ] || reboot -f ;;
esac
poweroff -f
sleep 1
reboot -f
sleep 1
echo "KEEL-GUEST-HALT-FAILED"
exit 1
