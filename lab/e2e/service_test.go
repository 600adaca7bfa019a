//go:build linux

// Package e2e holds the end-to-end tests of anet's product features in a
// 3-node lab of real kubelets: Services (the kube-proxy replacement) now,
// NetworkPolicy and the overlay later. Everything goes through the API as a
// user would apply it, and through the real EndpointSlice controller; the
// probes run inside pods (kubectl exec, so in the container's cgroup and
// with its resolv.conf, as in any cluster). The workload (lab.EchoManifest)
// and the probes are package lab's, shared with lab/e2e/coexist, which runs
// the same Service tests beside a real kube-proxy.
package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

func TestMain(m *testing.M) {
	os.Exit(lab.RunShared(m, lab.Options{Nodes: 3, DNS: true}))
}

// TestClusterIP: a pod reaches a ClusterIP Service over TCP (HTTP on a
// named targetPort, a raw TCP echo on a numbered one) and UDP, balanced over
// every backend on all three nodes, with its own address kept as the
// source; scaling the Deployment down and up changes the answering
// backends within seconds.
func TestClusterIP(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	vip := l.ClusterIP(t, "echo")

	// Every backend answers, across nodes.
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(echo), 30*time.Second)
	a, err := l.HTTPAnswer(client.Name, vip+":80")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Client, client.IP+":") {
		t.Errorf("the backend saw client %s, not the pod's own address %s", a.Client, client.IP)
	}
	if out, err := l.Probe(client.Name, "tcp", vip+":81"); err != nil {
		t.Errorf("TCP echo through %s:81: %v: %s", vip, err, out)
	}
	if out, err := l.Probe(client.Name, "udp", vip+":53"); err != nil {
		t.Errorf("UDP echo through %s:53: %v: %s", vip, err, out)
	}

	// Scale down to one: only it answers, within seconds.
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=1"); err != nil {
		t.Fatal(err)
	}
	one := l.WaitPods(t, "app=echo", 1)
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(one), 20*time.Second)

	// And up again: the new pods take connections.
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=3"); err != nil {
		t.Fatal(err)
	}
	three := l.WaitPods(t, "app=echo", 3)
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(three), 20*time.Second)
}

// TestNoEndpoints: a Service whose selector matches no pod refuses at
// once (TCP: connection refused; UDP: refused), instead of timing out.
func TestNoEndpoints(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  type: NodePort
  selector: {app: nobody}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30090}
  - {name: udp, port: 53, targetPort: 8081, protocol: UDP, nodePort: 30091}
`
	l.ApplyForTest(t, m)
	vip := l.ClusterIP(t, "empty")
	for _, c := range []struct{ proto, port string }{{"tcp", "80"}, {"udp", "53"}} {
		// The Service may take a moment to be programmed: until then the
		// address goes nowhere and the probe times out.
		deadline := time.Now().Add(20 * time.Second)
		for {
			// Within 100 ms, measured by the probe inside the pod: a
			// refusal that took longer is reported as a timeout.
			out, err := l.ProbeWithin(client.Name, c.proto, vip+":"+c.port, "100ms")
			if err != nil && strings.Contains(out, "refused") {
				t.Logf("%s %s:%s refused within 100 ms: %s", c.proto, vip, c.port, out)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %s:%s: want connection refused within 100 ms, got %v: %s", c.proto, vip, c.port, err, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// From outside, through a node's NodePort: a TCP reset and an ICMP
	// port unreachable from the node, as kube-proxy's REJECT gives.
	node := l.Nodes[1].Address
	for _, c := range []struct{ proto, port string }{{"tcp", "30090"}, {"udp", "30091"}} {
		out, err := l.OutsideCmd(testserver(t), "connect", "--protocol", c.proto, "--address", node+":"+c.port, "--timeout", "100ms").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "refused") {
			t.Errorf("outside -> %s %s:%s: want refused within 100 ms, got %v: %s", c.proto, node, c.port, err, out)
		} else {
			t.Logf("outside -> %s %s:%s refused within 100 ms: %s", c.proto, node, c.port, strings.TrimSpace(string(out)))
		}
	}
}

// TestNamedTargetPortPerPod: one named targetPort means 8080 on some pods
// and 9090 on others; the EndpointSlice controller resolves it per pod,
// and anet follows the slices.
func TestNamedTargetPortPerPod(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Pod
metadata: {name: named-a, labels: {app: named}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    env: [{name: POD_NAME, value: named-a}]
    ports: [{name: web, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: named-b, labels: {app: named}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    args: [serve, --http, ":9090"]
    env: [{name: POD_NAME, value: named-b}]
    ports: [{name: web, containerPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: named}
spec:
  selector: {app: named}
  ports: [{name: http, port: 80, targetPort: web}]
`
	l.ApplyForTest(t, m, "--wait=false")
	l.WaitPods(t, "app=named", 2)
	vip := l.ClusterIP(t, "named")
	l.WaitBackends(t, client.Name, vip+":80", []string{"named-a", "named-b"}, 30*time.Second)
}

