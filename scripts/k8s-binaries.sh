#!/usr/bin/env bash
# Build real Kubernetes binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) and etcd from Go modules,
# into a cache directory outside the repository keyed by version:
#
#   ${ANET_CACHE:-/var/cache/anet}/k8s/<version>/bin/
#
# The Kubernetes version is pinned in scripts/k8s/VERSION; scripts/k8s/go.mod
# (the wrapper module the binaries are built from) must agree with it, and
# pins the etcd version (go.etcd.io/etcd/server/v3).
#
# Usage:
#   scripts/k8s-binaries.sh [NAME...]      # default: all seven binaries
#   BIN=$(scripts/k8s-binaries.sh | tail -1)
#
# Progress goes to stderr; the last (and only) line on stdout is the bin dir.
# A binary that already exists and reports the right version is not rebuilt,
# so later runs take about a second. The first run is long: measured about
# 16 min on 2 busy cores (kube-apiserver, built first, ~12 min; the others
# then reuse most of its packages from the Go build cache, 10 s to 2 min each).
# Builds run under `nice -n 19`. Needs only `go` and the Go module proxy.
set -euo pipefail

ALL=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd)

log() { printf '%s\n' "$*" >&2; }
die() { printf 'k8s-binaries: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-0}"
}

fmt_dur() { # seconds -> 1m05s
	local s=$1
	if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

for a in "$@"; do
	case $a in -h | --help) usage 0 ;; -*) log "unknown option: $a"; usage 2 ;; esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODDIR=$HERE/k8s
[[ -f $MODDIR/VERSION && -f $MODDIR/go.mod ]] || die "missing $MODDIR/VERSION or $MODDIR/go.mod"

VERSION=$(tr -d ' \t\r\n' <"$MODDIR/VERSION")
[[ $VERSION =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]] ||
	die "$MODDIR/VERSION must hold a release version like v1.35.4, got '$VERSION'"
MAJOR=${BASH_REMATCH[1]} MINOR=${BASH_REMATCH[2]} PATCH=${BASH_REMATCH[3]}
STAGING="v0.$MINOR.$PATCH" # k8s.io/api etc. are published as v0.<minor>.<patch>

