package policy

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/anet-dev/anet/daemon/identity"
	"github.com/anet-dev/anet/internal/netpolmodel"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// world is upstream Kubernetes' netpol e2e model (internal/netpolmodel)
// in memory. The pods are spread over three nodes; every node compiles
// its own state, and the state each node would hold in its maps is kept
// by applying Diff and DiffIPCache from one step to the next, so the
// evaluator judges what the datapath would hold after the incremental
// updates, not a fresh compile.

var modelNodes = []string{"n1", "n2", "n3"}

type world struct {
	t        *testing.T
	opts     Options
	ns       map[string]*corev1.Namespace
	pods     map[string]*corev1.Pod // ns/name
	policies map[string]*networkingv1.NetworkPolicy
	alloc    *identity.Local
	comp     map[string]*Compiler
	// applied is what each node's maps hold
	applied  map[string]map[string]EndpointPolicy
	ipcache  map[string]map[netip.Prefix]uint32
	last     map[string]Result
	problems []Problem
}

func nodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 0, byte(i + 1)}) }

func newWorld(t *testing.T, opts Options) *world {
	w := &world{t: t, opts: opts, ns: map[string]*corev1.Namespace{}, pods: map[string]*corev1.Pod{},
		policies: map[string]*networkingv1.NetworkPolicy{}, alloc: identity.NewLocal(),
		comp: map[string]*Compiler{}, applied: map[string]map[string]EndpointPolicy{},
		ipcache: map[string]map[netip.Prefix]uint32{}, last: map[string]Result{}}
	i := 0
	for _, ns := range netpolmodel.Namespaces {
		labels := netpolmodel.NamespaceLabels(ns)
		labels[identity.NamespaceNameLabel] = ns
		w.ns[ns] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}
		for _, p := range netpolmodel.PodNames {
			node := i % len(modelNodes)
			ip := netip.AddrFrom4([4]byte{10, 244, byte(node + 1), byte(10 + i)})
			w.pods[ns+"/"+p] = &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p, Namespace: ns, Labels: netpolmodel.PodLabels(p)},
				Spec:       corev1.PodSpec{NodeName: modelNodes[node], Containers: netpolmodel.Containers("", nil, nil)},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}},
			}
			i++
		}
	}
	for _, n := range modelNodes {
		w.comp[n] = NewCompiler(opts)
		w.applied[n] = map[string]EndpointPolicy{}
		w.ipcache[n] = map[netip.Prefix]uint32{}
	}
	w.sync()
	return w
}

// IP is the address of a pod.
func (w *world) IP(pod string) netip.Addr { return netip.MustParseAddr(w.pods[pod].Status.PodIP) }

func (w *world) input(node string) Input {
	var nodes []Node
	for i, n := range modelNodes {
		nodes = append(nodes, Node{Name: n, Addrs: []netip.Addr{nodeAddr(i)}})
	}
	return Input{
		Policies:   slices.Collect(maps.Values(w.policies)),
		Pods:       slices.Collect(maps.Values(w.pods)),
		Namespaces: slices.Collect(maps.Values(w.ns)),
		Nodes:      nodes,
		LocalNode:  node,
		Identity: func(k identity.Key) (uint32, bool) {
			id, err := w.alloc.Allocate(k)
			return id, err == nil
		},
	}
}

// sync compiles every node and applies the differences to its maps, as
// the reconciler will.
func (w *world) sync() {
	w.t.Helper()
	w.problems = nil
	for _, n := range modelNodes {
		res := w.comp[n].Compile(w.input(n))
		w.last[n] = res
		w.problems = append(w.problems, res.Problems...)
		if len(res.Unresolved) > 0 {
			w.t.Fatalf("node %s: unresolved pods %v", n, res.Unresolved)
		}
		set, del := DiffIPCache(w.ipcache[n], res.IPCache)
		maps.Copy(w.ipcache[n], set)
		for _, p := range del {
			delete(w.ipcache[n], p)
		}
		if !maps.Equal(w.ipcache[n], res.IPCache) {
			w.t.Fatalf("node %s: ipcache after DiffIPCache differs from the desired one", n)
		}
		for key, want := range res.Endpoints {
			old := w.applied[n][key]
			w.applied[n][key] = applyChange(old, Diff(old, want))
			if got := w.applied[n][key]; !equalRules(got, want) {
				w.t.Fatalf("node %s endpoint %s: after Diff %+v, want %+v", n, key, got, want)
			}
		}
		for key := range w.applied[n] {
			if _, ok := res.Endpoints[key]; !ok {
				delete(w.applied[n], key)
			}
		}
	}
}

