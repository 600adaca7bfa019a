//go:build linux

package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

// TestAnetdKilledKeepsServices: anetd SIGKILLed and restarted on the
// client's node while the client opens new connections to a ClusterIP in a
// loop and holds one long connection open: none fails (the hooks and maps
// are pinned; the restart moves the hooks to the new programs atomically).
func TestAnetdKilledKeepsServices(t *testing.T) {
	l, _, client := lab.SharedEcho(t)
	vip := l.ClusterIP(t, "echo")
	holdOut, loopOut := &strings.Builder{}, &strings.Builder{}
	hold := l.KubectlCmd("exec", client.Name, "--", "/anet-testserver", "connect", "--protocol", "tcp",
		"--address", vip+":81", "--hold", "12s", "--timeout", "2s")
	hold.Stdout, hold.Stderr = holdOut, holdOut
	// The loop runs in the client pod's network namespace and cgroup.
	loop, err := l.ExecCmd("default", client.Name, testserver(t), "connect", "--protocol", "tcp",
		"--address", vip+":81", "--repeat", "200", "--interval", "40ms", "--timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	loop.Stdout, loop.Stderr = loopOut, loopOut
	for _, c := range []interface{ Start() error }{hold, loop} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	holdDone, loopDone := make(chan error, 1), make(chan error, 1)
	go func() { holdDone <- hold.Wait() }()
	go func() { loopDone <- loop.Wait() }()

	time.Sleep(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Restart(ctx, client.Node+"/anetd", syscall.SIGKILL); err != nil {
		t.Fatalf("restarting %s's anetd: %v", client.Node, err)
	}
	t.Logf("%s's anetd killed and back", client.Node)
	if err := <-loopDone; err != nil {
		t.Errorf("new connections failed across the restart: %v: %s", err, loopOut)
	}
	if err := <-holdDone; err != nil {
		t.Errorf("the long connection broke across the restart: %v: %s", err, holdOut)
	}
	// And the restarted anetd serves changes again.
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=2"); err != nil {
		t.Fatal(err)
	}
	two := l.WaitPods(t, "app=echo", 2)
	l.WaitBackends(t, client.Name, vip+":80", lab.PodNames(two), 30*time.Second)
	if _, err := l.Kubectl("scale", "deployment", "echo", "--replicas=3"); err != nil {
		t.Fatal(err)
	}
}

// TestNoKubeProxy: no kube-proxy runs in the lab, and no node holds its
// chains or its nftables table; Services work all the same.
func TestNoKubeProxy(t *testing.T) {
	l, _, _ := lab.SharedEcho(t)
	for _, n := range l.Nodes {
		// Processes of this lab's node only (other labs may run one).
		pids, err := exec.Command("ip", "netns", "pids", n.Netns).Output()
		if err != nil {
			t.Fatalf("%s: ip netns pids: %v", n.Name, err)
		}
		for _, pid := range strings.Fields(string(pids)) {
			if comm, _ := os.ReadFile("/proc/" + pid + "/comm"); strings.TrimSpace(string(comm)) == "kube-proxy" {
				t.Errorf("%s: a kube-proxy runs (pid %s)", n.Name, pid)
			}
		}
		cmd, err := l.NodeCmd(n.Name, "iptables-save")
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: iptables-save: %v: %s", n.Name, err, out)
		}
		for _, chain := range []string{"KUBE-SERVICES", "KUBE-SVC-", "KUBE-NODEPORTS"} {
			if strings.Contains(string(out), ":"+chain) {
				t.Errorf("%s has a %s chain:\n%s", n.Name, chain, out)
			}
		}
		cmd, _ = l.NodeCmd(n.Name, "nft", "list", "tables")
		out, err = cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: nft list tables: %v: %s", n.Name, err, out)
		}
		if strings.Contains(string(out), "kube-proxy") {
			t.Errorf("%s has a kube-proxy nftables table: %s", n.Name, out)
		}
	}
}
