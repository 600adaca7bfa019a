//go:build linux

package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKubeProxy runs the real kube-proxy in a node of the lab in both
// modes: it programs the node (KUBE-SERVICES in the nat table; the
// kube-proxy nftables table), the lab's down stops it by its record, and
// its cleanup removes its rules, leaving the node as it was for the other
// tests (which run without a kube-proxy, as the service tests require).
func TestKubeProxy(t *testing.T) {
	l := SharedLab(t)
	n := &l.Nodes[len(l.Nodes)-1]
	inNode := func(argv ...string) (string, error) {
		return run("ip", append([]string{"netns", "exec", n.Netns}, argv...)...)
	}
	natRules := func() string {
		out, err := inNode("iptables", "-t", "nat", "-S")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	hasTable := func() bool {
		_, err := inNode("nft", "list", "table", "ip", "kube-proxy")
		return err == nil
	}
	if strings.Contains(natRules(), "KUBE-SERVICES") || hasTable() {
		t.Fatalf("%s has kube-proxy's rules before kube-proxy ran", n.Name)
	}
	t.Cleanup(func() {
		if err := l.StopKubeProxy(n.Name, true); err != nil {
			t.Error(err)
		}
	})

	// iptables mode; then down (of a state holding only its record) stops it.
	if err := l.StartKubeProxy(n.Name, "iptables"); err != nil {
		t.Fatal(err)
	}
	if rules := natRules(); !strings.Contains(rules, "-N KUBE-SERVICES") {
		t.Errorf("no KUBE-SERVICES chain in %s's nat table after kube-proxy started:\n%s", n.Name, rules)
	}
	p, ok := l.Component(n.Name + "/kube-proxy")
	if !ok || !p.alive() {
		t.Fatalf("kube-proxy is not recorded as running: %+v", p)
	}
	dir := t.TempDir()
	only := State{Name: l.Name, Dir: filepath.Join(dir, "lab"), Procs: []Proc{p}}
	if err := os.Mkdir(only.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	st := &stateStore{path: filepath.Join(only.Dir, StateFile)}
	if err := st.update(func(s *State) { *s = only }); err != nil {
		t.Fatal(err)
	}
	if err := DownDir(only.Dir, nil); err != nil {
		t.Fatal(err)
	}
	if p.alive() {
		t.Errorf("kube-proxy (pid %d) still runs after down", p.PID)
	}
	if left := Leftovers(&only); len(left) > 0 {
		t.Errorf("left after down: %v", left)
	}
	if err := l.StopKubeProxy(n.Name, true); err != nil {
		t.Fatal(err)
	}
	if rules := natRules(); strings.Contains(rules, "KUBE-SERVICES") {
		t.Errorf("kube-proxy's cleanup left KUBE-SERVICES:\n%s", rules)
	}

	// nftables mode.
	if err := l.StartKubeProxy(n.Name, "nftables"); err != nil {
		t.Fatal(err)
	}
	if !hasTable() {
		out, _ := inNode("nft", "list", "tables")
		t.Errorf("no kube-proxy nftables table in %s after kube-proxy started: %s", n.Name, out)
	}
	p, _ = l.Component(n.Name + "/kube-proxy")
	if err := l.StopKubeProxy(n.Name, true); err != nil {
		t.Fatal(err)
	}
	if p.alive() {
		t.Errorf("kube-proxy (pid %d) still runs after StopKubeProxy", p.PID)
	}
	if p, ok := l.Component(n.Name + "/kube-proxy"); ok {
		t.Errorf("kube-proxy still recorded after StopKubeProxy: %+v (alive %v)", p, p.alive())
	}
	if hasTable() {
		t.Error("kube-proxy's cleanup left its nftables table")
	}
}

// TestBesideKubeProxy: an anetd that leaves the Services to a kube-proxy
// (the lab's KubeProxy option, or --enable-services=false in its
// AnetdArgs, the last one winning as in anetd's flags) is not started with
// --purge-kube-proxy-rules.
func TestBesideKubeProxy(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want bool
	}{
		{Options{}, false},
		{Options{KubeProxy: "iptables"}, true},
		{Options{AnetdArgs: map[string][]string{"node1": {"--enable-services=false"}}}, true},
		{Options{AnetdArgs: map[string][]string{"node1": {"-enable-services=0"}}}, true},
		{Options{AnetdArgs: map[string][]string{"node2": {"--enable-services=false"}}}, false},
		{Options{AnetdArgs: map[string][]string{"node1": {"--enable-services=false", "--enable-services"}}}, false},
		{Options{AnetdArgs: map[string][]string{"node1": {"--endpoint-attach", "tcx"}}}, false},
	} {
		l := &Lab{opts: c.o}
		if got := l.besideKubeProxy("node1"); got != c.want {
			t.Errorf("%+v: beside a kube-proxy %v, want %v", c.o, got, c.want)
		}
	}
}
