#!/usr/bin/env bash
# The test command: every test, privileged ones included (they need root;
# the README's `make test` runs this after setup, build and verify).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
	echo "test: run as root: the datapath tests load eBPF programs and make network namespaces" >&2
	exit 1
fi
export ANET_BIN="$PWD/bin"

say "Kubernetes binaries $(cat scripts/k8s/VERSION) (built from Go modules on first use, then cached)"
scripts/k8s-binaries.sh >/dev/null

say "unit and node tests (race detector on; real eBPF programs, anetd, anet-cni and netns)"
go test -race -count=1 -timeout 30m ./...

say "scale: a 10-node lab running 100 pods (about 2 minutes)"
ANET_LAB_SCALE=1 go test -count=1 -timeout 25m -run '^TestScale$' ./lab/

say "fuzzing the parsers of outside input briefly"
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 15s ./cniconf/
go test -run '^$' -fuzz '^FuzzDecode' -fuzztime 15s ./daemon/api/
say "all tests passed"
