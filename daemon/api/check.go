package api

import "context"

// EndpointCheck is anetd's answer to GET
// /v1/endpoints/{containerID}/{ifName}/check (CNI CHECK): whether the
// endpoint's host side is as its ADD left it. The pod side is the
// plugin's to check, in the pod's namespace.
type EndpointCheck struct {
	// Problem says what is wrong; empty when all is well.
	Problem string `json:"problem,omitempty"`
}

// CheckEndpoint asks anetd to check an endpoint's host side: its device,
// under its name and index, with anetd's current programs attached.
func (c *Client) CheckEndpoint(ctx context.Context, a Attachment) (*EndpointCheck, error) {
	var e EndpointCheck
	return &e, c.do(ctx, methodGet, epPathWith(a, "/check"), nil, &e)
}
