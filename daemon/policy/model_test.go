package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The model of upstream Kubernetes' netpol e2e suite
// (test/e2e/network/netpol): namespaces x, y, z, each with pods a, b, c
// labelled pod=a|b|c, each serving TCP and UDP on 80 and 81 through
// container ports named serve-80-tcp, serve-80-udp, serve-81-tcp,
// serve-81-udp. The pods are spread over three nodes; every node compiles
// its own state, and the state each node would hold in its maps is kept
// by applying Diff and DiffIPCache from one step to the next, so the
// evaluator judges what the datapath would hold after the incremental
// updates, not a fresh compile.

var (
	modelNamespaces = []string{"x", "y", "z"}
	modelPods       = []string{"a", "b", "c"}
	modelNodes      = []string{"n1", "n2", "n3"}
)

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
	for _, ns := range modelNamespaces {
		w.ns[ns] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{identity.NamespaceNameLabel: ns, "ns": ns}}}
		for _, p := range modelPods {
			node := i % len(modelNodes)
			var containers []corev1.Container
			for _, port := range []int32{80, 81} {
				for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
					lp := strings.ToLower(string(proto))
					containers = append(containers, corev1.Container{
						Name:  fmt.Sprintf("cont-%d-%s", port, lp),
						Ports: []corev1.ContainerPort{{ContainerPort: port, Name: fmt.Sprintf("serve-%d-%s", port, lp), Protocol: proto}},
					})
				}
			}
			ip := netip.AddrFrom4([4]byte{10, 244, byte(node + 1), byte(10 + i)})
			w.pods[ns+"/"+p] = &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p, Namespace: ns, Labels: map[string]string{"pod": p}},
				Spec:       corev1.PodSpec{NodeName: modelNodes[node], Containers: containers},
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

func (w *world) ip(pod string) netip.Addr { return netip.MustParseAddr(w.pods[pod].Status.PodIP) }

func (w *world) podStrings() []string {
	var out []string
	for _, ns := range modelNamespaces {
		for _, p := range modelPods {
			out = append(out, ns+"/"+p)
		}
	}
	return out
}

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
	dstID := Lookup(w.ipcache[sn], w.ip(to))
	srcID := Lookup(w.ipcache[sn], w.ip(from)) // the VNI
	if sn == dn {
		if id := Lookup(w.ipcache[dn], w.ip(from)); id != srcID {
			w.t.Fatalf("identity of %s differs", from)
		}
	} else if id := Lookup(w.ipcache[dn], w.ip(from)); id != srcID {
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

// reach is upstream's Reachability: an expected truth table.
type reach struct {
	pods []string
	want map[[2]string]bool
}

type peer struct{ ns, pod string }

func (p peer) matches(s string) bool {
	ns, pod, _ := strings.Cut(s, "/")
	return (p.ns == "" || p.ns == ns) && (p.pod == "" || p.pod == pod)
}

func (w *world) newReach(def bool) *reach {
	r := &reach{pods: w.podStrings(), want: map[[2]string]bool{}}
	for _, a := range r.pods {
		for _, b := range r.pods {
			r.want[[2]string{a, b}] = def
		}
	}
	return r
}

func (r *reach) expect(from, to string, v bool) { r.want[[2]string{from, to}] = v }
func (r *reach) expectPeer(from, to peer, v bool) {
	for _, a := range r.pods {
		for _, b := range r.pods {
			if from.matches(a) && to.matches(b) {
				r.want[[2]string{a, b}] = v
			}
		}
	}
}
func (r *reach) expectAllIngress(pod string, v bool) { r.expectPeer(peer{}, peerOf(pod), v) }
func (r *reach) expectAllEgress(pod string, v bool)  { r.expectPeer(peerOf(pod), peer{}, v) }
func peerOf(s string) peer                           { ns, p, _ := strings.Cut(s, "/"); return peer{ns, p} }

// validate compares the whole matrix (loopback ignored, as upstream does).
func (w *world) validate(port uint16, proto corev1.Protocol, r *reach) {
	w.t.Helper()
	pr, _ := protoOf(proto)
	var wrong []string
	var table strings.Builder
	table.WriteString("from\\to")
	for _, b := range r.pods {
		table.WriteString("\t" + b)
	}
	for _, a := range r.pods {
		table.WriteString("\n" + a)
		for _, b := range r.pods {
			got := w.allowed(a, b, pr, port)
			mark := map[bool]string{true: ".", false: "X"}[got]
			if a != b && got != r.want[[2]string{a, b}] {
				wrong = append(wrong, fmt.Sprintf("%s->%s got %v", a, b, got))
				mark = "*" + mark
			}
			table.WriteString("\t" + mark)
		}
	}
	if len(wrong) > 0 {
		w.t.Errorf("%s/%d: %d of %d wrong: %v\nobserved (* = unexpected):\n%s", proto, port, len(wrong), len(r.pods)*(len(r.pods)-1), wrong, table.String())
	}
}

func (w *world) create(ns string, p *networkingv1.NetworkPolicy) {
	w.t.Helper()
	p = p.DeepCopy()
	p.Namespace = ns
	w.policies[ns+"/"+p.Name] = p
	w.sync()
}

func (w *world) update(ns string, p *networkingv1.NetworkPolicy) { w.create(ns, p) }

func (w *world) deleteAllPolicies() {
	w.policies = map[string]*networkingv1.NetworkPolicy{}
	w.sync()
}

func (w *world) addNamespaceLabel(ns, k, v string) {
	w.ns[ns].Labels[k] = v
	w.sync()
}

func (w *world) setPodLabels(pod string, l map[string]string) {
	w.pods[pod].Labels = maps.Clone(l)
	w.sync()
}

// Policy builders, as upstream's policies.go.
type setFunc func(*networkingv1.NetworkPolicy)

func genPolicy(name string, sel metav1.LabelSelector, fns ...setFunc) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.PodSelector = sel
	for _, f := range fns {
		f(p)
	}
	return p
}

func genPolicyLabels(name string, l map[string]string, fns ...setFunc) *networkingv1.NetworkPolicy {
	return genPolicy(name, metav1.LabelSelector{MatchLabels: l}, fns...)
}

func ingressRules(rules ...networkingv1.NetworkPolicyIngressRule) setFunc {
	return func(p *networkingv1.NetworkPolicy) {
		if p.Spec.Ingress == nil {
			p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		}
		p.Spec.Ingress = append(p.Spec.Ingress, rules...)
	}
}

func egressRules(rules ...networkingv1.NetworkPolicyEgressRule) setFunc {
	return func(p *networkingv1.NetworkPolicy) {
		if p.Spec.Egress == nil {
			p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
			p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
		p.Spec.Egress = append(p.Spec.Egress, rules...)
	}
}
