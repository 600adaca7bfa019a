package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/anet-dev/anet/daemon/identity"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// rawPolicy is a policy parsed, before its peers are resolved to
// identities (which needs every policy's ipBlocks first).
type rawPolicy struct {
	prefixes []netip.Prefix
	in, eg   []rawRule
}

type rawRule struct {
	anyPeer  bool
	peers    []rawPeer
	allPorts bool
	ports    []cport
}

type rawPeer struct {
	field     string
	pods, nss labels.Selector // nil: not given
	block     *rawBlock
	matchNone bool
}

type rawBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (b *rawBlock) key() string {
	var sb strings.Builder
	sb.WriteString(b.cidr.String())
	for _, e := range b.except {
		sb.WriteByte(',')
		sb.WriteString(e.String())
	}
	return sb.String()
}

// parse reads a policy. A part it cannot read allows nothing; the
// policy's selection of pods always stands (an unreadable podSelector
// selects every pod of the namespace: isolating too much is safe, too
// little is not).
func (ps *pstate) parse(np *networkingv1.NetworkPolicy) *rawPolicy {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		ps.problem("spec.podSelector", "invalid selector (%v): the policy isolates every pod of its namespace and allows nothing", err)
		sel = labels.Everything()
		ps.selector = sel
		ps.ingress, ps.egress = true, true
		return &rawPolicy{}
	}
	ps.selector = sel
	if len(np.Spec.PolicyTypes) == 0 {
		ps.ingress = true
		ps.egress = len(np.Spec.Egress) > 0
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ps.ingress = true
		case networkingv1.PolicyTypeEgress:
			ps.egress = true
		default:
			ps.problem(fmt.Sprintf("spec.policyTypes[%d]", i), "unknown policy type %q: the policy isolates its pods both ways", t)
			ps.ingress, ps.egress = true, true
		}
	}
	raw := &rawPolicy{}
	if ps.ingress {
		for i, r := range np.Spec.Ingress {
			raw.in = append(raw.in, ps.parseRule(fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports, raw))
		}
	}
	if ps.egress {
		for i, r := range np.Spec.Egress {
			raw.eg = append(raw.eg, ps.parseRule(fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports, raw))
		}
	}
	return raw
}

func (ps *pstate) parseRule(field, peerField string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, raw *rawPolicy) rawRule {
	r := rawRule{anyPeer: len(peers) == 0, allPorts: len(ports) == 0}
	for j, p := range peers {
		pf := fmt.Sprintf("%s.%s[%d]", field, peerField, j)
		rp := rawPeer{field: pf}
		switch {
		case p.IPBlock != nil && (p.PodSelector != nil || p.NamespaceSelector != nil):
			ps.problem(pf, "ipBlock together with a selector (the API forbids it): the peer matches nothing")
			rp.matchNone = true
		case p.IPBlock != nil:
			rp.block = ps.parseBlock(pf+".ipBlock", p.IPBlock)
			if rp.block == nil {
				rp.matchNone = true
			} else {
				raw.prefixes = append(raw.prefixes, rp.block.cidr)
				raw.prefixes = append(raw.prefixes, rp.block.except...)
			}
		case p.PodSelector == nil && p.NamespaceSelector == nil:
			ps.problem(pf, "peer with neither selector nor ipBlock (the API forbids it): the peer matches nothing")
			rp.matchNone = true
		default:
			var err error
			if p.PodSelector != nil {
				if rp.pods, err = metav1.LabelSelectorAsSelector(p.PodSelector); err != nil {
					ps.problem(pf+".podSelector", "invalid selector (%v): the peer matches nothing", err)
					rp.matchNone = true
				}
			}
			if p.NamespaceSelector != nil {
				if rp.nss, err = metav1.LabelSelectorAsSelector(p.NamespaceSelector); err != nil {
					ps.problem(pf+".namespaceSelector", "invalid selector (%v): the peer matches nothing", err)
					rp.matchNone = true
				}
			}
		}
		r.peers = append(r.peers, rp)
	}
	for k, p := range ports {
		if cp, ok := ps.parsePort(fmt.Sprintf("%s.ports[%d]", field, k), p); ok {
			r.ports = append(r.ports, cp)
		}
	}
	return r
}

func (ps *pstate) parseBlock(field string, b *networkingv1.IPBlock) *rawBlock {
	cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		ps.problem(field+".cidr", "unparseable CIDR %q: the peer matches nothing", b.CIDR)
		return nil
	}
	cidr = cidr.Masked() // an IPv4-mapped IPv6 block stays IPv6 and so matches no IPv4 address: narrower, never wider
	rb := &rawBlock{cidr: cidr}
	for i, e := range b.Except {
		ep, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			ps.problem(fmt.Sprintf("%s.except[%d]", field, i), "unparseable CIDR %q: the peer matches nothing", e)
			return nil
		}
		ep = ep.Masked()
		if !slices.Contains(rb.except, ep) {
			rb.except = append(rb.except, ep)
		}
	}
	slices.SortFunc(rb.except, comparePrefix)
	return rb
}

