package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Compiler turns the cluster's NetworkPolicies into per-endpoint rules and
// the ipcache. It keeps one piece of state between runs: the numbers of
// the node-local CIDR identities, so that a CIDR keeps its number while
// some policy names it and a recompile changes only what changed.
type Compiler struct {
	opts     Options
	cidrs    map[netip.Prefix]uint32 // prefix -> n of CIDRFlag|n
	cidrUsed map[uint32]bool
	nextCIDR uint32
}

// NewCompiler returns a Compiler with no CIDR identities yet.
func NewCompiler(opts Options) *Compiler {
	return &Compiler{opts: opts, cidrs: map[netip.Prefix]uint32{}, cidrUsed: map[uint32]bool{}, nextCIDR: 1}
}

// ident is a pod identity with what selectors match against.
type ident struct {
	id        uint32
	ns        string
	nsLabels  labels.Set // with kubernetes.io/metadata.name
	podLabels labels.Set
	// namedPorts: (name, proto) -> port numbers over this identity's pods.
	namedPorts map[namedPort]map[uint16]bool
}

type namedPort struct {
	name  string
	proto uint8
}

// owner is who an address belongs to besides CIDRs: a pod identity, Host
// or RemoteNode.
type addrOwner struct {
	addr netip.Addr
	id   uint32
}

// state is one Compile run.
type state struct {
	c        *Compiler
	in       Input
	res      *Result
	idents   map[uint32]*ident
	byNS     map[string][]*ident
	nsLabels map[string]labels.Set // namespaces of the identities
	// every pod and node address with its owner, sorted by address
	addrs []addrOwner
	// per owner and address family (4 or 6): how many addresses
	ownerAddrs map[uint32]map[int]int
	// named ports over all pod identities: (name, proto) -> id -> ports
	namedAll map[namedPort]map[uint32]map[uint16]bool
	// CIDR entries of the ipcache, sorted
	cidrList []netip.Prefix
	blocks   map[string]blockResult // memo of ipBlock peers
}

// pstate is one policy being compiled.
type pstate struct {
	s        *state
	name, ns string
	selector labels.Selector
	ingress  bool
	egress   bool
	in, eg   []crule
	pending  *rawPolicy
}

type crule struct {
	anyPeer  bool
	peers    []uint32 // identities, when !anyPeer
	allPorts bool
	ports    []cport
}

type cport struct {
	proto  uint8
	blocks []PortBlock // numeric
	name   string      // named, when blocks is nil
}

// Compile computes the desired state of the node in.LocalNode. It never
// fails as a whole: what it cannot enforce as written is in Problems, and
// each such part allows nothing.
func (c *Compiler) Compile(in Input) Result {
	res := Result{Endpoints: map[string]EndpointPolicy{}, IPCache: map[netip.Prefix]uint32{}, CIDRs: map[netip.Prefix]uint32{}}
	s := &state{c: c, in: in, res: &res, idents: map[uint32]*ident{}, byNS: map[string][]*ident{},
		nsLabels: map[string]labels.Set{}, ownerAddrs: map[uint32]map[int]int{},
		namedAll: map[namedPort]map[uint32]map[uint16]bool{}, blocks: map[string]blockResult{}}
	local := s.indexPods()
	s.indexNodes()
	slices.SortFunc(s.addrs, func(a, b addrOwner) int { return a.addr.Compare(b.addr) })

	// Parse every policy first: the CIDR identities need every ipBlock.
	var prefixes []netip.Prefix
	var parsed []*pstate
	for _, np := range in.Policies {
		if np == nil {
			continue
		}
		ps := &pstate{s: s, name: np.Namespace + "/" + np.Name, ns: np.Namespace}
		raw := ps.parse(np)
		if raw == nil {
			continue
		}
		parsed = append(parsed, ps)
		prefixes = append(prefixes, raw.prefixes...)
		ps.pending = raw
	}
	s.assignCIDRs(prefixes)
	for _, ps := range parsed {
		ps.resolve()
	}

	// The endpoints: pods of this node.
	for _, lp := range local {
		res.Endpoints[lp.key] = s.endpoint(lp, parsed)
	}
	slices.SortFunc(res.Problems, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Policy, b.Policy), strings.Compare(a.Field, b.Field), strings.Compare(a.Why, b.Why))
	})
	res.Problems = slices.Compact(res.Problems)
	slices.Sort(res.Unresolved)
	return res
}

type localPod struct {
	key   string
	pod   *corev1.Pod
	ns    string
	label labels.Set
}

// live reports whether a pod takes part: not host-network (its address is
// its node's), not finished (its address may be reused).
func live(p *corev1.Pod) bool {
	return p != nil && !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func podAddrs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

func protoOf(p corev1.Protocol) (uint8, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return ProtoTCP, true
	case corev1.ProtocolUDP:
		return ProtoUDP, true
	case corev1.ProtocolSCTP:
		return ProtoSCTP, true
	}
	return 0, false
}

// containerPorts returns a pod's named container ports.
func containerPorts(p *corev1.Pod) map[namedPort]uint16 {
	out := map[namedPort]uint16{}
	add := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, cp := range c.Ports {
				proto, ok := protoOf(cp.Protocol)
				if cp.Name == "" || !ok || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					continue
				}
				k := namedPort{cp.Name, proto}
				if _, dup := out[k]; !dup {
					out[k] = uint16(cp.ContainerPort)
				}
			}
		}
	}
	add(p.Spec.Containers)
	add(p.Spec.InitContainers) // sidecars serve too
	return out
}

