package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/lab/controlplane"
)

var (
	anetdOnce sync.Once
	anetdBin  string
	anetdErr  error
)

// anetdBinary is $ANET_BIN/anetd when ANET_BIN is set (make test), else a
// build of this package, once per test binary.
func anetdBinary(t *testing.T) string {
	t.Helper()
	anetdOnce.Do(func() {
		if d := os.Getenv("ANET_BIN"); d != "" {
			anetdBin = filepath.Join(d, "anetd")
			return
		}
		dir, err := os.MkdirTemp("", "anetd-bin-")
		if err != nil {
			anetdErr = err
			return
		}
		anetdBin = filepath.Join(dir, "anetd")
		if out, err := exec.Command("go", "build", "-o", anetdBin, ".").CombinedOutput(); err != nil {
			anetdErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if anetdErr != nil {
		t.Fatal(anetdErr)
	}
	return anetdBin
}

// syncBuffer is a log buffer safe to read while anetd writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// k8sNode is the test's node: one netns holding the control plane (on
// 127.0.0.1), an underlay veth with the node's InternalIP, a bpffs and
// anetd with --kubeconfig.
type k8sNode struct {
	t      *testing.T
	name   string
	dir    string
	netns  ns.NetNS
	cp     *controlplane.ControlPlane
	cs     *kubernetes.Clientset
	log    *syncBuffer
	anetd  *exec.Cmd
	exited chan struct{}
	socket string
	bin    string
	bpf    string
	args   []string // more flags for anetd
	cgroup string   // --cgroup-root
}

func (n *k8sNode) sh(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.netns.Path(), "--"}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func newK8sNode(t *testing.T) *k8sNode {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, bpffs, eBPF, a control plane); CI runs as root")
	}
	k8sBin, err := controlplane.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := anetdBinary(t)
	n := &k8sNode{t: t, name: "node-a", log: &syncBuffer{}}
	n.dir, err = os.MkdirTemp("", "anetd-k8s-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(n.dir) })
	n.netns, err = testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.netns.Close(); _ = testutils.UnmountNS(n.netns) })
	n.sh("ip", "link", "set", "lo", "up")
	// The node's underlay: its InternalIP on a link whose /24 holds the
	// other (imaginary) nodes' addresses.
	n.sh("ip", "link", "add", "fab0", "type", "veth", "peer", "name", "fab1")
	n.sh("ip", "addr", "add", "10.77.0.1/24", "dev", "fab0")
	n.sh("ip", "link", "set", "fab0", "up")
	n.sh("ip", "link", "set", "fab1", "up")
	// The socket hooks' cgroup v2 subtree, in a hierarchy mounted here
	// (never the machine's root: the hooks apply to all below it).
	cg2 := filepath.Join(n.dir, "cgroup2")
	if err := os.MkdirAll(cg2, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", cg2, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mounting cgroup2: %v", err)
	}
	n.cgroup = filepath.Join(cg2, "anetd-k8s-"+filepath.Base(n.dir))
	if err := os.Mkdir(n.cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.Remove(n.cgroup)
		_ = unix.Unmount(cg2, unix.MNT_DETACH)
	})
	bpf := filepath.Join(n.dir, "bpf")
	if err := os.MkdirAll(bpf, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpf, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpf, unix.MNT_DETACH) })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	n.cp, err = controlplane.Start(ctx, controlplane.Config{
		NetnsPath: n.netns.Path(), Address: "127.0.0.1", Dir: filepath.Join(n.dir, "cp"), BinDir: k8sBin,
		NodeNames: []string{n.name},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.cp.Stop() })
	t.Logf("control plane up in %s", time.Since(t0).Round(time.Millisecond))
	rc, err := clientcmd.BuildConfigFromFlags("", n.cp.AdminKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Dial = n.cp.Dial
	rc.Timeout = 10 * time.Second
	if n.cs, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}

	n.socket = filepath.Join(n.dir, "run", "anetd.sock")
	n.bin, n.bpf = bin, bpf
	n.startAnetd()
	t.Cleanup(func() {
		n.stopAnetd()
		if t.Failed() || os.Getenv("ANET_TEST_LOGS") != "" {
			t.Logf("anetd log:\n%s", n.log.String())
		}
	})
	return n
}

