package api

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// Kinds of identities.
const (
	IdentityAny      = "any"      // 0, the wildcard of rules: every peer
	IdentityReserved = "reserved" // host, world, remote-node
	IdentityPod      = "pod"      // cluster-wide, per (namespace labels, pod labels)
	IdentityCIDR     = "cidr"     // node-local, per ipBlock prefix
)

// Identity is a security identity as anetd knows it.
type Identity struct {
	ID   uint32 `json:"id"`
	Kind string `json:"kind"` // any, reserved, pod or cidr
	// Name is a reserved identity's: host, world or remote-node.
	Name string `json:"name,omitempty"`
	// Namespace, Labels (the pods') and NamespaceLabels (with
	// kubernetes.io/metadata.name) are a pod identity's.
	Namespace       string            `json:"namespace,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
	// CIDR is a CIDR identity's prefix.
	CIDR netip.Prefix `json:"cidr,omitzero"`
}

// IdentityEntry is one identity of GET /v1/identities (sorted by ID).
type IdentityEntry struct {
	Identity
	// Endpoints is how many endpoints of this node hold the identity
	// (pod identities; 0 for the others).
	Endpoints int `json:"endpoints"`
}

// EndpointPolicy is a local pod's effective NetworkPolicy state as anetd
// computed and wrote it (GET /v1/policy/{namespace}/{name}).
type EndpointPolicy struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node"`
	// Identity is the pod's own; ID 0 while it has none yet.
	Identity Identity `json:"identity"`
	// Ifindex is the endpoint's host-side interface; 0 while CNI has not
	// registered it.
	Ifindex uint32 `json:"ifindex"`
	// Programmed says the policy maps hold this state.
	Programmed bool            `json:"programmed"`
	Ingress    PolicyDirection `json:"ingress"`
	Egress     PolicyDirection `json:"egress"`
}

// PolicyDirection is one direction of an endpoint's policy. Not isolated:
// everything passes. Isolated (default deny): only what a rule allows; no
// rules, nothing. The node itself is always allowed into its pods
// (kubelet probes): the datapath does it, not a rule.
type PolicyDirection struct {
	Isolated bool `json:"isolated"`
	// Policies (namespace/name, sorted) select the pod for this direction.
	Policies []string     `json:"policies"`
	Rules    []PolicyRule `json:"rules"`
}

// PolicyRule allows a protocol and a port range to a set of peers. The
// port is the destination's: the pod's for ingress, the peer's for egress.
// Named ports are resolved, and the datapath's aligned port blocks are
// joined back into ranges. Rules are sorted by protocol, then ports.
type PolicyRule struct {
	Protocol string `json:"protocol"` // TCP, UDP, SCTP, or "any" (every protocol, ICMP too)
	// Port and EndPort bound the range (both included): 0 and 65535 is
	// every port, as with protocol "any".
	Port    uint16 `json:"port"`
	EndPort uint16 `json:"endPort"`
	// Peers are the identities the rule resolves to, sorted; ID 0 (kind
	// any) is every peer.
	Peers []Identity `json:"peers"`
}

// Label rules of the API server (DNS-1123 label for namespaces,
// subdomain for pod names).
var (
	dnsLabelRe     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomainRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// ValidPod checks a pod's namespace and name by the API server's rules.
func ValidPod(namespace, name string) error {
	if err := validPod(namespace, name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func validPod(namespace, name string) error {
	if len(namespace) > 63 || !dnsLabelRe.MatchString(namespace) {
		return fmt.Errorf("namespace %q is not a valid namespace name", namespace)
	}
	if len(name) > 253 || !dnsSubdomainRe.MatchString(name) {
		return fmt.Errorf("%q is not a valid pod name", name)
	}
	return nil
}

// ParsePod splits "namespace/name" (a command's argument) and checks
// both parts.
func ParsePod(s string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("%q is not NAMESPACE/POD", s)
	}
	return namespace, name, validPod(namespace, name)
}

// EndpointPolicy returns the effective policy of the local pod
// namespace/name.
func (c *Client) EndpointPolicy(ctx context.Context, namespace, name string) (*EndpointPolicy, error) {
	if err := ValidPod(namespace, name); err != nil {
		return nil, err
	}
	var p EndpointPolicy
	path := fmt.Sprintf("/v1/policy/%s/%s", url.PathEscape(namespace), url.PathEscape(name))
	return &p, c.do(ctx, methodGet, path, nil, &p)
}

// ListIdentities returns every security identity anetd knows.
func (c *Client) ListIdentities(ctx context.Context) ([]IdentityEntry, error) {
	var ids []IdentityEntry
	return ids, c.do(ctx, methodGet, "/v1/identities", nil, &ids)
}
