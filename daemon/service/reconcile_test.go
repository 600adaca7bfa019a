package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// writes records the Put and Delete calls a MemMap gets.
type writes struct {
	mu  sync.Mutex
	ops []string
}

func (w *writes) hook(op string, k FrontendKey) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ops = append(w.ops, op+" "+k.Addr.String()+"/"+k.Proto.String())
	return nil
}

func (w *writes) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ops := w.ops
	w.ops = nil
	slices.Sort(ops)
	return ops
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTest(t *testing.T, m *MemMap, opts Options) (*Reconciler, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	r := NewReconciler(m, thisNode, opts, slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err := r.Adopt(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reconciler log:\n%s", lb.String())
		}
	})
	return r, lb
}

// webSvc is Service web<i> with clusterIP 10.96.<i/250>.<i%250+1>:80, a
// NodePort 30000+i when i < 2000, and n endpoints 10.<100+j>.<i/256>.<i%256>:8080,
// every other one on this node.
func webSvc(i, n int) (*corev1.Service, []*discoveryv1.EndpointSlice) {
	name := fmt.Sprintf("web%d", i)
	nodePort := int32(0)
	if i < 2000 {
		nodePort = int32(30000 + i)
	}
	s := svc(name, clusterIPs(fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)), ports(sport("http", corev1.ProtocolTCP, 80, nodePort)))
	if nodePort != 0 {
		s.Spec.Type = corev1.ServiceTypeNodePort
	}
	var eps []discoveryv1.Endpoint
	for j := range n {
		node := "n2"
		if j%2 == 0 {
			node = "n1"
		}
		eps = append(eps, ep(fmt.Sprintf("10.%d.%d.%d", 100+j, i/256%256, i%256), node))
	}
	return s, []*discoveryv1.EndpointSlice{slice(name, name+"-a", []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080)}, eps...)}
}

func key(s *corev1.Service) string { return s.Namespace + "/" + s.Name }

func update(t *testing.T, r *Reconciler, s *corev1.Service, eps []*discoveryv1.EndpointSlice) {
	t.Helper()
	if !r.Update(key(s), s, eps) {
		t.Fatalf("update of %s failed", key(s))
	}
}

func TestReconcileWritesOnlyTheChangedService(t *testing.T) {
	m := NewMemMap()
	var w writes
	m.Fail = w.hook
	r, _ := newTest(t, m, Options{})
	var svcs []*corev1.Service
	var slices_ [][]*discoveryv1.EndpointSlice
	for i := range 3 {
		s, eps := webSvc(i, 3)
		svcs, slices_ = append(svcs, s), append(slices_, eps)
		update(t, r, s, eps)
	}
	// 3 Services x (ClusterIP + a NodePort on each of the 2 IPv4 node addresses).
	if ops := w.take(); len(ops) != 9 || m.Len() != 9 {
		t.Fatalf("first writes: %d ops, %d frontends: %v", len(ops), m.Len(), ops)
	}
	if err := m.CheckIDs(); err != nil {
		t.Fatal(err)
	}
	// The same again: nothing to write.
	for i := range svcs {
		update(t, r, svcs[i], slices_[i])
	}
	if ops := w.take(); len(ops) != 0 {
		t.Fatalf("unchanged Services written: %v", ops)
	}
	// One endpoint of web1 stops being ready: web1's three frontends, only.
	sl := slices_[1][0].DeepCopy()
	sl.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: no, Serving: yes, Terminating: yes}
	update(t, r, svcs[1], []*discoveryv1.EndpointSlice{sl})
	want := []string{"put 10.77.0.1:30001/TCP", "put 10.77.1.1:30001/TCP", "put 10.96.0.2:80/TCP"}
	if ops := w.take(); !slices.Equal(ops, want) {
		t.Fatalf("writes %v, want %v", ops, want)
	}
	f, _ := m.Get(FrontendKey{Addr: netip.MustParseAddrPort("10.96.0.2:80"), Proto: TCP})
	if f.Active != 2 || len(f.Backends) != 3 || f.Backends[2].State != Serving {
		t.Errorf("after the change: %+v", f)
	}
	// A Service that goes: its frontends go, the others stay.
	if !r.Update(key(svcs[0]), nil, nil) {
		t.Fatal("delete failed")
	}
	want = []string{"delete 10.77.0.1:30000/TCP", "delete 10.77.1.1:30000/TCP", "delete 10.96.0.1:80/TCP"}
	if ops := w.take(); !slices.Equal(ops, want) || m.Len() != 6 {
		t.Fatalf("writes %v (%d left), want %v", ops, m.Len(), want)
	}
}

