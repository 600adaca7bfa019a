// Package api is anetd's socket API: HTTP+JSON on a unix socket, used by
// anet-cni and anetctl. It holds the request and response types, their
// validation and decoding, and a small client. It must stay light: the CNI
// plugin imports it, and client-go never comes here.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"time"
)

// DefaultSocket is where anetd listens unless told otherwise.
const DefaultSocket = "/run/anet/anetd.sock"

// MaxBody bounds every request body anetd reads.
const MaxBody = 1 << 20

// Status is anetd's answer to GET /v1/status.
type Status struct {
	Ready     bool         `json:"ready"`
	Reason    string       `json:"reason,omitempty"` // why not ready
	NodeName  string       `json:"nodeName"`
	PodCIDR   netip.Prefix `json:"podCIDR"`
	Gateway   netip.Addr   `json:"gateway"`
	BPFRoot   string       `json:"bpfRoot"`
	Endpoints int          `json:"endpoints"`
	Allocated int          `json:"allocated"`
	Capacity  int          `json:"capacity"`
	Version   string       `json:"version"`
	Started   time.Time    `json:"started"`
}

// Attachment names one network attachment of a container, as CNI does:
// the network (the config's name), the container ID and the interface.
// Records made before networks were recorded have no network (see Legacy).
type Attachment struct {
	Network     string `json:"network,omitempty"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Legacy is the attachment as records made before networks were recorded
// name it: without its network.
func (a Attachment) Legacy() Attachment { a.Network = ""; return a }

// PodRef is what the runtime told the plugin about the pod (CNI_ARGS).
type PodRef struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// AllocateRequest asks for an address for an attachment (POST /v1/ipam).
type AllocateRequest struct {
	Attachment
	Pod PodRef `json:"pod"`
}

// Allocation is an address given to an attachment.
type Allocation struct {
	IP      netip.Addr   `json:"ip"`
	Gateway netip.Addr   `json:"gateway"`
	PodCIDR netip.Prefix `json:"podCIDR"`
}

// EndpointRequest registers a wired attachment (PUT /v1/endpoints/{containerID}/{ifName}).
type EndpointRequest struct {
	Attachment
	Pod         PodRef     `json:"pod"`
	Netns       string     `json:"netns"`
	IP          netip.Addr `json:"ip"`
	HostIfName  string     `json:"hostIfName"`
	HostIfindex uint32     `json:"hostIfindex"`
	HostMAC     string     `json:"hostMAC"`
	PodMAC      string     `json:"podMAC"`
	AttachMode  string     `json:"attachMode"`
}

// Counter is one of an endpoint's datapath counters.
type Counter struct {
	Dir     string `json:"dir"`    // egress (sent by the pod) or ingress (to the pod)
	Reason  string `json:"reason"` // "forwarded", or the drop reason
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Endpoint is a registered endpoint as anetd reports it.
type Endpoint struct {
	EndpointRequest
	Created time.Time `json:"created"`
	// NetnsInode is the inode of the pod's network namespace, taken at
	// ADD from the descriptor the plugin sent (0 when unknown): it finds
	// the namespace again when Netns, a path in the runtime's mount
	// namespace, is not one (see datapath.NetnsRef).
	NetnsInode uint64            `json:"netnsInode,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"` // the pod's, from the API (anetd with Kubernetes)
	Counters   []Counter         `json:"counters"`
}

// GCRequest keeps the listed attachments of one network and removes every
// other endpoint and allocation of that network (POST /v1/gc, from CNI GC).
// Records of other networks are not touched, nor are those without a
// network (made before networks were recorded: whose they are is not
// known). Without a network (an older plugin), the request covers every
// record, as it did then.
type GCRequest struct {
	Network string       `json:"network,omitempty"`
	Valid   []Attachment `json:"valid"`
}

// GCResult lists what GC removed.
type GCResult struct {
	Removed []Attachment `json:"removed"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"error"`
}

// Errors a client can branch on; the server maps them to HTTP statuses.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrNotReady = errors.New("anetd is not ready")
	ErrInvalid  = errors.New("invalid request")
	ErrFull     = errors.New("no free address")
)

// containerIDRe is the CNI spec's rule for container IDs.
var containerIDRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Validate checks an attachment as the CNI spec defines its parts.
func (a Attachment) Validate() error {
	if err := ValidNetwork(a.Network); err != nil {
		return err
	}
	if a.ContainerID == "" || len(a.ContainerID) > 256 || !containerIDRe.MatchString(a.ContainerID) {
		return invalid("containerID %q is not a valid container ID", a.ContainerID)
	}
	if err := ValidIfName(a.IfName); err != nil {
		return invalid("ifName: %v", err)
	}
	return nil
}

// ValidNetwork checks a network name by the CNI spec's rule (the rule of
// container IDs); empty is allowed and means no network.
func ValidNetwork(n string) error {
	if n != "" && (len(n) > 256 || !containerIDRe.MatchString(n)) {
		return invalid("network %q is not a valid network name", n)
	}
	return nil
}

// ValidIfName applies the kernel's (and the CNI spec's) interface name rules.
func ValidIfName(n string) error {
	if n == "" || len(n) > 15 || n == "." || n == ".." {
		return fmt.Errorf("%q is not a valid interface name", n)
	}
	for _, c := range n {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("%q is not a valid interface name", n)
		}
	}
	return nil
}

// Validate checks an allocation request.
func (r *AllocateRequest) Validate() error { return r.Attachment.Validate() }

// Validate checks an endpoint registration.
func (r *EndpointRequest) Validate() error {
	if err := r.Attachment.Validate(); err != nil {
		return err
	}
	if !r.IP.Is4() {
		return invalid("ip %q is not an IPv4 address", r.IP)
	}
	if err := ValidIfName(r.HostIfName); err != nil {
		return invalid("hostIfName: %v", err)
	}
	if r.HostIfindex == 0 {
		return invalid("hostIfindex must be set")
	}
	for k, v := range map[string]string{"hostMAC": r.HostMAC, "podMAC": r.PodMAC} {
		hw, err := net.ParseMAC(v)
		if err != nil || len(hw) != 6 {
			return invalid("%s %q is not an Ethernet address", k, v)
		}
	}
	return nil
}

// Validate checks a GC request.
func (r *GCRequest) Validate() error {
	if err := ValidNetwork(r.Network); err != nil {
		return err
	}
	for _, a := range r.Valid {
		if err := a.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validator is a request that can check itself.
type Validator interface{ Validate() error }

// Decode reads one JSON request of at most MaxBody bytes into v, rejects
// unknown fields and trailing data, and validates it. Every failure wraps
// ErrInvalid.
func Decode(r io.Reader, v Validator) error {
	lr := &io.LimitedReader{R: r, N: MaxBody + 1}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if lr.N <= 0 {
			return invalid("request body exceeds %d bytes", MaxBody)
		}
		return invalid("decoding request: %v", err)
	}
	if dec.More() {
		return invalid("trailing data after the request")
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("trailing data after the request")
	}
	return v.Validate()
}
