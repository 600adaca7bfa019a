package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to one anetd over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the anetd listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

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
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrExists
	case http.StatusServiceUnavailable:
		return ErrNotReady
	case http.StatusBadRequest:
		return ErrInvalid
	case http.StatusInsufficientStorage:
		return ErrFull
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://anetd"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &UnavailableError{Socket: c.socket, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return &UnavailableError{Socket: c.socket, Err: err}
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("anetd answered %s", resp.Status)
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding anetd's answer to %s %s: %w", method, path, err)
		}
	}
	return nil
}

// epPath names an endpoint; its network, when it has one, is the query
// parameter "network" (so that the paths of older plugins stay valid).
func epPath(a Attachment) string {
	p := "/v1/endpoints/" + url.PathEscape(a.ContainerID) + "/" + url.PathEscape(a.IfName)
	if a.Network != "" {
		p += "?network=" + url.QueryEscape(a.Network)
	}
	return p
}

// Status returns anetd's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
}

// Allocate asks for an address for an attachment.
func (c *Client) Allocate(ctx context.Context, r AllocateRequest) (*Allocation, error) {
	var a Allocation
	return &a, c.do(ctx, http.MethodPost, "/v1/ipam", r, &a)
}

// PutEndpoint registers a wired endpoint and programs the datapath for it.
func (c *Client) PutEndpoint(ctx context.Context, r EndpointRequest) error {
	return c.do(ctx, http.MethodPut, epPath(r.Attachment), r, nil)
}

// DeleteEndpoint removes an endpoint and releases its address; it succeeds
// when neither exists.
func (c *Client) DeleteEndpoint(ctx context.Context, a Attachment) error {
	return c.do(ctx, http.MethodDelete, epPath(a), nil, nil)
}

// GetEndpoint returns one endpoint.
func (c *Client) GetEndpoint(ctx context.Context, a Attachment) (*Endpoint, error) {
	var e Endpoint
	return &e, c.do(ctx, http.MethodGet, epPath(a), nil, &e)
}

// ListEndpoints returns every endpoint with its counters.
func (c *Client) ListEndpoints(ctx context.Context) ([]Endpoint, error) {
	var es []Endpoint
	return es, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &es)
}

// GC removes every endpoint and allocation not in r.Valid.
func (c *Client) GC(ctx context.Context, r GCRequest) (*GCResult, error) {
	var g GCResult
	return &g, c.do(ctx, http.MethodPost, "/v1/gc", r, &g)
}

// ListServices returns every service frontend anetd programs.
func (c *Client) ListServices(ctx context.Context) ([]ServiceFrontend, error) {
	var fs []ServiceFrontend
	return fs, c.do(ctx, http.MethodGet, "/v1/services", nil, &fs)
}
