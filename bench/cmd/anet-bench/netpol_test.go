//go:build linux

package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseRuleCounts(t *testing.T) {
	got, err := parseRuleCounts("0, 1000,10000")
	if err != nil || len(got) != 3 || got[0] != 0 || got[1] != 1000 || got[2] != 10000 {
		t.Fatalf("parseRuleCounts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "5", "1000,0", "10,10", "-10", "x", "60000"} {
		if _, err := parseRuleCounts(bad); err == nil {
			t.Errorf("parseRuleCounts(%q): no error", bad)
		}
	}
}

// Every rule of the rules namespace has a port and a selector of its own,
// no two ports adjacent (the datapath would join them into a range).
func TestRulesPolicyDistinct(t *testing.T) {
	ports := map[int32]bool{}
	sels := map[string]bool{}
	for j := range 1000 {
		p := rulesPolicy(j)
		if len(p.Spec.Ingress) != npRulesPer || p.Namespace != npRulesNS || p.Spec.PodSelector.MatchLabels["app"] != "rules" {
			t.Fatalf("policy %d: %+v", j, p)
		}
		for _, r := range p.Spec.Ingress {
			port := r.Ports[0].Port.IntVal
			if ports[port] || ports[port-1] || ports[port+1] || port > 65535 {
				t.Fatalf("policy %d: port %d repeats, touches another or is out of range", j, port)
			}
			ports[port] = true
			e := r.From[0].PodSelector.MatchExpressions[0]
			key := e.Key + string(e.Operator) + strings.Join(e.Values, ",")
			if sels[key] {
				t.Fatalf("policy %d: selector %s repeats", j, key)
			}
			sels[key] = true
		}
	}
	if len(ports) != 10000 {
		t.Fatalf("%d ports, want 10000", len(ports))
	}
}

func TestWatchLine(t *testing.T) {
	at, prev := time.Unix(0, 1_700_000_000_123_456_789), time.Unix(0, 1_700_000_000_100_000_000)
	v, a, p, err := parseWatchLine(watchLine("allowed", at, prev))
	if err != nil || v != "allowed" || !a.Equal(at) || !p.Equal(prev) {
		t.Fatalf("round trip: %q %v %v %v", v, a, p, err)
	}
	for _, bad := range []string{"", "ready", "maybe 1 2", "allowed 1", "denied x 2"} {
		if _, _, _, err := parseWatchLine(bad); err == nil {
			t.Errorf("parseWatchLine(%q): no error", bad)
		}
	}
}

func TestVerdicts(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	nodes := []string{"node1", "node2"}
	v := newVerdicts()
	v.see(watchEvent{"node1", "denied", ms(-500), ms(-520)})
	if ok, _, _ := v.all(nodes, "denied", time.Time{}); ok {
		t.Fatal("all denied with node2 silent")
	}
	v.see(watchEvent{"node2", "denied", ms(-400), ms(-420)})
	if ok, _, _ := v.all(nodes, "denied", time.Time{}); !ok {
		t.Fatal("not all denied")
	}
	// An allowed report before the create does not count.
	v.see(watchEvent{"node1", "allowed", ms(-1), ms(-21)})
	v.see(watchEvent{"node1", "denied", ms(0), ms(-1)})
	v.see(watchEvent{"node1", "allowed", ms(30), ms(9)})
	if ok, _, _ := v.all(nodes, "allowed", t0); ok {
		t.Fatal("all allowed with node2 still refused")
	}
	v.see(watchEvent{"node2", "allowed", ms(50), ms(45)})
	// node1's first report after t0 counts, even though a later one differs.
	v.see(watchEvent{"node1", "denied", ms(60), ms(55)})
	ok, per, step := v.all(nodes, "allowed", t0)
	if !ok || per["node1"] != 30*time.Millisecond || per["node2"] != 50*time.Millisecond || step != 21*time.Millisecond {
		t.Fatalf("all = %v %v %v", ok, per, step)
	}
	if maxOf(per) != 50*time.Millisecond {
		t.Fatalf("maxOf = %v", maxOf(per))
	}
	if got := v.last(); got["node1"] != "denied" || got["node2"] != "allowed" {
		t.Fatalf("last = %v", got)
	}
}

func TestRRCountRate(t *testing.T) {
	if r := (rrCount{N: 30000, NS: 2e9}).Rate(); r != 15000 {
		t.Fatalf("rate %v", r)
	}
	if r := (rrCount{N: 1}).Rate(); r != 0 {
		t.Fatalf("rate of no time %v", r)
	}
}

func TestNetpolMarkdown(t *testing.T) {
	us := func(xs ...int) []time.Duration {
		var out []time.Duration
		for _, x := range xs {
			out = append(out, time.Duration(x)*time.Microsecond)
		}
		return out
	}
	r := &npResult{cfg: npConfig{reps: 1, seconds: 1, connects: 3, workers: 32}, cpu: "1",
		pairs: []npPair{{"across nodes", "client-far", "node1", "node2"}, {"same node", "client-same", "node2", "node2"}}}
	for _, n := range []int{0, 1000, 10000} {
		f := 1 + float64(n)/100000 // 10 000 rules: 10 % slower
		r.points = append(r.points, &npPoint{rules: n, programmed: time.Duration(n) * time.Millisecond,
			rate: map[string][]float64{"across nodes": {20000 / f}, "same node": {40000}},
			lat:  map[string][]time.Duration{"across nodes": us(100, 100, 100), "same node": us(50, 50, 50)}, loads: []string{"1.00 1.00 1.00"}, anetd: []float64{0.042}})
	}
	r.enf = []*npEnforce{{rules: 10000, applied: []time.Duration{40 * time.Millisecond, 60 * time.Millisecond},
		removed: []time.Duration{300 * time.Millisecond}, steps: []time.Duration{21 * time.Millisecond},
		perNode: map[string][]time.Duration{"node2": {30 * time.Millisecond}, "node1": {40 * time.Millisecond}}, timeoutMS: 20, load: "2 2 2"}}
	md := r.markdown()
	for _, want := range []string{
		"| 10\u202f000 | 10.0 s | 18\u202f182 | 0.91× | 40\u202f000 | 1.00× | 4 % | 1.00 1.00 1.00 |",
		"rate at 0 / at 10\u202f000 rules, across nodes | ≤ 1.05× | 1.10× | **not met**",
		"rate at 0 / at 1000 rules, same node | ≤ 1.05× | 1.00× | **met**",
		"new connection p50 at 10\u202f000 / at 0 rules, across nodes | ≤ 1.05× | 1.00× | **met**",
		"| 10\u202f000 rules | create → enforced on every node | 50.0 ms | 59.8 ms | 60.0 ms | 2 |",
		"| 10\u202f000 rules | create → enforced on node1 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Index(md, "enforced on node1") > strings.Index(md, "enforced on node2") {
		t.Error("nodes out of order")
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command with a space and a parenthesis, as /proc allows.
	stat := "4242 (anet d) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 31 0 0 20 0 12 0 5000 1000000 2000 18446744073709551615"
	d, err := parseStatCPU(stat)
	if err != nil || d != 2810*time.Millisecond {
		t.Fatalf("parseStatCPU = %v, %v", d, err)
	}
	if _, err := parseStatCPU("1 (x) S 1 2"); err == nil {
		t.Fatal("no error on a short line")
	}
}