# go.mod cannot read VERSION, so check that it agrees instead of silently
# building something else.
modver() { awk -v m="$1" '($1 == m || ($1 == "require" && $2 == m)) && $0 !~ /=>/ { print ($1 == "require" ? $3 : $2); exit }' "$MODDIR/go.mod"; }
got=$(modver k8s.io/kubernetes)
[[ $got == "$VERSION" ]] ||
	die "scripts/k8s/VERSION says $VERSION but scripts/k8s/go.mod requires k8s.io/kubernetes ${got:-<none>}.
  To change version: set VERSION, then in scripts/k8s/go.mod set the k8s.io/kubernetes require
  and every staging replace (the '=> ./staging' lines of k8s.io/kubernetes@$VERSION's go.mod)
  to $STAGING, and run: (cd scripts/k8s && go mod tidy)"
if bad=$(grep -E '^[[:space:]]*k8s\.io/[^ ]+ => k8s\.io/[^ ]+ v' "$MODDIR/go.mod" | grep -v " $STAGING\$"); then
	die "scripts/k8s/go.mod has staging replaces not at $STAGING:
$bad"
fi
ETCD_MODVER=$(modver go.etcd.io/etcd/server/v3)
[[ -n $ETCD_MODVER ]] || die "scripts/k8s/go.mod does not require go.etcd.io/etcd/server/v3"
ETCD_VERSION=${ETCD_MODVER#v}

command -v go >/dev/null || die "'go' not found in PATH"

CACHE=${ANET_CACHE:-/var/cache/anet}
BIN=$CACHE/k8s/$VERSION/bin
mkdir -p "$BIN" || die "cannot create $BIN (set ANET_CACHE to a writable directory)"

if (($# > 0)); then
	for n in "$@"; do
		[[ " ${ALL[*]} " == *" $n "* ]] || die "unknown binary '$n' (known: ${ALL[*]})"
	done
	NAMES=("$@")
else
	NAMES=("${ALL[@]}")
fi

pkg_of() { if [[ $1 == etcd ]]; then echo ./etcd; else echo "k8s.io/kubernetes/cmd/$1"; fi; }

# version_ok FILE NAME: does the binary run and report the pinned version?
version_ok() {
	local f=$1 name=$2 out want
	[[ -x $f ]] || return 1
	case $name in
	kubectl) out=$(timeout 30 "$f" version --client 2>&1) || return 1; want="Client Version: $VERSION" ;;
	etcd) out=$(timeout 30 "$f" --version 2>&1) || return 1; want="etcd Version: $ETCD_VERSION" ;;
	*) out=$(timeout 30 "$f" --version 2>&1) || return 1; want="Kubernetes $VERSION" ;;
	esac
	grep -qxF -- "$want" <<<"$out"
}

LDFLAGS="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	LDFLAGS+=" -X $p.gitVersion=$VERSION -X $p.gitMajor=$MAJOR -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
done

# Only one run at a time per version; a second one waits, then finds the
# binaries built.
if command -v flock >/dev/null; then
	exec 9>"$BIN/.lock"
	if ! flock -n 9; then
		log "another k8s-binaries.sh is building into $BIN; waiting for it..."
		flock 9
	fi
	# left by a run that was killed outright
	rm -f "$BIN"/.*.tmp.*
	rm -rf "${BIN%/bin}"/.gotmp.*
fi

# go's own work directory, removed on exit even if a build is interrupted
# (go leaves it behind when killed).
GOTMP=${BIN%/bin}/.gotmp.$$
BUILD_PID= TMP=
cleanup() {
	if [[ -n $BUILD_PID ]]; then
		kill -TERM -- "-$BUILD_PID" 2>/dev/null || kill -TERM "$BUILD_PID" 2>/dev/null || true
		wait "$BUILD_PID" 2>/dev/null || true
	fi
	[[ -z $TMP ]] || rm -f "$TMP"
	rm -rf "$GOTMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

SETSID=()
command -v setsid >/dev/null && SETSID=(setsid -w) # own process group, so cleanup stops the compilers too

total=${#NAMES[@]} i=0 built=0 t_all=$SECONDS
for name in "${NAMES[@]}"; do
	i=$((i + 1))
	dst=$BIN/$name
	if version_ok "$dst" "$name"; then
		log "($i/$total) $name: up to date"
		continue
	fi
	[[ ! -e $dst ]] || log "($i/$total) $name: present but does not report the expected version; rebuilding"
	log "($i/$total) building $name... (cold builds take several minutes)"
	TMP=$BIN/.$name.tmp.$$
	rm -f "$TMP"
	t0=$SECONDS
	(
		cd "$MODDIR"
		mkdir -p "$GOTMP"
		export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 GOWORK=off GOTMPDIR=$GOTMP
		exec "${SETSID[@]}" nice -n 19 go build -trimpath -ldflags "$LDFLAGS" -o "$TMP" "$(pkg_of "$name")"
	) >&2 &
	BUILD_PID=$!
	next=30
	while kill -0 "$BUILD_PID" 2>/dev/null; do
		sleep 1
		if ((SECONDS - t0 >= next)); then
			log "    ... still building $name, $(fmt_dur $((SECONDS - t0))) elapsed"
			next=$((next + 30))
		fi
	done
	rc=0
	wait "$BUILD_PID" || rc=$?
	BUILD_PID=
	((rc == 0)) || die "building $name failed (go build exit $rc); see the go output above"
	version_ok "$TMP" "$name" ||
		die "built $name but it does not report the expected version ($([[ $name == etcd ]] && echo "$ETCD_VERSION" || echo "$VERSION"))"
	mv -f "$TMP" "$dst" # same directory: an atomic rename
	TMP=
	built=$((built + 1))
	log "($i/$total) built $name in $(fmt_dur $((SECONDS - t0))) ($(($(stat -c %s "$dst") / 1048576)) MiB)"
done

if ((built > 0)); then
	log "built $built binar$( ((built == 1)) && echo y || echo ies) in $(fmt_dur $((SECONDS - t_all))) into:"
else
	log "all ${#NAMES[@]} requested up to date in:"
fi
echo "$BIN"
