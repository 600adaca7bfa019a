package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Rules as kube-proxy v1.35 writes them (taken from a lab node): s-00001
// with comments, s-00002 in large cluster mode (no comments on the
// KUBE-SVC rules), s-00003 with only four endpoints so far, and a Service
// of another namespace.
const iptablesSample = `*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -d 10.96.57.216/32 -p tcp -m comment --comment "svcbench/s-00001 cluster IP" -m tcp --dport 80 -j KUBE-SVC-CKFWHHZOK26PBPVZ
-A KUBE-SERVICES -d 10.96.57.217/32 -p tcp -m comment --comment "svcbench/s-00002 cluster IP" -m tcp --dport 80 -j KUBE-SVC-22QDYAVKG6KBDSOA
-A KUBE-SERVICES -d 10.96.57.218/32 -p tcp -m comment --comment "svcbench/s-00003 cluster IP" -m tcp --dport 80 -j KUBE-SVC-33QDYAVKG6KBDSOA
-A KUBE-SEP-2OGG6WHRRJS4OK42 -p tcp -m comment --comment "svcbench/s-00001" -m tcp -j DNAT --to-destination 10.244.1.4:9000
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 10.77.0.2:6443" -j KUBE-SEP-AAAA
-A KUBE-SVC-CKFWHHZOK26PBPVZ ! -s 10.244.0.0/16 -d 10.96.57.216/32 -p tcp -m comment --comment "svcbench/s-00001 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-CKFWHHZOK26PBPVZ -m comment --comment "svcbench/s-00001 -> 10.244.1.2:9000" -m statistic --mode random --probability 0.20000000019 -j KUBE-SEP-KXIRE7PEBW37IVTY
-A KUBE-SVC-CKFWHHZOK26PBPVZ -m comment --comment "svcbench/s-00001 -> 10.244.1.4:9000" -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-2OGG6WHRRJS4OK42
-A KUBE-SVC-CKFWHHZOK26PBPVZ -m comment --comment "svcbench/s-00001 -> 10.244.1.5:9000" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-VZTFF2Y2RQTMW4CB
-A KUBE-SVC-CKFWHHZOK26PBPVZ -m comment --comment "svcbench/s-00001 -> 10.244.1.6:9000" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-ILQJZPJLNO7FIDRA
-A KUBE-SVC-CKFWHHZOK26PBPVZ -m comment --comment "svcbench/s-00001 -> 10.244.1.7:9000" -j KUBE-SEP-HNQWMNQHLX4SQPGF
-A KUBE-SVC-22QDYAVKG6KBDSOA -m statistic --mode random --probability 0.20000000019 -j KUBE-SEP-IAMJ6TWSLFEXFSRY
-A KUBE-SVC-22QDYAVKG6KBDSOA -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-JQKCUUMUZHXNCVJ7
-A KUBE-SVC-22QDYAVKG6KBDSOA -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-EFQXU3QMBHIIMRKS
-A KUBE-SVC-22QDYAVKG6KBDSOA -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-EHFHUTBR4UNQMIE3
-A KUBE-SVC-22QDYAVKG6KBDSOA -j KUBE-SEP-DHWJAHMD3VUUQNML
-A KUBE-SVC-33QDYAVKG6KBDSOA -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-A1
-A KUBE-SVC-33QDYAVKG6KBDSOA -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A2
-A KUBE-SVC-33QDYAVKG6KBDSOA -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A3
-A KUBE-SVC-33QDYAVKG6KBDSOA -j KUBE-SEP-A4
COMMIT
`

const nftSample = `table ip kube-proxy {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 10.96.0.1 . tcp . 443 : goto service-2QRHZV4L-default/kubernetes/tcp/https,
			     10.96.57.216 . tcp . 80 : goto service-ITXBUTAQ-svcbench/s-00001/tcp/ }
	}

	chain endpoint-EBSR2GXR-svcbench/s-00001/tcp/__10.244.1.2/9000 {
		ip saddr 10.244.1.2 jump mark-for-masquerade
		meta l4proto tcp dnat to 10.244.1.2:9000
	}

	chain service-ITXBUTAQ-svcbench/s-00001/tcp/ {
		ip daddr 10.96.57.216 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		numgen random mod 2 vmap { 0 : goto endpoint-EBSR2GXR-svcbench/s-00001/tcp/__10.244.1.2/9000, 1 : goto endpoint-E5TNJKNQ-svcbench/s-00001/tcp/__10.244.1.4/9000 }
	}

	chain service-2QRHZV4L-default/kubernetes/tcp/https {
		numgen random mod 1 vmap { 0 : goto endpoint-ZZZZ-default/kubernetes/tcp/https__10.77.0.2/6443 }
	}
}
`