// parsePort reads one entry of ports; false when the entry allows nothing.
func (ps *pstate) parsePort(field string, p networkingv1.NetworkPolicyPort) (cport, bool) {
	proto := ProtoTCP
	if p.Protocol != nil {
		var ok bool
		if proto, ok = protoOf(*p.Protocol); !ok || *p.Protocol == "" {
			ps.problem(field+".protocol", "unsupported protocol %q: the entry allows nothing", *p.Protocol)
			return cport{}, false
		}
	}
	switch {
	case p.Port == nil:
		if p.EndPort != nil {
			ps.problem(field+".endPort", "endPort without port (the API forbids it): the entry allows nothing")
			return cport{}, false
		}
		return cport{proto: proto, blocks: []PortBlock{{0, 0}}}, true
	case p.Port.Type == intstr.String:
		if p.EndPort != nil {
			ps.problem(field+".endPort", "endPort with a named port (the API forbids it): the entry allows nothing")
			return cport{}, false
		}
		if p.Port.StrVal == "" {
			ps.problem(field+".port", "empty port name: the entry allows nothing")
			return cport{}, false
		}
		return cport{proto: proto, name: p.Port.StrVal}, true
	default:
		first := p.Port.IntVal
		if first < 1 || first > 65535 {
			ps.problem(field+".port", "port %d out of range: the entry allows nothing", first)
			return cport{}, false
		}
		last := first
		if p.EndPort != nil {
			last = *p.EndPort
			if last < first || last > 65535 {
				ps.problem(field+".endPort", "endPort %d not in [%d, 65535]: the entry allows nothing", last, first)
				return cport{}, false
			}
		}
		return cport{proto: proto, blocks: PortRanges(uint16(first), uint16(last))}, true
	}
}

// resolve turns the parsed peers into identity sets.
func (ps *pstate) resolve() {
	raw := ps.pending
	ps.pending = nil
	for _, r := range raw.in {
		ps.in = append(ps.in, ps.resolveRule(r))
	}
	for _, r := range raw.eg {
		ps.eg = append(ps.eg, ps.resolveRule(r))
	}
}

func (ps *pstate) resolveRule(r rawRule) crule {
	c := crule{anyPeer: r.anyPeer, allPorts: r.allPorts, ports: r.ports}
	for _, p := range r.peers {
		c.peers = append(c.peers, ps.resolvePeer(p)...)
	}
	slices.Sort(c.peers)
	c.peers = slices.Compact(c.peers)
	return c
}

func (ps *pstate) resolvePeer(p rawPeer) []uint32 {
	s := ps.s
	switch {
	case p.matchNone:
		return nil
	case p.block != nil:
		return s.resolveBlock(ps, p.field+".ipBlock", p.block)
	}
	var out []uint32
	matchNS := func(ns string) {
		for _, it := range s.byNS[ns] {
			if p.pods == nil || p.pods.Matches(it.podLabels) {
				out = append(out, it.id)
			}
		}
	}
	if p.nss == nil {
		matchNS(ps.ns) // podSelector alone: the policy's own namespace
		return out
	}
	for ns, l := range s.nsLabels {
		if p.nss.Matches(l) {
			matchNS(ns)
		}
	}
	return out
}

// blockResult is what an ipBlock resolves to, shared by the peers that
// name the same block.
type blockResult struct {
	ids   []uint32
	mixed []uint32 // owners with addresses both matched and not
}

// resolveBlock returns the identities an ipBlock matches: every CIDR
// identity whose prefix lies inside the CIDR and inside none of the
// excepts (with the LPM ipcache each address takes its most specific
// entry, so these are exactly the entries that can stand for an address
// of the block), and, in the literal reading, every pod identity and node
// identity all of whose addresses (of the block's family) the block
// matches. An identity with addresses both matched and not cannot be
// expressed by identity: it is left out (its matched addresses are
// denied) and reported.
func (s *state) resolveBlock(ps *pstate, field string, b *rawBlock) []uint32 {
	key := b.key()
	br, ok := s.blocks[key]
	if !ok {
		br = s.computeBlock(b)
		s.blocks[key] = br
	}
	for _, id := range br.mixed {
		what := fmt.Sprintf("pod identity %d", id)
		switch id {
		case identity.Host:
			what = "this node's addresses"
		case identity.RemoteNode:
			what = "the other nodes' addresses"
		default:
			if it := s.idents[id]; it != nil {
				what = fmt.Sprintf("the pods of identity %d (namespace %s, labels %s)", id, it.ns, it.podLabels)
			}
		}
		ps.problem(field, "%s lie both inside and outside the block: rules are per identity, so these addresses are not matched by it (select such pods with podSelector)", what)
	}
	return br.ids
}

func (s *state) computeBlock(b *rawBlock) blockResult {
	var br blockResult
	excepted := func(p netip.Prefix) bool {
		for _, e := range b.except {
			if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
				return true
			}
		}
		return false
	}
	start, _ := slices.BinarySearchFunc(s.cidrList, b.cidr, comparePrefix)
	for _, d := range s.cidrList[start:] {
		if !b.cidr.Contains(d.Addr()) {
			break
		}
		if d.Bits() >= b.cidr.Bits() && !excepted(d) {
			br.ids = append(br.ids, s.res.CIDRs[d])
		}
	}
	if s.c.opts.IPBlockExcludesCluster {
		return br
	}
	matched := map[uint32]int{}
	start, _ = slices.BinarySearchFunc(s.addrs, b.cidr.Addr(), func(o addrOwner, a netip.Addr) int { return o.addr.Compare(a) })
	for _, o := range s.addrs[start:] {
		if !b.cidr.Contains(o.addr) {
			break
		}
		if !excepted(netip.PrefixFrom(o.addr, o.addr.BitLen())) {
			matched[o.id]++
		}
	}
	fam := family(b.cidr.Addr())
	for id, n := range matched {
		if n == s.ownerAddrs[id][fam] {
			br.ids = append(br.ids, id)
		} else {
			br.mixed = append(br.mixed, id)
		}
	}
	slices.Sort(br.ids)
	slices.Sort(br.mixed)
	return br
}
