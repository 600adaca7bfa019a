package apiserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/anet-dev/anet/daemon/api"
)

// TestListServices: GET /v1/services answers the reconciler's snapshot,
// addresses as strings; 404 while Services are not served, 503 before
// anetd is ready.
func TestListServices(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "anetd.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	var ready atomic.Bool
	srv := New(nil, func() api.Status { return api.Status{Ready: ready.Load(), Reason: "restoring endpoints"} }, slog.New(slog.DiscardHandler))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	c := api.NewClient(sock)
	ctx := context.Background()

	if _, err := c.ListServices(ctx); !errors.Is(err, api.ErrNotReady) {
		t.Errorf("before ready: %v, want ErrNotReady", err)
	}
	ready.Store(true)
	if _, err := c.ListServices(ctx); !errors.Is(err, api.ErrNotFound) || !strings.Contains(err.Error(), "does not serve Services") {
		t.Errorf("without services: %v, want ErrNotFound", err)
	}
	want := []api.ServiceFrontend{{
		Namespace: "default", Name: "web", Port: "http", Kind: "ClusterIP", Scope: "external",
		Address: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: "TCP", RevNat: 3, Active: 1, Programmed: true,
		Backends: []api.ServiceBackend{
			{Address: netip.MustParseAddrPort("10.244.1.5:8080"), State: "ready", Active: true, ID: 7, Node: "n1"},
			{Address: netip.MustParseAddrPort("10.244.2.5:8080"), State: "terminating", ID: 8},
		},
	}}
	srv.SetServices(func() []api.ServiceFrontend { return want })
	got, err := c.ListServices(ctx)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ListServices = %+v, %v; want %+v", got, err, want)
	}
	// On the wire: addresses and ports as one string each.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://anetd/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range []string{`"address":"10.96.0.10:80"`, `"address":"10.244.1.5:8080"`, `"state":"terminating"`, `"protocol":"TCP"`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("body lacks %s: %s", s, b)
		}
	}
	// No frontends: an empty list, not null.
	srv.SetServices(func() []api.ServiceFrontend { return nil })
	resp, err = hc.Get("http://anetd/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("empty list = %q", b)
	}
}
