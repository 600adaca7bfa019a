//go:build linux

package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

// kubeletChains are the chains kubelet writes in every node: they stay.
var kubeletChains = []string{"KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-FIREWALL"}

func iptablesSave(t *testing.T, node string) string {
	t.Helper()
	l := labOf(t)
	cmd, err := l.NodeCmd(node, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: iptables-save: %v: %s", node, err, out)
	}
	return string(out)
}

// chains lists the chain names an iptables-save output declares.
func chains(save string) map[string]bool {
	c := map[string]bool{}
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, ":") {
			c[strings.Fields(line[1:])[0]] = true
		}
	}
	return c
}

// TestLegacyKubeProxyPurged: the real kube-proxy (iptables mode) programs
// a node and stops, leaving its rules, as on a node moving to anet; anetd
// started with --purge-kube-proxy-rules (as the lab starts it) removes
// exactly kube-proxy's chains, kubelet's stay, and the node's pods reach
// the same Services.
func TestLegacyKubeProxyPurged(t *testing.T) {
	l, echo, _ := lab.SharedEcho(t)
	const node = "node3"
	before := chains(iptablesSave(t, node))
	if err := l.StartKubeProxy(node, "iptables"); err != nil {
		t.Fatal(err)
	}
	if err := l.StopKubeProxy(node, false); err != nil {
		t.Fatal(err)
	}
	left := chains(iptablesSave(t, node))
	var kp []string
	for c := range left {
		if !before[c] && strings.HasPrefix(c, "KUBE-") {
			kp = append(kp, c)
		}
	}
	if !left["KUBE-SERVICES"] || len(kp) < 3 {
		t.Fatalf("kube-proxy left no rules to purge in %s: %v", node, kp)
	}
	t.Logf("kube-proxy left %d chains: %v", len(kp), kp)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.Restart(ctx, node+"/anetd", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		now := chains(iptablesSave(t, node))
		var still []string
		for _, c := range kp {
			if now[c] {
				still = append(still, c)
			}
		}
		if len(still) == 0 {
			for _, c := range kubeletChains {
				if before[c] && !now[c] {
					t.Errorf("kubelet's %s went with kube-proxy's chains", c)
				}
			}
			for c := range before {
				if !now[c] {
					t.Errorf("%s, there before kube-proxy, is gone", c)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after anetd's start, kube-proxy's chains remain in %s: %v", node, still)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The node's pods still reach Services, through anet.
	p := l.TestPodOn(t, "purge-client", node)
	l.WaitBackends(t, p, l.ClusterIP(t, "echo")+":80", lab.PodNames(echo), 30*time.Second)
}
