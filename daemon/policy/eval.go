package policy

import (
	"net/netip"

	"github.com/anet-dev/anet/daemon/identity"
)

// Lookup returns the identity the ipcache gives addr: its most specific
// entry's, World when none holds it (the datapath's LPM lookup).
func Lookup(ipc map[netip.Prefix]uint32, addr netip.Addr) uint32 {
	addr = addr.Unmap()
	for bits := addr.BitLen(); bits >= 0; bits-- {
		p, err := addr.Prefix(bits)
		if err != nil {
			break
		}
		if id, ok := ipc[p]; ok {
			return id
		}
	}
	return identity.World
}

// MatchAny reports whether some rule matches.
func MatchAny(rules []Rule, id uint32, proto uint8, port uint16) bool {
	for _, r := range rules {
		if r.Matches(id, proto, port) {
			return true
		}
	}
	return false
}

// AllowsEgress applies the datapath's egress check of an endpoint to a new
// connection towards a peer of identity dst on (proto, port).
func (ep EndpointPolicy) AllowsEgress(dst uint32, proto uint8, port uint16) bool {
	return !ep.EgressEnforced || MatchAny(ep.Egress, dst, proto, port)
}

// AllowsIngress applies the datapath's ingress check of an endpoint to a
// new connection from a peer of identity src to its port: the host (kubelet
// probes) is always allowed in.
func (ep EndpointPolicy) AllowsIngress(src uint32, proto uint8, port uint16) bool {
	return src == identity.Host || !ep.IngressEnforced || MatchAny(ep.Ingress, src, proto, port)
}
