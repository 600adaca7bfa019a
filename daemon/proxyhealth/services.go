package proxyhealth

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Services serves the healthCheckNodePorts (Services of type LoadBalancer
// with externalTrafficPolicy Local): on each port, on every address of the
// node's network namespace, 200 while this node has a ready endpoint of
// the Service and the proxy is healthy, 503 otherwise, with kube-proxy's
// JSON body and X-Load-Balancing-Endpoint-Weight header. A port that
// cannot be bound is logged and retried.
type Services struct {
	log     *slog.Logger
	healthy func() bool
	listen  func(port uint16) (net.Listener, error)

	mu   sync.Mutex
	want map[nsn]want
	open map[nsn]*instance
}

type nsn struct{ namespace, name string }

type want struct {
	port  uint16
	local int
}

type instance struct {
	port   uint16
	srv    *http.Server
	failed string // the last bind error logged
}

// NewServices returns the health check servers; healthy says whether the
// proxy is (nil: always).
func NewServices(healthy func() bool, log *slog.Logger) *Services {
	return &Services{
		log: log, healthy: healthy,
		listen: func(port uint16) (net.Listener, error) {
			// Every address of the netns, as kube-proxy listens by default.
			return net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(int(port))))
		},
		want: map[nsn]want{}, open: map[nsn]*instance{},
	}
}

// SetHealthCheck sets a Service's port and its count of this node's ready
// endpoints; port 0 closes its server (service.HealthChecks).
func (s *Services) SetHealthCheck(namespace, name string, port uint16, localReady int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := nsn{namespace, name}
	if port == 0 {
		delete(s.want, k)
	} else {
		s.want[k] = want{port: port, local: localReady}
	}
	s.sync(k)
}

// sync opens, moves or closes k's server to match what is wanted.
func (s *Services) sync(k nsn) {
	w, wanted := s.want[k]
	in := s.open[k]
	if in != nil && in.srv != nil && (!wanted || in.port != w.port) {
		_ = in.srv.Close()
		s.log.Info("health check closed", "service", k.namespace+"/"+k.name, "port", in.port)
		in = nil
		delete(s.open, k)
	}
	if !wanted {
		delete(s.open, k)
		return
	}
	if in != nil && in.srv != nil {
		return
	}
	ln, err := s.listen(w.port)
	if err != nil {
		if in == nil {
			in = &instance{port: w.port}
			s.open[k] = in
		}
		if msg := err.Error(); msg != in.failed {
			s.log.Error("cannot serve a healthCheckNodePort; retrying", "service", k.namespace+"/"+k.name, "port", w.port, "err", err)
			in.failed = msg
		}
		return
	}
	srv := &http.Server{Handler: s.handler(k), ReadHeaderTimeout: 5 * time.Second}
	s.open[k] = &instance{port: w.port, srv: srv}
	go func() { _ = srv.Serve(ln) }()
	s.log.Info("health check serving", "service", k.namespace+"/"+k.name, "port", w.port)
}

// Retry binds the ports that could not be bound before.
func (s *Services) Retry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.want {
		s.sync(k)
	}
}

// Run retries failed binds every interval until ctx ends, then closes
// every server.
func (s *Services) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.Close()
			return
		case <-t.C:
			s.Retry()
		}
	}
}

// Close stops every server.
func (s *Services) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, in := range s.open {
		if in.srv != nil {
			_ = in.srv.Close()
		}
		delete(s.open, k)
	}
	clear(s.want)
}

func (s *Services) handler(k nsn) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		want, ok := s.want[k]
		s.mu.Unlock()
		if !ok {
			return // closed meanwhile; kube-proxy answers nothing either
		}
		healthy := s.healthy == nil || s.healthy()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(want.local))
		if want.local != 0 && healthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, Body(k.namespace, k.name, want.local, healthy))
	})
}

// Body is kube-proxy's health check answer, byte for byte (its template,
// dedented, tabs kept).
func Body(namespace, name string, localEndpoints int, proxyHealthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		namespace, name, localEndpoints, proxyHealthy)
}
