package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/identity"
)

// snapshot is what one run computed and wrote, for anetctl. Its maps are
// never written after publish, so readers need the lock only to take it.
type snapshot struct {
	res       Result
	endpoints map[string]endpointState // local pods and registered endpoints, by namespace/name
	idents    map[uint32]identity.Key  // every pod identity held
	cidrs     map[uint32]netip.Prefix  // CIDR identities
}

type endpointState struct {
	id         uint32 // the pod's identity; 0 when none yet
	ifindex    uint32 // 0: no endpoint registered
	programmed bool
}

// publish makes the run's result what Last and the accessors below
// answer. It runs in the reconciler's goroutine, after the writes.
func (r *Reconciler) publish(res Result, pods []*corev1.Pod, nss []*corev1.Namespace) {
	s := &snapshot{res: res, endpoints: map[string]endpointState{},
		idents: make(map[uint32]identity.Key, len(r.held)), cidrs: make(map[uint32]netip.Prefix, len(res.CIDRs))}
	for k, id := range r.held {
		s.idents[id] = k
	}
	for p, id := range res.CIDRs {
		s.cidrs[id] = p
	}
	nsl := map[string]map[string]string{}
	for _, ns := range nss {
		if ns != nil {
			nsl[ns.Name] = ns.Labels
		}
	}
	for _, p := range pods {
		if !live(p) || p.Spec.NodeName != r.cfg.Node {
			continue
		}
		key := p.Namespace + "/" + p.Name
		s.endpoints[key] = endpointState{id: r.held[identity.KeyOf(p.Namespace, nsl[p.Namespace], p.Labels)]}
	}
	for ifindex, w := range r.written {
		st := s.endpoints[w.key]
		st.ifindex, st.programmed = ifindex, true
		s.endpoints[w.key] = st
	}
	// Endpoints whose write failed are not in written.
	for key, ifindex := range r.cfg.Endpoints() {
		if st, ok := s.endpoints[key]; !ok || st.ifindex == 0 {
			st.ifindex = ifindex
			s.endpoints[key] = st
		}
	}
	r.mu.Lock()
	r.snap = s
	r.mu.Unlock()
}

// IdentityCounts counts the identities the last run held: those of pods (one
// per distinct set of namespace and pod labels of the cluster's live
// pods) and those of CIDRs the policies name; ok is false before the
// first run.
func (r *Reconciler) IdentityCounts() (pods, cidrs int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snap == nil {
		return 0, 0, false
	}
	return len(r.snap.idents), len(r.snap.cidrs), true
}

func (r *Reconciler) snapshot() (*snapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snap == nil {
		return nil, fmt.Errorf("%w: network policy not computed yet (waiting for the identity allocator and the informers)", api.ErrNotReady)
	}
	return r.snap, nil
}

// EndpointPolicy returns the effective policy of the local pod
// namespace/name as the last run computed and wrote it (for anetctl). It
// is safe to call from any goroutine.
func (r *Reconciler) EndpointPolicy(namespace, name string) (api.EndpointPolicy, error) {
	s, err := r.snapshot()
	if err != nil {
		return api.EndpointPolicy{}, err
	}
	key := namespace + "/" + name
	st, ok := s.endpoints[key]
	if !ok {
		return api.EndpointPolicy{}, fmt.Errorf("%w: pod %s is not an endpoint of node %s", api.ErrNotFound, key, r.cfg.Node)
	}
	ep := s.res.Endpoints[key] // zero (open) for an endpoint whose pod the cache does not know
	return api.EndpointPolicy{
		Namespace: namespace, Name: name, Node: r.cfg.Node,
		Identity: s.identity(st.id), Ifindex: st.ifindex, Programmed: st.programmed,
		Ingress: s.direction(ep.IngressEnforced, ep.IngressPolicies, ep.Ingress),
		Egress:  s.direction(ep.EgressEnforced, ep.EgressPolicies, ep.Egress),
	}, nil
}

