package policy

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/anet-dev/anet/daemon/identity"
)

type fakeSource struct {
	pols  []*networkingv1.NetworkPolicy
	nss   []*corev1.Namespace
	nodes []*corev1.Node
	pods  []*corev1.Pod
}

func (s *fakeSource) NetworkPolicies() ([]*networkingv1.NetworkPolicy, error) { return s.pols, nil }
func (s *fakeSource) Namespaces() ([]*corev1.Namespace, error)                { return s.nss, nil }
func (s *fakeSource) Nodes() ([]*corev1.Node, error)                          { return s.nodes, nil }
func (s *fakeSource) AllPods() ([]*corev1.Pod, error)                         { return s.pods, nil }

// memDatapath records the calls and holds what a datapath would.
type memDatapath struct {
	ipc   map[netip.Prefix]uint32
	eps   map[uint32]EndpointPolicy
	calls []string
}

func (d *memDatapath) SetEndpointPolicy(ifindex uint32, ie, ee bool, in, eg []Rule) error {
	d.calls = append(d.calls, "set")
	d.eps[ifindex] = EndpointPolicy{IngressEnforced: ie, EgressEnforced: ee, Ingress: in, Egress: eg}
	return nil
}
func (d *memDatapath) DeleteEndpointPolicy(ifindex uint32) error {
	d.calls = append(d.calls, "delete")
	delete(d.eps, ifindex)
	return nil
}
func (d *memDatapath) SetIPCache(p netip.Prefix, id uint32) error {
	d.calls = append(d.calls, "ipc-set")
	d.ipc[p] = id
	return nil
}
func (d *memDatapath) DeleteIPCache(p netip.Prefix) error {
	d.calls = append(d.calls, "ipc-del")
	delete(d.ipc, p)
	return nil
}
func (d *memDatapath) IPCache() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	for p, id := range d.ipc {
		out[p] = id
	}
	return out, nil
}

func (d *memDatapath) PolicyEndpoints() ([]uint32, error) {
	return slices.Sorted(maps.Keys(d.eps)), nil
}

func rpod(name, node, ip string, l map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: l},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
}

func rnode(name, ip, cidr string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: []string{cidr}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
}

