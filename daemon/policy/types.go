package policy

import (
	"cmp"
	"fmt"
	"net/netip"

	"github.com/anet-dev/anet/daemon/identity"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Protocol numbers of rules.
const (
	ProtoAny  uint8 = 0
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Rule is one allow entry of an endpoint's policy, with the fields of the
// datapath's PolicyRule (anetd's main converts one to the other).
type Rule struct {
	Identity      uint32 // peer identity; 0 = any peer
	Proto         uint8  // 0 = any protocol (then Port and PortPrefixLen are 0)
	Port          uint16 // destination port (the pod's for ingress, the peer's for egress)
	PortPrefixLen uint8  // 0..16 high bits of Port that count; 16 = exactly Port, 0 = any port
}

func (r Rule) String() string {
	return fmt.Sprintf("id=%d proto=%d port=%d/%d", r.Identity, r.Proto, r.Port, r.PortPrefixLen)
}

// Matches reports whether the rule allows a connection with peer identity
// id, protocol proto and destination port port.
func (r Rule) Matches(id uint32, proto uint8, port uint16) bool {
	return (r.Identity == identity.None || r.Identity == id) &&
		(r.Proto == ProtoAny || r.Proto == proto) &&
		portMatches(r.Port, r.PortPrefixLen, port)
}

func compareRules(a, b Rule) int {
	return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.PortPrefixLen, b.PortPrefixLen))
}

// EndpointPolicy is what the datapath enforces for one local endpoint.
// When a direction is not enforced, everything is allowed that way and its
// rules are empty; when it is enforced, only what some rule matches is
// allowed (no rules: deny all). Rules are sorted and carry no rule that
// another of the same list covers.
type EndpointPolicy struct {
	IngressEnforced, EgressEnforced bool
	Ingress, Egress                 []Rule
	// IngressPolicies and EgressPolicies name the policies
	// (namespace/name, sorted) that select the pod for each direction:
	// those that isolate it, for logging and anetctl.
	IngressPolicies, EgressPolicies []string
}

// Problem is something in a NetworkPolicy that anet does not enforce as
// written: anetd logs it and emits it as an Event on the policy. What
// anet does instead is always the safe side: the part in question allows
// nothing (it never widens what is allowed).
type Problem struct {
	Policy string // namespace/name
	Field  string // path in the object, e.g. spec.ingress[0].ports[1].protocol
	Why    string
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s: %s", p.Policy, p.Field, p.Why) }

// Node is a node of the cluster as the model needs it: its name and its
// own addresses (InternalIP, ExternalIP).
type Node struct {
	Name  string
	Addrs []netip.Addr
}

// Options change how policies are read.
type Options struct {
	// IPBlockExcludesCluster selects Cilium's reading of ipBlock (the
	// brief's IPBlockMatchesPods: false): an ipBlock matches only
	// addresses outside the cluster's pod and node addresses. The zero
	// value is the literal reading, the default, which upstream's e2e
	// suite and Calico follow: an ipBlock also matches the pods and nodes
	// whose addresses lie inside it.
	IPBlockExcludesCluster bool
}

// Input is the cluster as seen by one node.
type Input struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod // every pod of the cluster, with its addresses
	Namespaces []*corev1.Namespace
	Nodes      []Node
	// LocalNode is this node's name: its pods are the local endpoints,
	// its addresses map to identity Host.
	LocalNode string
	// Identity resolves a pod's identity key to its number; a pod whose
	// key it does not know is left out (listed in Result.Unresolved).
	Identity func(identity.Key) (uint32, bool)
}

// Result is the desired state of one node.
type Result struct {
	// Endpoints holds the policy of every local pod, keyed by
	// namespace/name.
	Endpoints map[string]EndpointPolicy
	// IPCache is the desired content of the LPM ipcache.
	IPCache map[netip.Prefix]uint32
	// CIDRs maps each ipBlock CIDR and except in IPCache to its CIDR identity.
	CIDRs map[netip.Prefix]uint32
	// Problems lists what is not enforced as written, sorted.
	Problems []Problem
	// Unresolved lists the pods (namespace/name) whose identity key was not
	// resolved: they are neither peers nor in the ipcache until it is.
	Unresolved []string
}
