//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/anet-dev/anet/daemon/metrics/metricstest"
	"github.com/anet-dev/anet/lab"
)

// TestMetrics: after traffic between pods of a node and connections a
// NetworkPolicy denies, the node's anetd serves /metrics in Prometheus'
// text format (parsed with the client library's parser) with the
// datapath's counters, the policy drop with its reason, the endpoints,
// identities, services and conntrack entries, and the API-to-datapath
// latency of both reconcilers. The scrape runs in the node's network
// namespace, where anetd listens (--metrics-addr, default :9090).
func TestMetrics(t *testing.T) {
	const ns = "metrics"
	l := lab.SharedLab(t)
	node := lab.NodeName(1)
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n---\n"+
		netpolPodIn(ns, "server", node, "")+netpolPodIn(ns, "client", node, "")+netpolPodIn(ns, "blocked", node, "")+`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
`, "namespace", ns, "--wait=false")
	for _, p := range []string{"server", "client", "blocked"} {
		if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", p, "--timeout=120s"); err != nil {
			t.Fatalf("%s not ready: %v: %s", p, err, out)
		}
	}
	out, err := l.Kubectl("get", "pod", "-n", ns, "server", "-o", "jsonpath={.status.podIP}")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("server's address: %v %q", err, out)
	}
	srv := strings.TrimSpace(out) + ":8081"
	expectReachIn(t, l, ns, "metrics traffic", []reach{
		{"client", srv, "allowed by the policy", true},
		{"blocked", srv, "denied by the server's ingress", false},
	})

	fams := scrapeNode(t, l, node)
	positive := []struct {
		name   string
		labels []string
	}{
		{"anet_forwarded_packets_total", []string{"direction", "egress"}},
		{"anet_forwarded_packets_total", []string{"direction", "ingress"}},
		{"anet_forwarded_bytes_total", []string{"direction", "egress"}},
		// Both pods are on this node: the server's ingress refused the
		// blocked pod's SYNs in the sender's program.
		{"anet_dropped_packets_total", []string{"reason", "policy-ingress-denied", "direction", "ingress"}},
		{"anet_dropped_bytes_total", []string{"reason", "policy-ingress-denied", "direction", "ingress"}},
		{"anet_policy_verdicts_total", []string{"direction", "ingress", "verdict", "denied"}},
		{"anet_endpoints", nil},
		{"anet_identities", []string{"kind", "pod"}},
		// The probes' connections and kubelet's readiness probes, every
		// second for each pod.
		{"anet_conntrack_entries", []string{"map", "pod"}},
		{"anet_conntrack_fill_ratio", []string{"map", "pod"}},
		{"anet_conntrack_max_entries", []string{"map", "service"}},
		{"anet_services", nil},
		{"anet_service_frontends", nil},
		{"anet_service_backends", nil},
		{"anet_api_to_datapath_seconds", []string{"reconciler", "policy"}},
		{"anet_api_to_datapath_seconds", []string{"reconciler", "service"}},
	}
	var seen []string
	for _, c := range positive {
		v, ok := fams.Value(c.name, c.labels...)
		if !ok || v <= 0 {
			t.Errorf("%s%v = %v (present %v), want > 0; series %v", c.name, c.labels, v, ok, fams.Series(c.name))
		}
		seen = append(seen, fmt.Sprintf("%s%v=%g", c.name, c.labels, v))
	}
	t.Logf("%s's metrics:\n  %s", node, strings.Join(seen, "\n  "))
	if v, _ := fams.Value("anet_endpoints"); v < 3 {
		t.Errorf("anet_endpoints = %v, want at least this test's 3 pods", v)
	}
	for name, typ := range map[string]string{
		"anet_forwarded_packets_total": "counter", "anet_dropped_packets_total": "counter",
		"anet_policy_verdicts_total": "counter", "anet_conntrack_entries": "gauge",
		"anet_endpoints": "gauge", "anet_identities": "gauge", "anet_api_to_datapath_seconds": "histogram",
	} {
		if got := fams.Type(name); got != typ {
			t.Errorf("%s is a %q, want a %s", name, got, typ)
		}
	}
}

// scrapeNode fetches http://<node>:9090/metrics from inside the node's
// network namespace (where its anetd listens) with the lab's
// anet-testserver, and parses it.
func scrapeNode(t *testing.T, l *lab.Lab, node string) metricstest.Families {
	t.Helper()
	n, ok := l.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	ts, err := l.Testserver()
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := l.NodeCmd(node, ts, "connect", "--protocol", "http", "--address", n.Address+":9090", "--path", "/metrics", "--timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	body, err := cmd.Output()
	if err != nil {
		t.Fatalf("fetching %s's /metrics: %v: %s", node, err, stderr.String())
	}
	fams, err := metricstest.Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("%s's /metrics: %v\n%s", node, err, body)
	}
	return fams
}
