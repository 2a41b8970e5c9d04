# shellcheck shell=sh
# VM a of examples/net-linux-arm64.toml (its keel.cmd=, base64): waits for b's answer to
# ping, pings it 3 times, sends 4 MiB of random bytes to b:5000 and prints their sha256.
ip addr add 10.0.0.1/24 dev eth0
ip link set eth0 up
n=0
until ping -c 1 -W 1 10.0.0.2 >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -lt 120 ] || { echo "NETTEST a FAIL no answer from 10.0.0.2"; exit 1; }
    usleep 200000
done
echo "NETTEST a b-answered after $n"
p=$(ping -q -c 3 10.0.0.2)
echo "NETTEST a ping $(echo "$p" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) .*/\2\/\1/p')"
echo "NETTEST a rtt $(echo "$p" | sed -n 's/^round-trip //p')"
dd if=/dev/urandom of=/tmp/d bs=64k count=64 2>/dev/null
echo "NETTEST a size $(wc -c </tmp/d)"
echo "NETTEST a sha256 $(sha256sum </tmp/d | cut -d' ' -f1)"
read -r t0 _ </proc/uptime
timeout 60 nc 10.0.0.2 5000 </tmp/d
s=$?
read -r t1 _ </proc/uptime
echo "NETTEST a nc-exit $s"
echo "NETTEST a sent-ms $((${t1%.*}${t1#*.}0 - ${t0%.*}${t0#*.}0))"