// startAnetd starts anetd in the node netns with --kubeconfig.
func (n *k8sNode) startAnetd() {
	n.t.Helper()
	args := []string{"--net=" + n.netns.Path(), "--", n.bin,
		"--kubeconfig", n.cp.AdminKubeconfig, "--node-name", n.name,
		"--bpf-root", n.bpf, "--state-dir", filepath.Join(n.dir, "state"), "--socket", n.socket,
		"--health-addr", "127.0.0.1:9876", "--endpoint-gc-grace", "3s", "--log-level", "debug",
		"--cgroup-root", n.cgroup}
	n.anetd = exec.Command("nsenter", append(args, n.args...)...)
	// iptables-legacy (anetd's look for a kube-proxy's rules) locks
	// /run/xtables.lock, a file of the machine, unless told otherwise.
	n.anetd.Env = append(os.Environ(), "XTABLES_LOCKFILE="+filepath.Join(n.dir, "xtables.lock"))
	n.anetd.Stdout, n.anetd.Stderr = n.log, n.log
	if err := n.anetd.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan struct{})
	n.exited = exited
	cmd := n.anetd
	go func() { _ = cmd.Wait(); close(exited) }()
}

func (n *k8sNode) stopAnetd() { n.signalAnetd(syscall.SIGTERM) }

func (n *k8sNode) signalAnetd(sig syscall.Signal) {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.anetd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		_ = n.anetd.Process.Kill()
		<-n.exited
	}
}

// eventually polls f until it returns nil or the timeout passes.
func (n *k8sNode) eventually(timeout time.Duration, what string, f func() error) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		select {
		case <-n.exited:
			n.t.Fatalf("%s: anetd exited:\n%s", what, n.log.String())
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: not after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// health GETs anetd's /healthz or /readyz from inside the node netns.
func (n *k8sNode) health(path string) (int, string, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: controlplane.DialIn(n.netns.Path()), DisableKeepAlives: true,
	}}
	resp, err := hc.Get("http://127.0.0.1:9876" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (n *k8sNode) mustHealth(path string, want int) {
	n.t.Helper()
	code, body, err := n.health(path)
	if err != nil || code != want {
		n.t.Fatalf("%s = %d %q %v, want %d", path, code, body, err, want)
	}
}

func (n *k8sNode) createNode(ctx context.Context, name, internalIP string) {
	n.t.Helper()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: internalIP},
			{Type: corev1.NodeHostName, Address: name},
		}},
	}
	if _, err := n.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
}

func (n *k8sNode) podCIDR(ctx context.Context, name string) string {
	n.t.Helper()
	var cidr string
	n.eventually(60*time.Second, "podCIDR of "+name, func() error {
		node, err := n.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(node.Spec.PodCIDRs) == 0 {
			return fmt.Errorf("no podCIDRs yet")
		}
		cidr = node.Spec.PodCIDRs[0]
		return nil
	})
	return cidr
}

func (n *k8sNode) routes() string {
	return n.sh("ip", "-4", "route", "show", "proto", "199")
}

