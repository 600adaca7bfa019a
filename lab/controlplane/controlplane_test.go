//go:build linux

package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces); CI runs as root")
	}
}

// newNetns makes a private netns with lo up, removed at cleanup.
func newNetns(t *testing.T) ns.NetNS {
	t.Helper()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Close()
		_ = testutils.UnmountNS(netns)
	})
	if err := netns.Do(func(ns.NetNS) error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return netns
}

// client builds a clientset from a kubeconfig, dialing inside the netns.
func client(t *testing.T, cp *ControlPlane, kubeconfig string) *kubernetes.Clientset {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.Dial = cp.Dial
	rc.Timeout = 10 * time.Second
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func readyz(ctx context.Context, cs *kubernetes.Clientset) error {
	_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	return err
}

// alive reports whether pid runs (a zombie waiting to be reaped does not).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestControlPlane starts a real control plane in a fresh netns, checks
// readiness, node CIDR allocation, node token auth, an apiserver restart,
// and that stopping leaves no process behind.
func TestControlPlane(t *testing.T) {
	needRoot(t)
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	netns := newNetns(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t0 := time.Now()
	cp, err := Start(ctx, Config{NetnsPath: netns.Path(), Address: "127.0.0.1", Dir: dir, BinDir: bin, NodeNames: []string{"n1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	t.Logf("control plane up in %s", time.Since(t0).Round(time.Millisecond))
	if cp.URL != "https://127.0.0.1:6443" {
		t.Errorf("URL = %s", cp.URL)
	}
	pids := cp.PIDs()
	for _, n := range startOrder {
		if pids[n] == 0 || !alive(pids[n]) {
			t.Fatalf("%s not running: %v", n, pids)
		}
		if _, err := os.Stat(cp.LogPath(n)); err != nil {
			t.Errorf("log of %s: %v", n, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "pids")); err != nil || !strings.Contains(string(b), "kube-apiserver") {
		t.Errorf("pids file: %v %q", err, b)
	}

	admin := client(t, cp, cp.AdminKubeconfig)
	if err := readyz(ctx, admin); err != nil {
		t.Fatalf("readyz: %v", err)
	}

	// kube-controller-manager gives a new node a /24 of the cluster CIDR.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var cidrs []string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n, err := admin.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
		if err == nil && len(n.Spec.PodCIDRs) > 0 {
			cidrs = n.Spec.PodCIDRs
			break
		}
	}
	if len(cidrs) != 1 || !strings.HasPrefix(cidrs[0], "10.244.") || !strings.HasSuffix(cidrs[0], "/24") {
		t.Fatalf("podCIDRs of n1 = %v; want a /24 of 10.244.0.0/16\n%s", cidrs, cp.tail(ControllerManager))
	}
	t.Logf("n1 got %v", cidrs)

	// The node's token authenticates as system:node:n1 in system:nodes.
	nodeCS := client(t, cp, cp.NodeKubeconfig("n1"))
	ssr, err := nodeCS.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review as n1: %v", err)
	}
	if u := ssr.Status.UserInfo; u.Username != "system:node:n1" || !contains(u.Groups, "system:nodes") {
		t.Errorf("node identity = %+v", u)
	}
	// ... and the Node authorizer judges it: a node may not delete nodes.
	if err := nodeCS.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node deleting a node: %v, want forbidden", err)
	}

	// The apiserver goes away and comes back; its state stays.
	apiPID := pids[APIServer]
	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if alive(apiPID) {
		t.Fatal("apiserver still running after StopAPIServer")
	}
	if _, ok := cp.PIDs()[APIServer]; ok {
		t.Error("PIDs still lists the stopped apiserver")
	}
	if err := readyz(ctx, admin); err == nil {
		t.Fatal("readyz answered with the apiserver stopped")
	}
	if err := cp.StopAPIServer(); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := readyz(ctx, admin); err != nil {
		t.Fatalf("readyz after restart: %v", err)
	}
	if _, err := admin.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{}); err != nil {
		t.Fatalf("node lost across the apiserver restart: %v", err)
	}

	// As after a crash of the lab: kill by the recorded PIDs, then Stop
	// (idempotent) finds nothing to do.
	pids = cp.PIDs()
	if err := StopDir(dir); err != nil {
		t.Fatal(err)
	}
	for n, pid := range pids {
		if alive(pid) {
			t.Errorf("%s (pid %d) survived StopDir", n, pid)
		}
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := StopDir(dir); err != nil {
		t.Fatal(err)
	}
}

// TestStartFailure: a component that cannot start is reported with its log,
// and what was started is stopped.
func TestStartFailure(t *testing.T) {
	needRoot(t)
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	netns := newNetns(t)
	dir := t.TempDir()
	// An address that is not in the netns: the apiserver cannot bind it.
	_, err = Start(context.Background(), Config{NetnsPath: netns.Path(), Address: "10.99.99.99", Dir: dir, BinDir: bin})
	if err == nil {
		t.Fatal("Start succeeded with an address the netns does not have")
	}
	if !strings.Contains(err.Error(), "kube-apiserver") || !strings.Contains(err.Error(), "log tail") {
		t.Errorf("error does not name the apiserver or show its log: %v", err)
	}
	t.Logf("error (as expected): %.300s", err)
	b, _ := os.ReadFile(filepath.Join(dir, "pids"))
	if strings.Contains(string(b), `"pid"`) {
		t.Errorf("pids file still lists processes after a failed start: %s", b)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