func (s *state) indexPods() []localPod {
	nsl := map[string]map[string]string{}
	for _, ns := range s.in.Namespaces {
		if ns != nil {
			nsl[ns.Name] = ns.Labels
		}
	}
	var local []localPod
	for _, p := range s.in.Pods {
		if !live(p) {
			continue
		}
		key := p.Namespace + "/" + p.Name
		if p.Spec.NodeName == s.in.LocalNode && s.in.LocalNode != "" {
			local = append(local, localPod{key: key, pod: p, ns: p.Namespace, label: labels.Set(p.Labels)})
		}
		k := identity.KeyOf(p.Namespace, nsl[p.Namespace], p.Labels)
		id, ok := uint32(0), false
		if s.in.Identity != nil {
			id, ok = s.in.Identity(k)
		}
		if !ok || !identity.IsPod(id) {
			s.res.Unresolved = append(s.res.Unresolved, key)
			continue
		}
		it := s.idents[id]
		if it == nil {
			nsLabels, podLabels := k.Labels()
			it = &ident{id: id, ns: p.Namespace, nsLabels: nsLabels, podLabels: podLabels, namedPorts: map[namedPort]map[uint16]bool{}}
			s.idents[id] = it
			s.byNS[p.Namespace] = append(s.byNS[p.Namespace], it)
			s.nsLabels[p.Namespace] = nsLabels
		}
		for np, port := range containerPorts(p) {
			if it.namedPorts[np] == nil {
				it.namedPorts[np] = map[uint16]bool{}
			}
			it.namedPorts[np][port] = true
			if s.namedAll[np] == nil {
				s.namedAll[np] = map[uint32]map[uint16]bool{}
			}
			s.namedAll[np][id] = it.namedPorts[np]
		}
		for _, a := range podAddrs(p) {
			pfx := netip.PrefixFrom(a, a.BitLen())
			if _, taken := s.res.IPCache[pfx]; taken {
				continue // two pods claim one address: the first keeps it
			}
			s.res.IPCache[pfx] = id
			s.addOwner(a, id)
		}
	}
	return local
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func (s *state) addOwner(a netip.Addr, id uint32) {
	s.addrs = append(s.addrs, addrOwner{a, id})
	if s.ownerAddrs[id] == nil {
		s.ownerAddrs[id] = map[int]int{}
	}
	s.ownerAddrs[id][family(a)]++
}

// indexNodes adds the nodes' addresses; a node address wins over a pod
// address that claims it.
func (s *state) indexNodes() {
	for _, n := range s.in.Nodes {
		id := identity.RemoteNode
		if n.Name == s.in.LocalNode {
			id = identity.Host
		}
		for _, a := range n.Addrs {
			a = a.Unmap()
			if !a.IsValid() {
				continue
			}
			pfx := netip.PrefixFrom(a, a.BitLen())
			if old, taken := s.res.IPCache[pfx]; taken {
				if identity.IsPod(old) {
					s.addrs = slices.DeleteFunc(s.addrs, func(o addrOwner) bool { return o.addr == a })
					s.ownerAddrs[old][family(a)]--
				} else {
					continue
				}
			}
			s.res.IPCache[pfx] = id
			s.addOwner(a, id)
		}
	}
}

// assignCIDRs gives every ipBlock prefix that no pod or node address
// already holds its CIDR identity, keeping the numbers of known prefixes.
func (s *state) assignCIDRs(prefixes []netip.Prefix) {
	c := s.c
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if _, taken := s.res.IPCache[p]; !taken {
			want[p] = true
		}
	}
	for p, n := range c.cidrs {
		if !want[p] {
			delete(c.cidrs, p)
			delete(c.cidrUsed, n)
		}
	}
	s.cidrList = slices.SortedFunc(maps.Keys(want), comparePrefix)
	for _, p := range s.cidrList {
		n, ok := c.cidrs[p]
		if !ok {
			n = c.allocCIDR()
			if n == 0 {
				continue // all 8M numbers taken: cannot happen with sane maps
			}
			c.cidrs[p] = n
		}
		id := identity.CIDRFlag | n
		s.res.IPCache[p] = id
		s.res.CIDRs[p] = id
	}
	s.cidrList = slices.DeleteFunc(s.cidrList, func(p netip.Prefix) bool { _, ok := c.cidrs[p]; return !ok })
}

// allocCIDR returns a free n, going round the space so that a freed number
// is not reused soon (0 when none is free).
func (c *Compiler) allocCIDR() uint32 {
	for range identity.MaxCIDR {
		n := c.nextCIDR
		c.nextCIDR++
		if c.nextCIDR > identity.MaxCIDR {
			c.nextCIDR = 1
		}
		if !c.cidrUsed[n] {
			c.cidrUsed[n] = true
			return n
		}
	}
	return 0
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func (ps *pstate) problem(field, format string, a ...any) {
	ps.s.res.Problems = append(ps.s.res.Problems, Problem{Policy: ps.name, Field: field, Why: fmt.Sprintf(format, a...)})
}
