#!/usr/bin/env bash
# The demo: a 2-node Kubernetes lab (real etcd, apiserver, controller
# manager, scheduler; per node a real containerd, kubelet and anetd, pods
# wired by anet-cni), an example app, and its pods talking across nodes.
# The lab stays up for you to explore; `make lab-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB="$PWD/bin/anet-lab"
export ANET_LAB_DIR="${ANET_LAB_DIR:-/var/lib/anet-lab}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
k() { "$LAB" kubectl -- "$@"; }

step "Kubernetes binaries (built from Go modules the first time: about 15 minutes, then cached)"
scripts/k8s-binaries.sh >/dev/null

if [ -e "$ANET_LAB_DIR/state.json" ]; then
	step "a lab is already up in $ANET_LAB_DIR: reusing it (make lab-down removes it)"
else
	step "bringing up a 2-node lab in $ANET_LAB_DIR"
	run "$LAB" up --nodes 2
fi
run "$LAB" kubectl -- get nodes -o wide

step "deploying the example app (testdata/demo/app.yaml): 4 anet-testservers spread over the nodes"
run "$LAB" kubectl -- apply -f - <testdata/demo/app.yaml
run "$LAB" kubectl -- rollout status deployment/web --timeout=180s
run "$LAB" kubectl -- get pods -l app=web -o wide
run "$LAB" kubectl -- get endpointslices -l kubernetes.io/service-name=web

# One pod on each node.
mapfile -t rows < <(k get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}')
declare -A pod_on ip_of
for r in "${rows[@]}"; do
	read -r name node ip <<<"$r"
	ip_of[$name]=$ip
	[ -z "${pod_on[$node]:-}" ] && pod_on[$node]=$name
done
nodes=("${!pod_on[@]}")
a=${pod_on[${nodes[0]}]}
b=${pod_on[${nodes[1]}]}

step "pod $a (${nodes[0]}) asks pod $b (${nodes[1]}) over HTTP: across nodes"
run "$LAB" kubectl -- exec "$a" -- /anet-testserver connect --protocol http --address "${ip_of[$b]}:8080"
echo
step "and the other way, over UDP"
run "$LAB" kubectl -- exec "$b" -- /anet-testserver connect --protocol udp --address "${ip_of[$a]}:8081" && echo "udp echo: ok"

step "what anetd on each node knows: its endpoints and their counters"
for n in "${nodes[@]}"; do
	sock="$ANET_LAB_DIR/nodes/$n/run/anetd.sock"
	run bin/anetctl --socket "$sock" endpoint list
done

cat <<MSG

The lab is still up. Try:
  bin/anet-lab kubectl -- get pods -o wide
  bin/anet-lab kubectl -- exec $a -- /anet-testserver connect --protocol tcp --address ${ip_of[$b]}:8081
  bin/anet-lab exec default/$a -- ip route          # a program of this machine in the pod's netns
  bin/anet-lab status
Tear it down with:
  make lab-down        (or: bin/anet-lab down)
MSG
