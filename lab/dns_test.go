//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testPod applies a pod running anet-testserver on a node, waits until it
// is Ready and deletes it at the end of the test.
func testPod(t *testing.T, l *Lab, name, node string) pod {
	t.Helper()
	m := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: %s}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: anet-testserver:latest
    imagePullPolicy: Never
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`, name, name, node)
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = l.Kubectl("delete", "pod", name, "--wait=true", "--timeout=60s", "--ignore-not-found")
	})
	return waitPods(t, l, "app="+name, 1)[0]
}

// dnsPod returns the cluster DNS's (one) pod: name, node, address.
func dnsPod(t *testing.T, l *Lab) pod {
	t.Helper()
	out, err := l.Kubectl("-n", "kube-system", "get", "pods", "-l", DNSLabel, "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out)
	if len(lines) != 3 {
		t.Fatalf("cluster DNS pods: %q, want one", out)
	}
	return pod{Name: lines[0], Node: lines[1], IP: lines[2], Ready: true}
}

// askDNS runs anet-testserver's dns probe in a pod (kubectl exec: in its
// container) and returns its answer. server "" uses the pod's resolver.
func askDNS(t *testing.T, l *Lab, from, server, name string) (dnsAnswer, error) {
	t.Helper()
	args := []string{"exec", from, "--", "/anet-testserver", "dns", "--name", name, "--timeout", "3s"}
	if server != "" {
		args = append(args, "--server", server)
	}
	out, err := l.Kubectl(args...)
	if err != nil {
		return dnsAnswer{}, err
	}
	var a dnsAnswer
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		return dnsAnswer{}, fmt.Errorf("dns probe said %q: %w", out, err)
	}
	return a, nil
}

// dnsAnswer is what anet-testserver dns prints.
type dnsAnswer struct {
	RCode         string   `json:"rcode"`
	Authoritative bool     `json:"authoritative"`
	Addresses     []string `json:"addresses"`
	Millis        float64  `json:"ms"`
}

// netStats reads counters of /proc/PID/net/snmp (the network namespace of
// PID), as "Udp.OutDatagrams" and so on.
func netStats(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 {
			return nil, fmt.Errorf("/proc/%d/net/snmp: malformed at line %d", pid, i+1)
		}
		proto := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			v, _ := strconv.ParseInt(values[j], 10, 64)
			out[proto+"."+names[j]] = v
		}
	}
	return out, nil
}

// TestClusterDNS: the lab's CoreDNS, deployed by up as the kube-dns
// Service, answers a pod on the other node for a Service's name (asked at
// the CoreDNS pod's own address: the Service address needs anet's service
// datapath), and answers at once for a name outside the cluster without
// sending anything anywhere (no forward plugin, no upstream).
func TestClusterDNS(t *testing.T) {
	l := SharedLab(t)
	s := l.State()
	want, err := tenthAddress(DefaultServiceCIDR)
	if err != nil {
		t.Fatal(err)
	}
	if s.ClusterDNS != want {
		t.Fatalf("state records cluster DNS %q, want %s", s.ClusterDNS, want)
	}
	if out, err := l.Kubectl("-n", "kube-system", "get", "service", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"); err != nil || out != want {
		t.Fatalf("kube-dns Service at %q (%v), want %s", out, err, want)
	}
	dns := dnsPod(t, l)
	client := NodeName(1)
	if dns.Node == client {
		client = NodeName(2)
	}
	c := testPod(t, l, "dns-client", client)
	t.Logf("CoreDNS %s on %s at %s; client on %s", dns.Name, dns.Node, dns.IP, c.Node)
	server := dns.IP + ":53"

	kubernetesIP := netip.MustParsePrefix(DefaultServiceCIDR).Addr().Next().String() // the `kubernetes` Service
	for _, q := range []struct{ name, addr string }{
		{"kubernetes.default.svc.cluster.local", kubernetesIP},
		{"kube-dns.kube-system.svc.cluster.local", want},
		{"outside.lab", OutsideIP}, // the hosts plugin: the lab's fabric by name
	} {
		a, err := askDNS(t, l, c.Name, server, q.name)
		if err != nil {
			t.Errorf("%s: %v", q.name, err)
			continue
		}
		if a.RCode != "NOERROR" || strings.Join(a.Addresses, ",") != q.addr || !a.Authoritative {
			t.Errorf("%s: %+v, want an authoritative NOERROR with %s", q.name, a, q.addr)
		}
	}
	if a, err := askDNS(t, l, c.Name, server, "no-such-service.default.svc.cluster.local"); err != nil || a.RCode != "NXDOMAIN" {
		t.Errorf("a Service that does not exist: %+v, %v; want NXDOMAIN", a, err)
	}

	// A name outside the cluster: an answer at once, and CoreDNS's network
	// namespace sent one datagram per datagram it received (its answers)
	// and tried no route: nothing was forwarded anywhere.
	cg, err := l.PodCgroup("kube-system", dns.Name)
	if err != nil {
		t.Fatal(err)
	}
	pids := pidsInCgroup(cg)
	if len(pids) == 0 {
		t.Fatalf("no CoreDNS process in %s", cg)
	}
	before, err := netStats(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	const asks = 3
	for range asks {
		a, err := askDNS(t, l, c.Name, server, "example.com")
		if err != nil {
			t.Fatalf("example.com: %v", err)
		}
		switch a.RCode {
		case "REFUSED", "NXDOMAIN", "SERVFAIL":
		default:
			t.Errorf("example.com: %+v, want REFUSED, NXDOMAIN or SERVFAIL", a)
		}
		if a.Millis > 500 {
			t.Errorf("example.com: answered after %.1f ms, want at once", a.Millis)
		}
	}
	after, err := netStats(pids[0])
	if err != nil {
		t.Fatal(err)
	}
	in := after["Udp.InDatagrams"] - before["Udp.InDatagrams"]
	out := after["Udp.OutDatagrams"] - before["Udp.OutDatagrams"]
	if in < asks || out != in {
		t.Errorf("CoreDNS received %d and sent %d UDP datagrams for %d queries: it sent something besides its answers", in, out, asks)
	}
	if d := after["Ip.OutNoRoutes"] - before["Ip.OutNoRoutes"]; d != 0 {
		t.Errorf("CoreDNS tried to send %d packet(s) that had no route", d)
	}
}

// TestClusterDNSByServiceIP: a pod resolves names through its own resolver
// (kubelet's resolv.conf: nameserver the kube-dns Service, the cluster's
// search list), and asks the Service address directly.
func TestClusterDNSByServiceIP(t *testing.T) {
	l := SharedLab(t)
	c := testPod(t, l, "dns-svc-client", NodeName(1))
	kubernetesIP := netip.MustParsePrefix(DefaultServiceCIDR).Addr().Next().String()
	dnsIP := l.State().ClusterDNS
	if a, err := askDNS(t, l, c.Name, dnsIP+":53", "kubernetes.default.svc.cluster.local"); err != nil ||
		a.RCode != "NOERROR" || strings.Join(a.Addresses, ",") != kubernetesIP {
		t.Errorf("asking the kube-dns Service %s: %+v, %v; want %s", dnsIP, a, err, kubernetesIP)
	}
	// Short names through the search list of a pod of "default".
	for _, q := range []struct{ name, addr string }{
		{"kubernetes", kubernetesIP},
		{"kubernetes.default", kubernetesIP},
		{"kube-dns.kube-system", dnsIP},
		{"kubernetes.default.svc.cluster.local.", kubernetesIP},
	} {
		if err := waitFor(context.Background(), 10*time.Second, func() error {
			a, err := askDNS(t, l, c.Name, "", q.name)
			if err != nil {
				return err
			}
			if strings.Join(a.Addresses, ",") != q.addr {
				return fmt.Errorf("%s: %v, want %s", q.name, a.Addresses, q.addr)
			}
			return nil
		}); err != nil {
			t.Errorf("the pod's resolver: %v", err)
		}
	}
}
