package proxyhealth

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// TestServicesInNetns runs the healthCheckNodePort servers in a network
// namespace of the test's own and probes them from inside it.
func TestServicesInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace); CI runs as root")
	}
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close(); _ = testutils.UnmountNS(netns) })
	if out, err := runIn(netns, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	var healthy atomic.Bool
	healthy.Store(true)
	s := NewServices(healthy.Load, slog.New(slog.DiscardHandler))
	s.listen = func(port uint16) (ln net.Listener, err error) {
		err = netns.Do(func(ns.NetNS) error {
			ln, err = net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
			return err
		})
		return ln, err
	}
	t.Cleanup(s.Close)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = netns.Do(func(ns.NetNS) error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	probe := func(port int) (int, string, http.Header, error) {
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return 0, "", nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header, nil
	}

	s.SetHealthCheck("default", "web", 32000, 2)
	code, body, hdr, err := probe(32000)
	if err != nil || code != 200 || body != Body("default", "web", 2, true) || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "2" {
		t.Fatalf("with local endpoints: %d %q %v %v", code, body, hdr, err)
	}
	healthy.Store(false)
	if code, body, _, _ = probe(32000); code != 503 || !strings.Contains(body, `"serviceProxyHealthy": false`) {
		t.Errorf("proxy unhealthy: %d %q", code, body)
	}
	healthy.Store(true)
	s.SetHealthCheck("default", "web", 32000, 0)
	if code, body, hdr, _ = probe(32000); code != 503 || body != Body("default", "web", 0, true) || hdr.Get("X-Load-Balancing-Endpoint-Weight") != "0" {
		t.Errorf("no local endpoint: %d %q", code, body)
	}
	// The port moves: the old one closes.
	s.SetHealthCheck("default", "web", 32001, 1)
	if code, _, _, err = probe(32001); err != nil || code != 200 {
		t.Errorf("new port: %d %v", code, err)
	}
	if _, _, _, err = probe(32000); err == nil {
		t.Error("the old port still answers")
	}
	// A port taken by someone else: retried until it is free.
	var busy net.Listener
	if err := netns.Do(func(ns.NetNS) error {
		busy, err = net.Listen("tcp", ":32002")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.SetHealthCheck("default", "db", 32002, 1)
	busy.Close()
	s.Retry()
	if code, body, _, err = probe(32002); err != nil || code != 200 || !strings.Contains(body, `"name": "db"`) {
		t.Errorf("after the port was freed: %d %q %v", code, body, err)
	}
	// Port 0: closed.
	s.SetHealthCheck("default", "web", 0, 0)
	if _, _, _, err = probe(32001); err == nil {
		t.Error("a removed health check still answers")
	}
	s.Close()
	if _, _, _, err = probe(32002); err == nil {
		t.Error("answers after Close")
	}
}

func runIn(netns ns.NetNS, args ...string) ([]byte, error) {
	return exec.Command("nsenter", append([]string{"--net=" + netns.Path(), "--"}, args...)...).CombinedOutput()
}
