#!/usr/bin/env bash
# make bench: measures anet against its peers in one run and writes
# bench/results.md, or $BENCH_OUT (see bench/README.md). Extra arguments go
# to anet-bench, e.g. scripts/bench.sh -quick, or -only prog.
#
# Needs root, the binaries of `make build` in bin/ (or $ANET_BIN), and
# iperf3, sockperf, ping, nsenter and taskset. Everything the run makes
# lives in network namespaces and temporary directories of its own and is
# removed when it ends, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, bpffs, eBPF)"
# -only with BPF_PROG_TEST_RUN sections alone (prog, policy) needs neither
# the tools nor the binaries.
in_kernel=0
for ((i = 1; i <= $#; i++)); do
	a=${!i}
	case $a in
	-only=* | --only=*) only=${a#*=} ;;
	-only | --only) j=$((i + 1)); only=${!j:-} ;;
	*) continue ;;
	esac
	in_kernel=1
	for s in ${only//,/ }; do [[ $s == prog || $s == policy ]] || in_kernel=0; done
done
if ((in_kernel)); then
	tmp=$(mktemp -d /tmp/anet-bench-build.XXXXXX)
	trap 'rm -rf "$tmp"' EXIT
	go build -o "$tmp/anet-bench" ./bench/cmd/anet-bench
	out=${BENCH_OUT:-bench/results.md}
	status=0
	"$tmp/anet-bench" -out "$out" "$@" || status=$?
	[[ -f $out ]] && { echo; cat "$out"; }
	exit "$status"
fi
missing=()
for tool in go iperf3 sockperf ping nsenter taskset; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install iperf3 sockperf iputils-ping util-linux)"
(( $(nproc) >= 2 )) || echo "bench: warning: one CPU only; request/response and throughput share it" >&2

bin=${ANET_BIN:-$PWD/bin}
for b in anet-cni anetd anetctl anet-install bridge host-local; do
	[[ -x $bin/$b ]] || die "$bin/$b is missing: run make build (or set ANET_BIN)"
done

tmp=$(mktemp -d /tmp/anet-bench-build.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/anet-bench" ./bench/cmd/anet-bench

out=${BENCH_OUT:-bench/results.md}
status=0
ANET_BIN=$bin "$tmp/anet-bench" -bin "$bin" -out "$out" "$@" || status=$?
if [[ -f $out ]]; then
	echo
	cat "$out"
fi
exit "$status"
