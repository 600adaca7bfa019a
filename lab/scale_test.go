//go:build linux

package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScale brings a 10-node lab of its own up, runs 100 pods spread over
// the nodes, probes a few of them, and tears it down without a trace. It
// runs when ANET_LAB_SCALE=1 (make a target of it: it takes minutes and
// both cores).
func TestScale(t *testing.T) {
	if os.Getenv("ANET_LAB_SCALE") != "1" {
		t.Skip("set ANET_LAB_SCALE=1 to run the 10-node, 100-pod scale test")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const nodes, replicas = 10, 100
	dir, err := os.MkdirTemp("", "anet-lab-scale-")
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	name := "als-" + strings.TrimPrefix(filepath.Base(dir), "anet-lab-scale-")
	if len(name) > 16 {
		name = name[:16]
	}
	l, err := Up(ctx, Options{Nodes: nodes, Dir: dir, Name: name, Progress: &progress})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	s := l.State()
	downed := false
	defer func() {
		if !downed {
			_ = l.Down()
		}
	}()
	t.Logf("%d nodes Ready in %v", nodes, time.Since(t0).Round(time.Second))

	manifest := strings.Replace(strings.Replace(echoManifest, "replicas: 2", fmt.Sprintf("replicas: %d", replicas), 1), "name: echo\n", "name: scale\n", 1)
	manifest = strings.ReplaceAll(manifest, "app: echo", "app: scale")
	t1 := time.Now()
	if err := l.Apply(manifest); err != nil {
		t.Fatal(err)
	}
	var ps []pod
	if err := waitFor(ctx, 10*time.Minute, func() error {
		ps = pods(t, l, "app=scale")
		ready := 0
		for _, p := range ps {
			if p.Ready {
				ready++
			}
		}
		if ready != replicas {
			return fmt.Errorf("%d of %d pods Ready", ready, replicas)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d := time.Since(t1)
	t.Logf("%d pods Ready in %v (%.1f pods/s)", replicas, d.Round(time.Second), float64(replicas)/d.Seconds())
	perNode := map[string]int{}
	seen := map[string]string{}
	for _, p := range ps {
		perNode[p.Node]++
		if other, dup := seen[p.IP]; dup {
			t.Errorf("address %s given to %s and %s", p.IP, other, p.Name)
		}
		seen[p.IP] = p.Name
	}
	if len(perNode) != nodes {
		t.Errorf("pods on %d nodes, want %d: %v", len(perNode), nodes, perNode)
	}
	// A few probes from one pod: to pods on its own node and on others.
	from := ps[0]
	same, cross := 0, 0
	for _, to := range ps[1:] {
		if to.Node == from.Node {
			if same == 2 {
				continue
			}
			same++
		} else {
			if cross == 5 {
				continue
			}
			cross++
		}
		out, err := connect(l, from.Name, to.IP+":8080")
		if err != nil || !strings.Contains(out, `"pod":"`+to.Name+`"`) {
			t.Errorf("%s (%s) -> %s (%s): %v: %s", from.Name, from.Node, to.Name, to.Node, err, out)
		}
	}
	if cross < 5 {
		t.Errorf("only %d pod(s) on other nodes than %s to probe", cross, from.Node)
	}

	t2 := time.Now()
	downed = true
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	t.Logf("down in %v", time.Since(t2).Round(100*time.Millisecond))
	if left := Leftovers(&s); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
}
