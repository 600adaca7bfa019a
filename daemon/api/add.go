package api

import (
	"context"
	"net/netip"
	"runtime"
)

// AddRequest asks anetd to do a whole CNI ADD (POST /v1/endpoints): give
// the attachment an address, make its veth pair in the pod's network
// namespace, attach the programs, program the maps and record the
// endpoint. The namespace travels with the request as a file descriptor
// (see fdpass_linux.go); Netns is its path, for the record only.
type AddRequest struct {
	Attachment
	Pod   PodRef `json:"pod"`
	Netns string `json:"netns"`
	MTU   int    `json:"mtu,omitempty"`
}

// AddResult is what an ADD made, for the plugin's CNI result.
type AddResult struct {
	IP         netip.Addr   `json:"ip"`
	Gateway    netip.Addr   `json:"gateway"`
	PodCIDR    netip.Prefix `json:"podCIDR"`
	HostIfName string       `json:"hostIfName"`
	HostMAC    string       `json:"hostMAC"`
	PodMAC     string       `json:"podMAC"`
	AttachMode string       `json:"attachMode"`
	// Trace is how long each step took in anetd, in order (for
	// ANET_CNI_TRACE and the benchmark's breakdown).
	Trace []TraceStep `json:"trace,omitempty"`
}

// TraceStep is one step of anetd's work on a request.
type TraceStep struct {
	Step   string `json:"step"`
	Micros int64  `json:"us"`
}

// Validate checks an ADD request.
func (r *AddRequest) Validate() error {
	if err := r.Attachment.Validate(); err != nil {
		return err
	}
	if r.MTU != 0 && (r.MTU < 68 || r.MTU > 65535) {
		return invalid("mtu %d is out of range (68-65535)", r.MTU)
	}
	return nil
}

// Add asks anetd to wire an attachment into the network namespace netns
// (an open *os.File or ns.NetNS of it), in one round trip.
func (c *Client) Add(ctx context.Context, r AddRequest, netns interface{ Fd() uintptr }) (*AddResult, error) {
	var res AddResult
	err := c.doFDs(ctx, methodPost, "/v1/endpoints", r, &res, []int{int(netns.Fd())})
	runtime.KeepAlive(netns)
	return &res, err
}
