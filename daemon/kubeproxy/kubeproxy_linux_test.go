package kubeproxy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

func TestIsKubeProxyChain(t *testing.T) {
	for _, c := range []struct {
		table, chain string
		want         bool
	}{
		{"nat", "KUBE-SERVICES", true},
		{"nat", "KUBE-SVC-ABCDEF", true},
		{"nat", "KUBE-SVL-ABCDEF", true},
		{"nat", "KUBE-SEP-ABCDEF", true},
		{"nat", "KUBE-EXT-ABCDEF", true},
		{"nat", "KUBE-FW-ABCDEF", true},
		{"nat", "KUBE-XLB-ABCDEF", true},
		{"nat", "KUBE-MARK-MASQ", true},
		{"nat", "KUBE-POSTROUTING", true},
		{"nat", "KUBE-NODEPORTS", true},
		{"nat", "KUBE-PROXY-CANARY", true},
		{"filter", "KUBE-SERVICES", true},
		{"filter", "KUBE-EXTERNAL-SERVICES", true},
		{"filter", "KUBE-FORWARD", true},
		{"filter", "KUBE-NODEPORTS", true},
		{"filter", "KUBE-PROXY-FIREWALL", true},
		{"filter", "KUBE-PROXY-CANARY", true},
		{"mangle", "KUBE-PROXY-CANARY", true},
		// kubelet's
		{"filter", "KUBE-FIREWALL", false},
		{"nat", "KUBE-KUBELET-CANARY", false},
		{"filter", "KUBE-KUBELET-CANARY", false},
		{"mangle", "KUBE-KUBELET-CANARY", false},
		{"mangle", "KUBE-IPTABLES-HINT", false},
		{"nat", "KUBE-MARK-DROP", false},
		// anyone else's
		{"filter", "KUBE-SVC-ABCDEF", false}, // only nat has per-Service chains
		{"mangle", "KUBE-SERVICES", false},
		{"nat", "MY-KUBE-SERVICES", false},
		{"nat", "INPUT", false},
	} {
		if got := IsKubeProxyChain(c.table, c.chain); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.table, c.chain, got, c.want)
		}
	}
}

func TestTarget(t *testing.T) {
	for rule, want := range map[string]string{
		`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`: "KUBE-SERVICES",
		`-A INPUT -m comment --comment "a \"-j KUBE-FORWARD\" in a comment" -j ACCEPT`:     "ACCEPT",
		`-A KUBE-SVC-X -m statistic --mode random --probability 0.5 -g KUBE-SEP-Y`:         "KUBE-SEP-Y",
		`-A OUTPUT -p tcp`: "",
		`-A INPUT -m comment --comment "-j KUBE-SERVICES" -m conntrack --ctstate NEW -j MY-ONE`: "MY-ONE",
	} {
		if got := target(rule); got != want {
			t.Errorf("target(%s) = %q, want %q", rule, got, want)
		}
	}
}

// netnsRun runs commands in a network namespace.
type netnsRun struct {
	t  *testing.T
	ns ns.NetNS
}

func (n netnsRun) sh(cmds ...string) {
	n.t.Helper()
	for _, c := range cmds {
		out, err := exec.Command("nsenter", "--net="+n.ns.Path(), "--", "sh", "-ec", c).CombinedOutput()
		if err != nil {
			n.t.Fatalf("%s: %v\n%s", c, err, out)
		}
	}
}

func (n netnsRun) out(cmd string) string {
	n.t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.ns.Path(), "--", "sh", "-ec", cmd).Output()
	if err != nil {
		n.t.Fatalf("%s: %v", cmd, err)
	}
	return string(out)
}

func newNetns(t *testing.T) netnsRun {
	t.Helper()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	return netnsRun{t: t, ns: netns}
}

