package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
)

// Client talks to one anetd over its unix socket, one request per
// connection (see transport_linux.go).
type Client struct {
	socket string
}

// NewClient returns a client of the anetd listening on socket.
func NewClient(socket string) *Client { return &Client{socket: socket} }

// HTTP methods and the statuses the client branches on (net/http's
// values; the client does not link net/http, see transport_linux.go).
const (
	methodGet    = "GET"
	methodPost   = "POST"
	methodPut    = "PUT"
	methodDelete = "DELETE"

	statusBadRequest          = 400
	statusNotFound            = 404
	statusConflict            = 409
	statusServiceUnavailable  = 503
	statusInsufficientStorage = 507
)

// UnavailableError says anetd could not be reached at all (as opposed to
// answering with an error).
type UnavailableError struct {
	Socket string
	Err    error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("anetd unreachable at %s: %v", e.Socket, e.Err)
}
func (e *UnavailableError) Unwrap() error { return e.Err }

// StatusError is a non-2xx answer, wrapping the matching sentinel error.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

func (e *StatusError) Unwrap() error {
	switch e.Code {
	case statusNotFound:
		return ErrNotFound
	case statusConflict:
		return ErrExists
	case statusServiceUnavailable:
		return ErrNotReady
	case statusBadRequest:
		return ErrInvalid
	case statusInsufficientStorage:
		return ErrFull
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.doFDs(ctx, method, path, in, out, nil)
}

// doFDs sends one request, with fds passed along (SCM_RIGHTS; they stay
// the caller's), and decodes a 2xx answer into out.
func (c *Client) doFDs(ctx context.Context, method, path string, in, out any, fds []int) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	a, err := c.roundTrip(ctx, method, path, body, fds)
	if err != nil {
		return &UnavailableError{Socket: c.socket, Err: err}
	}
	if a.code/100 != 2 {
		var e Error
		if json.Unmarshal(a.body, &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("anetd answered %s", a.status)
		}
		return &StatusError{Code: a.code, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(a.body, out); err != nil {
			return fmt.Errorf("decoding anetd's answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

// epPath names an endpoint; its network, when it has one, is the query
// parameter "network" (so that the paths of older plugins stay valid).
func epPath(a Attachment) string { return epPathWith(a, "") }

// epPathWith is epPath with more path after the endpoint's.
func epPathWith(a Attachment, more string) string {
	p := "/v1/endpoints/" + url.PathEscape(a.ContainerID) + "/" + url.PathEscape(a.IfName) + more
	if a.Network != "" {
		p += "?network=" + url.QueryEscape(a.Network)
	}
	return p
}

// Status returns anetd's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, methodGet, "/v1/status", nil, &s)
}

// Allocate asks for an address for an attachment.
func (c *Client) Allocate(ctx context.Context, r AllocateRequest) (*Allocation, error) {
	var a Allocation
	return &a, c.do(ctx, methodPost, "/v1/ipam", r, &a)
}

// PutEndpoint registers a wired endpoint and programs the datapath for it.
func (c *Client) PutEndpoint(ctx context.Context, r EndpointRequest) error {
	return c.do(ctx, methodPut, epPath(r.Attachment), r, nil)
}

// DeleteEndpoint removes an endpoint and releases its address; it succeeds
// when neither exists.
func (c *Client) DeleteEndpoint(ctx context.Context, a Attachment) error {
	return c.do(ctx, methodDelete, epPath(a), nil, nil)
}

// GetEndpoint returns one endpoint.
func (c *Client) GetEndpoint(ctx context.Context, a Attachment) (*Endpoint, error) {
	var e Endpoint
	return &e, c.do(ctx, methodGet, epPath(a), nil, &e)
}

// ListEndpoints returns every endpoint with its counters.
func (c *Client) ListEndpoints(ctx context.Context) ([]Endpoint, error) {
	var es []Endpoint
	return es, c.do(ctx, methodGet, "/v1/endpoints", nil, &es)
}

// GC removes every endpoint and allocation not in r.Valid.
func (c *Client) GC(ctx context.Context, r GCRequest) (*GCResult, error) {
	var g GCResult
	return &g, c.do(ctx, methodPost, "/v1/gc", r, &g)
}

// ListServices returns every service frontend anetd programs.
func (c *Client) ListServices(ctx context.Context) ([]ServiceFrontend, error) {
	var fs []ServiceFrontend
	return fs, c.do(ctx, methodGet, "/v1/services", nil, &fs)
}
