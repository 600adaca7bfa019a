// Package health serves anetd's /healthz and /readyz over HTTP.
//
// /healthz answers 200 while the process serves at all (liveness).
// /readyz answers 200 once anetd is ready (datapath loaded, endpoints
// restored, and with an API: the node's pod CIDR known and the informers
// synced) and 503 with the reason before. Readiness latches: once ready,
// anetd stays ready through an API server outage, because the datapath
// keeps forwarding as it is and a DaemonSet's pods flapping to not-ready
// for something outside the node would only add noise.
package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// State is anetd's readiness.
type State struct {
	mu     sync.Mutex
	ready  bool
	reason string
}

// NewState returns a state that is not ready for reason.
func NewState(reason string) *State { return &State{reason: reason} }

// SetReason says why anetd is not ready yet; it does nothing once ready.
func (s *State) SetReason(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		s.reason = reason
	}
}

// SetReady marks anetd ready, for good.
func (s *State) SetReady() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready, s.reason = true, ""
}

// Ready reports readiness and, when not ready, why.
func (s *State) Ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready, s.reason
}

// Handler serves /healthz and /readyz.
func (s *State) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ok, reason := s.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %s\n", reason)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Server is a running health server.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr (host:port; an empty host means every address of the
// netns) and serves s in the background; a bind error is returned at once.
func Listen(addr string, s *State, log *slog.Logger) (*Server, error) {
	return ListenHTTP("health server", addr, s.Handler(), log)
}

// ListenHTTP binds addr and serves h in the background, as Listen does:
// for anetd's other HTTP endpoints (metrics). name is for errors and logs.
func ListenHTTP(name, addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	hs := &Server{ln: ln, srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}}
	go func() {
		if err := hs.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+" stopped", "err", err)
		}
	}()
	return hs, nil
}

// Addr is the address the server listens on.
func (hs *Server) Addr() net.Addr { return hs.ln.Addr() }

// Shutdown stops the server.
func (hs *Server) Shutdown(ctx context.Context) error { return hs.srv.Shutdown(ctx) }

// Stop stops the server, waiting at most 2 s for the requests in flight.
func (hs *Server) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hs.srv.Shutdown(ctx)
}