func TestCountIptables(t *testing.T) {
	s, e := countIptables(iptablesSample, "svcbench")
	if s != 3 || e != 14 {
		t.Errorf("countIptables = %d Services, %d endpoints; want 3, 14 (5 + 5 + 4)", s, e)
	}
	if s, e := countIptables(iptablesSample, "other"); s != 0 || e != 0 {
		t.Errorf("another namespace: %d, %d; want 0, 0", s, e)
	}
}

func TestCountNft(t *testing.T) {
	s, e := countNft(nftSample, "svcbench")
	if s != 1 || e != 2 {
		t.Errorf("countNft = %d Services, %d endpoints; want 1, 2", s, e)
	}
	if s, e := countNft(nftSample, "default"); s != 1 || e != 1 {
		t.Errorf("default: %d, %d; want 1, 1", s, e)
	}
}

func TestParseCounts(t *testing.T) {
	got, err := parseCounts("100, 1000,10000")
	if err != nil || len(got) != 3 || got[0] != 100 || got[2] != 10000 {
		t.Errorf("parseCounts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "100,,1000", "40000"} {
		if _, err := parseCounts(bad); err == nil {
			t.Errorf("parseCounts(%q): no error", bad)
		}
	}
}

// fakeResult is a made-up measurement (no lab) for the report and plots.
func fakeResult() *svcResult {
	r := &svcResult{cfg: svcConfig{connects: 3, reps: 1, probes: 2, backends: 5, workers: 4}, cpu: "1", kpVersion: "v0",
		nodes: []*svcNode{{proxy: "anet", node: "node1"}, {proxy: "iptables", node: "node2"}, {proxy: "nftables", node: "node3"}}}
	us := func(xs ...float64) []time.Duration {
		var ds []time.Duration
		for _, x := range xs {
			ds = append(ds, time.Duration(x*float64(time.Microsecond)))
		}
		return ds
	}
	for i, n := range []int{100, 1000, 10000} {
		f := float64(i + 1)
		p := &svcPoint{n: n, create: time.Duration(n) * time.Millisecond, probed: 2,
			served:  map[string]time.Duration{"anet": time.Second, "iptables": 2 * time.Second, "nftables": 3 * time.Second},
			step:    map[string]time.Duration{"anet": time.Second / 4, "iptables": time.Second, "nftables": time.Second},
			dropped: map[string]time.Duration{},
			lat: map[string][]time.Duration{"anet": us(30, 31, 32), "iptables": us(40*f, 41*f, 42*f), "nftables": us(35, 36, 37),
				"direct/node1": us(29, 30, 31), "direct/node2": us(29, 30, 31), "direct/node3": us(29, 30, 31)},
			runs: map[string][]float64{"anet": {31}},
			rss:  map[string]int64{"node1/anetd": int64(50 * 1024 * f)},
		}
		r.points = append(r.points, p)
	}
	return r
}

func TestSvcMarkdown(t *testing.T) {
	md := fakeResult().markdown()
	for _, want := range []string{
		"| 10\u202f000 | 31.0 | 123 | 36.0 | 30.0 | 1.03× | 3.97× | 1.16× |", // p50 at 10 000
		"| anet / direct, p50, at 10\u202f000 Services | ≤ 1.05× | 1.03× | **met** |",
		"| iptables / anet, p50, at 10\u202f000 Services | ≥ 2× | 3.97× | **met** |",
		"150 MiB",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

func TestSvcPlots(t *testing.T) {
	dir := t.TempDir()
	files, err := writeSvcPlots(dir, fakeResult())
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("wrote %v, want two charts", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(f) != dir || len(b) < 1000 || string(b[1:4]) != "PNG" {
			t.Errorf("%s: not a PNG in %s (%d bytes)", f, dir, len(b))
		}
	}
	if _, err := writeSvcPlots(dir, &svcResult{}); err == nil {
		t.Error("no points: no error")
	}
}

func TestPromValue(t *testing.T) {
	text := `# HELP kubeproxy_network_programming_duration_seconds [ALPHA] In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"} 3
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 12.5
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} 1000
kubeproxy_network_programming_duration_seconds_count_other 7
`
	if v, err := promValue(text, "kubeproxy_network_programming_duration_seconds_count"); err != nil || v != 1000 {
		t.Errorf("promValue = %v, %v; want 1000", v, err)
	}
	if v, err := promValue("# nothing yet\n", "kubeproxy_network_programming_duration_seconds_count"); err != nil || v != 0 {
		t.Errorf("no sample: %v, %v; want 0", v, err)
	}
	if _, err := promValue("x_count{a=\"b\"} NaNx\n", "x_count"); err == nil {
		t.Error("a bad value: no error")
	}
}
