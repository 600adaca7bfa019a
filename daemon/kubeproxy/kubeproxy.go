// Package kubeproxy finds, and on request removes, what a legacy
// kube-proxy left in the node's network namespace: its chains in the
// iptables nat, filter and mangle tables (of every iptables backend
// installed, nft and legacy, IPv4 and IPv6) and its "kube-proxy" nftables
// tables. The chains kubelet writes (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
// KUBE-IPTABLES-HINT, KUBE-MARK-DROP) are never touched, nor is anything
// else. The lists follow kube-proxy v1.35's own cleanup
// (pkg/proxy/iptables CleanupLeftovers, pkg/proxy/nftables
// CleanupLeftovers), plus KUBE-XLB-* of older releases. IPVS mode's
// chains, ipsets and kube-ipvs0 device are not handled.
//
// This is the only place in anet that uses iptables (through
// coreos/go-iptables, which drives the iptables binaries).
package kubeproxy

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"
)

// kube-proxy's chains by table: by name, and by prefix (per Service and
// endpoint chains).
var (
	ownChains = map[string][]string{
		"nat":    {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-PROXY-CANARY"},
		"filter": {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY"},
		"mangle": {"KUBE-PROXY-CANARY"},
	}
	ownPrefixes = map[string][]string{
		"nat": {"KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-", "KUBE-XLB-"},
	}
	// kubelet's, for the record: never ours to remove.
	kubeletChains = []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-MARK-DROP"}
)

// Table is the nftables table kube-proxy's nftables mode writes.
const Table = "kube-proxy"

// IsKubeProxyChain says whether chain in table is one of kube-proxy's.
func IsKubeProxyChain(table, chain string) bool {
	if slices.Contains(kubeletChains, chain) {
		return false
	}
	if slices.Contains(ownChains[table], chain) {
		return true
	}
	for _, p := range ownPrefixes[table] {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// Chains are kube-proxy's chains in one table of one iptables backend.
type Chains struct {
	Command string   // the iptables binary: iptables-nft, ip6tables-legacy, ...
	Table   string   // nat, filter or mangle
	Chains  []string // sorted
	Jumps   int      // rules in other chains that jump to them
}

// Found is what a kube-proxy left.
type Found struct {
	IPTables []Chains
	NFTables []string // families ("ip", "ip6") with a kube-proxy table
	// Skipped says which tools are missing (nothing could be checked
	// with them).
	Skipped []string
}

// Empty says nothing was found.
func (f Found) Empty() bool { return len(f.IPTables) == 0 && len(f.NFTables) == 0 }

// Summary is one line per place, for the log.
func (f Found) Summary() []string {
	var out []string
	for _, c := range f.IPTables {
		out = append(out, fmt.Sprintf("%s -t %s: %d chains (%s), %d jumps to them", c.Command, c.Table, len(c.Chains), abbrev(c.Chains), c.Jumps))
	}
	for _, fam := range f.NFTables {
		out = append(out, fmt.Sprintf("nftables table %s %s", fam, Table))
	}
	return out
}

func abbrev(cs []string) string {
	if len(cs) <= 6 {
		return strings.Join(cs, " ")
	}
	return strings.Join(cs[:6], " ") + fmt.Sprintf(" and %d more", len(cs)-6)
}

// backend is one iptables binary for one family.
type backend struct {
	name string
	ipt  *iptables.IPTables
}

// backends are the iptables binaries installed: nft and legacy for each
// family, or the plain binary when neither variant is.
func backends() ([]backend, []string) {
	var out []backend
	var skipped []string
	for _, fam := range []struct {
		proto iptables.Protocol
		names []string
		plain string
	}{
		{iptables.ProtocolIPv4, []string{"iptables-nft", "iptables-legacy"}, "iptables"},
		{iptables.ProtocolIPv6, []string{"ip6tables-nft", "ip6tables-legacy"}, "ip6tables"},
	} {
		var found []string
		for _, n := range fam.names {
			if _, err := exec.LookPath(n); err == nil {
				found = append(found, n)
			}
		}
		if len(found) == 0 {
			if _, err := exec.LookPath(fam.plain); err == nil {
				found = []string{fam.plain}
			}
		}
		if len(found) == 0 {
			skipped = append(skipped, fam.plain)
		}
		for _, n := range found {
			path, _ := exec.LookPath(n)
			ipt, err := iptables.New(iptables.IPFamily(fam.proto), iptables.Path(path))
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("%s (%v)", n, err))
				continue
			}
			out = append(out, backend{name: n, ipt: ipt})
		}
	}
	return out, skipped
}

var tables = []string{"nat", "filter", "mangle"}

// scan finds kube-proxy's chains in one table and the rules of other
// chains that jump to them (as chain and rule number, from the last).
func scan(ipt *iptables.IPTables, table string) (own []string, jumps []jump, err error) {
	chains, err := ipt.ListChains(table)
	if err != nil {
		return nil, nil, fmt.Errorf("listing chains of table %s: %w", table, err)
	}
	isOwn := map[string]bool{}
	for _, c := range chains {
		if IsKubeProxyChain(table, c) {
			own = append(own, c)
			isOwn[c] = true
		}
	}
	if len(own) == 0 {
		return nil, nil, nil
	}
	slices.Sort(own)
	for _, c := range chains {
		if isOwn[c] {
			continue
		}
		rules, err := ipt.List(table, c)
		if err != nil {
			return nil, nil, fmt.Errorf("listing chain %s of table %s: %w", c, table, err)
		}
		n := 0
		for _, r := range rules {
			if !strings.HasPrefix(r, "-A ") {
				continue // -P (policy) and -N lines
			}
			n++
			if t := target(r); isOwn[t] {
				jumps = append(jumps, jump{chain: c, num: n, target: t})
			}
		}
	}
	// Deleting by number from the end keeps the earlier numbers right.
	slices.SortFunc(jumps, func(a, b jump) int {
		if a.chain != b.chain {
			return strings.Compare(a.chain, b.chain)
		}
		return b.num - a.num
	})
	return own, jumps, nil
}

type jump struct {
	chain  string
	num    int
	target string
}

// target is the chain a rule (as iptables -S prints it) jumps or goes to.
func target(rule string) string {
	f := fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}

// fields splits a rule as a shell would, for iptables -S output: words
// separated by spaces, double quotes grouping (with \" inside).
func fields(s string) []string {
	var out []string
	var b strings.Builder
	in, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case c == '"':
			quoted, in = !quoted, true
		case c == ' ' && !quoted:
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteByte(c)
			in = true
		}
	}
	if in {
		out = append(out, b.String())
	}
	return out
}