// Identities returns every identity the last run knew, sorted by number:
// the reserved ones, every pod identity held (one per label set of the
// cluster's live pods) with the number of this node's endpoints holding
// it, and the CIDR identities of the ipBlocks. Safe from any goroutine.
func (r *Reconciler) Identities() ([]api.IdentityEntry, error) {
	s, err := r.snapshot()
	if err != nil {
		return nil, err
	}
	count := map[uint32]int{}
	for _, st := range s.endpoints {
		if st.ifindex != 0 && st.id != identity.None {
			count[st.id]++
		}
	}
	out := make([]api.IdentityEntry, 0, 3+len(s.idents)+len(s.cidrs))
	for _, id := range []uint32{identity.Host, identity.World, identity.RemoteNode} {
		out = append(out, api.IdentityEntry{Identity: s.identity(id)})
	}
	for _, id := range slices.Sorted(maps.Keys(s.idents)) {
		out = append(out, api.IdentityEntry{Identity: s.identity(id), Endpoints: count[id]})
	}
	for _, id := range slices.Sorted(maps.Keys(s.cidrs)) {
		out = append(out, api.IdentityEntry{Identity: s.identity(id)})
	}
	return out, nil
}

var reservedNames = map[uint32]string{identity.Host: "host", identity.World: "world", identity.RemoteNode: "remote-node"}

// identity describes a number.
func (s *snapshot) identity(id uint32) api.Identity {
	out := api.Identity{ID: id}
	switch {
	case id == identity.None:
		out.Kind = api.IdentityAny
	case reservedNames[id] != "":
		out.Kind, out.Name = api.IdentityReserved, reservedNames[id]
	case identity.IsCIDR(id):
		out.Kind, out.CIDR = api.IdentityCIDR, s.cidrs[id]
	default:
		out.Kind = api.IdentityPod
		if k, ok := s.idents[id]; ok {
			out.NamespaceLabels, out.Labels = k.Labels()
			out.Namespace = out.NamespaceLabels[identity.NamespaceNameLabel]
			if len(out.Labels) == 0 {
				out.Labels = nil
			}
		}
	}
	return out
}

// direction turns one direction's rules (per identity, in aligned port
// blocks) into ranges, joining adjacent blocks of one identity and
// protocol, then grouping the identities of equal (protocol, range).
func (s *snapshot) direction(enforced bool, policies []string, rules []Rule) api.PolicyDirection {
	d := api.PolicyDirection{Isolated: enforced, Policies: slices.Clone(policies), Rules: []api.PolicyRule{}}
	if d.Policies == nil {
		d.Policies = []string{}
	}
	type span struct {
		proto    uint8
		lo, hi   uint16
		identity uint32
	}
	var spans []span
	for _, r := range rules { // sorted by identity, protocol, port
		lo, hi := uint16(0), uint16(65535)
		if r.Proto != ProtoAny && r.PortPrefixLen > 0 {
			lo = maskPort(r.Port, r.PortPrefixLen)
			hi = lo | uint16(1<<(16-uint(min(r.PortPrefixLen, 16)))-1)
		}
		if n := len(spans); n > 0 {
			last := &spans[n-1]
			if last.identity == r.Identity && last.proto == r.Proto && last.hi != 65535 && last.hi+1 >= lo {
				last.hi = max(last.hi, hi)
				continue
			}
		}
		spans = append(spans, span{r.Proto, lo, hi, r.Identity})
	}
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.lo, b.lo), cmp.Compare(a.hi, b.hi), cmp.Compare(a.identity, b.identity))
	})
	for _, sp := range spans {
		if n := len(d.Rules); n > 0 {
			last := &d.Rules[n-1]
			if last.Protocol == protoName(sp.proto) && last.Port == sp.lo && last.EndPort == sp.hi {
				last.Peers = append(last.Peers, s.identity(sp.identity))
				continue
			}
		}
		d.Rules = append(d.Rules, api.PolicyRule{Protocol: protoName(sp.proto), Port: sp.lo, EndPort: sp.hi,
			Peers: []api.Identity{s.identity(sp.identity)}})
	}
	return d
}

func protoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprint(p)
}