// kubeletAndOthers are rules that must survive a purge: kubelet's chains
// and a user's.
var kubeletAndOthers = []string{
	"iptables-nft -t filter -N KUBE-FIREWALL",
	"iptables-nft -t filter -A KUBE-FIREWALL -m comment --comment 'block incoming localnet connections' -m mark --mark 0x8000/0x8000 -j DROP",
	"iptables-nft -t filter -A INPUT -j KUBE-FIREWALL",
	"iptables-nft -t filter -A OUTPUT -j KUBE-FIREWALL",
	"iptables-nft -t nat -N KUBE-KUBELET-CANARY",
	"iptables-nft -t filter -N KUBE-KUBELET-CANARY",
	"iptables-nft -t mangle -N KUBE-KUBELET-CANARY",
	"iptables-nft -t mangle -N KUBE-IPTABLES-HINT",
	"iptables-nft -t filter -N MY-CHAIN",
	"iptables-nft -t filter -A INPUT -j MY-CHAIN",
	"iptables-nft -t filter -A MY-CHAIN -p tcp --dport 22 -j ACCEPT",
	"iptables-nft -t filter -A INPUT -m comment --comment 'not -j KUBE-SERVICES' -j ACCEPT",
	"iptables-nft -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE",
	"iptables-legacy -t nat -N OTHER-LEGACY",
	"nft add table ip keep-me",
	"nft add chain ip keep-me c",
}

// kubeProxy is what a kube-proxy in iptables mode (nft and legacy
// backends, IPv4 and IPv6) and in nftables mode writes, roughly.
var kubeProxy = []string{
	"for c in KUBE-SERVICES KUBE-NODEPORTS KUBE-POSTROUTING KUBE-MARK-MASQ KUBE-PROXY-CANARY KUBE-SVC-AAAA KUBE-SEP-BBBB KUBE-EXT-CCCC KUBE-FW-DDDD KUBE-SVL-EEEE; do iptables-nft -t nat -N $c; done",
	"iptables-nft -t nat -A PREROUTING -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES",
	"iptables-nft -t nat -A OUTPUT -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES",
	"iptables-nft -t nat -I POSTROUTING 1 -m comment --comment 'kubernetes postrouting rules' -j KUBE-POSTROUTING",
	"iptables-nft -t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-SVC-AAAA",
	"iptables-nft -t nat -A KUBE-SERVICES -j KUBE-NODEPORTS",
	"iptables-nft -t nat -A KUBE-NODEPORTS -p tcp --dport 30080 -j KUBE-EXT-CCCC",
	"iptables-nft -t nat -A KUBE-EXT-CCCC -j KUBE-SVC-AAAA",
	"iptables-nft -t nat -A KUBE-SVC-AAAA -m statistic --mode random --probability 0.5 -j KUBE-SEP-BBBB",
	"iptables-nft -t nat -A KUBE-SEP-BBBB -s 10.244.1.5/32 -j KUBE-MARK-MASQ",
	"iptables-nft -t nat -A KUBE-SEP-BBBB -p tcp -j DNAT --to-destination 10.244.1.5:8080",
	"iptables-nft -t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
	"iptables-nft -t nat -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
	"for c in KUBE-SERVICES KUBE-EXTERNAL-SERVICES KUBE-FORWARD KUBE-NODEPORTS KUBE-PROXY-FIREWALL KUBE-PROXY-CANARY; do iptables-nft -t filter -N $c; done",
	"iptables-nft -t filter -I INPUT 1 -m conntrack --ctstate NEW -m comment --comment 'kubernetes externally-visible service portals' -j KUBE-EXTERNAL-SERVICES",
	"iptables-nft -t filter -A INPUT -m comment --comment 'kubernetes health check service ports' -j KUBE-NODEPORTS",
	"iptables-nft -t filter -A FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD",
	"iptables-nft -t filter -A FORWARD -m conntrack --ctstate NEW -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES",
	"iptables-nft -t filter -A OUTPUT -m conntrack --ctstate NEW -m comment --comment 'kubernetes load balancer firewall' -j KUBE-PROXY-FIREWALL",
	"iptables-nft -t filter -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
	"iptables-nft -t filter -A MY-CHAIN -g KUBE-SERVICES", // someone else's jump into kube-proxy's chain goes too
	"iptables-nft -t mangle -N KUBE-PROXY-CANARY",
	"iptables-legacy -t nat -N KUBE-SERVICES",
	"iptables-legacy -t nat -N KUBE-SVC-LEGACY",
	"iptables-legacy -t nat -A OUTPUT -j KUBE-SERVICES",
	"iptables-legacy -t nat -A KUBE-SERVICES -j KUBE-SVC-LEGACY",
	"ip6tables-nft -t nat -N KUBE-SERVICES",
	"ip6tables-nft -t nat -A PREROUTING -j KUBE-SERVICES",
	"nft add table ip kube-proxy",
	"nft add chain ip kube-proxy services",
	"nft add table ip6 kube-proxy",
}

