#!/usr/bin/env bash
# Static checks CI runs: gofmt, go vet, and that the committed eBPF objects
# are what `make generate` builds from the committed C sources.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

say "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

say "go vet"
go vet ./...

say "regenerating eBPF objects (bpf2go, ${BPF_CLANG:-clang-19})"
make -s generate
# git status, not git diff: a generated file that is new (untracked) is
# stale too.
stale=$(git status --porcelain --untracked-files=all -- bpf/)
if [ -n "$stale" ]; then
	echo "$stale" >&2
	echo "verify: the committed eBPF objects are stale: run 'make generate' and commit bpf/" >&2
	exit 1
fi
say "verify passed"
