// Package proxyhealth answers kube-proxy's health endpoints for anet, so
// that load balancers and tools that probe kube-proxy keep working: the
// proxy's /healthz and /livez (kube-proxy's --healthz-bind-address, port
// 10256) and one server per Service healthCheckNodePort. Status codes,
// headers and bodies are those of kube-proxy v1.35
// (k8s.io/kubernetes/pkg/proxy/healthcheck).
package proxyhealth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ToBeDeletedTaint is the cluster autoscaler's taint on a node it is about
// to remove: such a node is not eligible for new load-balanced traffic.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// DefaultTimeout is how long a queued change may wait for the maps before
// the proxy counts as unhealthy: kube-proxy's 2 x its 30 s sync period.
const DefaultTimeout = 60 * time.Second

// ProxierHealth is the health of one IP family's proxier.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the body of /healthz and /livez, field for field
// kube-proxy's.
type ProxyHealth struct {
	LastUpdated  time.Time                         `json:"lastUpdated"`
	CurrentTime  time.Time                         `json:"currentTime"`
	NodeEligible *bool                             `json:"nodeEligible,omitempty"`
	Healthy      bool                              `json:"healthy"`
	Status       map[corev1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// Server is the proxy's health: it learns when changes are queued and when
// the maps caught up (service.HealthReporter), and serves /healthz and
// /livez. The proxier is unhealthy when a change has waited longer than
// the timeout; /healthz also fails when the node is not eligible (gone,
// being deleted, or tainted by the autoscaler for removal).
type Server struct {
	timeout time.Duration
	node    func() (*corev1.Node, error)
	now     func() time.Time

	mu           sync.Mutex
	lastUpdated  time.Time // zero until the first Updated
	oldestQueued time.Time // zero when nothing waits
}

// New returns a health that counts a change waiting longer than timeout as
// unhealthy; node returns this node's Node object (from the informer).
func New(timeout time.Duration, node func() (*corev1.Node, error)) *Server {
	return &Server{timeout: timeout, node: node, now: time.Now}
}

// family is the only one anet proxies today.
const family = corev1.IPv4Protocol

// QueuedUpdate records that a change is waiting to be programmed.
func (s *Server) QueuedUpdate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.oldestQueued.IsZero() {
		s.oldestQueued = s.now()
	}
}

// Updated records that the maps hold every change queued so far.
func (s *Server) Updated() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oldestQueued = time.Time{}
	s.lastUpdated = s.now()
}

// Health is the proxy's health now. As in kube-proxy, a proxier that has
// never updated counts as healthy (it is starting).
func (s *Server) Health() ProxyHealth {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := ProxyHealth{Healthy: true, Status: map[corev1.IPFamily]ProxierHealth{}, CurrentTime: s.now()}
	if !s.lastUpdated.IsZero() {
		ph := ProxierHealth{LastUpdated: s.lastUpdated, Healthy: true}
		if !s.oldestQueued.IsZero() && h.CurrentTime.Sub(s.oldestQueued) >= s.timeout {
			ph.Healthy, h.Healthy = false, false
		}
		h.Status[family] = ph
		h.LastUpdated = s.lastUpdated
	}
	return h
}

// NodeEligible says whether this node should take load-balanced traffic:
// its Node exists, is not being deleted, and has no ToBeDeletedTaint.
func (s *Server) NodeEligible() bool {
	if s.node == nil {
		return false
	}
	n, err := s.node()
	if err != nil || n == nil || n.DeletionTimestamp != nil {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// Handler serves /healthz and /livez as kube-proxy does: 200 or 503 with
// a JSON ProxyHealth (lastUpdated is now when healthy, for older clients
// that read it as the last sync); /healthz adds nodeEligible and fails
// when the node is not eligible.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		h := s.Health()
		eligible := s.NodeEligible()
		h.NodeEligible = &eligible
		s.write(w, h, h.Healthy && eligible)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		h := s.Health()
		s.write(w, h, h.Healthy)
	})
	return mux
}

func (s *Server) write(w http.ResponseWriter, h ProxyHealth, ok bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if ok {
		w.WriteHeader(http.StatusOK)
		h.LastUpdated = s.now()
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	b, _ := json.Marshal(h)
	_, _ = w.Write(b)
}

// Listener is a running HTTP server.
type Listener struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr in the calling goroutine's network namespace and
// serves h in the background.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &Listener{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health server stopped", "addr", addr, "err", err)
		}
	}()
	return l, nil
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops the server at once.
func (l *Listener) Close() error { return l.srv.Close() }

// Shutdown stops the server, letting requests in flight finish.
func (l *Listener) Shutdown(ctx context.Context) error { return l.srv.Shutdown(ctx) }

// ListenProxy serves the proxy's health on addr (host:port).
func (s *Server) ListenProxy(addr string, log *slog.Logger) (*Listener, error) {
	l, err := Listen(addr, s.Handler(), log)
	if err != nil {
		return nil, fmt.Errorf("kube-proxy health server on %s: %w", addr, err)
	}
	return l, nil
}