// listing is every table of every backend and the nftables ruleset,
// without the tables iptables-nft made (compared separately).
func listing(n netnsRun) string {
	var b strings.Builder
	for _, cmd := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		for _, t := range []string{"nat", "filter", "mangle"} {
			b.WriteString("## " + cmd + " -t " + t + "\n")
			b.WriteString(n.out(cmd + " -t " + t + " -S 2>/dev/null"))
		}
	}
	// The base tables iptables-nft makes stay when emptied (as after
	// kube-proxy's own cleanup): not compared.
	b.WriteString("## nft tables\n" + n.out("nft list tables | grep -Ev '^table ip6? (nat|filter|mangle)$' || true"))
	return b.String()
}

// TestFindAndPurge writes kube-proxy's rules beside kubelet's and a
// user's in a netns of the test's own, finds exactly kube-proxy's, and
// purges them, leaving the rest exactly as a netns that never had a
// kube-proxy.
func TestFindAndPurge(t *testing.T) {
	// iptables-legacy's lock is /run/xtables.lock, a file of the machine:
	// this test's commands use one of its own.
	t.Setenv("XTABLES_LOCKFILE", filepath.Join(t.TempDir(), "xtables.lock"))
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace, iptables); CI runs as root")
	}
	for _, bin := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (scripts/setup.sh installs iptables and nftables)", bin)
		}
	}
	clean := newNetns(t)
	clean.sh(kubeletAndOthers...)
	dirty := newNetns(t)
	dirty.sh(kubeletAndOthers...)
	dirty.sh(kubeProxy...)
	ctx := context.Background()

	if err := clean.ns.Do(func(ns.NetNS) error {
		f, err := Find(ctx)
		if err == nil && !f.Empty() {
			t.Errorf("found in a netns without kube-proxy: %v", f.Summary())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	var found Found
	if err := dirty.ns.Do(func(ns.NetNS) (err error) {
		found, err = Find(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"iptables-nft -t nat: 10 chains (KUBE-EXT-CCCC KUBE-FW-DDDD KUBE-MARK-MASQ KUBE-NODEPORTS KUBE-POSTROUTING KUBE-PROXY-CANARY and 4 more), 3 jumps to them",
		"iptables-nft -t filter: 6 chains (KUBE-EXTERNAL-SERVICES KUBE-FORWARD KUBE-NODEPORTS KUBE-PROXY-CANARY KUBE-PROXY-FIREWALL KUBE-SERVICES), 6 jumps to them",
		"iptables-nft -t mangle: 1 chains (KUBE-PROXY-CANARY), 0 jumps to them",
		"iptables-legacy -t nat: 2 chains (KUBE-SERVICES KUBE-SVC-LEGACY), 1 jumps to them",
		"ip6tables-nft -t nat: 1 chains (KUBE-SERVICES), 1 jumps to them",
		"nftables table ip kube-proxy",
		"nftables table ip6 kube-proxy",
	}
	if got := found.Summary(); !slices.Equal(got, want) {
		t.Errorf("found:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if err := dirty.ns.Do(func(ns.NetNS) error { return Purge(ctx) }); err != nil {
		t.Fatal(err)
	}
	if got, want := listing(dirty), listing(clean); got != want {
		t.Errorf("after the purge:\n%s\nwant (a netns that never had a kube-proxy):\n%s", got, want)
	}
	if err := dirty.ns.Do(func(ns.NetNS) error {
		f, err := Find(ctx)
		if err == nil && !f.Empty() {
			t.Errorf("left after the purge: %v", f.Summary())
		}
		// A second purge finds nothing to do and succeeds.
		if err == nil {
			err = Purge(ctx)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
