package netpolmodel

import (
	"strings"
	"testing"
)

func TestReachability(t *testing.T) {
	r := NewReachability(true)
	r.ExpectPeer(Peer{NS: "x"}, Peer{}, false)
	r.ExpectAllIngress("y/a", false)
	r.Expect("x/a", "y/a", true)
	for _, c := range []struct {
		from, to string
		want     bool
	}{
		{"x/a", "x/b", false}, {"x/b", "z/c", false}, {"x/a", "y/a", true},
		{"z/b", "y/a", false}, {"z/b", "y/b", true}, {"y/c", "x/a", true},
	} {
		if got := r.Want(c.from, c.to); got != c.want {
			t.Errorf("Want(%s, %s) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
	// Compare: everything reached; the wrong pairs are exactly the
	// expected denials, loopback never counted.
	wrong, table := r.Compare(func(from, to string) bool {
		if from == to {
			t.Fatalf("Compare probed loopback %s", from)
		}
		return true
	})
	denied := 0
	for _, a := range Pods() {
		for _, b := range Pods() {
			if a != b && !r.Want(a, b) {
				denied++
			}
		}
	}
	if len(wrong) != denied || denied == 0 {
		t.Errorf("%d wrong pairs, want %d", len(wrong), denied)
	}
	if !strings.Contains(table, "*.") || strings.Count(table, "\n") != len(Pods()) {
		t.Errorf("table:\n%s", table)
	}
	if Pairs() != 72 {
		t.Errorf("Pairs() = %d", Pairs())
	}
}

func TestServiceAndContainers(t *testing.T) {
	s := Service("x", "a")
	if s.Spec.Selector["pod"] != "a" || len(s.Spec.Ports) != 4 {
		t.Fatalf("service %+v", s.Spec)
	}
	cs := Containers("img", func(port int32) []string { return []string{"serve", "--port", string(rune('0' + port%10))} }, nil)
	names := map[string]int32{}
	for _, c := range cs {
		for _, p := range c.Ports {
			names[p.Name] = p.ContainerPort
		}
	}
	for n, want := range map[string]int32{"serve-80-tcp": 80, "serve-80-udp": 80, "serve-81-tcp": 81, "serve-81-udp": 81} {
		if names[n] != want {
			t.Errorf("port %s = %d, want %d", n, names[n], want)
		}
	}
}
