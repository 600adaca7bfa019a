//go:build linux

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/lab"
)

// TestNodeAddRemove: a node added to the running lab (anet-lab node add)
// gets its pod CIDR routed by the other nodes' anetds, and its pods reach
// pods of the others and are reached by them, in both directions; removed
// (anet-lab node remove), it leaves the API, the other nodes drop their
// route to its pod CIDR, and nothing of it is left on the machine.
func TestNodeAddRemove(t *testing.T) {
	const ns = "nodes"
	l := lab.SharedLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	n, err := l.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			if err := l.RemoveNode(n.Name); err != nil {
				t.Errorf("removing %s: %v", n.Name, err)
			}
		}
	})
	t.Logf("%s added in %v", n.Name, time.Since(start).Round(time.Millisecond))
	l.ApplyForTest(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+ns+"}\n---\n"+
		netpolPodIn(ns, "new", n.Name, "")+netpolPodIn(ns, "one", lab.NodeName(1), "")+
		netpolPodIn(ns, "two", lab.NodeName(2), ""), "namespace", ns, "--wait=false")
	if out, err := l.Kubectl("wait", "-n", ns, "--for=condition=Ready", "pod", "--all", "--timeout=120s"); err != nil {
		t.Fatalf("pods not ready: %v: %s", err, out)
	}
	ip := func(pod string) string {
		out, err := l.Kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.status.podIP}")
		if err != nil || strings.TrimSpace(out) == "" {
			t.Fatalf("pod %s: %v %q", pod, err, out)
		}
		return strings.TrimSpace(out) + ":8081"
	}
	expectReachIn(t, l, ns, "to and from the added node", []reach{
		{"one", ip("new"), "node1 → the new node", true},
		{"two", ip("new"), "node2 → the new node", true},
		{"new", ip("one"), "the new node → node1", true},
		{"new", ip("two"), "the new node → node2", true},
	})
	cidr, err := l.PodCIDR(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	before := l.State()
	if err := l.RemoveNode(n.Name); err != nil {
		t.Fatal(err)
	}
	removed = true
	if left := lab.NodeLeftovers(&before, n.Name); len(left) > 0 {
		t.Errorf("left of %s after its removal: %v", n.Name, left)
	}
	if out, err := l.Kubectl("get", "node", n.Name); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("node %s still in the API: %v %s", n.Name, err, out)
	}
	// The other nodes' anetds drop their route to its pod CIDR.
	deadline := time.Now().Add(30 * time.Second)
	for _, other := range []string{lab.NodeName(1), lab.NodeName(2)} {
		for {
			cmd, err := l.NodeCmd(other, "ip", "-4", "route", "show", cidr)
			if err != nil {
				t.Fatal(err)
			}
			out, err := cmd.CombinedOutput()
			if err == nil && strings.TrimSpace(string(out)) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s still routes %s after %s left: %v %s", other, cidr, n.Name, err, out)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	if len(l.State().Nodes) != 3 {
		t.Errorf("the lab has %d nodes after the removal, want 3", len(l.State().Nodes))
	}
}