// fakeEndpoint registers an endpoint through the socket API as anet-cni
// would, over a real veth pair in the node netns standing for the pod's.
func (n *k8sNode) fakeEndpoint(ctx context.Context, id string, pod api.PodRef) api.Attachment {
	n.t.Helper()
	host, peer := "anetk"+id, "anetp"+id
	n.sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	var req api.EndpointRequest
	err := n.netns.Do(func(ns.NetNS) error {
		h, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		p, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		req.HostIfName, req.HostIfindex = host, uint32(h.Attrs().Index)
		req.HostMAC, req.PodMAC = h.Attrs().HardwareAddr.String(), p.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
	a := api.Attachment{ContainerID: "ctr-" + id, IfName: "eth0"}
	c := api.NewClient(n.socket)
	alloc, err := c.Allocate(ctx, api.AllocateRequest{Attachment: a, Pod: pod})
	if err != nil {
		n.t.Fatal(err)
	}
	req.Attachment, req.Pod, req.IP, req.Netns, req.AttachMode = a, pod, alloc.IP, "/proc/1/ns/net", "tcx"
	if err := c.PutEndpoint(ctx, req); err != nil {
		n.t.Fatal(err)
	}
	return a
}

func (n *k8sNode) hasEndpoint(ctx context.Context, a api.Attachment) bool {
	n.t.Helper()
	eps, err := api.NewClient(n.socket).ListEndpoints(ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, e := range eps {
		if e.Attachment == a {
			return true
		}
	}
	return false
}

// TestAnetdWithKubernetes runs the real anetd against a real control plane
// in its node's netns: pod CIDR from the Node, NetworkUnavailable=False,
// health endpoints, routes to other nodes, endpoint collection, and an
// API server outage.
func TestAnetdWithKubernetes(t *testing.T) {
	n := newK8sNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	step := time.Now()
	logStep := func(what string) {
		t.Logf("%-45s %s", what, time.Since(step).Round(time.Millisecond))
		step = time.Now()
	}

	// No Node object yet: anetd waits for it, alive but not ready.
	n.eventually(30*time.Second, "anetd waiting for its pod CIDR", func() error {
		if !strings.Contains(n.log.String(), "waiting for this node's pod CIDR") {
			return fmt.Errorf("log does not say it waits")
		}
		return nil
	})
	n.mustHealth("/healthz", 200)
	if code, body, err := n.health("/readyz"); err != nil || code != 503 || !strings.Contains(body, "pod CIDR") {
		t.Fatalf("readyz while waiting = %d %q %v", code, body, err)
	}
	logStep("anetd waits for the node")

	n.createNode(ctx, n.name, "10.77.0.1")
	cidr := n.podCIDR(ctx, n.name)
	n.eventually(60*time.Second, "anetd ready", func() error {
		code, body, err := n.health("/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	})
	logStep("node created, anetd ready")
	st, err := api.NewClient(n.socket).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PodCIDR != netip.MustParsePrefix(cidr) || !st.Ready {
		t.Fatalf("anetd status %+v; want ready with pod CIDR %s", st, cidr)
	}
	if got := strings.TrimSpace(n.sh("cat", "/proc/sys/net/ipv4/ip_forward")); got != "1" {
		t.Errorf("ip_forward = %s in the node netns", got)
	}
	n.eventually(30*time.Second, "NetworkUnavailable=False", func() error {
		node, err := n.cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				if c.Status == corev1.ConditionFalse && c.Reason == "AnetIsUp" {
					return nil
				}
				return fmt.Errorf("condition %+v", c)
			}
		}
		return fmt.Errorf("no NetworkUnavailable condition in %+v", node.Status.Conditions)
	})
	logStep("NetworkUnavailable=False")

	// Another node: a route to its pod CIDR via its InternalIP; gone with it.
	n.createNode(ctx, "node-b", "10.77.0.2")
	cidrB := n.podCIDR(ctx, "node-b")
	wantB := cidrB + " via 10.77.0.2"
	n.eventually(30*time.Second, "route to node-b", func() error {
		if r := n.routes(); !strings.Contains(r, wantB) {
			return fmt.Errorf("routes: %q", r)
		}
		return nil
	})
	if err := n.cs.CoreV1().Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually(30*time.Second, "route to node-b removed", func() error {
		if r := n.routes(); strings.Contains(r, cidrB) {
			return fmt.Errorf("routes: %q", r)
		}
		return nil
	})
	logStep("route to node-b added and removed")

	// Endpoints: one whose Pod exists on this node stays, one whose Pod
	// does not is collected after the grace period.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "keep", Namespace: "default", Labels: map[string]string{"app": "keep"}},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{
			{Name: "c", Image: "anet-testserver:latest", ImagePullPolicy: corev1.PullNever},
		}},
	}
	pod, err = n.cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A static pod's mirror: the runtime names the static pod by kubelet's
	// UID for it (its config hash), which only the mirror's
	// kubernetes.io/config.mirror annotation holds (issue 7, item 2).
	const staticHash = "5b0f3c8e9d6a4b7c8e1f2a3b4c5d6e7f"
	mirror := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "static-" + n.name, Namespace: "default",
			Annotations: map[string]string{corev1.MirrorPodAnnotationKey: staticHash, "kubernetes.io/config.hash": staticHash}},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{
			{Name: "c", Image: "anet-testserver:latest", ImagePullPolicy: corev1.PullNever},
		}},
	}
	if _, err := n.cs.CoreV1().Pods("default").Create(ctx, mirror, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	static := n.fakeEndpoint(ctx, "4", api.PodRef{Namespace: "default", Name: mirror.Name, UID: staticHash})
	keep := n.fakeEndpoint(ctx, "1", api.PodRef{Namespace: "default", Name: "keep", UID: string(pod.UID)})
	goneEP := n.fakeEndpoint(ctx, "2", api.PodRef{Namespace: "default", Name: "gone", UID: "9d1c1c2e-0000-4000-8000-000000000000"})
	noPod := n.fakeEndpoint(ctx, "3", api.PodRef{}) // cnitool-style: no pod named, never collected here
	if !n.hasEndpoint(ctx, goneEP) {
		t.Fatal("endpoint collected before its grace period")
	}
	n.eventually(30*time.Second, "endpoint of a missing pod collected", func() error {
		if n.hasEndpoint(ctx, goneEP) {
			return fmt.Errorf("still there")
		}
		return nil
	})
	if !n.hasEndpoint(ctx, keep) || !n.hasEndpoint(ctx, noPod) {
		t.Fatal("an endpoint whose pod exists (or that names none) was collected")
	}
	if !n.hasEndpoint(ctx, static) {
		t.Fatal("the endpoint of a static pod (matched through its mirror pod) was collected")
	}
	logStep("endpoint of a missing pod collected")

	// The endpoint record follows its pod's labels.
	labelsOf := func() map[string]string {
		ep, err := api.NewClient(n.socket).GetEndpoint(ctx, keep)
		if err != nil {
			t.Fatal(err)
		}
		return ep.Labels
	}
	n.eventually(30*time.Second, "pod labels on the endpoint", func() error {
		if l := labelsOf(); l["app"] != "keep" {
			return fmt.Errorf("labels %v", l)
		}
		return nil
	})
	patch := []byte(`{"metadata":{"labels":{"app":"kept","tier":"web"}}}`)
	if _, err := n.cs.CoreV1().Pods("default").Patch(ctx, "keep", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually(30*time.Second, "changed pod labels on the endpoint", func() error {
		if l := labelsOf(); l["app"] != "kept" || l["tier"] != "web" {
			return fmt.Errorf("labels %v", l)
		}
		return nil
	})
	logStep("endpoint follows its pod's labels")

	// The API server goes away: nothing changes, anetd stays ready.
	n.createNode(ctx, "node-c", "10.77.0.3")
	cidrC := n.podCIDR(ctx, "node-c")
	n.eventually(30*time.Second, "route to node-c", func() error {
		if r := n.routes(); !strings.Contains(r, cidrC+" via 10.77.0.3") {
			return fmt.Errorf("routes: %q", r)
		}
		return nil
	})
	before := n.routes()
	if err := n.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	logStep("API server stopped")
	time.Sleep(8 * time.Second) // beyond the GC grace and interval
	if after := n.routes(); after != before {
		t.Errorf("routes changed during the outage:\n%s\nthen:\n%s", before, after)
	}
	if !n.hasEndpoint(ctx, keep) {
		t.Error("endpoint collected during the outage")
	}
	n.mustHealth("/readyz", 200)
	n.mustHealth("/healthz", 200)
	if !strings.Contains(n.log.String(), "API server unreachable; keeping the datapath") {
		t.Error("anetd did not log the outage")
	}
	if err := n.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	logStep("outage 1 over, API server back")

	// The same anetd catches up (its informers reconnect): a node deleted
	// after the outage loses its route.
	if err := n.cs.CoreV1().Nodes().Delete(ctx, "node-c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually(60*time.Second, "catching up after the outage", func() error {
		if r := n.routes(); strings.Contains(r, cidrC) {
			return fmt.Errorf("route to node-c still there: %q", r)
		}
		if !strings.Contains(n.log.String(), "API server reachable again") {
			return fmt.Errorf("anetd did not log the end of the outage")
		}
		return nil
	})
	n.mustHealth("/readyz", 200)
	logStep("caught up")

	// Outage 2: anetd restarted while the API is away starts from the pod
	// CIDR it learnt before (CNI keeps working); routes and endpoints stay.
	n.createNode(ctx, "node-d", "10.77.0.4")
	cidrD := n.podCIDR(ctx, "node-d")
	n.eventually(30*time.Second, "route to node-d", func() error {
		if r := n.routes(); !strings.Contains(r, cidrD+" via 10.77.0.4") {
			return fmt.Errorf("routes: %q", r)
		}
		return nil
	})
	before = n.routes()
	if err := n.cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	n.signalAnetd(syscall.SIGKILL)
	n.startAnetd()
	n.eventually(40*time.Second, "anetd serving CNI during the outage", func() error {
		st, err := api.NewClient(n.socket).Status(ctx)
		if err == nil && (!st.Ready || st.PodCIDR.String() != cidr) {
			err = fmt.Errorf("status %+v", st)
		}
		return err
	})
	if after := n.routes(); after != before {
		t.Errorf("routes changed by a restart during the outage:\n%s\nthen:\n%s", before, after)
	}
	if !n.hasEndpoint(ctx, keep) || !n.hasEndpoint(ctx, noPod) {
		t.Error("endpoint lost by a restart during the outage")
	}
	n.mustHealth("/healthz", 200)
	if code, _, _ := n.health("/readyz"); code != 503 {
		t.Errorf("readyz of an anetd that never synced = %d, want 503", code)
	}
	logStep("anetd restarted during outage 2")
	if err := n.cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.cs.CoreV1().Pods("default").Delete(ctx, "keep", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if err := n.cs.CoreV1().Nodes().Delete(ctx, "node-d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.eventually(60*time.Second, "catching up after outage 2", func() error {
		if r := n.routes(); strings.Contains(r, cidrD) {
			return fmt.Errorf("route to node-d still there: %q", r)
		}
		if n.hasEndpoint(ctx, keep) {
			return fmt.Errorf("endpoint of deleted pod keep still there")
		}
		if code, body, err := n.health("/readyz"); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %s %v", code, body, err)
		}
		return nil
	})
	logStep("caught up after outage 2")
	if !n.hasEndpoint(ctx, noPod) {
		t.Error("the endpoint naming no pod was collected")
	}

	// A clean stop; the node's routes and datapath stay.
	n.stopAnetd()
	if n.anetd.ProcessState.ExitCode() != 0 {
		t.Errorf("anetd exit code %d", n.anetd.ProcessState.ExitCode())
	}
	for _, a := range []string{"ready", "route to node installed", "collecting endpoint whose pod is gone", "IP forwarding"} {
		if !strings.Contains(n.log.String(), a) {
			t.Errorf("anetd log lacks %q", a)
		}
	}
}