// TestReconciler: the first run writes the ipcache (pods, this node as
// Host with its gateway, another node as RemoteNode) and every local
// endpoint; a run with nothing changed writes nothing; a policy writes
// only the endpoint it selects; a problem is reported once; an endpoint
// that goes has its policy deleted; a pod that goes leaves the ipcache and
// releases its identity.
func TestReconciler(t *testing.T) {
	src := &fakeSource{
		nss:   []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns", Labels: map[string]string{identity.NamespaceNameLabel: "ns"}}}},
		nodes: []*corev1.Node{rnode("a", "10.77.0.11", "10.244.1.0/24"), rnode("b", "10.77.0.12", "10.244.2.0/24")},
		pods: []*corev1.Pod{rpod("srv", "a", "10.244.1.5", map[string]string{"app": "srv"}),
			rpod("cl", "a", "10.244.1.6", map[string]string{"app": "cl"}),
			rpod("far", "b", "10.244.2.5", map[string]string{"app": "cl"})},
	}
	dp := &memDatapath{ipc: map[netip.Prefix]uint32{netip.MustParsePrefix("10.9.9.9/32"): 300}, eps: map[uint32]EndpointPolicy{}}
	eps := map[string]uint32{"ns/srv": 10, "ns/cl": 11}
	alloc := identity.NewLocal()
	var reported []Problem
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: dp, Alloc: alloc,
		Endpoints: func() map[string]uint32 { return eps }, Report: func(p Problem) { reported = append(reported, p) },
		Gateway: func(p netip.Prefix) netip.Addr { return p.Addr().Next() }})
	if !r.Sync() {
		t.Fatal("first sync incomplete")
	}
	clID, _ := alloc.Lookup(identity.KeyOf("ns", src.nss[0].Labels, map[string]string{"app": "cl"}))
	want := map[string]uint32{"10.244.1.5/32": 0, "10.244.1.6/32": clID, "10.244.2.5/32": clID,
		"10.77.0.11/32": identity.Host, "10.244.1.1/32": identity.Host, "10.77.0.12/32": identity.RemoteNode, "10.244.2.1/32": identity.RemoteNode}
	if len(dp.ipc) != len(want) {
		t.Errorf("ipcache %v, want %d entries (the stale one gone)", dp.ipc, len(want))
	}
	for p, id := range want {
		got, ok := dp.ipc[netip.MustParsePrefix(p)]
		if !ok || (id != 0 && got != id) || (id == 0 && !identity.IsPod(got)) {
			t.Errorf("ipcache %s = %d (%v), want %d", p, got, ok, id)
		}
	}
	if len(dp.eps) != 2 {
		t.Errorf("endpoints written: %v", dp.eps)
	}

	dp.calls = nil
	r.Sync()
	if len(dp.calls) != 0 {
		t.Errorf("a run with nothing changed wrote %v", dp.calls)
	}

	// Ingress to srv from app=cl on TCP 8081, and a protocol anet refuses.
	tcp, bad := corev1.ProtocolTCP, corev1.Protocol("ICMP")
	p8081 := intstr.FromInt32(8081)
	src.pols = []*networkingv1.NetworkPolicy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "allow"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "srv"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "cl"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p8081}, {Protocol: &bad, Port: &p8081}},
			}},
		},
	}}
	dp.calls = nil
	r.Sync()
	if !slices.Equal(dp.calls, []string{"set"}) {
		t.Errorf("a policy on one endpoint wrote %v", dp.calls)
	}
	srv := dp.eps[10]
	if !srv.IngressEnforced || srv.EgressEnforced || !slices.Equal(srv.Ingress, []Rule{{Identity: clID, Proto: ProtoTCP, Port: 8081, PortPrefixLen: 16}}) {
		t.Errorf("srv policy %+v", srv)
	}
	if len(reported) != 1 || reported[0].Policy != "ns/allow" {
		t.Errorf("reported %v, want one problem of ns/allow", reported)
	}
	r.Sync()
	if len(reported) != 1 {
		t.Errorf("a problem reported again: %v", reported)
	}

	// srv's endpoint goes, then the far pod.
	delete(eps, "ns/srv")
	src.pods = src.pods[:2]
	dp.calls = nil
	r.Sync()
	if _, ok := dp.eps[10]; ok || !slices.Contains(dp.calls, "delete") {
		t.Errorf("endpoint policy not deleted: %v", dp.calls)
	}
	if _, ok := dp.ipc[netip.MustParsePrefix("10.244.2.5/32")]; ok {
		t.Error("a gone pod's address stays in the ipcache")
	}
	// A panic inside a run is contained.
	r.cfg.Endpoints = func() map[string]uint32 { panic("boom") }
	if r.safeSync() {
		t.Error("a panicking run reported success")
	}
}

// lockedSource is a fakeSource the test changes while Run reads it.
type lockedSource struct {
	mu sync.Mutex
	fakeSource
}

func (s *lockedSource) NetworkPolicies() ([]*networkingv1.NetworkPolicy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pols), nil
}
func (s *lockedSource) AllPods() ([]*corev1.Pod, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.pods), nil
}

// TestWaitEndpoint: an ADD's wait for the new pod's policy returns at once
// when no policy is in the pod's namespace; runs out while the cache does
// not know the pod (the endpoint stays as it was made); and returns once a
// run has written the isolated policy of the pod, after the informer's
// event for it.
func TestWaitEndpoint(t *testing.T) {
	src := &lockedSource{fakeSource: fakeSource{
		nss:  []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}},
		pols: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "deny"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "new"}}, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}},
		pods: []*corev1.Pod{rpod("srv", "a", "10.244.1.5", map[string]string{"app": "srv"})},
	}}
	dp := &memDatapath{ipc: map[netip.Prefix]uint32{}, eps: map[uint32]EndpointPolicy{}}
	var mu sync.Mutex
	eps := map[string]uint32{"ns/srv": 10}
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: dp, Alloc: identity.NewLocal(), Resync: time.Hour,
		Endpoints: func() map[string]uint32 { mu.Lock(); defer mu.Unlock(); return maps.Clone(eps) }})

	if err := r.WaitEndpoint(context.Background(), "other", "p"); err != nil {
		t.Fatalf("no policy in the namespace, before any run: %v, want nil at once", err)
	}
	stop := startRun(r)
	defer stop()

	wait := func(name string, d time.Duration) error {
		c, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return r.WaitEndpoint(c, "ns", name)
	}
	if err := wait("srv", 10*time.Second); err != nil {
		t.Fatalf("a known pod: %v", err)
	}
	mu.Lock()
	eps["ns/new"] = 12 // CNI made the endpoint; the informer has not seen the pod yet
	mu.Unlock()
	if err := wait("new", 300*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a pod the cache does not know: %v, want the deadline", err)
	}
	src.mu.Lock()
	src.pods = append(src.pods, rpod("new", "a", "10.244.1.7", map[string]string{"app": "new"}))
	src.mu.Unlock()
	go func() { time.Sleep(50 * time.Millisecond); r.Enqueue() }() // the informer's event
	if err := wait("new", 10*time.Second); err != nil {
		t.Fatalf("after the pod reached the cache: %v", err)
	}
	stop()
	if ep := dp.eps[12]; !ep.IngressEnforced || len(ep.Ingress) != 0 {
		t.Errorf("the new pod's endpoint: %+v, want isolated for ingress", ep)
	}
}

