//go:build linux

// Package e2e holds the end-to-end tests of anet's product features in a
// 3-node lab of real kubelets: Services (the kube-proxy replacement) now,
// NetworkPolicy and the overlay later. Everything goes through the API as a
// user would apply it, and through the real EndpointSlice controller; the
// probes run inside pods (kubectl exec, so in the container's cgroup and
// with its resolv.conf, as in any cluster).
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

func TestMain(m *testing.M) {
	os.Exit(lab.RunShared(m, lab.Options{Nodes: 3, DNS: true}))
}

// The workload: anet-testserver answers HTTP on 8080 (named "http") with
// {"pod":…,"client":…}, and echoes TCP and UDP on 8081.
const echoManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: echo}}}
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: anet-testserver:latest
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: http, containerPort: 8080}
        - {name: echo-tcp, containerPort: 8081, protocol: TCP}
        - {name: echo-udp, containerPort: 8081, protocol: UDP}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: tcp, port: 81, targetPort: 8081, protocol: TCP}
  - {name: udp, port: 53, targetPort: echo-udp, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: anet-testserver:latest
    imagePullPolicy: Never
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
`

type pod struct {
	Name, Node, IP string
	Ready          bool
}

func pods(t *testing.T, l *lab.Lab, selector string) []pod {
	t.Helper()
	out, err := l.Kubectl("get", "pods", "-l", selector, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
			Status struct {
				PodIP      string `json:"podIP"`
				Conditions []struct{ Type, Status string }
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatal(err)
	}
	var ps []pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := pod{Name: it.Metadata.Name, Node: it.Spec.NodeName, IP: it.Status.PodIP}
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				p.Ready = true
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// waitPods waits until n pods match selector and all are ready.
func waitPods(t *testing.T, l *lab.Lab, selector string, n int) []pod {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ps := pods(t, l, selector)
		ready := 0
		for _, p := range ps {
			if p.Ready && p.IP != "" {
				ready++
			}
		}
		if ready == n && len(ps) == n {
			return ps
		}
		if time.Now().After(deadline) {
			desc, _ := l.Kubectl("describe", "pods", "-l", selector)
			t.Fatalf("%s: %d of %d pods ready after 2m: %+v\n%s", selector, ready, n, ps, desc)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// probe runs anet-testserver's connect probe in pod from (its container:
// its cgroup, its network namespace, its resolv.conf).
func probe(l *lab.Lab, from, proto, addr string) (string, error) {
	return probeWithin(l, from, proto, addr, "2s")
}

// probeWithin is probe with the probe's own timeout (inside the pod).
func probeWithin(l *lab.Lab, from, proto, addr, timeout string) (string, error) {
	out, err := l.Kubectl("exec", from, "--", "/anet-testserver", "connect", "--protocol", proto, "--address", addr, "--timeout", timeout)
	if err != nil {
		return strings.TrimSpace(out + " " + err.Error()), err
	}
	return strings.TrimSpace(out), err
}

type answer struct {
	Pod    string `json:"pod"`
	Client string `json:"client"`
}

func httpAnswer(l *lab.Lab, from, addr string) (answer, error) {
	out, err := probe(l, from, "http", addr)
	if err != nil {
		return answer{}, fmt.Errorf("%s -> %s: %w: %s", from, addr, err, out)
	}
	var a answer
	if i := strings.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		return answer{}, fmt.Errorf("%s -> %s: answer %q: %w", from, addr, out, err)
	}
	return a, nil
}

func clusterIP(t *testing.T, l *lab.Lab, svc string) string {
	t.Helper()
	out, err := l.Kubectl("get", "service", svc, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || out == "" {
		t.Fatalf("service %s: %v %q", svc, err, out)
	}
	return strings.TrimSpace(out)
}

// waitBackends probes addr from pod from until the set of answering pods is
// exactly want (names), or fails after timeout.
func waitBackends(t *testing.T, l *lab.Lab, from, addr string, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	for {
		seen := map[string]bool{}
		var bad []string
		for range 4 * len(want) {
			a, err := httpAnswer(l, from, addr)
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			if !wantSet[a.Pod] {
				bad = append(bad, "answered by "+a.Pod)
			}
			seen[a.Pod] = true
		}
		if len(bad) == 0 && len(seen) == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s: want answers from exactly %v; saw %v; problems: %v", from, addr, want, seen, bad)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

var echoOnce struct {
	sync.Mutex
	applied bool
}

// setupEcho applies the echo workload once for the package (the lab goes
// with it at the end) and waits for its three backends and the client.
func setupEcho(t *testing.T) (*lab.Lab, []pod, pod) {
	t.Helper()
	l := lab.SharedLab(t)
	echoOnce.Lock()
	if !echoOnce.applied {
		if err := l.Apply(echoManifest); err != nil {
			echoOnce.Unlock()
			t.Fatal(err)
		}
		echoOnce.applied = true
	}
	echoOnce.Unlock()
	echo := waitPods(t, l, "app=echo", 3)
	client := waitPods(t, l, "app=client", 1)[0]
	return l, echo, client
}

func names(ps []pod) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return n
}

// TestClusterIP: a pod reaches a ClusterIP Service over TCP (HTTP on a
// named targetPort, a raw TCP echo on a numbered one) and UDP, balanced over
// every backend on all three nodes, with its own address kept as the
// source; scaling the Deployment down and up changes the answering
// backends within seconds.
func TestClusterIP(t *testing.T) {
	l, echo, client := setupEcho(t)
	vip := clusterIP(t, l, "echo")

	// Every backend answers, across nodes.
	waitBackends(t, l, client.Name, vip+":80", names(echo), 30*time.Second)
	a, err := httpAnswer(l, client.Name, vip+":80")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Client, client.IP+":") {
		t.Errorf("the backend saw client %s, not the pod's own address %s", a.Client, client.IP)
	}
	if out, err := probe(l, client.Name, "tcp", vip+":81"); err != nil {
		t.Errorf("TCP echo through %s:81: %v: %s", vip, err, out)
	}
	if out, err := probe(l, client.Name, "udp", vip+":53"); err != nil {
		t.Errorf("UDP echo through %s:53: %v: %s", vip, err, out)
	}

	// Scale down to one: only it answers, within seconds.
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=1"); err != nil {
		t.Fatal(err)
	}
	one := waitPods(t, l, "app=echo", 1)
	waitBackends(t, l, client.Name, vip+":80", names(one), 20*time.Second)

	// And up again: the new pods take connections.
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=3"); err != nil {
		t.Fatal(err)
	}
	three := waitPods(t, l, "app=echo", 3)
	waitBackends(t, l, client.Name, vip+":80", names(three), 20*time.Second)
}

// TestNoEndpoints: a Service whose selector matches no pod refuses at
// once (TCP: connection refused; UDP: refused), instead of timing out.
func TestNoEndpoints(t *testing.T) {
	l, _, client := setupEcho(t)
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
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found") })
	vip := clusterIP(t, l, "empty")
	for _, c := range []struct{ proto, port string }{{"tcp", "80"}, {"udp", "53"}} {
		// The Service may take a moment to be programmed: until then the
		// address goes nowhere and the probe times out.
		deadline := time.Now().Add(20 * time.Second)
		for {
			// Within 100 ms, measured by the probe inside the pod: a
			// refusal that took longer is reported as a timeout.
			out, err := probeWithin(l, client.Name, c.proto, vip+":"+c.port, "100ms")
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
	l, _, client := setupEcho(t)
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
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found", "--wait=false") })
	waitPods(t, l, "app=named", 2)
	vip := clusterIP(t, l, "named")
	waitBackends(t, l, client.Name, vip+":80", []string{"named-a", "named-b"}, 30*time.Second)
}

// TestPortsChangeOnLiveService: a port added to a live Service answers; a
// port removed stops being served, and the others are untouched meanwhile.
func TestPortsChangeOnLiveService(t *testing.T) {
	l, echo, client := setupEcho(t)
	vip := clusterIP(t, l, "echo")
	waitBackends(t, l, client.Name, vip+":80", names(echo), 30*time.Second)
	patch := `[{"op":"add","path":"/spec/ports/-","value":{"name":"http2","port":8888,"targetPort":8080}}]`
	if _, err := l.Kubectl("patch", "service", "echo", "--type=json", "-p", patch); err != nil {
		t.Fatal(err)
	}
	waitBackends(t, l, client.Name, vip+":8888", names(echo), 20*time.Second)
	// Remove it again (the last port).
	if _, err := l.Kubectl("patch", "service", "echo", "--type=json", "-p", `[{"op":"remove","path":"/spec/ports/3"}]`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := httpAnswer(l, client.Name, vip+":8888")
		if err != nil {
			break // no longer served: nothing listens at the ClusterIP itself
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:8888 still served 20 s after its port was removed", vip)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := httpAnswer(l, client.Name, vip+":80"); err != nil {
		t.Errorf("port 80 after the change: %v", err)
	}
}

// TestSeveralEndpointSlices: a Service without a selector whose endpoints
// are in two EndpointSlices (as a large Service's are) is balanced over
// both slices' endpoints.
func TestSeveralEndpointSlices(t *testing.T) {
	l, echo, client := setupEcho(t)
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
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found") })
	vip := clusterIP(t, l, "sliced")
	waitBackends(t, l, client.Name, vip+":80", names(echo), 30*time.Second)

	// One slice goes: its endpoint stops answering, the other slice's stay.
	if _, err := l.Kubectl("delete", "endpointslice", "sliced-b"); err != nil {
		t.Fatal(err)
	}
	waitBackends(t, l, client.Name, vip+":80", []string{echo[0].Name}, 20*time.Second)
}

// TestHairpin: a pod reaches itself through its own Service.
func TestHairpin(t *testing.T) {
	l, _, client := setupEcho(t)
	const m = `
apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {app: client}
  ports: [{name: http, port: 80, targetPort: 8080}]
`
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found") })
	vip := clusterIP(t, l, "self")
	waitBackends(t, l, client.Name, vip+":80", []string{client.Name}, 30*time.Second)
}

// TestUnservableServiceIsSkipped: a Service with a port anet cannot serve
// (SCTP: our kernels have no SCTP) is skipped for that port with its name
// logged; its other port and other Services keep working.
func TestUnservableServiceIsSkipped(t *testing.T) {
	l, echo, client := setupEcho(t)
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
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found") })
	vip := clusterIP(t, l, "mixed")
	waitBackends(t, l, client.Name, vip+":80", names(echo), 30*time.Second)
	waitBackends(t, l, client.Name, clusterIP(t, l, "echo")+":80", names(echo), 10*time.Second)
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

// testPodOn runs an anet-testserver pod named name on node until the test
// ends, and returns its name once it is ready.
func testPodOn(t *testing.T, l *lab.Lab, name, node string) string {
	t.Helper()
	m := fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: %[1]s}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: s
    image: anet-testserver:latest
    imagePullPolicy: Never
    env: [{name: POD_NAME, value: %[1]s}]
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`, name, node)
	if err := l.Apply(m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.KubectlStdin(m, "delete", "-f", "-", "--ignore-not-found", "--wait=false") })
	waitPods(t, l, "app="+name, 1)
	return name
}