// TestPortsChangeOnLiveService: a port added to a live Service answers; a
// port removed stops being served, and the others are untouched meanwhile.
func TestPortsChangeOnLiveService(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	vip := l.ClusterIP(t, "echo")
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(echo), 30*time.Second)
	patch := `[{"op":"add","path":"/spec/ports/-","value":{"name":"http2","port":8888,"targetPort":8080}}]`
	if _, err := l.Kubectl("patch", "service", "echo", "--type=json", "-p", patch); err != nil {
		t.Fatal(err)
	}
	l.WaitBackends(t, client.Name, vip+":8888", lab.PodNames(echo), 20*time.Second)
	// Remove it again (the last port).
	if _, err := l.Kubectl("patch", "service", "echo", "--type=json", "-p", `[{"op":"remove","path":"/spec/ports/3"}]`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := l.HTTPAnswer(client.Name, vip+":8888")
		if err != nil {
			break // no longer served: nothing listens at the ClusterIP itself
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:8888 still served 20 s after its port was removed", vip)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := l.HTTPAnswer(client.Name, vip+":80"); err != nil {
		t.Errorf("port 80 after the change: %v", err)
	}
}

// TestSeveralEndpointSlices: a Service without a selector whose endpoints
// are in two EndpointSlices (as a large Service's are) is balanced over
// both slices' endpoints.
func TestSeveralEndpointSlices(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	m := fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: sliced}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sliced-a
  labels: {kubernetes.io/service-name: sliced, endpointslice.kubernetes.io/managed-by: anet-e2e}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [%q]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sliced-b
  labels: {kubernetes.io/service-name: sliced, endpointslice.kubernetes.io/managed-by: anet-e2e}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [%q]
  conditions: {ready: true}
- addresses: [%q]
  conditions: {ready: true}
`, echo[0].IP, echo[1].IP, echo[2].IP)
	l.ApplyForTest(t, m)
	vip := l.ClusterIP(t, "sliced")
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(echo), 30*time.Second)

	// One slice goes: its endpoint stops answering, the other slice's stay.
	if _, err := l.Kubectl("delete", "endpointslice", "sliced-b"); err != nil {
		t.Fatal(err)
	}
	l.WaitBackends(t, client.Name, vip+":80", []string{echo[0].Name}, 20*time.Second)
}

// TestHairpin: a pod reaches itself through its own Service.
func TestHairpin(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {app: client}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	l.ApplyForTest(t, m)
	vip := l.ClusterIP(t, "self")
	l.WaitBackends(t, client.Name, vip+":80", []string{client.Name}, 30*time.Second)
}

// TestUnservableServiceIsSkipped: a Service with a port anet cannot serve
// (SCTP: our kernels have no SCTP) is skipped for that port with its name
// logged; its other port and other Services keep working.
func TestUnservableServiceIsSkipped(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: mixed}
spec:
  selector: {app: echo}
  ports:
  - {name: sctp, port: 9999, targetPort: 9999, protocol: SCTP}
  - {name: http, port: 80, targetPort: 8080}
`
	l.ApplyForTest(t, m)
	vip := l.ClusterIP(t, "mixed")
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(echo), 30*time.Second)
	l.WaitBackends(t, client.Name, l.ClusterIP(t, "echo")+":80", lab.PodNames(echo), 10*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		logs, _ := os.ReadFile(l.Nodes[0].Dir + "/logs/anetd.log")
		if strings.Contains(string(logs), "default/mixed") && strings.Contains(string(logs), "SCTP") {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("anetd's log does not name default/mixed's SCTP port as skipped")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func labOf(t *testing.T) *lab.Lab { t.Helper(); return lab.SharedLab(t) }

// TestInternalTrafficPolicyLocal: a Service with internalTrafficPolicy
// Local sends a pod's connections only to the backends on the pod's own
// node (the echo Deployment has one on each), and a pod on a node without
// one is not served (kube-proxy drops such connections; anet refuses them
// at once, which the client sees as a refusal rather than a timeout).
func TestInternalTrafficPolicyLocal(t *testing.T) {
	l, echo, client := lab.SharedEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: echo-itp-local}
spec:
  internalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: itp-elsewhere}
spec:
  internalTrafficPolicy: Local
  selector: {app: itp-elsewhere}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	l.ApplyForTest(t, m, "--wait=false")
	var local []string
	for _, p := range echo {
		if p.Node == client.Node {
			local = append(local, p.Name)
		}
	}
	if len(local) == 0 {
		t.Fatalf("no echo backend on the client's node %s: %+v", client.Node, echo)
	}
	vip := l.ClusterIP(t, "echo-itp-local")
	l.WaitBackends(t, client.Name, vip+":80", local, 30*time.Second)

	// A backend only on another node: the client's node has none.
	other := "node2"
	if client.Node == other {
		other = "node3"
	}
	l.TestPodOn(t, "itp-elsewhere", other)
	far := l.ClusterIP(t, "itp-elsewhere")
	// Reached through a Service without the policy, it answers (so the
	// refusal below is the policy's).
	direct := l.WaitPods(t, "app=itp-elsewhere", 1)[0]
	if _, err := l.HTTPAnswer(client.Name, direct.IP+":8080"); err != nil {
		t.Fatalf("the backend on %s does not answer directly: %v", other, err)
	}
	for i := range 5 {
		out, err := l.Probe(client.Name, "http", far+":80")
		if err == nil {
			t.Fatalf("probe %d: the client on %s reached an internalTrafficPolicy Local Service whose only backend is on %s: %s", i, client.Node, other, out)
		}
		if i == 0 {
			t.Logf("not served from %s: %s", client.Node, out)
		}
	}
}