// TestReconcilerDropsWhatWentWhileDown: at its first run a new reconciler
// (anetd restarted) deletes the policy the pinned maps hold for endpoints
// that are gone, and rewrites that of the live ones to what the policies
// say now (here: open, the policy deleted while anetd was down).
func TestReconcilerDropsWhatWentWhileDown(t *testing.T) {
	src := &fakeSource{
		nss:  []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}},
		pods: []*corev1.Pod{rpod("srv", "a", "10.244.1.5", map[string]string{"app": "srv"})},
	}
	dp := &memDatapath{ipc: map[netip.Prefix]uint32{}, eps: map[uint32]EndpointPolicy{
		10: {IngressEnforced: true, Ingress: []Rule{{Identity: 300, Proto: ProtoTCP, Port: 80, PortPrefixLen: 16}}},
		99: {IngressEnforced: true, EgressEnforced: true},
	}}
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: dp, Alloc: identity.NewLocal(),
		Endpoints: func() map[string]uint32 { return map[string]uint32{"ns/srv": 10} }})
	if !r.Sync() {
		t.Fatal("sync incomplete")
	}
	if _, ok := dp.eps[99]; ok {
		t.Errorf("the policy of endpoint 99, gone while anetd was down, is still in the maps: %+v", dp.eps[99])
	}
	if ep := dp.eps[10]; ep.IngressEnforced || len(ep.Ingress) != 0 {
		t.Errorf("the live endpoint's stale policy was not rewritten: %+v", ep)
	}
	dp.calls = nil
	if !r.Sync() || len(dp.calls) != 0 {
		t.Errorf("a second run with nothing changed wrote %v", dp.calls)
	}
}

// TestReconcilerLatency: a run that an event started reports the time
// since that event (the 20 ms that let a burst coalesce included); the
// first run, which no event started, reports nothing.
func TestReconcilerLatency(t *testing.T) {
	src := &lockedSource{fakeSource: fakeSource{
		nss:  []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}},
		pods: []*corev1.Pod{rpod("srv", "a", "10.244.1.5", map[string]string{"app": "srv"})},
	}}
	dp := &memDatapath{ipc: map[netip.Prefix]uint32{}, eps: map[uint32]EndpointPolicy{}}
	var mu sync.Mutex
	var got []time.Duration
	r := NewReconciler(Config{Node: "a", Source: src, Datapath: dp, Alloc: identity.NewLocal(), Resync: time.Hour,
		Endpoints: func() map[string]uint32 { return map[string]uint32{"ns/srv": 10} },
		Latency:   func(d time.Duration) { mu.Lock(); got = append(got, d); mu.Unlock() }})
	stop := startRun(r)
	defer stop()
	for _, _, ok := r.IdentityCounts(); !ok; _, _, ok = r.IdentityCounts() {
		time.Sleep(5 * time.Millisecond) // the first run
	}
	if pods, cidrs, _ := r.IdentityCounts(); pods != 1 || cidrs != 0 {
		t.Errorf("identities: %d pod, %d cidr; want 1, 0", pods, cidrs)
	}
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("the first run, started by no event, reported %v", got)
	}
	mu.Unlock()
	r.Enqueue()
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] < 20*time.Millisecond {
		t.Errorf("latencies %v, want one of at least 20ms", got)
	}
}

// startRun runs r from a listed cache until the returned stop, which
// returns once Run has (and may be called again).
func startRun(r *Reconciler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	listed := make(chan struct{})
	close(listed)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx, listed) }()
	return func() { cancel(); <-done }
}
