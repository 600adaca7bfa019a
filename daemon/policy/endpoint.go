package policy

import (
	"maps"
	"slices"

	"github.com/anet-dev/anet/daemon/identity"
)

// endpoint unions the policies that select a local pod.
func (s *state) endpoint(lp localPod, policies []*pstate) EndpointPolicy {
	var ep EndpointPolicy
	in, eg := map[Rule]bool{}, map[Rule]bool{}
	var own map[namedPort]uint16
	for _, ps := range policies {
		if ps.ns != lp.ns || !ps.selector.Matches(lp.label) {
			continue
		}
		if own == nil {
			own = containerPorts(lp.pod)
		}
		if ps.ingress {
			ep.IngressEnforced = true
			ep.IngressPolicies = append(ep.IngressPolicies, ps.name)
			for _, r := range ps.in {
				s.expand(in, r, true, own)
			}
		}
		if ps.egress {
			ep.EgressEnforced = true
			ep.EgressPolicies = append(ep.EgressPolicies, ps.name)
			for _, r := range ps.eg {
				s.expand(eg, r, false, own)
			}
		}
	}
	ep.Ingress, ep.Egress = minimize(in), minimize(eg)
	slices.Sort(ep.IngressPolicies)
	slices.Sort(ep.EgressPolicies)
	return ep
}

// expand adds the rules of one policy rule. Named ports resolve against
// the selected pod's own container ports for ingress, and against each
// peer identity's pods for egress (so one egress rule may mean a
// different number for each peer; a peer that is no pod has no named
// ports). When the pods of one identity give one name different numbers,
// the identity gets every one of them: rules are per identity.
func (s *state) expand(set map[Rule]bool, r crule, ingress bool, own map[namedPort]uint16) {
	peers := r.peers
	if r.anyPeer {
		peers = []uint32{identity.None}
	}
	if r.allPorts {
		for _, p := range peers {
			set[Rule{Identity: p}] = true
		}
		return
	}
	for _, cp := range r.ports {
		if cp.name == "" {
			for _, p := range peers {
				for _, b := range cp.blocks {
					if b.PrefixLen == 0 {
						b.Port = 0
					}
					set[Rule{Identity: p, Proto: cp.proto, Port: b.Port, PortPrefixLen: b.PrefixLen}] = true
				}
			}
			continue
		}
		np := namedPort{cp.name, cp.proto}
		if ingress {
			if port, ok := own[np]; ok {
				for _, p := range peers {
					set[Rule{Identity: p, Proto: cp.proto, Port: port, PortPrefixLen: 16}] = true
				}
			}
			continue
		}
		if r.anyPeer {
			for id, ports := range s.namedAll[np] {
				for port := range ports {
					set[Rule{Identity: id, Proto: cp.proto, Port: port, PortPrefixLen: 16}] = true
				}
			}
			continue
		}
		for _, p := range peers {
			if it := s.idents[p]; it != nil {
				for port := range it.namedPorts[np] {
					set[Rule{Identity: p, Proto: cp.proto, Port: port, PortPrefixLen: 16}] = true
				}
			}
		}
	}
}

// minimize returns the rules of set sorted, without those another rule
// of the set covers (same or any identity, same or any protocol, a port
// block that contains the rule's).
func minimize(set map[Rule]bool) []Rule {
	covered := func(r Rule) bool {
		for _, id := range []uint32{r.Identity, identity.None} {
			if set[Rule{Identity: id}] && (Rule{Identity: id}) != r {
				return true
			}
			if r.Proto == ProtoAny {
				continue
			}
			for l := uint8(0); l <= r.PortPrefixLen; l++ {
				c := Rule{Identity: id, Proto: r.Proto, Port: maskPort(r.Port, l), PortPrefixLen: l}
				if c != r && set[c] {
					return true
				}
			}
			if id == identity.None {
				break
			}
		}
		return false
	}
	var out []Rule
	for _, r := range slices.SortedFunc(maps.Keys(set), compareRules) {
		if !covered(r) {
			out = append(out, r)
		}
	}
	return out
}

func maskPort(port uint16, plen uint8) uint16 {
	if plen == 0 {
		return 0
	}
	if plen >= 16 {
		return port
	}
	return port &^ (1<<(16-plen) - 1)
}
