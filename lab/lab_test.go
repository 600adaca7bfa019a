//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab/testnode"
)

func TestMain(m *testing.M) {
	for _, p := range machinePaths() {
		if _, err := os.Lstat(p); err != nil {
			missingBefore = append(missingBefore, p)
		}
	}
	// A short collection grace: the endpoint collector acts within the
	// tests, so a test that a pod keeps its endpoint (static pods) or that
	// the runtime's DEL removed it (TestDeployment) means something.
	// The cluster DNS as in any cluster (TestClusterDNS; tests reaching
	// Services by name).
	os.Exit(RunShared(m, Options{Nodes: 2, EndpointGCGrace: gcGrace, DNS: true}))
}

// gcGrace is the shared lab's anetd --endpoint-gc-grace.
const gcGrace = 5 * time.Second

// machinePaths are paths of the machine that a lab could make by mistake:
// the targets of the nodes' bind mounts, and util-linux's utab directory
// (which mount(8) makes unless told -n).
func machinePaths() []string {
	return append(slices.Sorted(maps.Keys(NodeBindTargets)), "/run/mount")
}

// missingBefore are the machinePaths that the machine lacked before the
// tests: they must not appear, neither while a lab runs nor after.
var missingBefore []string

func checkMachinePaths(t *testing.T, when string) {
	t.Helper()
	for _, p := range missingBefore {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s: %s exists on the machine, which had none before the lab", when, p)
		}
	}
}

