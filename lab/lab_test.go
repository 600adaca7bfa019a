//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anet-dev/anet/daemon/api"
)

func TestMain(m *testing.M) {
	os.Exit(RunShared(m, Options{Nodes: 2}))
}

const webManifest = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      # 2 + 1: a pod on each node for sure, and two on one of them.
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: anet-testserver:latest
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
`

type pod struct {
	Name, Node, IP string
	Ready          bool
}

func pods(t *testing.T, l *Lab, selector string) []pod {
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
				Conditions []struct {
					Type, Status string
				} `json:"conditions"`
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

// nodeLeftovers lists what a node holds of pods: anet veths, endpoints in
// anetd, link pins, address allocations.
func nodeLeftovers(l *Lab, n *NodeRec) []string {
	var out []string
	links, err := run("ip", "-n", n.Netns, "-o", "link", "show")
	if err != nil {
		return []string{err.Error()}
	}
	for _, line := range strings.Split(links, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "anet") {
			out = append(out, "link "+strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := api.NewClient(n.Socket).Status(ctx)
	if err != nil {
		out = append(out, "anetd: "+err.Error())
	} else if st.Endpoints != 0 || st.Allocated != 0 {
		out = append(out, fmt.Sprintf("anetd: %d endpoint(s), %d address(es) allocated", st.Endpoints, st.Allocated))
	}
	pins, _ := os.ReadDir(filepath.Join(n.BPFRoot, "links"))
	for _, p := range pins {
		out = append(out, "link pin "+p.Name())
	}
	return out
}

func connect(l *Lab, from, addr string) (string, error) {
	out, err := l.Kubectl("exec", from, "--", "/anet-testserver", "connect", "--protocol", "http", "--address", addr, "--timeout", "3s")
	return out, err
}

// TestDeployment is the acceptance walk of the lab: a Deployment of three
// anet-testservers over two nodes, addresses from the nodes' pod CIDRs,
// an EndpointSlice listing them, probes within and across nodes, and a
// delete after which the runtime's CNI DEL has left nothing on the nodes.
func TestDeployment(t *testing.T) {
	l := SharedLab(t)
	if err := l.Apply(webManifest); err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_, _ = l.KubectlStdin(webManifest, "delete", "-f", "-", "--wait=false", "--ignore-not-found")
		}
	})

	var ps []pod
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ps = pods(t, l, "app=web")
		ready := 0
		for _, p := range ps {
			if p.Ready && p.IP != "" {
				ready++
			}
		}
		if ready == 3 && len(ps) == 3 {
			break
		}
		if time.Now().After(deadline) {
			desc, _ := l.Kubectl("describe", "pods", "-l", "app=web")
			t.Fatalf("pods not Ready after 2m: %+v\n%s%s", ps, desc, l.nodeLogTails([]string{"node1", "node2"}))
		}
		time.Sleep(time.Second)
	}
	t.Logf("pods: %+v", ps)

	byNode := map[string][]pod{}
	for _, p := range ps {
		cidr, err := l.PodCIDR(p.Node)
		if err != nil {
			t.Fatal(err)
		}
		pfx, err := netip.ParsePrefix(cidr)
		if err != nil {
			t.Fatalf("node %s pod CIDR %q: %v", p.Node, cidr, err)
		}
		if ip, err := netip.ParseAddr(p.IP); err != nil || !pfx.Contains(ip) {
			t.Errorf("pod %s on %s has %s, outside the node's pod CIDR %s", p.Name, p.Node, p.IP, cidr)
		}
		byNode[p.Node] = append(byNode[p.Node], p)
		// The lab's exec: a machine command in the pod's network namespace.
		out, err := l.Exec("default", p.Name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(out, p.IP+"/32") {
			t.Errorf("exec in %s: %v: %s", p.Name, err, out)
		}
	}
	if len(byNode) != 2 {
		t.Fatalf("pods on %d node(s), want both: %+v", len(byNode), ps)
	}

	// The EndpointSlice controller lists all three.
	if err := waitFor(context.Background(), time.Minute, func() error {
		out, err := l.Kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=web",
			"-o", "jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {end}")
		if err != nil {
			return err
		}
		for _, p := range ps {
			if !strings.Contains(" "+out, " "+p.IP+" ") {
				return fmt.Errorf("EndpointSlice lists %q, missing %s", out, p.IP)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// A client on the node with two pods.
	var client, local, remote pod
	for node, nps := range byNode {
		if len(nps) == 2 {
			client, local = nps[0], nps[1]
			for other, ops := range byNode {
				if other != node {
					remote = ops[0]
				}
			}
		}
	}
	out, err := connect(l, client.Name, local.IP+":8080")
	if err != nil || !strings.Contains(out, `"pod":"`+local.Name+`"`) {
		t.Errorf("same node: %s -> %s (%s): %v: %s", client.Name, local.Name, local.IP, err, out)
	}
	if !strings.Contains(out, `"client":"`+client.IP+`:`) {
		t.Errorf("same node: the server saw %s, not the client's own address %s", out, client.IP)
	}

	// CROSS-NODE (issue 4): needs anetd to route the other nodes' pod CIDRs,
	// which comes with anetd on Kubernetes (--kubeconfig). With an anetd
	// that has not got that yet, the probe runs and its result is logged
	// as a known gap; once anetd speaks to Kubernetes it is asserted.
	b, _ := l.binaryPath("anetd")
	crossExpected := anetdFlags(b)["kubeconfig"]
	out, err = connect(l, client.Name, remote.IP+":8080")
	switch {
	case err == nil && strings.Contains(out, `"pod":"`+remote.Name+`"`):
		t.Logf("cross node: %s (%s) -> %s (%s) ok", client.Name, client.Node, remote.Name, remote.Node)
	case crossExpected:
		t.Errorf("cross node: %s (%s) -> %s (%s, %s): %v: %s", client.Name, client.Node, remote.Name, remote.Node, remote.IP, err, out)
	default:
		t.Logf("KNOWN GAP, not asserted: cross-node pod traffic needs anetd's routes (anetd without --kubeconfig): %v", err)
	}

	// Delete: kubelet stops the sandboxes, containerd runs anet-cni DEL,
	// and nothing of the pods is left on the nodes.
	if _, err := l.Kubectl("delete", "deployment", "web", "--wait=true", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	deleted = true
	_, _ = l.Kubectl("delete", "service", "web")
	if _, err := l.Kubectl("wait", "--for=delete", "pod", "-l", "app=web", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
	for i := range l.Nodes {
		n := &l.Nodes[i]
		if err := waitFor(context.Background(), time.Minute, func() error {
			if left := nodeLeftovers(l, n); len(left) > 0 {
				return fmt.Errorf("%v", left)
			}
			return nil
		}); err != nil {
			t.Errorf("%s after delete: %v", n.Name, err)
		}
	}
}

// binaryPath is where the lab's copy of one of anet's programs is.
func (l *Lab) binaryPath(name string) (string, error) {
	p := filepath.Join(l.st.get().AnetBinDir, name)
	_, err := os.Stat(p)
	return p, err
}

const echoManifest = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 2
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: echo}
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        image: anet-testserver:latest
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
`

func waitPods(t *testing.T, l *Lab, selector string, n int) []pod {
	t.Helper()
	var ps []pod
	if err := waitFor(context.Background(), 2*time.Minute, func() error {
		ps = pods(t, l, selector)
		ready := 0
		for _, p := range ps {
			if p.Ready && p.IP != "" {
				ready++
			}
		}
		if ready != n || len(ps) != n {
			return fmt.Errorf("%d of %d pods ready: %+v", ready, n, ps)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestRestarts restarts node components under running pods: anetd killed
// with SIGKILL and started again, kubelet stopped and started again. The
// pods keep their addresses, nothing is allocated twice, and they still
// reach each other (across nodes when anetd routes them).
func TestRestarts(t *testing.T) {
	l := SharedLab(t)
	if err := l.Apply(echoManifest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "deployment", "echo", "--wait=false", "--ignore-not-found") })
	before := waitPods(t, l, "app=echo", 2)
	if before[0].Node == before[1].Node {
		t.Fatalf("both pods on %s", before[0].Node)
	}
	probe := func(when string) {
		t.Helper()
		for _, from := range before {
			for _, to := range before {
				if from.Name == to.Name {
					continue
				}
				out, err := connect(l, from.Name, to.IP+":8080")
				if err != nil || !strings.Contains(out, `"pod":"`+to.Name+`"`) {
					t.Errorf("%s: %s -> %s: %v: %s", when, from.Name, to.Name, err, out)
				}
			}
		}
	}
	b, _ := l.binaryPath("anetd")
	cross := anetdFlags(b)["kubeconfig"]
	if cross {
		probe("before restarts")
	}

	ctx := context.Background()
	n1 := before[0].Node
	if err := l.Restart(ctx, n1+"/anetd", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !l.Running(n1 + "/anetd") {
		t.Fatalf("%s/anetd not running after restart", n1)
	}
	if cross {
		probe("after anetd SIGKILL and start on " + n1)
	}

	n2 := before[1].Node
	if err := l.Restart(ctx, n2+"/kubelet", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	after := waitPods(t, l, "app=echo", 2)
	// The restarted kubelet serves exec once it has synced its pods again.
	for _, p := range after {
		if err := waitFor(ctx, time.Minute, func() error {
			_, err := l.Kubectl("exec", p.Name, "--", "/anet-testserver", "help")
			return err
		}); err != nil {
			t.Fatalf("exec in %s after the kubelet restart: %v", p.Name, err)
		}
	}
	for _, a := range after {
		found := false
		for _, b := range before {
			if a.Name == b.Name {
				found = true
				if a.IP != b.IP {
					t.Errorf("%s changed address %s -> %s", a.Name, b.IP, a.IP)
				}
			}
		}
		if !found {
			t.Errorf("pod %s is new: the restarts replaced a pod", a.Name)
		}
	}
	// One allocation per pod on each node: the kubelet restart did not
	// wire a sandbox twice.
	for _, p := range after {
		n, _ := l.Node(p.Node)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := api.NewClient(n.Socket).Status(cctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if st.Allocated != 1 || st.Endpoints != 1 {
			t.Errorf("%s: %d allocation(s), %d endpoint(s); want 1 each", p.Node, st.Allocated, st.Endpoints)
		}
	}
	if cross {
		probe("after kubelet restart on " + n2)
	} else {
		t.Log("KNOWN GAP, not asserted: cross-node probes need anetd's routes (anetd without --kubeconfig)")
	}
	if _, err := l.Kubectl("delete", "deployment", "echo", "--wait=true"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Kubectl("wait", "--for=delete", "pod", "-l", "app=echo", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
}

// TestAPIServerDown stops the API server for 30 s under running pods:
// they keep talking (probed from inside their network namespaces, which
// needs no API), and once it is back a new pod is wired and reachable.
func TestAPIServerDown(t *testing.T) {
	l := SharedLab(t)
	if testing.Short() {
		t.Skip("stops the API server for 30 s")
	}
	cp := l.ControlPlane()
	if cp == nil {
		t.Skip("the lab was opened, not brought up, by this process")
	}
	if err := l.Apply(echoManifest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "deployment", "echo", "--wait=false", "--ignore-not-found") })
	ps := waitPods(t, l, "app=echo", 2)
	b, _ := l.binaryPath("anetd")
	cross := anetdFlags(b)["kubeconfig"]
	// The probe is the testserver binary of the image, run from the
	// machine inside the pod's network namespace: kubectl exec needs the
	// API server.
	probeBin := filepath.Join(l.opts.ImageDir, "bin", "anet-testserver")
	type path struct{ from, to pod }
	var paths []path
	netns := map[string]string{}
	for _, a := range ps {
		p, err := l.PodNetns("default", a.Name)
		if err != nil {
			t.Fatal(err)
		}
		netns[a.Name] = p
		for _, b := range ps {
			if a.Name != b.Name && (cross || a.Node == b.Node) {
				paths = append(paths, path{a, b})
			}
		}
	}
	if !cross {
		t.Log("KNOWN GAP, not asserted: cross-node probes need anetd's routes (anetd without --kubeconfig)")
	}
	probe := func(when string) {
		for _, pp := range paths {
			out, err := exec.Command("nsenter", "--net="+netns[pp.from.Name], "--", probeBin, "connect",
				"--protocol", "http", "--address", pp.to.IP+":8080", "--timeout", "2s").CombinedOutput()
			if err != nil {
				t.Errorf("%s: %s -> %s: %v: %s", when, pp.from.Name, pp.to.Name, err, out)
			}
		}
	}
	t0 := time.Now()
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server stopped in %v", time.Since(t0).Round(time.Millisecond))
	restarted := false
	defer func() {
		if !restarted {
			_ = cp.StartAPIServer(context.Background())
			_ = l.RecordControlPlane()
		}
	}()
	for i := 0; i < 3; i++ {
		time.Sleep(10 * time.Second)
		probe(fmt.Sprintf("API server down for %ds", (i+1)*10))
	}
	t0 = time.Now()
	if err := cp.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	t.Logf("API server ready again in %v", time.Since(t0).Round(time.Millisecond))
	if err := l.RecordControlPlane(); err != nil {
		t.Fatal(err)
	}
	probe("API server back")
	// anetd caught up: a new pod is wired and reachable. The pod names its
	// node: the controller manager's and scheduler's watches take up to a
	// minute to come back after an API server restart, kubelet's and
	// anetd's are what this is about.
	node := ps[0].Node
	newPod := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: echo-late
  labels: {app: echo-late}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 5
  containers:
  - name: echo
    image: anet-testserver:latest
    imagePullPolicy: Never
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`, node)
	if err := l.Apply(newPod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = l.Kubectl("delete", "pod", "echo-late", "--wait=false", "--ignore-not-found") })
	t0 = time.Now()
	late := waitPods(t, l, "app=echo-late", 1)[0]
	t.Logf("new pod Ready %v after the API server came back", time.Since(t0).Round(time.Millisecond))
	for _, from := range ps {
		if !cross && from.Node != late.Node {
			continue
		}
		out, err := connect(l, from.Name, late.IP+":8080")
		if err != nil || !strings.Contains(out, `"pod":"echo-late"`) {
			t.Errorf("after the API server came back: %s -> new pod %s: %v: %s", from.Name, late.Name, err, out)
		}
	}
	if _, err := l.Kubectl("delete", "pod", "echo-late", "--wait=true"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Kubectl("delete", "deployment", "echo", "--wait=true"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Kubectl("wait", "--for=delete", "pod", "-l", "app=echo", "--timeout=90s"); err != nil {
		t.Fatal(err)
	}
}

// TestCrashedUpIsRemoved kills `anet-lab up` with SIGKILL while it brings
// a one-node lab up, then checks that `anet-lab down` removes everything
// it had made, and that a second down is a no-op.
func TestCrashedUpIsRemoved(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if testing.Short() {
		t.Skip("brings a lab of its own up")
	}
	// Uses the binaries the shared lab built or found.
	sl := SharedLab(t)
	ss := sl.State()
	bin := filepath.Join(t.TempDir(), "anet-lab")
	if o, err := exec.Command("go", "build", "-o", bin, "./cmd/anet-lab").CombinedOutput(); err != nil {
		t.Fatalf("go build anet-lab: %v\n%s", err, o)
	}
	dir, err := os.MkdirTemp("", "anet-lab-crash-")
	if err != nil {
		t.Fatal(err)
	}
	name := "alc-" + strings.TrimPrefix(filepath.Base(dir), "anet-lab-crash-")
	if len(name) > 16 {
		name = name[:16]
	}
	logf := filepath.Join(t.TempDir(), "up.log")
	lf, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	up := exec.Command(bin, "up", "--nodes", "1", "--dir", dir, "--name", name)
	up.Env = append(os.Environ(), "ANET_BIN="+ss.AnetBinDir)
	up.Stdout, up.Stderr = lf, lf
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DownDir(dir, nil) })
	// Kill it once the node's kubelet runs: namespaces, mounts, cgroups,
	// a control plane and containerd exist then.
	var s *State
	if err := waitFor(context.Background(), 3*time.Minute, func() error {
		s, err = LoadState(dir)
		if err != nil {
			return err
		}
		for _, p := range s.Procs {
			if strings.HasSuffix(p.Name, "/kubelet") {
				return nil
			}
		}
		return fmt.Errorf("no kubelet yet")
	}); err != nil {
		_ = up.Process.Kill()
		b, _ := os.ReadFile(logf)
		t.Fatalf("%v\n%s", err, b)
	}
	_ = up.Process.Signal(syscall.SIGKILL)
	_ = up.Wait()
	s, err = LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(Leftovers(s)) == 0 {
		t.Fatal("nothing recorded before the kill")
	}
	t0 := time.Now()
	if out, err := exec.Command(bin, "down", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("anet-lab down: %v\n%s", err, out)
	}
	t.Logf("down after SIGKILL took %v", time.Since(t0).Round(time.Millisecond))
	if left := Leftovers(s); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	if out, err := exec.Command(bin, "down", "--dir", dir).CombinedOutput(); err != nil {
		t.Errorf("second down: %v\n%s", err, out)
	}
}

// TestDownLeavesNoTrace removes the shared lab (the tests after it, if
// any, get a new one) and checks that nothing of it is left: namespaces,
// mounts, processes, cgroups, sysctls, directories.
func TestDownLeavesNoTrace(t *testing.T) {
	l := SharedLab(t)
	s := l.State()
	t0 := time.Now()
	if err := shutdownShared(); err != nil {
		t.Fatal(err)
	}
	t.Logf("down took %v", time.Since(t0).Round(time.Millisecond))
	if left := Leftovers(&s); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	if err := DownDir(s.Dir, nil); err != nil {
		t.Errorf("second down: %v", err)
	}
}