// Find looks for what a kube-proxy left in the calling goroutine's network
// namespace (the node's, in anetd). Missing tools are reported in
// Skipped, not as errors.
func Find(ctx context.Context) (Found, error) {
	var f Found
	bs, skipped := backends()
	f.Skipped = skipped
	var errs []error
	for _, b := range bs {
		for _, t := range tables {
			own, jumps, err := scan(b.ipt, t)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
				continue
			}
			if len(own) > 0 {
				f.IPTables = append(f.IPTables, Chains{Command: b.name, Table: t, Chains: own, Jumps: len(jumps)})
			}
		}
	}
	fams, skip, err := nftTables(ctx)
	f.NFTables = fams
	if skip != "" {
		f.Skipped = append(f.Skipped, skip)
	}
	if err != nil {
		errs = append(errs, err)
	}
	return f, errors.Join(errs...)
}

func nftTables(ctx context.Context) (fams []string, skipped string, err error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, "nft", nil
	}
	var errs []error
	for _, fam := range []knftables.Family{knftables.IPv4Family, knftables.IPv6Family} {
		nft, err := knftables.New(fam, Table)
		if err != nil {
			errs = append(errs, fmt.Errorf("nft: %w", err))
			continue
		}
		// Listing the table's rules fails with "not found" when there is
		// no such table (List of chains does not: it filters a list).
		if _, err := nft.ListRules(ctx, ""); err == nil {
			fams = append(fams, string(fam))
		} else if !knftables.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("listing nftables table %s %s: %w", fam, Table, err))
		}
	}
	return fams, "", errors.Join(errs...)
}

// Purge removes everything of kube-proxy's from the calling goroutine's
// network namespace, table by table: first the rules of other chains
// that jump to its chains, then the content of its chains, then the
// chains; and its nftables tables. What it finds is listed again at the
// time (a kube-proxy still running may have changed it since Find); run
// it only once kube-proxy is stopped, or kube-proxy writes it all again.
func Purge(ctx context.Context) error {
	bs, _ := backends()
	var errs []error
	for _, b := range bs {
		for _, t := range tables {
			own, jumps, err := scan(b.ipt, t)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", b.name, err))
				continue
			}
			for _, j := range jumps {
				if err := b.ipt.DeleteById(t, j.chain, j.num); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s: deleting rule %d of %s (jump to %s): %w", b.name, t, j.num, j.chain, j.target, err))
				}
			}
			for _, c := range own {
				if err := b.ipt.ClearChain(t, c); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s: flushing %s: %w", b.name, t, c, err))
				}
			}
			for _, c := range own {
				if err := b.ipt.DeleteChain(t, c); err != nil {
					errs = append(errs, fmt.Errorf("%s -t %s: deleting %s: %w", b.name, t, c, err))
				}
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		for _, fam := range []knftables.Family{knftables.IPv4Family, knftables.IPv6Family} {
			nft, err := knftables.New(fam, Table)
			if err != nil {
				errs = append(errs, fmt.Errorf("nft: %w", err))
				continue
			}
			tx := nft.NewTransaction()
			tx.Delete(&knftables.Table{})
			if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting nftables table %s %s: %w", fam, Table, err))
			}
		}
	}
	return errors.Join(errs...)
}
