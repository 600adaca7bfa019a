// Package routing programs native routes between nodes: for every other
// node, a route to its pod CIDR via its InternalIP. The routes carry a
// protocol number of anet's own (Protocol), so the reconciler only ever
// lists, changes and deletes its own routes and leaves everything else in
// the table alone.
package routing

import (
	"fmt"
	"net/netip"
	"sort"
)

// Protocol is the rtnetlink route protocol anet marks its routes with
// (`ip route show proto 199`). 199 is not assigned in iproute2's
// rt_protos and not used by the routing daemons we know of (bird, frr,
// calico: 80, ...).
const Protocol = 199

// Node is what routing needs to know of a node.
type Node struct {
	Name       string
	PodCIDRs   []netip.Prefix
	InternalIP netip.Addr
}

// Route is one desired route: Dst via Gateway.
type Route struct {
	Dst     netip.Prefix
	Gateway netip.Addr
	Node    string
}

// Desired computes the routes to other nodes' pod CIDRs: IPv4 CIDRs of
// nodes other than self that have an InternalIP, skipping any CIDR that
// overlaps one of self's and any node whose InternalIP is self's. It is
// pure: the reconciler applies what it returns.
func Desired(self string, nodes []Node) []Route {
	var me Node
	for _, n := range nodes {
		if n.Name == self {
			me = n
		}
	}
	overlapsMine := func(p netip.Prefix) bool {
		for _, m := range me.PodCIDRs {
			if m.Overlaps(p) {
				return true
			}
		}
		return false
	}
	seen := map[netip.Prefix]bool{}
	var out []Route
	// Sorted by name, so that when two nodes claim one CIDR (never in a
	// sane cluster) the choice is stable.
	sorted := append([]Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, n := range sorted {
		if n.Name == self || !n.InternalIP.Is4() || (me.InternalIP.IsValid() && n.InternalIP == me.InternalIP) {
			continue
		}
		for _, p := range n.PodCIDRs {
			p = p.Masked()
			if !p.Addr().Is4() || overlapsMine(p) || seen[p] {
				continue
			}
			seen[p] = true
			out = append(out, Route{Dst: p, Gateway: n.InternalIP, Node: n.Name})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.Addr().Less(out[j].Dst.Addr()) })
	return out
}

func (r Route) String() string { return fmt.Sprintf("%s via %s (%s)", r.Dst, r.Gateway, r.Node) }
