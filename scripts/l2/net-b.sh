# shellcheck shell=sh
# VM b of examples/net-linux-arm64.toml (its keel.cmd=, base64): listens before its link is
# up, receives one TCP stream on port 5000 and prints its size and sha256. nc's stdin must
# not end (busybox nc half-closes at EOF on stdin, and the sender's nc quits at that FIN):
# it is a FIFO opened read-write, which never has data nor EOF.
mkfifo /tmp/f
nc -l -p 5000 <>/tmp/f >/tmp/r &
ip addr add 10.0.0.2/24 dev eth0
ip link set eth0 up
echo "NETTEST b listening"
wait $!
echo "NETTEST b nc-exit $?"
echo "NETTEST b size $(wc -c </tmp/r)"
echo "NETTEST b sha256 $(sha256sum </tmp/r | cut -d' ' -f1)"
