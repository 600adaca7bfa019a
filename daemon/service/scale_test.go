package service

import (
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

const (
	scaleServices  = 10000
	scaleEndpoints = 5 // per Service: 50 000 in all
)

func scaleInput() ([]*corev1.Service, [][]*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, scaleServices)
	epss := make([][]*discoveryv1.EndpointSlice, scaleServices)
	for i := range scaleServices {
		svcs[i], epss[i] = webSvc(i, scaleEndpoints)
	}
	return svcs, epss
}

func programAll(tb testing.TB, svcs []*corev1.Service, epss [][]*discoveryv1.EndpointSlice) *MemMap {
	m := NewMemMap()
	r := NewReconciler(m, thisNode, Options{}, slog.New(slog.DiscardHandler))
	if err := r.Adopt(); err != nil {
		tb.Fatal(err)
	}
	for i, s := range svcs {
		if !r.Update(key(s), s, epss[i]) {
			tb.Fatalf("update %s failed", key(s))
		}
	}
	if !r.Prune() {
		tb.Fatal("prune failed")
	}
	return m
}

// TestReconcileScale: 10 000 Services with 50 000 endpoints are all
// programmed from scratch, with consistent IDs (against the in-memory
// map). How long it takes is BenchmarkReconcileScale's to measure.
func TestReconcileScale(t *testing.T) {
	svcs, epss := scaleInput()
	start := time.Now()
	m := programAll(t, svcs, epss)
	took := time.Since(start)
	// 10 000 ClusterIPs and 2 000 NodePorts on 2 node addresses.
	if m.Len() != scaleServices+2000*2 {
		t.Fatalf("%d frontends", m.Len())
	}
	// Time is reported, not asserted (the machines are shared): the
	// benchmark below is where it is measured.
	t.Logf("%d Services, %d endpoints, %d frontends programmed in %s", scaleServices, scaleServices*scaleEndpoints, m.Len(), took.Round(time.Millisecond))
	if err := m.CheckIDs(); err != nil {
		t.Error(err)
	}
}

func BenchmarkReconcileScale(b *testing.B) {
	svcs, epss := scaleInput()
	for b.Loop() {
		programAll(b, svcs, epss)
	}
}
