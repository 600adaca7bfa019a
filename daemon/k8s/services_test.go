package k8s

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

type keys struct {
	mu   sync.Mutex
	seen []string
}

func (k *keys) add(s string) { k.mu.Lock(); k.seen = append(k.seen, s); k.mu.Unlock() }

func (k *keys) take() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.seen
	k.seen = nil
	slices.Sort(s)
	return slices.Compact(s)
}

func waitKeys(t *testing.T, k *keys, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		got = append(got, k.take()...)
		slices.Sort(got)
		got = slices.Compact(got)
		if slices.Equal(got, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("events for %v, want %v", got, want)
}

func epSlice(ns, name, svc string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, AddressType: discoveryv1.AddressTypeIPv4}
	if svc != "" {
		s.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	return s
}

// TestServiceEvents: Service and EndpointSlice events name the Service
// concerned (both, for a slice moved to another); the lookups find a
// Service's slices by its label.
func TestServiceEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "web"}},
		epSlice("a", "web-1", "web"),
	)
	c := newClient(cs, "n1", slog.New(slog.DiscardHandler))
	var k keys
	synced, stop, err := c.OnServiceChange(k.add)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c.Start(ctx)
	if !c.WaitForSync(ctx) {
		t.Fatal("no sync")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !synced() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !synced() {
		t.Fatal("handlers never synced")
	}
	waitKeys(t, &k, "a/web") // the cache, replayed

	sl := func(ns string) interface {
		Create(context.Context, *discoveryv1.EndpointSlice, metav1.CreateOptions) (*discoveryv1.EndpointSlice, error)
		Update(context.Context, *discoveryv1.EndpointSlice, metav1.UpdateOptions) (*discoveryv1.EndpointSlice, error)
		Delete(context.Context, string, metav1.DeleteOptions) error
	} {
		return cs.DiscoveryV1().EndpointSlices(ns)
	}
	if _, err := sl("a").Create(ctx, epSlice("a", "web-2", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sl("b").Create(ctx, epSlice("b", "web-1", "web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sl("a").Create(ctx, epSlice("a", "orphan", ""), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, &k, "a/web", "b/web")
	deadline = time.Now().Add(10 * time.Second)
	for {
		got, err := c.EndpointSlices("a", "web")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range got {
			names = append(names, s.Name)
		}
		slices.Sort(names)
		if slices.Equal(names, []string{"web-1", "web-2"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slices of a/web: %v", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Relabelled to another Service: both hear of it.
	moved := epSlice("a", "web-2", "db")
	if _, err := sl("a").Update(ctx, moved, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, &k, "a/db", "a/web")
	if err := sl("a").Delete(ctx, "web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, &k, "a/db")
	if _, err := cs.CoreV1().Services("a").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "db"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, &k, "a/db")
	if err := cs.CoreV1().Services("a").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, &k, "a/web")
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err := c.Service("a", "web")
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deleted Service still found: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s, err := c.Service("a", "db"); err != nil || s.Name != "db" {
		t.Fatalf("Service a/db: %v %v", s, err)
	}
}

func TestOnNodeChange(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(node("n1", []string{"10.244.1.0/24"}, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.1"}),
		node("n2", nil))
	c := newClient(cs, "n1", slog.New(slog.DiscardHandler))
	got := make(chan NodeInfo, 10)
	stop, err := c.OnNodeChange(func(i NodeInfo) { got <- i })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c.Start(ctx)
	next := func() NodeInfo {
		select {
		case i := <-got:
			return i
		case <-time.After(10 * time.Second):
			t.Fatal("no node event")
		}
		return NodeInfo{}
	}
	if i := next(); len(i.InternalIPs) != 1 || i.InternalIPs[0].String() != "10.77.0.1" {
		t.Fatalf("first: %+v", i)
	}
	n := node("n1", []string{"10.244.1.0/24"}, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.77.0.9"})
	if _, err := cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if i := next(); i.InternalIPs[0].String() != "10.77.0.9" {
		t.Fatalf("after update: %+v", i)
	}
	if nd, err := c.Node(); err != nil || nd.Name != "n1" {
		t.Fatalf("Node() = %v %v", nd, err)
	}
	select {
	case i := <-got:
		t.Fatalf("an event of another node reached f: %+v", i)
	case <-time.After(100 * time.Millisecond):
	}
}
