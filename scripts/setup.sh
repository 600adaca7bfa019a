#!/usr/bin/env bash
# Installs what anet's build, tests and demo need on a fresh Debian 12
# machine, and nothing when it is all there already. Run as root.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
	echo "setup: run as root (apt, network namespaces, bpffs and eBPF need it)" >&2
	exit 1
fi

# command -> Debian package
declare -A need=(
	[clang-19]=clang-19
	[llvm-strip-19]=llvm-19
	[bpftool]=bpftool
	[ip]=iproute2
	[nsenter]=util-linux
	[ping]=iputils-ping
	[socat]=socat
	[iperf3]=iperf3
	[sockperf]=sockperf
	[taskset]=util-linux
	[flock]=util-linux
	[python3]=python3-minimal
	[strace]=strace
	# coreos/go-iptables drives the iptables binary (anetd's purge of a
	# legacy kube-proxy's rules, the lab's kube-proxy); nft for its
	# nftables mode and for looking at what it wrote.
	[iptables]=iptables
	[nft]=nftables
	# Captures on the underlay in the overlay's acceptance tests: tcpdump
	# writes them, tshark decodes Geneve (VNI, inner frame).
	[tcpdump]=tcpdump
	[tshark]=tshark
)
missing=()
for cmd in "${!need[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -e /usr/include/x86_64-linux-gnu/asm/types.h ] || missing+=(linux-libc-dev)

if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	say "installing Debian packages: ${missing[*]} (first run only; a minute or two)"
	export DEBIAN_FRONTEND=noninteractive
	# tshark's package asks whether non-root users may capture; answer
	# no ahead of time so that the install never prompts.
	if printf '%s\n' "${missing[@]}" | grep -qx tshark; then
		echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
	fi
	apt-get -o DPkg::Lock::Timeout=300 update -q >&2
	apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v go >/dev/null 2>&1; then
	echo "setup: Go is not on PATH (expected /usr/local/go/bin/go)" >&2
	exit 1
fi
# Go tools (bpf2go, cnitool, the reference plugins) are pinned in go.mod's
# tool block and built from the module cache; fetch them now so that the
# first build shows this step instead of stalling.
if ! go list -m github.com/cilium/ebpf >/dev/null 2>&1 || ! go mod verify >/dev/null 2>&1; then
	say "downloading Go modules"
fi
go mod download >&2
