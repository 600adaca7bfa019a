package identity

import (
	"errors"
	"maps"
	"testing"
)

func TestKeyOf(t *testing.T) {
	a := KeyOf("x", map[string]string{"ns": "x", "team": "t"}, map[string]string{"pod": "a", "app": "web"})
	want := Key("ns:kubernetes.io/metadata.name=x;ns:ns=x;ns:team=t;pod:app=web;pod:pod=a;")
	if a != want {
		t.Fatalf("KeyOf = %q, want %q", a, want)
	}
	// The same labels in another order give the same key.
	if b := KeyOf("x", map[string]string{"team": "t", "ns": "x"}, map[string]string{"app": "web", "pod": "a"}); b != a {
		t.Errorf("order changed the key: %q", b)
	}
	// A namespace label and a pod label with the same name and value do not clash.
	if KeyOf("x", map[string]string{"k": "v"}, nil) == KeyOf("x", nil, map[string]string{"k": "v"}) {
		t.Error("namespace label and pod label gave the same key")
	}
	// The namespace name is always part of the key, even when the label is
	// missing or wrong in the Namespace object given.
	if KeyOf("x", nil, nil) == KeyOf("y", nil, nil) {
		t.Error("two namespaces gave the same key")
	}
	if KeyOf("x", map[string]string{NamespaceNameLabel: "y"}, nil) != KeyOf("x", nil, nil) {
		t.Error("the namespace's name did not override its label")
	}
	ns, pod := a.Labels()
	if !maps.Equal(ns, map[string]string{"ns": "x", "team": "t", NamespaceNameLabel: "x"}) || !maps.Equal(pod, map[string]string{"pod": "a", "app": "web"}) {
		t.Errorf("Labels() = %v, %v", ns, pod)
	}
}

func TestLocalAllocator(t *testing.T) {
	l := newLocal(MinPod + 2) // three numbers
	a, b, c, d := Key("a"), Key("b"), Key("c"), Key("d")
	ida, err := l.Allocate(a)
	if err != nil || ida != MinPod {
		t.Fatalf("Allocate(a) = %d, %v", ida, err)
	}
	if again, _ := l.Allocate(a); again != ida {
		t.Fatalf("second Allocate(a) = %d, want %d", again, ida)
	}
	idb, _ := l.Allocate(b)
	idc, _ := l.Allocate(c)
	if idb == ida || idc == ida || idc == idb {
		t.Fatalf("numbers not distinct: %d %d %d", ida, idb, idc)
	}
	if _, err := l.Allocate(d); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate(d) on a full allocator: %v", err)
	}
	// a has two references: one release keeps it.
	if err := l.Release(a); err != nil {
		t.Fatal(err)
	}
	if id, ok := l.Lookup(a); !ok || id != ida {
		t.Fatalf("a gone after one of two releases")
	}
	if err := l.Release(a); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Lookup(a); ok {
		t.Fatal("a still allocated")
	}
	if err := l.Release(a); err == nil {
		t.Fatal("releasing an unallocated key succeeded")
	}
	idd, err := l.Allocate(d)
	if err != nil || idd != ida {
		t.Fatalf("Allocate(d) = %d, %v; want the freed %d", idd, err, ida)
	}
	if k, _ := l.KeyOfID(idd); k != d {
		t.Fatalf("KeyOfID(%d) = %q", idd, k)
	}
}

func TestReservedRanges(t *testing.T) {
	for _, c := range []struct {
		id        uint32
		pod, cidr bool
	}{{0, false, false}, {Host, false, false}, {255, false, false}, {MinPod, true, false}, {MaxPod, true, false}, {CIDRFlag, false, false}, {CIDRFlag | 1, false, true}, {Max, false, true}, {Max + 1, false, false}} {
		if IsPod(c.id) != c.pod || IsCIDR(c.id) != c.cidr {
			t.Errorf("%#x: IsPod %v IsCIDR %v", c.id, IsPod(c.id), IsCIDR(c.id))
		}
	}
}