// TestNodeDirsStayInNodes checks that the paths kubelet, containerd and
// libcni hard-code are each node's own directories inside the node's mount
// namespace, and that the lab made none of them on the machine (issue 7,
// item 0: a /var/lib/cni made on the machine as a mount point caught
// another test's libcni cache and could not be removed).
func TestNodeDirsStayInNodes(t *testing.T) {
	l := SharedLab(t)
	checkMachinePaths(t, "lab up")
	for _, n := range l.Nodes {
		for target, dir := range NodeBindTargets {
			probe := filepath.Join(target, ".anet-lab-probe-"+n.Name)
			cmd, err := l.NodeCmd(n.Name, "sh", "-c", "echo "+n.Name+" > "+probe)
			if err != nil {
				t.Fatal(err)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: writing %s: %v: %s", n.Name, probe, err, out)
				continue
			}
			own := filepath.Join(n.Dir, dir, filepath.Base(probe))
			if b, err := os.ReadFile(own); err != nil || strings.TrimSpace(string(b)) != n.Name {
				t.Errorf("%s: %s written in the node is not its %s: %q, %v", n.Name, probe, own, b, err)
			}
			_ = os.Remove(own)
		}
	}
	checkMachinePaths(t, "lab up, files written in the nodes")
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

// nodeHoldings lists what a node holds of pods: anet veths, link pins,
// endpoints and allocations in anetd, entries of the pinned maps (as
// "map NAME" with a count).
func nodeHoldings(n *NodeRec) (items map[string]int, errs []string) {
	items = map[string]int{}
	links, err := run("ip", "-n", n.Netns, "-o", "link", "show")
	if err != nil {
		return nil, []string{err.Error()}
	}
	for _, line := range strings.Split(links, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "anet") {
			items["link "+strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")] = 1
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := api.NewClient(n.Socket).Status(ctx)
	if err != nil {
		errs = append(errs, "anetd: "+err.Error())
	} else {
		items["anetd endpoints"], items["anetd allocations"] = st.Endpoints, st.Allocated
	}
	pins, err := os.ReadDir(filepath.Join(n.BPFRoot, "links"))
	if err != nil && !os.IsNotExist(err) {
		errs = append(errs, "link pins: "+err.Error())
	}
	for _, p := range pins {
		items["link pin "+p.Name()] = 1
	}
	entries, err := testnode.MapEntries(n.BPFRoot)
	if err != nil {
		errs = append(errs, err.Error())
	}
	for name, c := range entries {
		items["map "+name] = c
	}
	return items, errs
}

// nodeLeftovers lists what a node holds of pods beyond what it held in
// base (nodeHoldings before the test: the cluster DNS's pod, say).
func nodeLeftovers(n *NodeRec, base map[string]int) []string {
	items, out := nodeHoldings(n)
	for _, k := range slices.Sorted(maps.Keys(items)) {
		if items[k] > base[k] {
			out = append(out, fmt.Sprintf("%s: %d (%d before)", k, items[k], base[k]))
		}
	}
	return out
}

// holdingsOf is nodeHoldings of every node, failing the test on an error.
func holdingsOf(t *testing.T, l *Lab) map[string]map[string]int {
	t.Helper()
	out := map[string]map[string]int{}
	for i := range l.Nodes {
		items, errs := nodeHoldings(&l.Nodes[i])
		if len(errs) > 0 {
			t.Fatalf("%s: %v", l.Nodes[i].Name, errs)
		}
		out[l.Nodes[i].Name] = items
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
	base := holdingsOf(t, l)
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

	// Across nodes: anetd routes the other nodes' pod CIDRs via their
	// underlay addresses, from the Node objects.
	out, err = connect(l, client.Name, remote.IP+":8080")
	if err != nil || !strings.Contains(out, `"pod":"`+remote.Name+`"`) {
		t.Errorf("cross node: %s (%s) -> %s (%s, %s): %v: %s", client.Name, client.Node, remote.Name, remote.Node, remote.IP, err, out)
	}
	if !strings.Contains(out, `"client":"`+client.IP+`:`) {
		t.Errorf("cross node: the server saw %s, not the client's own address %s", out, client.IP)
	}

	// Delete: kubelet stops the sandboxes, containerd runs anet-cni DEL,
	// and nothing of the pods is left on the nodes. The sandboxes' IDs
	// first, to tell afterwards from anetd's log that DEL removed each
	// endpoint (the endpoint collector would also remove them, within its
	// short grace, once the pods are gone from the API).
	sandboxes := map[string][]string{} // node -> container IDs
	for _, p := range ps {
		n, _ := l.Node(p.Node)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		eps, err := api.NewClient(n.Socket).ListEndpoints(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ep := range eps {
			if ep.Pod.Namespace == "default" && ep.Pod.Name == p.Name {
				sandboxes[p.Node] = append(sandboxes[p.Node], ep.ContainerID)
				found = true
			}
		}
		if !found {
			t.Errorf("no endpoint in %s's anetd for pod %s", p.Node, p.Name)
		}
	}
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
			if left := nodeLeftovers(n, base[n.Name]); len(left) > 0 {
				return fmt.Errorf("%v", left)
			}
			return nil
		}); err != nil {
			t.Errorf("%s after delete: %v", n.Name, err)
		}
		for _, id := range sandboxes[n.Name] {
			if how, line := endpointRemoval(n, id); how != "DEL" {
				t.Errorf("%s: the endpoint of sandbox %s was not removed by the runtime's DEL (%q): %s", n.Name, id, how, line)
			}
		}
	}
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

// tcpStream is a TCP connection to a pod's echo port (anet-testserver,
// :8081), opened from inside another pod's network namespace, that is
// written to every few milliseconds and read back for as long as it runs.
// A socket stays in the network namespace it was made in, so only the
// dial runs in the pod's namespace; no traffic leaves the machine's own.
type tcpStream struct {
	name    string
	conn    net.Conn
	echoed  atomic.Int64 // bytes echoed back, checked
	lastAt  atomic.Int64 // unix nanoseconds of the last echo read
	maxGap  atomic.Int64 // longest wait between two echo reads, in nanoseconds
	done    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	err     error
	stopped bool
}

func startStream(t *testing.T, l *Lab, from, to pod) *tcpStream {
	t.Helper()
	nsPath, err := l.PodNetns("default", from.Name)
	if err != nil {
		t.Fatal(err)
	}
	podNS, err := ns.GetNS(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	var conn net.Conn
	if err := podNS.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", net.JoinHostPort(to.IP, "8081"), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("TCP stream %s (%s) -> %s (%s) %s:8081: %v", from.Name, from.Node, to.Name, to.Node, to.IP, err)
	}
	s := &tcpStream{
		name: fmt.Sprintf("%s (%s) -> %s (%s)", from.Name, from.Node, to.Name, to.Node),
		conn: conn, done: make(chan struct{}),
	}
	s.lastAt.Store(time.Now().UnixNano())
	s.wg.Add(2)
	go s.write()
	go s.read()
	t.Cleanup(s.stop)
	return s
}

func (s *tcpStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && !s.stopped {
		s.err = err
	}
}

// write sends 64 bytes of a running counter every 5 ms; a write stuck
// for 10 s is an error.
func (s *tcpStream) write() {
	defer s.wg.Done()
	var seq byte
	buf := make([]byte, 64)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-tick.C:
		}
		for i := range buf {
			buf[i] = seq
			seq++
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.conn.Write(buf); err != nil {
			s.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

// read checks that the echo is the counter, in order; no echo for 10 s is
// an error.
func (s *tcpStream) read() {
	defer s.wg.Done()
	var seq byte
	buf := make([]byte, 4096)
	for {
		_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := s.conn.Read(buf)
		now := time.Now().UnixNano()
		if n > 0 {
			if gap := now - s.lastAt.Swap(now); gap > s.maxGap.Load() {
				s.maxGap.Store(gap)
			}
		}
		for _, b := range buf[:n] {
			if b != seq {
				s.fail(fmt.Errorf("echo byte %d is %d, want %d", s.echoed.Load(), b, seq))
				return
			}
			seq++
			s.echoed.Add(1)
		}
		if err != nil {
			s.fail(fmt.Errorf("read after %d bytes: %w", s.echoed.Load(), err))
			return
		}
	}
}

// Err is the stream's first error (nil while it flows).
func (s *tcpStream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// stop closes the connection; errors from then on are not the stream's.
func (s *tcpStream) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.mu.Unlock()
	close(s.done)
	_ = s.conn.Close()
	s.wg.Wait()
}

// flowing fails the test unless the stream has no error and echoes more
// within a second from now.
func (s *tcpStream) flowing(t *testing.T, when string) {
	t.Helper()
	c0 := s.echoed.Load()
	time.Sleep(time.Second)
	c1 := s.echoed.Load()
	if err := s.Err(); err != nil {
		t.Errorf("%s: TCP stream %s: %v", when, s.name, err)
	} else if c1 <= c0 {
		t.Errorf("%s: TCP stream %s stalled: %d bytes echoed a second ago, %d now", when, s.name, c0, c1)
	} else {
		t.Logf("%s: TCP stream %s: %d bytes echoed (+%d in 1 s)", when, s.name, c1, c1-c0)
	}
}

// TestRestarts restarts node components under running pods: anetd killed
// with SIGKILL and started again, kubelet stopped and started again. A TCP
// stream across the nodes keeps flowing through both restarts, the pods
// keep their addresses, nothing is allocated twice, and they still reach
// each other.
func TestRestarts(t *testing.T) {
	l := SharedLab(t)
	base := holdingsOf(t, l)
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
	probe("before restarts")

	// The stream: from the pod on the node whose kubelet restarts to the
	// pod on the node whose anetd is killed.
	n1, n2 := before[0].Node, before[1].Node
	stream := startStream(t, l, before[1], before[0])
	stream.flowing(t, "before restarts")

	ctx := context.Background()
	t0 := time.Now()
	if err := l.Kill(n1+"/anetd", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	stream.flowing(t, "anetd on "+n1+" killed (SIGKILL)")
	stream.flowing(t, "anetd on "+n1+" still down")
	if err := l.Start(ctx, n1+"/anetd"); err != nil {
		t.Fatal(err)
	}
	if !l.Running(n1 + "/anetd") {
		t.Fatalf("%s/anetd not running after restart", n1)
	}
	t.Logf("anetd on %s down and ready again in %v", n1, time.Since(t0).Round(time.Millisecond))
	stream.flowing(t, "anetd on "+n1+" started again")
	probe("after anetd SIGKILL and start on " + n1)

	if err := l.Kill(n2+"/kubelet", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stream.flowing(t, "kubelet on "+n2+" stopped")
	if err := l.Start(ctx, n2+"/kubelet"); err != nil {
		t.Fatal(err)
	}
	stream.flowing(t, "kubelet on "+n2+" started again")
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
	// One allocation per pod on each node (beyond those of the pods that
	// were there before, the cluster DNS's): the kubelet restart did not
	// wire a sandbox twice.
	for _, p := range after {
		n, _ := l.Node(p.Node)
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := api.NewClient(n.Socket).Status(cctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		b := base[p.Node]
		if st.Allocated != b["anetd allocations"]+1 || st.Endpoints != b["anetd endpoints"]+1 {
			t.Errorf("%s: %d allocation(s), %d endpoint(s); want 1 each beyond the %d and %d before",
				p.Node, st.Allocated, st.Endpoints, b["anetd allocations"], b["anetd endpoints"])
		}
	}
	probe("after kubelet restart on " + n2)
	stream.flowing(t, "after the restarts")
	stream.stop()
	if err := stream.Err(); err != nil {
		t.Errorf("TCP stream %s: %v", stream.name, err)
	}
	gap := time.Duration(stream.maxGap.Load())
	t.Logf("TCP stream %s: %d bytes echoed, longest wait for an echo %v", stream.name, stream.echoed.Load(), gap.Round(time.Millisecond))
	if gap > 2*time.Second {
		t.Errorf("TCP stream %s: stalled for %v at a time", stream.name, gap.Round(time.Millisecond))
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
	if ps[0].Node == ps[1].Node {
		t.Fatalf("both pods on %s", ps[0].Node)
	}
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
			if a.Name != b.Name {
				paths = append(paths, path{a, b})
			}
		}
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
	probe("API server up")
	// A TCP stream across the nodes keeps flowing while the API is gone.
	stream := startStream(t, l, ps[0], ps[1])
	stream.flowing(t, "API server up")
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
		time.Sleep(9 * time.Second)
		stream.flowing(t, fmt.Sprintf("API server down for %ds", (i+1)*10))
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
	stream.flowing(t, "API server back")
	stream.stop()
	if err := stream.Err(); err != nil {
		t.Errorf("TCP stream %s: %v", stream.name, err)
	}
	if gap := time.Duration(stream.maxGap.Load()); gap > 2*time.Second {
		t.Errorf("TCP stream %s: stalled for %v at a time", stream.name, gap.Round(time.Millisecond))
	}
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

// TestSecondLabSameName brings a second lab up with the shared lab's name
// (issue 7, item 11): it must fail, remove only what it made, and leave the
// first lab's namespaces, processes, cgroups and mounts in place and the
// lab working.
func TestSecondLabSameName(t *testing.T) {
	l := SharedLab(t)
	s := l.State()
	dir := filepath.Join(t.TempDir(), "second")
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	second, err := Up(ctx, Options{Nodes: 1, Dir: dir, Name: l.Name, AnetBinDir: s.AnetBinDir,
		KubernetesBinDir: s.KubernetesBinDir, Progress: &progress})
	if err == nil {
		_ = second.Down()
		t.Fatalf("a second lab named %q came up", l.Name)
	}
	t.Logf("second up failed as it should: %v\n%s", err, progress.String())
	if !strings.Contains(err.Error(), "exists already") {
		t.Errorf("the error does not say that the name is in use: %v", err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the failed lab left its directory %s", dir)
	}

	// The first lab: everything it recorded is still there.
	for _, n := range s.Netns {
		if _, err := os.Stat(l.netnsPath(n)); err != nil {
			t.Errorf("first lab's network namespace %s: %v", n, err)
		}
	}
	for _, p := range s.Procs {
		if !p.alive() {
			t.Errorf("first lab's %s (pid %d) is gone", p.Name, p.PID)
		}
	}
	for _, c := range s.Cgroups {
		if _, err := os.Stat(c); err != nil {
			t.Errorf("first lab's cgroup %s: %v", c, err)
		}
	}
	for _, m := range s.Mounts {
		if !isMountPoint(m) {
			t.Errorf("first lab's mount %s is gone", m)
		}
	}
	// And it works: the API answers, the nodes are Ready, each anetd is.
	// (Generous: an earlier test of the package restarts the API server,
	// and on a loaded machine kubelet's next status can take a while.)
	if err := l.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		t.Error(err)
	}
	for _, n := range l.Nodes {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := api.NewClient(n.Socket).Status(cctx)
		ccancel()
		if err != nil || !st.Ready {
			t.Errorf("%s: anetd after the second up: %+v, %v", n.Name, st, err)
		}
	}
}

// TestKubectlCacheIsTheLabs checks that the lab's kubectl keeps its
// discovery cache in the lab's directory, not in the user's ~/.kube/cache,
// which every lab (all at 10.77.0.2:6443) would share (issue 7, item 12).
func TestKubectlCacheIsTheLabs(t *testing.T) {
	l := SharedLab(t)
	home := t.TempDir()
	cmd := l.KubectlCmd("get", "nodes")
	cmd.Env = append(os.Environ(), "HOME="+home)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl get nodes: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(home, ".kube")); err == nil {
		t.Errorf("kubectl wrote to $HOME/.kube (%s)", filepath.Join(home, ".kube"))
	}
	found := false
	_ = filepath.WalkDir(filepath.Join(l.KubectlCacheDir(), "discovery"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			found = true
		}
		return nil
	})
	if !found {
		t.Errorf("no discovery cache under %s", l.KubectlCacheDir())
	}
}

const staticManifest = `apiVersion: v1
kind: Pod
metadata:
  name: static-web
  namespace: default
  labels: {app: static-web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: anet-testserver:latest
    imagePullPolicy: Never
    env:
    - name: POD_NAME
      value: static-web
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`

// TestStaticPod runs a static pod with pod networking (a manifest in
// node1's staticPodPath): the runtime names it by the UID kubelet gave it,
// not its mirror pod's, and it must keep its endpoint and address for
// longer than anetd's collection grace and keep answering (issue 7,
// item 2). Removing the manifest removes its endpoint through the
// runtime's DEL.
func TestStaticPod(t *testing.T) {
	l := SharedLab(t)
	n := &l.Nodes[0]
	other := &l.Nodes[1]
	manifest := filepath.Join(n.StaticPodDir, "static-web.yaml")
	if err := os.WriteFile(manifest, []byte(staticManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(manifest) })
	mirrorName := "static-web-" + n.Name

	type mirror struct {
		UID, Hash, IP string
		Ready         bool
	}
	getMirror := func() (mirror, error) {
		out, err := l.Kubectl("get", "pod", mirrorName, "-o", "json")
		if err != nil {
			return mirror{}, err
		}
		var p struct {
			Metadata struct {
				UID         string            `json:"uid"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
			Status struct {
				PodIP      string `json:"podIP"`
				Conditions []struct{ Type, Status string }
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &p); err != nil {
			return mirror{}, err
		}
		m := mirror{UID: p.Metadata.UID, Hash: p.Metadata.Annotations["kubernetes.io/config.mirror"], IP: p.Status.PodIP}
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				m.Ready = true
			}
		}
		return m, nil
	}
	var m mirror
	if err := waitFor(context.Background(), 2*time.Minute, func() error {
		var err error
		if m, err = getMirror(); err != nil {
			return err
		}
		if !m.Ready || m.IP == "" {
			return fmt.Errorf("mirror pod %+v not Ready", m)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v%s", err, l.nodeLogTails([]string{n.Name}))
	}
	t.Logf("static pod %s: mirror %+v", mirrorName, m)
	if m.Hash == "" || m.Hash == m.UID {
		t.Fatalf("mirror pod %+v: want a config.mirror hash that differs from its UID", m)
	}

	endpoint := func() (api.Endpoint, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		eps, err := api.NewClient(n.Socket).ListEndpoints(ctx)
		if err != nil {
			return api.Endpoint{}, err
		}
		for _, ep := range eps {
			if ep.Pod.Namespace == "default" && ep.Pod.Name == mirrorName {
				return ep, nil
			}
		}
		return api.Endpoint{}, fmt.Errorf("no endpoint for %s in %d endpoint(s)", mirrorName, len(eps))
	}
	ep, err := endpoint()
	if err != nil {
		t.Fatal(err)
	}
	// The scenario of the defect: the runtime gave the static pod's UID
	// (the hash), not the mirror pod's.
	if ep.Pod.UID != m.Hash {
		t.Errorf("endpoint names pod UID %q; kubelet's static pod UID is %q (mirror %q)", ep.Pod.UID, m.Hash, m.UID)
	}
	if ep.IP.String() != m.IP {
		t.Errorf("endpoint address %s, pod address %s", ep.IP, m.IP)
	}
	probeBin := filepath.Join(l.opts.ImageDir, "bin", "anet-testserver")
	probe := func(when string) {
		t.Helper()
		out, err := exec.Command("nsenter", "--net="+l.netnsPath(other.Netns), "--", probeBin, "connect",
			"--protocol", "http", "--address", m.IP+":8080", "--timeout", "3s").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"pod":"static-web"`) {
			t.Errorf("%s: %s -> static pod %s: %v: %s", when, other.Name, m.IP, err, out)
		}
	}
	probe("static pod Ready")

	// Past the grace period (the endpoint is older than it by then) and a
	// few collection rounds.
	wait := time.Until(ep.Created.Add(gcGrace)) + 4*gcGrace
	t.Logf("waiting %v: past the collection grace (%v) of an endpoint created at %s", wait.Round(time.Second), gcGrace, ep.Created.Format(time.RFC3339))
	time.Sleep(wait)
	after, err := endpoint()
	if err != nil {
		t.Fatalf("after %v: %v\n%s", wait, err, tail(filepath.Join(n.Dir, "logs", "anetd.log"), 20))
	}
	if after.ContainerID != ep.ContainerID || after.IP != ep.IP || !after.Created.Equal(ep.Created) {
		t.Errorf("endpoint changed: %+v, then %+v", ep.Attachment, after.Attachment)
	}
	if how, line := endpointRemoval(n, ep.ContainerID); how != "" {
		t.Errorf("anetd removed the static pod's endpoint (%s): %s", how, line)
	}
	if m2, err := getMirror(); err != nil || m2.IP != m.IP {
		t.Errorf("mirror pod after the wait: %+v, %v", m2, err)
	}
	probe(fmt.Sprintf("%v after the endpoint was made", time.Since(ep.Created).Round(time.Second)))

	// The manifest goes: kubelet stops the pod, the runtime's DEL removes
	// the endpoint.
	if err := os.Remove(manifest); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(context.Background(), time.Minute, func() error {
		if _, err := endpoint(); err == nil {
			return fmt.Errorf("endpoint of %s still there", mirrorName)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if how, line := endpointRemoval(n, ep.ContainerID); how != "DEL" {
		t.Errorf("the static pod's endpoint was not removed by the runtime's DEL (%q): %s", how, line)
	}
	_ = waitFor(context.Background(), time.Minute, func() error {
		if _, err := getMirror(); err == nil {
			return fmt.Errorf("mirror pod still there")
		}
		return nil
	})
}

// endpointRemoval tells from a node's anetd log how the endpoint of a
// sandbox was removed: "collected" (the endpoint collector judged its pod
// gone), "DEL" (deleted through the API, which only anet-cni's DEL calls
// in a lab), or "" (not removed); with the log line that says so.
func endpointRemoval(n *NodeRec, containerID string) (how, line string) {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "logs", "anetd.log"))
	id := "containerID=" + containerID
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); !slices.Contains(f, id) {
			continue
		}
		switch {
		case strings.Contains(l, `msg="collecting endpoint whose pod is gone"`):
			return "collected", l
		case strings.Contains(l, `msg="endpoint deleted"`):
			how, line = "DEL", l
		}
	}
	return how, line
}

// TestLeftoversCannotPassBlind: a state that records no lab (read with a
// renamed layout, say) is not a clean machine.
func TestLeftoversCannotPassBlind(t *testing.T) {
	if left := Leftovers(&State{}); len(left) == 0 {
		t.Error("Leftovers of an empty state found nothing to complain about")
	}
}

// TestDownLeavesNoTrace removes the shared lab (the tests after it, if
// any, get a new one) and checks that nothing of it is left: namespaces,
// mounts, processes, cgroups, sysctls, directories.
func TestDownLeavesNoTrace(t *testing.T) {
	l := SharedLab(t)
	s := l.State()
	// The check below means something only if the state records each kind.
	if len(s.Netns) == 0 || len(s.Mounts) == 0 || len(s.Procs) == 0 || len(s.Cgroups) == 0 || len(s.Nodes) == 0 {
		t.Fatalf("the state records too little to check: %d netns, %d mounts, %d processes, %d cgroups, %d nodes",
			len(s.Netns), len(s.Mounts), len(s.Procs), len(s.Cgroups), len(s.Nodes))
	}
	t0 := time.Now()
	if err := shutdownShared(); err != nil {
		t.Fatal(err)
	}
	t.Logf("down took %v", time.Since(t0).Round(time.Millisecond))
	if left := Leftovers(&s); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	checkMachinePaths(t, "lab down")
	if err := DownDir(s.Dir, nil); err != nil {
		t.Errorf("second down: %v", err)
	}
}
