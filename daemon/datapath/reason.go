// Package datapath is anet's privileged edge: it loads and pins the eBPF
// programs and maps, attaches them to endpoint devices, and writes the maps.
// Policy, IPAM and the rest decide what to write; this package only writes it.
package datapath

import "fmt"

// Reason says why the datapath did not forward a packet; ReasonForwarded
// (0) counts the packets that went on. The values are enum anet_reason in
// bpf/lib/common.h: only append, and keep both in step (TestReasonsMatchC).
type Reason uint8

const (
	ReasonForwarded Reason = iota
	DropUnknownEndpoint
	DropMalformedL2
	DropMalformedIP
	DropUnsupportedL3
	DropInvalidSource
	DropMalformedARP
	DropTTLExceeded
	DropRedirectFailed
	DropCsumFailed
	DropNoServiceBackend
	DropNoSNATPort
	DropFIBFailed
	DropMalformedL4
	DropCTFull
	DropPolicyEgress
	DropPolicyIngress
	DropTunnelTruncated
	DropTunnelBadVersion
	DropTunnelBadOptions
	DropTunnelBadProtocol
	DropTunnelBadSource
	DropTunnelNoEndpoint
	DropTunnelEncapFailed
	reasonMax
)

var reasonNames = [...]string{
	ReasonForwarded:     "forwarded",
	DropUnknownEndpoint: "unknown-endpoint",
	DropMalformedL2:     "malformed-l2",
	DropMalformedIP:     "malformed-ip",
	DropUnsupportedL3:   "unsupported-l3",
	DropInvalidSource:   "invalid-source",
	DropMalformedARP:    "malformed-arp",
	DropTTLExceeded:     "ttl-exceeded",
	DropRedirectFailed:  "redirect-failed",
	DropCsumFailed:      "csum-failed",
	// Counted node-wide: a connect() or sendto() to a service frontend
	// without an active backend, refused (ECONNREFUSED) by the socket
	// hooks, or a packet from outside to one, dropped on the underlay.
	DropNoServiceBackend: "no-service-backend",
	DropNoSNATPort:       "no-snat-port",
	DropFIBFailed:        "fib-failed",
	DropMalformedL4:      "malformed-l4",
	DropCTFull:           "conntrack-full",
	// Counted on the endpoint whose policy refused the new connection:
	// the sender's egress, or the receiver's ingress.
	DropPolicyEgress:  "policy-egress-denied",
	DropPolicyIngress: "policy-ingress-denied",
	// The Geneve overlay (bpf/lib/geneve.h). Decapsulation drops count
	// node-wide on the underlay's ingress; an encapsulation failure on
	// the sending endpoint.
	DropTunnelTruncated:   "tunnel-truncated",
	DropTunnelBadVersion:  "tunnel-bad-version",
	DropTunnelBadOptions:  "tunnel-bad-options",
	DropTunnelBadProtocol: "tunnel-bad-protocol",
	DropTunnelBadSource:   "tunnel-bad-source",
	DropTunnelNoEndpoint:  "tunnel-no-endpoint",
	DropTunnelEncapFailed: "tunnel-encap-failed",
}

// cNames are the C enumerator names, checked against the header by tests.
var cNames = [...]string{
	ReasonForwarded:       "REASON_FORWARDED",
	DropUnknownEndpoint:   "DROP_UNKNOWN_ENDPOINT",
	DropMalformedL2:       "DROP_MALFORMED_L2",
	DropMalformedIP:       "DROP_MALFORMED_IP",
	DropUnsupportedL3:     "DROP_UNSUPPORTED_L3",
	DropInvalidSource:     "DROP_INVALID_SOURCE",
	DropMalformedARP:      "DROP_MALFORMED_ARP",
	DropTTLExceeded:       "DROP_TTL_EXCEEDED",
	DropRedirectFailed:    "DROP_REDIRECT_FAILED",
	DropCsumFailed:        "DROP_CSUM_FAILED",
	DropNoServiceBackend:  "DROP_NO_SERVICE_BACKEND",
	DropNoSNATPort:        "DROP_NO_SNAT_PORT",
	DropFIBFailed:         "DROP_FIB_FAILED",
	DropMalformedL4:       "DROP_MALFORMED_L4",
	DropCTFull:            "DROP_CT_FULL",
	DropPolicyEgress:      "DROP_POLICY_EGRESS",
	DropPolicyIngress:     "DROP_POLICY_INGRESS",
	DropTunnelTruncated:   "DROP_TUNNEL_TRUNCATED",
	DropTunnelBadVersion:  "DROP_TUNNEL_BAD_VERSION",
	DropTunnelBadOptions:  "DROP_TUNNEL_BAD_OPTIONS",
	DropTunnelBadProtocol: "DROP_TUNNEL_BAD_PROTOCOL",
	DropTunnelBadSource:   "DROP_TUNNEL_BAD_SOURCE",
	DropTunnelNoEndpoint:  "DROP_TUNNEL_NO_ENDPOINT",
	DropTunnelEncapFailed: "DROP_TUNNEL_ENCAP_FAILED",
}

func (r Reason) String() string {
	if r < reasonMax {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// IsDrop reports whether r counts dropped packets.
func (r Reason) IsDrop() bool { return r != ReasonForwarded }

// Dir is a direction seen from the endpoint (enum anet_dir).
type Dir uint8

const (
	DirEgress  Dir = 0 // sent by the pod
	DirIngress Dir = 1 // delivered to the pod
)

func (d Dir) String() string {
	switch d {
	case DirEgress:
		return "egress"
	case DirIngress:
		return "ingress"
	}
	return fmt.Sprintf("dir-%d", uint8(d))
}
