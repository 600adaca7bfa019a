//go:build linux

package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Probes and a workload for the end-to-end tests (lab/e2e and the packages
// beside it), which run them in labs of different setups. Every probe runs
// inside the lab: in a pod (kubectl exec, so in the container's cgroup and
// with its resolv.conf, as in any cluster) or in the outside namespace.

// EchoManifest is the Service workload: a Deployment "echo" of three
// anet-testservers spread over the nodes (HTTP on 8080, named "http",
// answering {"pod":…,"client":…}; TCP and UDP echo on 8081), the Service
// "echo" (80 -> http, 81/TCP -> 8081, 53/UDP -> echo-udp), and the client
// pod "client" on node1.
const EchoManifest = `
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

var sharedEcho struct {
	sync.Mutex
	applied bool
}

// SharedEcho applies EchoManifest to the package's shared lab once (it goes
// with the lab) and waits for the three echo backends and the client.
func SharedEcho(t testing.TB) (*Lab, []Pod, Pod) {
	t.Helper()
	l := SharedLab(t)
	sharedEcho.Lock()
	if !sharedEcho.applied {
		if err := l.Apply(EchoManifest); err != nil {
			sharedEcho.Unlock()
			t.Fatal(err)
		}
		sharedEcho.applied = true
	}
	sharedEcho.Unlock()
	echo := l.WaitPods(t, "app=echo", 3)
	client := l.WaitPods(t, "app=client", 1)[0]
	return l, echo, client
}

// Pod is a pod of the default namespace as the API shows it.
type Pod struct {
	Name, Node, IP string
	Ready          bool
}

// PodNames are the pods' names.
func PodNames(ps []Pod) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.Name)
	}
	return n
}

// Pods lists the pods of the default namespace that match selector and are
// not being deleted.
func (l *Lab) Pods(selector string) ([]Pod, error) {
	out, err := l.Kubectl("get", "pods", "-l", selector, "-o", "json")
	if err != nil {
		return nil, err
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
		return nil, err
	}
	var ps []Pod
	for _, it := range list.Items {
		if it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := Pod{Name: it.Metadata.Name, Node: it.Spec.NodeName, IP: it.Status.PodIP}
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				p.Ready = true
			}
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// WaitPods waits until n pods match selector and all are ready, and fails
// the test after 2 minutes.
func (l *Lab) WaitPods(t testing.TB, selector string, n int) []Pod {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ps, err := l.Pods(selector)
		if err != nil {
			t.Fatal(err)
		}
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

// TestPodOn runs an anet-testserver pod named name (label app=name) on
// node until the test ends, and returns its name once it is ready.
func (l *Lab) TestPodOn(t testing.TB, name, node string) string {
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
	l.ApplyForTest(t, m, "--wait=false")
	l.WaitPods(t, "app="+name, 1)
	return name
}

// ApplyForTest applies manifest and, when the test ends, deletes what it
// made (kubectl delete with deleteArgs added, e.g. "--wait=false").
func (l *Lab) ApplyForTest(t testing.TB, manifest string, deleteArgs ...string) {
	t.Helper()
	if err := l.Apply(manifest); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"delete", "-f", "-", "--ignore-not-found"}, deleteArgs...)
	t.Cleanup(func() { _, _ = l.KubectlStdin(manifest, args...) })
}

// NodeAddress is a node's underlay address.
func (l *Lab) NodeAddress(t testing.TB, node string) string {
	t.Helper()
	n, ok := l.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	return n.Address
}

// ClusterIP is a Service's cluster IP.
func (l *Lab) ClusterIP(t testing.TB, svc string) string {
	t.Helper()
	out, err := l.Kubectl("get", "service", svc, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || out == "" {
		t.Fatalf("service %s: %v %q", svc, err, out)
	}
	return strings.TrimSpace(out)
}

// Probe runs anet-testserver's connect probe (proto tcp, udp or http) to
// addr in pod from (its container: its cgroup, its network namespace, its
// resolv.conf), with a 2 s timeout.
func (l *Lab) Probe(from, proto, addr string) (string, error) {
	return l.ProbeWithin(from, proto, addr, "2s")
}

// ProbeWithin is Probe with the probe's own timeout (inside the pod).
func (l *Lab) ProbeWithin(from, proto, addr, timeout string) (string, error) {
	out, err := l.Kubectl("exec", from, "--", "/anet-testserver", "connect", "--protocol", proto, "--address", addr, "--timeout", timeout)
	if err != nil {
		return strings.TrimSpace(out + " " + err.Error()), err
	}
	return strings.TrimSpace(out), err
}

// Answer is what anet-testserver's HTTP server answers: who served, and
// the client address it saw.
type Answer struct {
	Pod    string `json:"pod"`
	Client string `json:"client"`
}

func decodeAnswer(out string) (Answer, error) {
	var a Answer
	if i := strings.IndexByte(out, '{'); i >= 0 {
		out = out[i:]
	}
	err := json.Unmarshal([]byte(out), &a)
	return a, err
}

// HTTPAnswer probes http://addr/ from pod from and decodes the answer.
func (l *Lab) HTTPAnswer(from, addr string) (Answer, error) {
	out, err := l.Probe(from, "http", addr)
	if err != nil {
		return Answer{}, fmt.Errorf("%s -> %s: %w: %s", from, addr, err, out)
	}
	a, err := decodeAnswer(out)
	if err != nil {
		return Answer{}, fmt.Errorf("%s -> %s: answer %q: %w", from, addr, out, err)
	}
	return a, nil
}

// WaitBackends probes addr from pod from until the set of answering pods
// is exactly want (names), or fails after timeout.
func (l *Lab) WaitBackends(t testing.TB, from, addr string, want []string, timeout time.Duration) {
	t.Helper()
	waitAnswers(t, from+" -> "+addr, want, timeout, func() (Answer, error) { return l.HTTPAnswer(from, addr) })
}

// waitAnswers asks (4 times per wanted pod a round) until the answering
// pods are exactly want, and returns the last round's answers.
func waitAnswers(t testing.TB, what string, want []string, timeout time.Duration, ask func() (Answer, error)) []Answer {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	for {
		seen := map[string]bool{}
		var as []Answer
		var bad []string
		for range 4 * len(want) {
			a, err := ask()
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			if !wantSet[a.Pod] {
				bad = append(bad, "answered by "+a.Pod)
			}
			seen[a.Pod] = true
			as = append(as, a)
		}
		if len(bad) == 0 && len(seen) == len(want) {
			return as
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: want answers from exactly %v; saw %v; problems: %v", what, want, seen, bad)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Testserver is the machine's anet-testserver, for probes run outside pods
// (the outside namespace) or in a pod through ExecCmd: the one in the
// lab's binary directory (ANET_BIN, or what the lab built).
func (l *Lab) Testserver() (string, error) {
	p := filepath.Join(l.State().AnetBinDir, "anet-testserver")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no anet-testserver for probes outside pods: %w (make build makes it)", err)
	}
	return p, nil
}

// Outside runs anet-testserver's connect probe with args in the lab's
// outside namespace: a client beyond the nodes, as a user of a NodePort or
// a load balancer is.
func (l *Lab) Outside(args ...string) (string, error) {
	ts, err := l.Testserver()
	if err != nil {
		return "", err
	}
	out, err := l.OutsideCmd(append([]string{ts, "connect"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// OutsideHTTP probes http://addr/ from outside and decodes the answer.
func (l *Lab) OutsideHTTP(addr string) (Answer, error) {
	out, err := l.Outside("--protocol", "http", "--address", addr, "--timeout", "2s")
	if err != nil {
		return Answer{}, fmt.Errorf("outside -> %s: %w: %s", addr, err, out)
	}
	a, err := decodeAnswer(out)
	if err != nil {
		return Answer{}, fmt.Errorf("outside -> %s: answer %q: %w", addr, out, err)
	}
	return a, nil
}

// WaitOutside probes addr from outside until the answering pods are
// exactly want, or fails after timeout; it returns the last answers.
func (l *Lab) WaitOutside(t testing.TB, addr string, want []string, timeout time.Duration) []Answer {
	t.Helper()
	return waitAnswers(t, "outside -> "+addr, want, timeout, func() (Answer, error) { return l.OutsideHTTP(addr) })
}
