package service

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/anet-dev/anet/daemon/service/lb"
)

// terminations records what the reconciler asks the terminator.
type terminations struct {
	mu   sync.Mutex
	gone []string
}

func (t *terminations) TerminateUDP(gone []lb.GoneBackend) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range gone {
		t.gone = append(t.gone, fmt.Sprintf("%d %s", g.RevNat, g.Addr))
	}
}

func (t *terminations) take() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.gone
	t.gone = nil
	slices.Sort(g)
	return g
}

// The terminator hears of a UDP backend once it left a frontend's map
// entry, or stays there as Terminating (not serving), with the frontend's
// reverse-NAT index; not of TCP backends, nor of serving ones; and of
// every backend of a frontend that goes.
func TestReconcileTerminatesGoneUDPBackends(t *testing.T) {
	m := NewMemMap()
	term := &terminations{}
	r, _ := newTest(t, m, Options{Terminator: term})
	s := svc("dns", clusterIPs("10.96.0.10"), ports(sport("dns", corev1.ProtocolUDP, 53, 0), sport("tcp", corev1.ProtocolTCP, 53, 0)))
	eps := func(e ...discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
		return []*discoveryv1.EndpointSlice{slice("dns", "dns-a",
			[]discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 5353), eport("tcp", corev1.ProtocolTCP, 5353)}, e...)}
	}
	update(t, r, s, eps(ep("10.1.0.1", "n1"), ep("10.1.0.2", "n1"), ep("10.1.0.3", "n1")))
	if g := term.take(); len(g) != 0 {
		t.Fatalf("new backends reported gone: %v", g)
	}
	var rn uint32
	for _, f := range mustDump(t, m) {
		if f.Key.Proto == UDP {
			rn = f.RevNat
		}
	}
	want := func(addrs ...string) []string {
		var out []string
		for _, a := range addrs {
			out = append(out, fmt.Sprintf("%d %s", rn, a))
		}
		return out
	}

	// .1 goes, .2 is terminating but serving (it keeps its sockets).
	update(t, r, s, eps(ep("10.1.0.2", "n1", conds(no, yes, yes)), ep("10.1.0.3", "n1")))
	if g := term.take(); !slices.Equal(g, want("10.1.0.1:5353")) {
		t.Errorf("after .1 left: %v, want %v", g, want("10.1.0.1:5353"))
	}
	// .2 stops serving: gone, though the map keeps it.
	update(t, r, s, eps(ep("10.1.0.2", "n1", conds(no, no, yes)), ep("10.1.0.3", "n1")))
	if g := term.take(); !slices.Equal(g, want("10.1.0.2:5353")) {
		t.Errorf("after .2 stopped serving: %v, want %v", g, want("10.1.0.2:5353"))
	}
	// .2 leaves the slice: it went already.
	update(t, r, s, eps(ep("10.1.0.3", "n1")))
	if g := term.take(); len(g) != 0 {
		t.Errorf("after terminating .2 left: %v, want nothing", g)
	}
	// The Service goes: its last backend with it.
	if !r.Update(key(s), nil, nil) {
		t.Fatal("delete failed")
	}
	if g := term.take(); !slices.Equal(g, want("10.1.0.3:5353")) {
		t.Errorf("after the Service went: %v, want %v", g, want("10.1.0.3:5353"))
	}
}

func mustDump(t *testing.T, m Map) []MapFrontend {
	t.Helper()
	fs, err := m.Dump()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}
