#!/usr/bin/env bash
# The test command: every test, privileged ones included (they need root;
# the README's `make test` runs this after setup, build and verify). Each
# stage prints how long it took, so that CI's time budget stays visible,
# and the run ends by checking that the machine is as it was before.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
	echo "test: run as root: the datapath tests load eBPF programs and make network namespaces" >&2
	exit 1
fi
export ANET_BIN="$PWD/bin"

t0=$SECONDS
stage_start=$SECONDS
stage() {
	if [ -n "${stage_name:-}" ]; then
		say "$stage_name: $((SECONDS - stage_start)) s"
	fi
	stage_name="$1"
	stage_start=$SECONDS
	say "$1"
}

# What the tests must leave as they found it: the machine's own network
# namespace (links, addresses, routes), the named network namespaces, the
# mounts, and the host paths a CNI runtime or the lab could write.
snapshot() {
	ip -o link show | awk -F': ' '{print "link " $2}' | sed 's/@.*//'
	ip -o addr show | awk '{print "addr " $2 " " $4}'
	ip route show table all | sed -E "s/ expires [^ ]+//; s/^/route /"
	ip netns list 2>/dev/null | awk '{print "netns " $1}'
	awk '{print "mount " $2 " " $3}' /proc/self/mounts
	for p in /var/lib/cni /etc/cni /opt/cni /run/anet /var/lib/anet /sys/fs/bpf/anet /var/log/network /run/mount /run/xtables.lock; do
		if [ -e "$p" ]; then find "$p" -maxdepth 3 | sed 's/^/path /'; fi
	done
}
before=$(mktemp)
after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT
snapshot | sort >"$before"

stage "Kubernetes binaries $(cat scripts/k8s/VERSION) (built from Go modules on first use, then cached)"
scripts/k8s-binaries.sh >/dev/null

stage "CoreDNS for the lab's cluster DNS (built from its Go module on first use, then cached)"
scripts/coredns-binary.sh >/dev/null

stage "unit and node tests (race detector on; real eBPF programs, anetd, anet-cni and netns)"
go test -race -count=1 -timeout 30m ./...

stage "scale: a 10-node lab running 100 pods (about 2 minutes)"
ANET_LAB_SCALE=1 go test -count=1 -timeout 25m -run '^TestScale$' ./lab/

stage "fuzzing the parsers of outside input briefly"
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 15s ./cniconf/
go test -run '^$' -fuzz '^FuzzDecode' -fuzztime 15s ./daemon/api/
go test -run '^$' -fuzz '^FuzzCompile$' -fuzztime 15s ./daemon/policy/

stage "the machine is as the tests found it"
snapshot | sort >"$after"
if ! diff -u "$before" "$after" >&2; then
	echo "test: the tests left the changes above on the machine (- before, + after)" >&2
	exit 1
fi
say "$stage_name: $((SECONDS - stage_start)) s"
say "all tests passed in $((SECONDS - t0)) s"