// TestReconcileIDs: RevNat indexes are never 0 and one per frontend, and
// stay for a frontend's life; backend IDs are shared by the frontends of
// one backend and protocol, and stay while a frontend keeps the backend.
func TestReconcileIDs(t *testing.T) {
	m := NewMemMap()
	r, _ := newTest(t, m, Options{})
	s := svc("dns", typ(corev1.ServiceTypeNodePort), ports(sport("dns", corev1.ProtocolUDP, 53, 30053), sport("dns-tcp", corev1.ProtocolTCP, 53, 30054)))
	sp := []discoveryv1.EndpointPort{eport("dns", corev1.ProtocolUDP, 53), eport("dns-tcp", corev1.ProtocolTCP, 53)}
	eps := []*discoveryv1.EndpointSlice{slice("dns", "dns-a", sp, ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2"))}
	update(t, r, s, eps)
	fs, _ := m.Dump()
	if len(fs) != 6 {
		t.Fatalf("%d frontends", len(fs))
	}
	revnats := map[uint32]bool{}
	idsBy := map[Proto]map[netip.AddrPort]uint32{TCP: {}, UDP: {}}
	for _, f := range fs {
		if f.RevNat == 0 || revnats[f.RevNat] {
			t.Fatalf("RevNat %d of %s zero or repeated", f.RevNat, f.Key.Addr)
		}
		revnats[f.RevNat] = true
		for _, b := range f.Backends {
			if id, ok := idsBy[f.Key.Proto][b.Addr]; ok && id != b.ID {
				t.Errorf("%s/%s: backend %s has ID %d here, %d elsewhere", f.Key.Addr, f.Key.Proto, b.Addr, b.ID, id)
			}
			idsBy[f.Key.Proto][b.Addr] = b.ID
		}
	}
	a := netip.MustParseAddrPort("10.244.1.5:53")
	if idsBy[TCP][a] == idsBy[UDP][a] {
		t.Error("one ID for a backend's TCP and UDP")
	}
	if r.ids.inUse() != 4 {
		t.Errorf("%d backend IDs in use, want 4 (2 addresses x 2 protocols)", r.ids.inUse())
	}
	cip := FrontendKey{Addr: netip.MustParseAddrPort("10.96.0.10:53"), Proto: UDP}
	before, _ := m.Get(cip)

	// Scale up: a third endpoint; the others keep their IDs, the
	// frontend its RevNat.
	eps2 := []*discoveryv1.EndpointSlice{slice("dns", "dns-a", sp, ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2"), ep("10.244.3.5", "n3"))}
	update(t, r, s, eps2)
	after, _ := m.Get(cip)
	if after.RevNat != before.RevNat || len(after.Backends) != 3 || after.Active != 3 {
		t.Fatalf("scaled up: %+v (was %+v)", after, before)
	}
	for _, b := range before.Backends {
		if i := slices.IndexFunc(after.Backends, func(x MapBackend) bool { return x.Addr == b.Addr }); i < 0 || after.Backends[i].ID != b.ID {
			t.Errorf("backend %s lost its ID %d: %+v", b.Addr, b.ID, after.Backends)
		}
	}
	// Scale down to one: the removed IDs are freed (2 protocols x 2).
	eps3 := []*discoveryv1.EndpointSlice{slice("dns", "dns-a", sp, ep("10.244.2.5", "n2"))}
	update(t, r, s, eps3)
	down, _ := m.Get(cip)
	if len(down.Backends) != 1 || down.Backends[0].Addr != netip.MustParseAddrPort("10.244.2.5:53") || down.RevNat != before.RevNat {
		t.Fatalf("scaled down: %+v", down)
	}
	if r.ids.inUse() != 2 {
		t.Errorf("%d backend IDs in use after scaling down, want 2", r.ids.inUse())
	}
	// No endpoint at all: the frontend stays, refusing (Active 0).
	update(t, r, s, nil)
	none, ok := m.Get(cip)
	if !ok || none.Active != 0 || len(none.Backends) != 0 || r.ids.inUse() != 0 {
		t.Fatalf("without endpoints: %+v %v, %d IDs", none, ok, r.ids.inUse())
	}
	// Gone: every RevNat is freed.
	r.Update("default/dns", nil, nil)
	if m.Len() != 0 || r.revnats.inUse() != 0 || len(r.revnat) != 0 {
		t.Errorf("after delete: %d frontends, %d RevNats", m.Len(), r.revnats.inUse())
	}
	if err := m.CheckIDs(); err != nil {
		t.Error(err)
	}
}

// TestReconcileRestart: a new reconciler on the same maps adopts their
// RevNats and IDs: nothing is rewritten, a kept backend keeps its ID, a
// new one gets an ID no frontend uses.
func TestReconcileRestart(t *testing.T) {
	m := NewMemMap()
	r1, _ := newTest(t, m, Options{})
	var svcs []*corev1.Service
	var epss [][]*discoveryv1.EndpointSlice
	for i := range 20 {
		s, eps := webSvc(i, 4)
		svcs, epss = append(svcs, s), append(epss, eps)
		update(t, r1, s, eps)
	}
	before, _ := m.Dump()

	var w writes
	m.Fail = w.hook
	r2, _ := newTest(t, m, Options{})
	for i := range svcs {
		update(t, r2, svcs[i], epss[i])
	}
	if !r2.Prune() {
		t.Fatal("prune failed")
	}
	if ops := w.take(); len(ops) != 0 {
		t.Fatalf("a restart rewrote %d frontends: %v", len(ops), ops)
	}
	after, _ := m.Dump()
	if len(after) != len(before) {
		t.Fatalf("%d frontends, %d before", len(after), len(before))
	}
	for i := range after {
		if !equalMapFrontend(after[i], before[i]) {
			t.Fatalf("frontend changed by the restart:\n%+v\n%+v", before[i], after[i])
		}
	}
	// A new endpoint in web3 gets a fresh ID; the rest keep theirs.
	used := map[uint32]bool{}
	for _, f := range before {
		for _, b := range f.Backends {
			used[b.ID] = true
		}
	}
	sl := epss[3][0].DeepCopy()
	sl.Endpoints = append(sl.Endpoints, ep("10.200.0.3", "n1"))
	update(t, r2, svcs[3], []*discoveryv1.EndpointSlice{sl})
	f, _ := m.Get(FrontendKey{Addr: netip.MustParseAddrPort("10.96.0.4:80"), Proto: TCP})
	for _, b := range f.Backends {
		if b.Addr.Addr() == netip.MustParseAddr("10.200.0.3") && used[b.ID] {
			t.Errorf("the new backend got ID %d, which is in use", b.ID)
		}
	}
	if err := m.CheckIDs(); err != nil {
		t.Error(err)
	}
	// And a new Service a fresh RevNat.
	s, eps := webSvc(100, 1)
	update(t, r2, s, eps)
	seen := map[uint32]bool{}
	all, _ := m.Dump()
	for _, f := range all {
		if seen[f.RevNat] {
			t.Fatalf("RevNat %d twice after the restart", f.RevNat)
		}
		seen[f.RevNat] = true
	}
}

// TestReconcileAdoptBroken: what a broken or foreign map holds (a RevNat
// twice or out of range, an ID out of range or naming two addresses) is
// not taken as it is: those frontends are rewritten right.
func TestReconcileAdoptBroken(t *testing.T) {
	m := NewMemMap()
	s, eps := webSvc(1, 2) // clusterIP 10.96.0.2, backends 10.100.0.1:8080, 10.101.0.1:8080
	b1, b2 := netip.MustParseAddrPort("10.100.0.1:8080"), netip.MustParseAddrPort("10.101.0.1:8080")
	cip := FrontendKey{Addr: netip.MustParseAddrPort("10.96.0.2:80"), Proto: TCP}
	np1 := FrontendKey{Addr: netip.MustParseAddrPort("10.77.0.1:30001"), Proto: TCP}
	np2 := FrontendKey{Addr: netip.MustParseAddrPort("10.77.1.1:30001"), Proto: TCP}
	m.Seed(
		MapFrontend{Key: cip, RevNat: 7, Active: 2, Backends: []MapBackend{{ID: 3, Addr: b1, State: Ready}, {ID: 4, Addr: b2, State: Ready}}},
		MapFrontend{Key: np1, RevNat: 7, Active: 2, Flags: FlagNodePort, Backends: []MapBackend{{ID: 3, Addr: b1, State: Ready}, {ID: 9, Addr: b2, State: Ready}}},
		MapFrontend{Key: np2, RevNat: 1 << 30, Active: 2, Flags: FlagNodePort, Backends: []MapBackend{{ID: 1 << 30, Addr: b1, State: Ready}, {ID: 3, Addr: b2, State: Ready}}},
	)
	r, _ := newTest(t, m, Options{})
	update(t, r, s, eps)
	r.Prune()
	fs, _ := m.Dump()
	if len(fs) != 3 {
		t.Fatalf("%d frontends", len(fs))
	}
	seen := map[uint32]bool{}
	for _, f := range fs {
		if f.RevNat == 0 || f.RevNat > DefaultMaxFrontends || seen[f.RevNat] {
			t.Errorf("%s: RevNat %d", f.Key.Addr, f.RevNat)
		}
		seen[f.RevNat] = true
		for _, b := range f.Backends {
			if b.ID == 0 || b.ID > DefaultMaxBackends {
				t.Errorf("%s: backend %s ID %d", f.Key.Addr, b.Addr, b.ID)
			}
		}
	}
	if err := m.CheckIDs(); err != nil {
		t.Error(err)
	}
	// Every ID and RevNat accounted for: removing the Service frees all.
	r.Update(key(s), nil, nil)
	if m.Len() != 0 || r.ids.inUse() != 0 || r.revnats.inUse() != 0 || len(r.refs) != 0 {
		t.Errorf("left: %d frontends, %d IDs (%v), %d RevNats", m.Len(), r.ids.inUse(), r.refs, r.revnats.inUse())
	}
}

func TestReconcilePrune(t *testing.T) {
	m := NewMemMap()
	r1, _ := newTest(t, m, Options{})
	keep, keepEps := webSvc(1, 2)
	gone, goneEps := webSvc(2, 2)
	update(t, r1, keep, keepEps)
	update(t, r1, gone, goneEps)
	// Restart: "gone" was deleted while anetd was away.
	r2, _ := newTest(t, m, Options{})
	update(t, r2, keep, keepEps)
	if m.Len() != 6 {
		t.Fatalf("pruned before the informers synced: %d frontends", m.Len())
	}
	// A Service seen and then deleted is removed at once, before Prune.
	other, otherEps := webSvc(3, 1)
	update(t, r2, other, otherEps)
	r2.Update(key(other), nil, nil)
	if m.Len() != 6 {
		t.Fatalf("%d frontends after a Service came and went, want 6", m.Len())
	}
	if !r2.Prune() {
		t.Fatal("prune failed")
	}
	fs, _ := m.Dump()
	if len(fs) != 3 {
		t.Fatalf("%d frontends after prune, want web1's 3", len(fs))
	}
	for _, f := range fs {
		if f.Key.Addr.Port() != 80 && f.Key.Addr.Port() != 30001 {
			t.Errorf("left after prune: %s", f.Key.Addr)
		}
	}
	if r2.ids.inUse() != 2 || r2.revnats.inUse() != 3 {
		t.Errorf("after prune: %d IDs, %d RevNats in use; want 2 and 3", r2.ids.inUse(), r2.revnats.inUse())
	}
}

// TestReconcileMapFull: a failed Put is logged with the Service's name,
// counted, and retried until it goes through; the other Services are
// served meanwhile.
func TestReconcileMapFull(t *testing.T) {
	m := NewMemMap()
	m.MaxFrontends = 4
	r, log := newTest(t, m, Options{})
	a, aEps := webSvc(1, 1)
	b, bEps := webSvc(2, 1)
	update(t, r, a, aEps)
	if r.Update(key(b), b, bEps) {
		t.Fatal("a Put beyond the map's size succeeded")
	}
	if n := r.Counters.WriteErrors.Load(); n != 2 {
		t.Errorf("write errors = %d, want 2", n)
	}
	if !strings.Contains(log.String(), "service=default/web2") || !strings.Contains(log.String(), ErrMapFull.Error()) {
		t.Errorf("log does not name the Service and the error:\n%s", log)
	}
	if r.Pending() != 2 {
		t.Errorf("pending = %d", r.Pending())
	}
	snap := r.Snapshot()
	var failed int
	for _, f := range snap {
		if !f.Programmed {
			failed++
			if f.Name != "web2" || !strings.Contains(f.Error, "full") {
				t.Errorf("unprogrammed: %+v", f)
			}
		}
	}
	if failed != 2 {
		t.Errorf("%d frontends shown unprogrammed, want 2", failed)
	}
	if r.Retry() {
		t.Error("retry succeeded with the map still full")
	}
	n := r.Counters.WriteErrors.Load()
	m.MaxFrontends = 0
	if !r.Retry() || r.Pending() != 0 || m.Len() != 6 {
		t.Fatalf("retry after room was made: pending %d, %d frontends", r.Pending(), m.Len())
	}
	if r.Counters.WriteErrors.Load() != n {
		t.Error("a successful retry counted as an error")
	}
	// A Delete that fails is retried too.
	fail := true
	m.Fail = func(op string, _ FrontendKey) error {
		if op == "delete" && fail {
			return errors.New("injected")
		}
		return nil
	}
	if r.Update(key(a), nil, nil) {
		t.Fatal("failed deletes reported as done")
	}
	fail = false
	if !r.Retry() || m.Len() != 3 {
		t.Fatalf("delete retry: %d frontends", m.Len())
	}
	if r.revnats.inUse() != 3 {
		t.Errorf("%d RevNats in use, want 3", r.revnats.inUse())
	}
}

// TestReconcileIDsRunOut: when RevNats or backend IDs run out the write
// fails like a full map, and nothing leaks.
func TestReconcileIDsRunOut(t *testing.T) {
	m := NewMemMap()
	r, _ := newTest(t, m, Options{MaxFrontends: 4, MaxBackends: 3})
	a, aEps := webSvc(1, 2)
	update(t, r, a, aEps)
	b, bEps := webSvc(2, 2)
	if r.Update(key(b), b, bEps) {
		t.Fatal("IDs beyond the maximum handed out")
	}
	if r.ids.inUse() != 2 {
		t.Errorf("%d backend IDs in use, want 2 (the failed ones freed)", r.ids.inUse())
	}
	r.Update(key(a), nil, nil)
	if !r.Retry() || r.Pending() != 0 {
		t.Fatalf("pending %d after room was made", r.Pending())
	}
	if m.Len() != 3 || r.ids.inUse() != 2 || r.revnats.inUse() != 3 {
		t.Errorf("%d frontends, %d IDs, %d RevNats", m.Len(), r.ids.inUse(), r.revnats.inUse())
	}
}

// TestReconcileContested: two Services claiming one ExternalIP and port:
// the first keeps it, the second is told, and gets it when the first lets
// it go.
func TestReconcileContested(t *testing.T) {
	m := NewMemMap()
	r, log := newTest(t, m, Options{})
	ext := func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.50"} }
	a := svc("a", ext, clusterIPs("10.96.0.1"))
	b := svc("b", ext, clusterIPs("10.96.0.2"))
	update(t, r, a, nil)
	update(t, r, b, nil)
	if !strings.Contains(log.String(), "is service default/a's already") {
		t.Errorf("the conflict is not logged:\n%s", log)
	}
	k := FrontendKey{Addr: netip.MustParseAddrPort("192.0.2.50:80"), Proto: TCP}
	if r.want[k].owner != "default/a" {
		t.Fatal("the first Service lost its frontend")
	}
	a.Spec.ExternalIPs = nil
	update(t, r, a, nil)
	if got, _ := r.take(); !slices.Equal(got, []string{"default/b"}) {
		t.Fatalf("queued %v, want default/b", got)
	}
	update(t, r, b, nil)
	if r.want[k].owner != "default/b" {
		t.Fatal("the second Service did not get the frontend")
	}
	if _, ok := m.Get(k); !ok {
		t.Fatal("not programmed")
	}
}

// TestReconcileHealthChecks: the healthCheckNodePort and the count of
// local ready endpoints reach the health check servers when they change.
func TestReconcileHealthChecks(t *testing.T) {
	hc := &fakeHC{}
	r, _ := newTest(t, NewMemMap(), Options{HealthChecks: hc})
	s := svc("lb", typ(corev1.ServiceTypeLoadBalancer), ports(sport("http", corev1.ProtocolTCP, 80, 30080)), extLocal(32000))
	sp := []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080)}
	update(t, r, s, []*discoveryv1.EndpointSlice{slice("lb", "a", sp, ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2"))})
	update(t, r, s, []*discoveryv1.EndpointSlice{slice("lb", "a", sp, ep("10.244.1.5", "n1"), ep("10.244.2.5", "n2"))})
	update(t, r, s, []*discoveryv1.EndpointSlice{slice("lb", "a", sp, ep("10.244.1.5", "n1", conds(no, yes, yes)))})
	r.Update(key(s), nil, nil)
	want := []string{"default/lb 32000 1", "default/lb 32000 0", "default/lb 0 0"}
	if !slices.Equal(hc.calls, want) {
		t.Errorf("health check calls %v, want %v", hc.calls, want)
	}
}

type fakeHC struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeHC) SetHealthCheck(ns, name string, port uint16, local int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s/%s %d %d", ns, name, port, local))
}

func TestSnapshot(t *testing.T) {
	r, _ := newTest(t, NewMemMap(), Options{})
	s := svc("web", typ(corev1.ServiceTypeNodePort), ports(sport("http", corev1.ProtocolTCP, 80, 30080)), extLocal(0),
		func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	sp := []discoveryv1.EndpointPort{eport("http", corev1.ProtocolTCP, 8080)}
	update(t, r, s, []*discoveryv1.EndpointSlice{slice("web", "a", sp,
		ep("10.244.2.5", "n2"), ep("10.244.1.5", "n1", conds(no, yes, yes)), ep("10.244.1.4", "n1"))})
	snap := r.Snapshot()
	var got []string
	for _, f := range snap {
		line := fmt.Sprintf("%s %s %s %s active=%d rn=%v prog=%v aff=%d ext=%v:", f.Kind, f.Scope, f.Address, f.Protocol, f.Active, f.RevNat != 0, f.Programmed, f.AffinitySeconds, f.ExternalLocal)
		for _, b := range f.Backends {
			line += fmt.Sprintf(" %s(%s,%v,%v)", b.Address, b.State, b.Active, b.ID != 0)
		}
		got = append(got, line)
	}
	want := []string{
		"NodePort external 10.77.0.1:30080 TCP active=1 rn=true prog=true aff=10800 ext=true: 10.244.1.4:8080(ready,true,true) 10.244.1.5:8080(serving,false,true)",
		"NodePort internal 10.77.0.1:30080 TCP active=2 rn=true prog=true aff=10800 ext=false: 10.244.1.4:8080(ready,true,true) 10.244.2.5:8080(ready,true,true) 10.244.1.5:8080(serving,false,true)",
		"NodePort external 10.77.1.1:30080 TCP active=1 rn=true prog=true aff=10800 ext=true: 10.244.1.4:8080(ready,true,true) 10.244.1.5:8080(serving,false,true)",
		"NodePort internal 10.77.1.1:30080 TCP active=2 rn=true prog=true aff=10800 ext=false: 10.244.1.4:8080(ready,true,true) 10.244.2.5:8080(ready,true,true) 10.244.1.5:8080(serving,false,true)",
		"ClusterIP external 10.96.0.10:80 TCP active=2 rn=true prog=true aff=10800 ext=false: 10.244.1.4:8080(ready,true,true) 10.244.2.5:8080(ready,true,true) 10.244.1.5:8080(serving,false,true)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// fakeSource is an informer cache in memory.
type fakeSource struct {
	mu     sync.Mutex
	svcs   map[string]*corev1.Service
	slices map[string][]*discoveryv1.EndpointSlice
}

func (f *fakeSource) Service(ns, name string) (*corev1.Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.svcs[ns+"/"+name]; s != nil {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "services"}, name)
}

func (f *fakeSource) EndpointSlices(ns, name string) ([]*discoveryv1.EndpointSlice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slices[ns+"/"+name], nil
}

type fakeHealth struct {
	mu              sync.Mutex
	queued, updated int
}

func (h *fakeHealth) QueuedUpdate() { h.mu.Lock(); h.queued++; h.mu.Unlock() }
func (h *fakeHealth) Updated()      { h.mu.Lock(); h.updated++; h.mu.Unlock() }
func (h *fakeHealth) counts() (int, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.queued, h.updated
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRun: the loop adopts, serves queued Services, prunes only after
// synced, retries failed writes by itself, and reports health.
func TestRun(t *testing.T) {
	m := NewMemMap()
	stale := FrontendKey{Addr: netip.MustParseAddrPort("10.96.9.9:80"), Proto: TCP}
	m.Seed(MapFrontend{Key: stale, RevNat: 5})
	src := &fakeSource{svcs: map[string]*corev1.Service{}, slices: map[string][]*discoveryv1.EndpointSlice{}}
	h := &fakeHealth{}
	lb := &logBuf{}
	r := NewReconciler(m, thisNode, Options{Health: h, RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond},
		slog.New(slog.NewTextHandler(lb, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	synced := make(chan struct{})
	done := make(chan struct{})
	go func() { r.Run(ctx, src, synced); close(done) }()
	defer func() { cancel(); <-done }()

	s, eps := webSvc(1, 2)
	src.mu.Lock()
	src.svcs[key(s)], src.slices[key(s)] = s, eps
	src.mu.Unlock()
	r.Enqueue(key(s))
	eventually(t, "web1 programmed", func() bool { return m.Len() == 4 })
	time.Sleep(50 * time.Millisecond)
	if _, ok := m.Get(stale); !ok {
		t.Fatal("pruned before synced")
	}
	if _, updated := h.counts(); updated != 0 {
		t.Error("healthy-updated before the first full sync")
	}
	select {
	case <-r.InSync():
		t.Fatal("in sync before the informers synced")
	default:
	}
	close(synced)
	eventually(t, "stale frontend pruned", func() bool { _, ok := m.Get(stale); return !ok })
	<-r.InSync()
	eventually(t, "health updated", func() bool { _, u := h.counts(); return u > 0 })

	// A failing write is retried by the loop.
	var mu sync.Mutex
	failing := true
	m.Fail = func(op string, _ FrontendKey) error {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return ErrMapFull
		}
		return nil
	}
	_, u0 := h.counts()
	s2, eps2 := webSvc(2, 1)
	src.mu.Lock()
	src.svcs[key(s2)], src.slices[key(s2)] = s2, eps2
	src.mu.Unlock()
	r.Enqueue(key(s2))
	eventually(t, "a write error", func() bool { return r.Counters.WriteErrors.Load() >= 2 })
	mu.Lock()
	failing = false
	mu.Unlock()
	eventually(t, "web2 programmed by a retry", func() bool { return m.Len() == 6 && r.Pending() == 0 })
	eventually(t, "health updated again", func() bool { _, u := h.counts(); return u > u0 })

	// A deleted Service: the loop sees NotFound and removes it.
	src.mu.Lock()
	delete(src.svcs, key(s))
	src.mu.Unlock()
	r.Enqueue(key(s))
	eventually(t, "web1 removed", func() bool { return m.Len() == 3 })
	if q, _ := h.counts(); q != 3 {
		t.Errorf("queued updates = %d, want 3", q)
	}
	// The node's addresses change: NodePorts move.
	r.SetNode(Node{Name: "n1", Addrs: []netip.Addr{netip.MustParseAddr("10.77.0.9")}})
	eventually(t, "NodePort on the new address", func() bool {
		_, ok := m.Get(FrontendKey{Addr: netip.MustParseAddrPort("10.77.0.9:30002"), Proto: TCP})
		return ok && m.Len() == 2
	})
}

// TestRunLatencyAndCounts: each recomputed Service reports the time since
// its first change event, and the counters say what the maps hold.
func TestRunLatencyAndCounts(t *testing.T) {
	m := NewMemMap()
	src := &fakeSource{svcs: map[string]*corev1.Service{}, slices: map[string][]*discoveryv1.EndpointSlice{}}
	var mu sync.Mutex
	var got []time.Duration
	r := NewReconciler(m, thisNode, Options{Latency: func(d time.Duration) { mu.Lock(); got = append(got, d); mu.Unlock() }},
		slog.New(slog.NewTextHandler(&logBuf{}, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, src, nil); close(done) }()
	defer func() { cancel(); <-done }()
	s, eps := webSvc(1, 2)
	src.mu.Lock()
	src.svcs[key(s)], src.slices[key(s)] = s, eps
	src.mu.Unlock()
	before := time.Now()
	r.Enqueue(key(s))
	r.Enqueue(key(s)) // the same key: one recomputation, timed from the first
	eventually(t, "web1 programmed", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) > 0 })
	mu.Lock()
	if len(got) != 1 || got[0] <= 0 || got[0] > time.Since(before) {
		t.Errorf("latencies %v, want one, at most the %v since the first event", got, time.Since(before))
	}
	mu.Unlock()
	if n, f, b := r.Counters.Services.Load(), r.Counters.Frontends.Load(), r.Counters.Backends.Load(); n != 1 || f != int64(m.Len()) || b != 2 {
		t.Errorf("counters: %d services, %d frontends, %d backends; want 1, %d, 2", n, f, b, m.Len())
	}
}
