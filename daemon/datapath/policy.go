package datapath

// PolicyRule is one allow rule of an endpoint's policy in one direction, as
// the policy model computes it (the contract of issue 9): a peer identity,
// a protocol and a block of destination ports.
type PolicyRule struct {
	Identity      uint32 // peer identity; 0 = any peer
	Proto         uint8  // 0 = any protocol, 6 TCP, 17 UDP, 132 SCTP
	Port          uint16 // destination port (of the pod for ingress, of the peer for egress), host order
	PortPrefixLen uint8  // 0..16: how many high bits of Port count; 16 = exactly Port; 0 = any port (Port must be 0)
}

// Reserved identities (bpf/lib/policy.h).
const (
	IdentityAny   = 0 // the wildcard peer of a rule, never an endpoint's
	IdentityHost  = 1 // this node itself: always allowed into its pods
	IdentityWorld = 2 // outside the cluster: an address without an ipcache entry
	// IdentityMax is the largest identity: 24 bits, as the Geneve VNI
	// carries them (bpf/lib/geneve.h).
	IdentityMax = 1<<24 - 1
)
