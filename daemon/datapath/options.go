package datapath

import (
	"fmt"

	"github.com/anet-dev/anet/bpf"
)

// Options size the maps that anetd's flags size (0 takes the default).
// A size that differs from a pinned map's migrates that map at the next
// Load (its entries copied; see refillCopy).
type Options struct {
	// ServiceMapSize is the entries of anet_lb4_services: one master and
	// one slot per backend for every frontend.
	ServiceMapSize uint32
	// BackendMapSize is the entries of anet_lb4_backends (by backend ID).
	BackendMapSize uint32
	// RevNatMapSize is the entries of anet_lb4_revnat: one per frontend.
	RevNatMapSize uint32
	// AffinityMapSize is the entries of the session-affinity LRU
	// (client, frontend) -> backend.
	AffinityMapSize uint32
	// AffinityMatchMapSize is the entries of anet_lb4_aff_match: one per
	// active backend of every frontend with session affinity or of UDP.
	AffinityMatchMapSize uint32
	// SockRevNatMapSize is the entries of the socket reverse-NAT LRU: one
	// per (socket, backend) the socket hooks translated.
	SockRevNatMapSize uint32
	// CTMapSize is the entries of the per-packet translation's conntrack
	// LRU (bpf/lib/ct.h): two per connection from outside.
	CTMapSize uint32

	// PolicyMapSize is the entries of anet_policy, the allow rules of
	// every endpoint of the node: one per (endpoint, direction, peer
	// identity, protocol, port prefix block).
	PolicyMapSize uint32
	// IPCacheMapSize is the entries of anet_ipcache4: every pod and node
	// address of the cluster and every ipBlock CIDR and except.
	IPCacheMapSize uint32
	// PolicyCTMapSize is the entries of the pod conntrack LRU
	// (anet_pol_ct4): two per connection to or from a pod of the node.
	PolicyCTMapSize uint32

	// HostNAT makes the pod programs send a packet between two pods of
	// the node through the host stack when netfilter translated its
	// connection (a kube-proxy beside anet; see bpf/lxc.c ANET_HOST_NAT).
	HostNAT bool

	// RoutingMode is how packets to pods of other nodes leave: "" or
	// RoutingNative through the host stack (routes), RoutingTunnel
	// through the Geneve overlay (bpf/lib/geneve.h). A load-time
	// constant: native packets pay nothing for the tunnel's code.
	RoutingMode RoutingMode
}

// RoutingMode is --routing-mode.
type RoutingMode string

const (
	RoutingNative RoutingMode = "native"
	RoutingTunnel RoutingMode = "tunnel"
)

// ParseRoutingMode reads a --routing-mode value.
func ParseRoutingMode(s string) (RoutingMode, error) {
	switch m := RoutingMode(s); m {
	case RoutingNative, RoutingTunnel:
		return m, nil
	}
	return "", fmt.Errorf("routing mode %q: want %q or %q", s, RoutingNative, RoutingTunnel)
}

// constant is ANET_ROUTING_MODE's value (bpf/lib/geneve.h).
func (m RoutingMode) constant() uint32 {
	if m == RoutingTunnel {
		return 1
	}
	return 0
}

// DefaultOptions are the sizes for at least 65 536 Services and 262 144
// backends: the services map holds a master and a slot per backend. The
// policy maps fit 10 000 NetworkPolicies, 5 000 identities and 50 000
// ipcache entries: the ipcache takes 131 072 prefixes; the policy map
// holds 262 144 rules of the node's endpoints (for example 100 pods with
// 2 600 (identity, port) rules each), and its LPM trie allocates only
// what it holds. A full map makes the write fail with ErrMapFull.
func DefaultOptions() Options {
	return Options{
		ServiceMapSize:       327680,
		BackendMapSize:       262144,
		RevNatMapSize:        131072,
		AffinityMapSize:      65536,
		AffinityMatchMapSize: 262144,
		SockRevNatMapSize:    262144,
		CTMapSize:            262144,
		PolicyMapSize:        262144,
		IPCacheMapSize:       131072,
		PolicyCTMapSize:      262144,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	or := func(v, def uint32) uint32 {
		if v == 0 {
			return def
		}
		return v
	}
	return Options{
		ServiceMapSize:       or(o.ServiceMapSize, d.ServiceMapSize),
		BackendMapSize:       or(o.BackendMapSize, d.BackendMapSize),
		RevNatMapSize:        or(o.RevNatMapSize, d.RevNatMapSize),
		AffinityMapSize:      or(o.AffinityMapSize, d.AffinityMapSize),
		AffinityMatchMapSize: or(o.AffinityMatchMapSize, d.AffinityMatchMapSize),
		SockRevNatMapSize:    or(o.SockRevNatMapSize, d.SockRevNatMapSize),
		CTMapSize:            or(o.CTMapSize, d.CTMapSize),
		PolicyMapSize:        or(o.PolicyMapSize, d.PolicyMapSize),
		IPCacheMapSize:       or(o.IPCacheMapSize, d.IPCacheMapSize),
		PolicyCTMapSize:      or(o.PolicyCTMapSize, d.PolicyCTMapSize),
		HostNAT:              o.HostNAT,
		RoutingMode:          o.RoutingMode,
	}
}

// sizes are the map sizes by map name.
func (o Options) sizes() map[string]uint32 {
	return map[string]uint32{
		bpf.SockMapAnetLb4Services: o.ServiceMapSize,
		bpf.SockMapAnetLb4Backends: o.BackendMapSize,
		bpf.SockMapAnetLb4Revnat:   o.RevNatMapSize,
		bpf.SockMapAnetLb4Affinity: o.AffinityMapSize,
		bpf.SockMapAnetLb4AffMatch: o.AffinityMatchMapSize,
		bpf.SockMapAnetSock4Revnat: o.SockRevNatMapSize,
		bpf.HostMapAnetCt4:         o.CTMapSize,
		bpf.LxcMapAnetPolicy:       o.PolicyMapSize,
		bpf.LxcMapAnetIpcache4:     o.IPCacheMapSize,
		bpf.LxcMapAnetPolCt4:       o.PolicyCTMapSize,
	}
}
