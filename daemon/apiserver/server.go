// Package apiserver serves anetd's socket API (see package api) over HTTP
// on a unix socket of mode 0600.
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/endpoint"
)

// Server answers the socket API from the endpoint manager.
type Server struct {
	eps      *endpoint.Manager
	status   func() api.Status
	log      *slog.Logger
	srv      *http.Server
	services atomic.Pointer[func() []api.ServiceFrontend]
	policy   atomic.Pointer[Policy] // policy.go
	// policyWait is how long an ADD waits for the pod's policy (ns).
	policyWait atomic.Int64
}

// New returns a server; status reports anetd's readiness and facts.
func New(eps *endpoint.Manager, status func() api.Status, log *slog.Logger) *Server {
	s := &Server{eps: eps, status: status, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.getStatus)
	mux.HandleFunc("POST /v1/ipam", s.ready(s.allocate))
	mux.HandleFunc("GET /v1/endpoints", s.ready(s.listEndpoints))
	mux.HandleFunc("GET /v1/endpoints/{containerID}/{ifName}", s.ready(s.getEndpoint))
	mux.HandleFunc("GET /v1/endpoints/{containerID}/{ifName}/check", s.ready(s.checkEndpoint))
	mux.HandleFunc("PUT /v1/endpoints/{containerID}/{ifName}", s.ready(s.putEndpoint))
	mux.HandleFunc("DELETE /v1/endpoints/{containerID}/{ifName}", s.ready(s.deleteEndpoint))
	mux.HandleFunc("POST /v1/gc", s.ready(s.gc))
	mux.HandleFunc("POST /v1/endpoints", s.ready(s.addEndpoint))
	mux.HandleFunc("GET /v1/services", s.ready(s.listServices))
	mux.HandleFunc("GET /v1/policy/{namespace}/{name}", s.ready(s.getPolicy))
	mux.HandleFunc("GET /v1/identities", s.ready(s.listIdentities))
	// A client that stalls mid-request holds a goroutine and what fds it
	// sent: bound the time it may take to send its headers.
	s.srv = &http.Server{Handler: mux, ConnContext: api.WithConn, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	return s
}

// Listen creates the socket (its directory 0700, the socket 0600),
// replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is in use by another anetd", path)
	}
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return api.FDListener{UnixListener: ln}, nil
}

// Serve serves until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops serving, letting requests in flight finish.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) ready(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if st := s.status(); !st.Ready {
			s.fail(w, r, fmt.Errorf("%w: %s", api.ErrNotReady, st.Reason))
			return
		}
		h(w, r)
	}
}

func (s *Server) reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, api.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, api.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, api.ErrExists):
		code = http.StatusConflict
	case errors.Is(err, api.ErrNotReady):
		code = http.StatusServiceUnavailable
	case errors.Is(err, api.ErrFull):
		code = http.StatusInsufficientStorage
	}
	if code == http.StatusInternalServerError {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Message: err.Error()})
}

func attachment(r *http.Request) (api.Attachment, error) {
	a := api.Attachment{Network: r.URL.Query().Get("network"), ContainerID: r.PathValue("containerID"), IfName: r.PathValue("ifName")}
	return a, a.Validate()
}

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	s.reply(w, s.status())
}

func (s *Server) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if err := api.Decode(r.Body, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	a, err := s.eps.Allocate(req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, a)
}

func (s *Server) putEndpoint(w http.ResponseWriter, r *http.Request) {
	a, err := attachment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.EndpointRequest
	if err := api.Decode(r.Body, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Attachment != a {
		s.fail(w, r, fmt.Errorf("%w: body names %s/%s, path %s/%s", api.ErrInvalid, req.ContainerID, req.IfName, a.ContainerID, a.IfName))
		return
	}
	if err := s.eps.Register(req); err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, nil)
}

func (s *Server) deleteEndpoint(w http.ResponseWriter, r *http.Request) {
	a, err := attachment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.eps.Delete(a); err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, nil)
}

func (s *Server) getEndpoint(w http.ResponseWriter, r *http.Request) {
	a, err := attachment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ep, err := s.eps.Get(a)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, ep)
}

func (s *Server) checkEndpoint(w http.ResponseWriter, r *http.Request) {
	a, err := attachment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	c, err := s.eps.Check(a)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, c)
}

func (s *Server) listEndpoints(w http.ResponseWriter, r *http.Request) {
	eps, err := s.eps.List()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, eps)
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if err := api.Decode(r.Body, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.eps.GC(req.Network, req.Valid)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, res)
}

// SetServices makes GET /v1/services answer with what list returns (the
// service reconciler's snapshot). Until it is called the answer is 404:
// this anetd does not serve Services.
func (s *Server) SetServices(list func() []api.ServiceFrontend) { s.services.Store(&list) }

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) {
	list := s.services.Load()
	if list == nil || *list == nil {
		s.fail(w, r, fmt.Errorf("%w: this anetd does not serve Services (standalone, --enable-services=false, or no service map)", api.ErrNotFound))
		return
	}
	fs := (*list)()
	if fs == nil {
		fs = []api.ServiceFrontend{}
	}
	s.reply(w, fs)
}
