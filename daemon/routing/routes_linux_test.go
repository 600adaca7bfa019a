package routing

import (
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// TestTableSync programs routes in a private netns: installs, changes and
// removes its own, and leaves a foreign route to the same kind of
// destination alone.
func TestTableSync(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces); CI runs as root")
	}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	sh := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	sh("ip", "link", "add", "fab0", "type", "veth", "peer", "name", "fab1")
	sh("ip", "link", "set", "fab0", "up")
	sh("ip", "link", "set", "fab1", "up")
	sh("ip", "addr", "add", "10.77.0.1/24", "dev", "fab0")
	sh("ip", "route", "add", "10.244.9.0/24", "via", "10.77.0.50") // someone else's

	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	err = netns.Do(func(ns.NetNS) error {
		tab, err := NewTable(slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		defer tab.Close()
		want := []Route{
			{Dst: p("10.244.1.0/24"), Gateway: a("10.77.0.2"), Node: "b"},
			{Dst: p("10.244.2.0/24"), Gateway: a("10.77.0.3"), Node: "c"},
		}
		if err := tab.Sync(want); err != nil {
			t.Errorf("Sync: %v", err)
		}
		assertRoutes(t, tab, map[string]string{"10.244.1.0/24": "10.77.0.2", "10.244.2.0/24": "10.77.0.3"})
		// Idempotent.
		if err := tab.Sync(want); err != nil {
			t.Errorf("second Sync: %v", err)
		}
		// Gateway changes, c goes away, an unreachable gateway fails alone,
		// a CIDR taken by a foreign route is refused.
		err = tab.Sync([]Route{
			{Dst: p("10.244.1.0/24"), Gateway: a("10.77.0.4"), Node: "b"},
			{Dst: p("10.244.3.0/24"), Gateway: a("192.0.2.1"), Node: "far"},
			{Dst: p("10.244.9.0/24"), Gateway: a("10.77.0.9"), Node: "clash"},
		})
		if err == nil || !strings.Contains(err.Error(), "192.0.2.1") || !strings.Contains(err.Error(), "in the way") {
			t.Errorf("Sync with an unreachable gateway and a clash: %v", err)
		}
		assertRoutes(t, tab, map[string]string{"10.244.1.0/24": "10.77.0.4"})
		if err := tab.Sync(nil); err != nil {
			t.Errorf("Sync(nil): %v", err)
		}
		assertRoutes(t, tab, map[string]string{})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := sh("ip", "route", "show", "10.244.9.0/24"); !strings.Contains(out, "via 10.77.0.50") {
		t.Errorf("foreign route touched: %q", out)
	}
	if out := sh("ip", "route", "show", "dev", "fab0"); !strings.Contains(out, "10.77.0.0/24") {
		t.Errorf("connected route gone: %q", out)
	}
}

func assertRoutes(t *testing.T, tab *Table, want map[string]string) {
	t.Helper()
	have, err := tab.Installed()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for d, g := range have {
		got[d.String()] = g.String()
	}
	if len(got) != len(want) {
		t.Errorf("routes = %v, want %v", got, want)
		return
	}
	for d, g := range want {
		if got[d] != g {
			t.Errorf("routes = %v, want %v", got, want)
			return
		}
	}
}