func applyChange(old EndpointPolicy, c Change) EndpointPolicy {
	apply := func(list, add, del []Rule) []Rule {
		set := map[Rule]bool{}
		for _, r := range list {
			set[r] = true
		}
		for _, r := range add {
			if set[r] {
				panic("Diff adds a rule already there")
			}
			set[r] = true
		}
		for _, r := range del {
			if !set[r] {
				panic("Diff deletes a rule not there")
			}
			delete(set, r)
		}
		return slices.SortedFunc(maps.Keys(set), compareRules)
	}
	return EndpointPolicy{IngressEnforced: c.IngressEnforced, EgressEnforced: c.EgressEnforced,
		Ingress: apply(old.Ingress, c.IngressAdd, c.IngressDel), Egress: apply(old.Egress, c.EgressAdd, c.EgressDel)}
}

func equalRules(a, b EndpointPolicy) bool {
	return a.IngressEnforced == b.IngressEnforced && a.EgressEnforced == b.EgressEnforced &&
		slices.Equal(a.Ingress, b.Ingress) && slices.Equal(a.Egress, b.Egress)
}

// allowed judges a new connection from pod from to pod to's (proto, port)
// as the datapath would: the egress check on from's node with the
// destination's identity from that node's ipcache, then the ingress check
// on to's node with the source identity (the Geneve VNI across nodes,
// which carries the sender's pod identity; the ipcache on one node).
func (w *world) allowed(from, to string, proto uint8, port uint16) bool {
	w.t.Helper()
	sp, dp := w.pods[from], w.pods[to]
	sn, dn := sp.Spec.NodeName, dp.Spec.NodeName
	dstID := Lookup(w.ipcache[sn], w.IP(to))
	srcID := Lookup(w.ipcache[sn], w.IP(from)) // the VNI
	if sn == dn {
		if id := Lookup(w.ipcache[dn], w.IP(from)); id != srcID {
			w.t.Fatalf("identity of %s differs", from)
		}
	} else if id := Lookup(w.ipcache[dn], w.IP(from)); id != srcID {
		w.t.Fatalf("nodes %s and %s disagree on the identity of %s: %d, %d", sn, dn, from, srcID, id)
	}
	sep, ok := w.applied[sn][from]
	if !ok {
		w.t.Fatalf("no endpoint %s on %s", from, sn)
	}
	dep, ok := w.applied[dn][to]
	if !ok {
		w.t.Fatalf("no endpoint %s on %s", to, dn)
	}
	return sep.AllowsEgress(dstID, proto, port) && dep.AllowsIngress(srcID, proto, port)
}

// Validate judges every pair as the datapath would (see allowed).
func (w *world) Validate(port int32, proto corev1.Protocol, r *netpolmodel.Reachability) {
	w.t.Helper()
	pr, _ := protoOf(proto)
	wrong, table := r.Compare(func(from, to string) bool { return w.allowed(from, to, pr, uint16(port)) })
	if len(wrong) > 0 {
		w.t.Errorf("%s/%d: %d of %d wrong: %v\nobserved (* = unexpected):\n%s", proto, port, len(wrong), netpolmodel.Pairs(), wrong, table)
	}
}

// Create adds a policy and syncs every node.
func (w *world) Create(ns string, p *networkingv1.NetworkPolicy) {
	w.t.Helper()
	p = p.DeepCopy()
	p.Namespace = ns
	w.policies[ns+"/"+p.Name] = p
	w.sync()
}

// Update replaces a policy.
func (w *world) Update(ns string, p *networkingv1.NetworkPolicy) { w.Create(ns, p) }

// DeleteAllPolicies deletes every policy.
func (w *world) DeleteAllPolicies() {
	w.policies = map[string]*networkingv1.NetworkPolicy{}
	w.sync()
}

// AddNamespaceLabel sets a namespace label.
func (w *world) AddNamespaceLabel(ns, k, v string) {
	w.ns[ns].Labels[k] = v
	w.sync()
}

// SetPodLabels replaces a pod's labels.
func (w *world) SetPodLabels(pod string, l map[string]string) {
	w.pods[pod].Labels = maps.Clone(l)
	w.sync()
}

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)
