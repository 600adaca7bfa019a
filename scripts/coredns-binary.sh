#!/usr/bin/env bash
# Build CoreDNS, the lab's cluster DNS, from its Go module with only the
# plugins the lab uses (scripts/coredns/main.go: kubernetes, hosts, errors,
# log, health, ready, cache, loop, reload, loadbalance; no forward), into a
# cache directory outside the repository keyed by version:
#
#   ${ANET_CACHE:-/var/cache/anet}/coredns/<version>/bin/coredns
#
# The version is the github.com/coredns/coredns require of
# scripts/coredns/go.mod.
#
# Usage:
#   BIN=$(scripts/coredns-binary.sh | tail -1)   # the directory holding coredns
#
# Progress goes to stderr; the last (and only) line on stdout is the bin dir.
# A binary that reports the pinned version and exactly the plugins of
# main.go is not rebuilt, so later runs take well under a second. A cold
# build (empty Go build cache) takes about 3 CPU-minutes, most of it
# client-go and the Kubernetes API types: measured 1.5 min on 2 idle cores,
# 3 min on 2 busy ones. Builds run under `nice -n 19`.
# Needs only `go` and the Go module proxy.
set -euo pipefail

log() { printf '%s\n' "$*" >&2; }
die() { printf 'coredns-binary: error: %s\n' "$*" >&2; exit 1; }

for a in "$@"; do
	case $a in
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 0 ;;
	*) die "unknown argument: $a" ;;
	esac
done

fmt_dur() { # seconds -> 1m05s
	local s=$1
	if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODDIR=$HERE/coredns
[[ -f $MODDIR/go.mod && -f $MODDIR/main.go ]] || die "missing $MODDIR/go.mod or $MODDIR/main.go"
command -v go >/dev/null || die "'go' not found in PATH"

VERSION=$(awk '($1 == "github.com/coredns/coredns" || ($1 == "require" && $2 == "github.com/coredns/coredns")) { print ($1 == "require" ? $3 : $2); exit }' "$MODDIR/go.mod")
[[ $VERSION =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
	die "scripts/coredns/go.mod must require github.com/coredns/coredns at a release version, got '${VERSION:-<none>}'"

# The plugins main.go links in: the directives it lists, which `coredns
# -plugins` must report (one a line), no more and no fewer.
mapfile -t PLUGINS < <(awk '/^var directives = \[\]string\{/ { on = 1; next } on && /^\}/ { exit } on { gsub(/[",\t ]/, ""); if ($0 != "") print }' "$MODDIR/main.go" | sort)
((${#PLUGINS[@]} > 0)) || die "no directives found in $MODDIR/main.go"

CACHE=${ANET_CACHE:-/var/cache/anet}
BIN=$CACHE/coredns/$VERSION/bin
mkdir -p "$BIN" || die "cannot create $BIN (set ANET_CACHE to a writable directory)"
dst=$BIN/coredns

# binary_ok FILE: does it run, report the pinned version and the plugins of
# main.go (a changed plugin list rebuilds, the version staying the same)?
binary_ok() {
	local f=$1 out got want
	[[ -x $f ]] || return 1
	out=$(timeout 30 "$f" -version 2>&1) || return 1
	grep -qxF -- "CoreDNS-${VERSION#v}" <<<"$out" || return 1
	out=$(timeout 30 "$f" -plugins 2>&1) || return 1
	got=$(sed -e 's/^[[:space:]]*//' -e 's/^dns\.//' -e '/^$/d' <<<"$out" | sort | tr '\n' ' ')
	want=$(printf '%s ' "${PLUGINS[@]}")
	[[ $got == "$want" ]]
}

if command -v flock >/dev/null; then
	exec 9>"$BIN/.lock"
	if ! flock -n 9; then
		log "another coredns-binary.sh is building into $BIN; waiting for it..."
		flock 9
	fi
	rm -f "$BIN"/.*.tmp.* # left by a run that was killed outright
	rm -rf "${BIN%/bin}"/.gotmp.*
fi

if binary_ok "$dst"; then
	log "coredns $VERSION: up to date"
	echo "$BIN"
	exit 0
fi
[[ ! -e $dst ]] || log "coredns: present but not version $VERSION with plugins ${PLUGINS[*]}; rebuilding"

GOTMP=${BIN%/bin}/.gotmp.$$
TMP=$BIN/.coredns.tmp.$$
BUILD_PID=
cleanup() {
	if [[ -n $BUILD_PID ]]; then
		kill -TERM -- "-$BUILD_PID" 2>/dev/null || kill -TERM "$BUILD_PID" 2>/dev/null || true
		wait "$BUILD_PID" 2>/dev/null || true
	fi
	rm -f "$TMP"
	rm -rf "$GOTMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

SETSID=()
command -v setsid >/dev/null && SETSID=(setsid -w) # own process group, so cleanup stops the compilers too

log "building coredns $VERSION with plugins ${PLUGINS[*]}... (a cold build takes a few minutes)"
t0=$SECONDS
(
	cd "$MODDIR"
	mkdir -p "$GOTMP"
	# Static (the image holds nothing else), reproducible, and the version
	# CoreDNS reports is its module's own.
	export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOWORK=off GOTMPDIR=$GOTMP
	exec "${SETSID[@]}" nice -n 19 go build -trimpath -ldflags "-s -w" -o "$TMP" .
) >&2 &
BUILD_PID=$!
next=30
while kill -0 "$BUILD_PID" 2>/dev/null; do
	sleep 1
	if ((SECONDS - t0 >= next)); then
		log "    ... still building coredns, $(fmt_dur $((SECONDS - t0))) elapsed"
		next=$((next + 30))
	fi
done
rc=0
wait "$BUILD_PID" || rc=$?
BUILD_PID=
((rc == 0)) || die "building coredns failed (go build exit $rc); see the go output above"
binary_ok "$TMP" || die "built coredns but it does not report version $VERSION with plugins ${PLUGINS[*]}: $("$TMP" -version 2>&1 | head -1); $("$TMP" -plugins 2>&1 | tr '\n' ' ')"
mv -f "$TMP" "$dst"
log "built coredns $VERSION in $(fmt_dur $((SECONDS - t0))) ($(($(stat -c %s "$dst") / 1048576)) MiB) into:"
echo "$BIN"
