//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

// testserver is the machine's anet-testserver, for probes run outside pods
// (Lab.Testserver).
func testserver(t *testing.T) string {
	t.Helper()
	p, err := labOf(t).Testserver()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// outsideRoute routes dst (a LoadBalancer or external IP) from the
// outside namespace to a node, as a load balancer or router would.
func outsideRoute(t *testing.T, l *lab.Lab, dst, node string) {
	t.Helper()
	via := l.NodeAddress(t, node)
	if out, err := l.OutsideCmd("ip", "route", "replace", dst+"/32", "via", via).CombinedOutput(); err != nil {
		t.Fatalf("route %s via %s: %v: %s", dst, via, err, out)
	}
	t.Cleanup(func() { _ = l.OutsideCmd("ip", "route", "del", dst+"/32").Run() })
}

// TestNodePortFromOutside: a NodePort on any node's address reaches every
// backend, those on other nodes too (their answers show the node's address
// as the client: SNAT, externalTrafficPolicy Cluster); a pod reaches it as
// well.
func TestNodePortFromOutside(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: np}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
`
	l.ApplyForTest(t, m)
	for _, node := range []string{"node1", "node2"} {
		addr := l.NodeAddress(t, node) + ":30080"
		as := l.WaitOutside(t, addr, lab.PodNames(echo), 30*time.Second)
		for _, a := range as {
			local := false
			for _, p := range echo {
				if p.Name == a.Pod && p.Node == node {
					local = true
				}
			}
			if !local && !strings.HasPrefix(a.Client, l.NodeAddress(t, node)+":") {
				t.Errorf("%s: backend %s on another node saw client %s, want the node's address (SNAT)", addr, a.Pod, a.Client)
			}
			if local && !strings.HasPrefix(a.Client, lab.OutsideIP+":") {
				t.Errorf("%s: backend %s on the node saw client %s, want the outside client %s", addr, a.Pod, a.Client, lab.OutsideIP)
			}
		}
	}
	// From a pod, to another node's address.
	l.WaitBackends(t, client.Name, l.NodeAddress(t, "node3")+":30080", lab.PodNames(echo), 30*time.Second)
}

// TestExternalTrafficPolicyLocal: only a node with a local endpoint serves
// the NodePort, the client's own address reaches the backend, and the
// healthCheckNodePort says which nodes have one, as kube-proxy's does.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	l, _, _ := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Pod
metadata: {name: local-only, labels: {app: local-only}}
spec:
  nodeName: node2
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    env: [{name: POD_NAME, value: local-only}]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: etp-local}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30999
  selector: {app: local-only}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
`
	l.ApplyForTest(t, m, "--wait=false")
	l.WaitPods(t, "app=local-only", 1)
	as := l.WaitOutside(t, l.NodeAddress(t, "node2")+":30081", []string{"local-only"}, 30*time.Second)
	for _, a := range as {
		if !strings.HasPrefix(a.Client, lab.OutsideIP+":") {
			t.Errorf("externalTrafficPolicy Local: the backend saw %s, want the outside client %s", a.Client, lab.OutsideIP)
		}
	}
	// node1 has no local endpoint: not served.
	if out, err := l.Outside("--protocol", "tcp", "--address", l.NodeAddress(t, "node1")+":30081", "--timeout", "1s"); err == nil {
		t.Errorf("node1 served an externalTrafficPolicy Local NodePort without a local endpoint: %s", out)
	}
	// The health check node port: 200 with one local endpoint on node2,
	// 503 with none on node1; kube-proxy's JSON body.
	for node, want := range map[string]int{"node2": 1, "node1": 0} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, err := l.Outside("--protocol", "http", "--address", l.NodeAddress(t, node)+":30999", "--timeout", "1s")
			var body struct {
				Service             struct{ Namespace, Name string } `json:"service"`
				LocalEndpoints      int                              `json:"localEndpoints"`
				ServiceProxyHealthy bool                             `json:"serviceProxyHealthy"`
			}
			// A 503 makes the probe fail, with the body quoted (%q) in
			// its error: unquote it.
			js := out
			if _, q, ok := strings.Cut(out, "503 Service Unavailable: "); ok {
				if qs, err := strconv.QuotedPrefix(q); err == nil {
					if u, err := strconv.Unquote(qs); err == nil {
						js = u
					}
				}
			}
			if i := strings.IndexByte(js, '{'); i >= 0 {
				js = js[i:]
			}
			if j := strings.LastIndexByte(js, '}'); j >= 0 {
				js = js[:j+1]
			}
			perr := json.Unmarshal([]byte(js), &body)
			ok := perr == nil && body.LocalEndpoints == want && body.Service.Name == "etp-local" && body.ServiceProxyHealthy
			if want > 0 {
				ok = ok && err == nil
			} else {
				ok = ok && err != nil && strings.Contains(out, "503")
			}
			if ok {
				t.Logf("%s healthCheckNodePort: %v %s", node, err, out)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s healthCheckNodePort: %v: %s (want localEndpoints %d)", node, err, out, want)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

// TestExternalIPAndLoadBalancer: an ExternalIP and a LoadBalancer ingress
// IP answer from outside, through a route to a node.
func TestExternalIPAndLoadBalancer(t *testing.T) {
	l, echo, _ := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  selector: {app: echo}
  externalIPs: [198.51.100.10]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 8080}]
`
	l.ApplyForTest(t, m)
	// No cloud here: the test plays the load balancer controller.
	if _, err := l.Kubectl("patch", "service", "lb", "--subresource=status", "--type=merge",
		"-p", `{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.20"}]}}}`); err != nil {
		t.Fatal(err)
	}
	outsideRoute(t, l, "198.51.100.10", "node3")
	outsideRoute(t, l, "198.51.100.20", "node1")
	l.WaitOutside(t, "198.51.100.10:80", lab.PodNames(echo), 30*time.Second)
	l.WaitOutside(t, "198.51.100.20:8080", lab.PodNames(echo), 30*time.Second)
}

