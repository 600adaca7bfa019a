#!/usr/bin/env bash
# The demo, until the multi-node lab lands: one simulated node (a network
# namespace with its own anetd and bpffs) and two pods wired by anet-cni
# through cnitool, talking through eBPF with IP forwarding off and no bridge.
# Everything lives in namespaces this script makes, and it all goes away at
# the end (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/bin"
D=$(mktemp -d /tmp/anet-demo.XXXXXX)
NODE=anet-demo-node
PODS=(anet-demo-a anet-demo-b)
ANETD_PID=
SERVER_PID=

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
in_node() { nsenter --net=/run/netns/$NODE -- "$@"; }
# cnitool keeps libcni's result cache in /var/lib/cni, with no option to
# move it: it runs in a mount namespace of its own where /var/lib is the
# demo's directory, so that the machine's is never written.
cnitool() {
	mkdir -p "$D/var-lib"
	CNI_PATH="$BIN" NETCONFPATH="$D/net.d" CNI_ARGS="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=${2#anet-demo-}" \
		unshare -m --propagation private sh -c 'mount -n --bind "$0" /var/lib && exec "$@"' "$D/var-lib" \
		nsenter --net=/run/netns/$NODE -- "$BIN/cnitool" "$1" anet "/run/netns/$2"
}

cleanup() {
	set +e
	for p in "${PODS[@]}"; do
		[ -e "/run/netns/$p" ] && cnitool del "$p" >/dev/null 2>&1
		ip netns del "$p" 2>/dev/null
	done
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
	[ -n "$ANETD_PID" ] && kill "$ANETD_PID" 2>/dev/null && wait "$ANETD_PID" 2>/dev/null
	ip netns del $NODE 2>/dev/null
	umount -n "$D/bpf" 2>/dev/null
	rm -rf "$D"
}
trap cleanup EXIT INT TERM

step "a node: network namespace $NODE (IP forwarding off), bpffs at $D/bpf"
ip netns add $NODE
ip -n $NODE link set lo up
in_node sysctl -qw net.ipv4.ip_forward=0
mkdir -p "$D/bpf" "$D/net.d"
mount -n -t bpf bpf "$D/bpf" # -n: no /run/mount/utab on the machine

step "anetd: loads and pins the eBPF programs and maps, serves its API on $D/anetd.sock"
# nsenter execs anetd in place, so $! is anetd's PID (a shell function in
# the background would be a subshell, and killing it would leave anetd).
nsenter --net=/run/netns/$NODE -- "$BIN/anetd" --node-name demo-node --pod-cidr 10.244.1.0/24 --bpf-root "$D/bpf" \
	--state-dir "$D/state" --socket "$D/anetd.sock" >"$D/anetd.log" 2>&1 &
ANETD_PID=$!
for _ in $(seq 50); do "$BIN/anetctl" --socket "$D/anetd.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
run "$BIN/anetctl" --socket "$D/anetd.sock" status

step "the conflist anet renders for this node"
cat >"$D/net.d/10-anet.conflist" <<CONF
{"cniVersion":"1.1.0","name":"anet","plugins":[{"type":"anet-cni","socket":"$D/anetd.sock","mtu":1500}]}
CONF
cat "$D/net.d/10-anet.conflist"

step "two pods, wired by anet-cni through cnitool (as a container runtime would)"
for p in "${PODS[@]}"; do
	ip netns add "$p"
	ip -n "$p" link set lo up
	printf '$ cnitool add anet /run/netns/%s\n' "$p"
	cnitool add "$p" | grep -E '"(address|gateway)"'
done
A=$(ip -n anet-demo-a -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
B=$(ip -n anet-demo-b -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
echo "pod a: $A    pod b: $B"
run ip -n $NODE -br link

step "pod a pings pod b (ICMP through bpf_redirect_peer; no bridge, ip_forward=0)"
run ip netns exec anet-demo-a ping -c 3 -i 0.2 "$B"

step "pod b serves HTTP with anet-testserver; pod a connects"
POD_NAME=pod-b nsenter --net=/run/netns/anet-demo-b -- "$BIN/anet-testserver" serve --http :8080 --tcp-echo "" --udp-echo :8081 2>/dev/null &
SERVER_PID=$!
sleep 0.5
run nsenter --net=/run/netns/anet-demo-a -- "$BIN/anet-testserver" connect --protocol http --address "$B:8080"
echo
run nsenter --net=/run/netns/anet-demo-a -- "$BIN/anet-testserver" connect --protocol udp --address "$B:8081" && echo "udp echo: ok"

step "pod a forges its source address: dropped and counted, never delivered"
cat <<'PY' >"$D/spoof.py"
import socket, struct, sys
src, dst, gwmac, mymac = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3].replace(':','')), bytes.fromhex(sys.argv[4].replace(':',''))
udp = struct.pack('!HHHH', 40000, 8081, 12, 0) + b'evil'
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20+len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
s = sum(struct.unpack('!10H', ip)); s = (s >> 16) + (s & 0xffff); s += s >> 16
ip = ip[:10] + struct.pack('!H', ~s & 0xffff) + ip[12:]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); sock.bind(('eth0', 0))
for _ in range(3): sock.send(gwmac + mymac + b'\x08\x00' + ip + udp)
PY
GWMAC=$(ip -n anet-demo-a neigh show 10.244.1.1 | awk '{print $5}')
MYMAC=$(ip -n anet-demo-a -br link show eth0 | awk '{print $3}')
run ip netns exec anet-demo-a python3 "$D/spoof.py" 10.244.1.250 "$B" "$GWMAC" "$MYMAC"

step "per-endpoint counters (packets, bytes, drops by reason)"
run "$BIN/anetctl" --socket "$D/anetd.sock" endpoint list

step "anetd is killed (SIGKILL): the pinned datapath keeps forwarding"
kill -9 "$ANETD_PID"; wait "$ANETD_PID" 2>/dev/null || true; ANETD_PID=
run ip netns exec anet-demo-a ping -c 2 -i 0.2 "$B"
nsenter --net=/run/netns/$NODE -- "$BIN/anetd" --node-name demo-node --pod-cidr 10.244.1.0/24 --bpf-root "$D/bpf" \
	--state-dir "$D/state" --socket "$D/anetd.sock" >>"$D/anetd.log" 2>&1 &
ANETD_PID=$!
for _ in $(seq 50); do "$BIN/anetctl" --socket "$D/anetd.sock" status >/dev/null 2>&1 && break; sleep 0.1; done
echo "anetd is back; it restored both endpoints from its state and the pinned maps:"
run "$BIN/anetctl" --socket "$D/anetd.sock" endpoint list

step "cleaning up: cnitool del, then the namespaces, bpffs and anetd"
for p in "${PODS[@]}"; do printf '$ cnitool del anet /run/netns/%s\n' "$p"; cnitool del "$p"; done
run "$BIN/anetctl" --socket "$D/anetd.sock" endpoint list
echo
echo "Done. make demo brings up a 2-node lab with real kubelets."