// TestSessionAffinity: ClientIP affinity keeps a client on one backend for
// its timeout, and lets go after it.
func TestSessionAffinity(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: echo}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	l.ApplyForTest(t, m)
	vip := l.ClusterIP(t, "sticky")
	var first string
	deadline := time.Now().Add(20 * time.Second)
	for first == "" {
		if a, err := l.HTTPAnswer(client.Name, vip+":80"); err == nil {
			first = a.Pod
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	// Within the timeout (each probe well under 2 s after the last): one
	// backend.
	for range 8 {
		a, err := l.HTTPAnswer(client.Name, vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		if a.Pod != first {
			t.Fatalf("affinity broken within its timeout: %s, then %s", first, a.Pod)
		}
	}
	// After it: rounds spaced by more than the timeout land on other
	// backends too (all on one of three after 8 rounds: (1/3)^7).
	seen := map[string]bool{first: true}
	for range 8 {
		time.Sleep(2500 * time.Millisecond)
		a, err := l.HTTPAnswer(client.Name, vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		seen[a.Pod] = true
	}
	if len(seen) < 2 {
		t.Errorf("affinity never lapsed: every round went to %s", first)
	}
}

// TestServiceByName: pods reach Services by their DNS names, through the
// cluster DNS, itself reached at its Service address.
func TestServiceByName(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	for _, name := range []string{"echo", "echo.default", "echo.default.svc.cluster.local"} {
		l.WaitBackends(t, client.Name, name+":80", lab.PodNames(echo), 30*time.Second)
	}
}

// TestTerminatingEndpoint: a terminating endpoint takes no new connection
// while a ready one exists, and a connection open to it goes on until it
// ends.
func TestTerminatingEndpoint(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	pod := func(name string) string {
		return fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: drain}}
spec:
  terminationGracePeriodSeconds: 40
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    env: [{name: POD_NAME, value: %[1]s}]
    lifecycle: {preStop: {sleep: {seconds: 25}}}
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`, name)
	}
	svc := `
apiVersion: v1
kind: Service
metadata: {name: drain}
spec:
  selector: {app: drain}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: tcp, port: 81, targetPort: 8081}
`
	all := svc + "---" + pod("drain-a") + "---" + pod("drain-b")
	t.Cleanup(func() {
		_, _ = l.KubectlStdin(all, "delete", "-f", "-", "--ignore-not-found", "--wait=false", "--grace-period=1")
	})
	// drain-a alone first, so that the long connection surely goes to it.
	if err := l.Apply(svc + "---" + pod("drain-a")); err != nil {
		t.Fatal(err)
	}
	l.WaitPods(t, "app=drain", 1)
	vip := l.ClusterIP(t, "drain")
	l.WaitBackends(t, client.Name, vip+":80", []string{"drain-a"}, 30*time.Second)
	holdOut := &strings.Builder{}
	hold := l.KubectlCmd("exec", client.Name, "--", "/anet-testserver", "connect", "--protocol", "tcp",
		"--address", vip+":81", "--hold", "15s", "--timeout", "2s")
	hold.Stdout, hold.Stderr = holdOut, holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- hold.Wait() }()
	if err := l.Apply(pod("drain-b")); err != nil {
		t.Fatal(err)
	}
	l.WaitPods(t, "app=drain", 2)
	l.WaitBackends(t, client.Name, vip+":80", []string{"drain-a", "drain-b"}, 30*time.Second)
	if _, err := l.Kubectl("delete", "pod", "drain-a", "--wait=false"); err != nil {
		t.Fatal(err)
	}
	// While drain-a terminates (25 s preStop), new connections go to
	// drain-b only.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := l.Kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=drain", "-o", "jsonpath={range .items[*].endpoints[*]}{.targetRef.name}={.conditions.terminating} {end}")
		if strings.Contains(out, "drain-a=true") {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	for range 10 {
		a, err := l.HTTPAnswer(client.Name, vip+":80")
		if err != nil {
			t.Fatal(err)
		}
		if a.Pod != "drain-b" {
			t.Fatalf("a new connection went to %s while it terminates", a.Pod)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("the open connection broke while its backend terminated: %v: %s", err, holdOut)
	}
	t.Logf("held: %s", strings.TrimSpace(holdOut.String()))
}
