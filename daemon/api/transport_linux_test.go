package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve runs an HTTP server with handler on a unix socket of its own, as
// anetd serves its API (FDListener, WithConn), and returns the socket.
func serve(t *testing.T, handler http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, ConnContext: WithConn}
	go func() { _ = srv.Serve(FDListener{UnixListener: ln}) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// The client's own HTTP/1.0 transport against net/http's server: small and
// large answers (the large one without a Content-Length, ended by the
// server closing the connection), error statuses as the sentinel errors,
// a descriptor passed with the request, and a socket nobody listens on.
func TestClientTransport(t *testing.T) {
	var many []Endpoint
	for i := range 300 {
		many = append(many, Endpoint{EndpointRequest: EndpointRequest{
			Attachment: Attachment{Network: "anet", ContainerID: fmt.Sprintf("c%03d", i), IfName: "eth0"},
			IP:         netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
		}})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, Status{Ready: true, NodeName: "n1", BPFRoot: r.Header.Get(SentHeader)})
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, many) })
	mux.HandleFunc("GET /v1/endpoints/{c}/{i}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 404, Error{Message: "endpoint " + r.PathValue("c") + " in " + r.URL.Query().Get("network")})
	})
	mux.HandleFunc("DELETE /v1/endpoints/{c}/{i}", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 503, Error{Message: "restoring"}) })
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req AddRequest
		if err := Decode(r.Body, &req); err != nil {
			writeJSON(w, 400, Error{Message: err.Error()})
			return
		}
		files, err := ReceivedFiles(r.Context())
		if err != nil || len(files) != 1 {
			writeJSON(w, 400, Error{Message: fmt.Sprintf("files %v %v", files, err)})
			return
		}
		defer files[0].Close()
		b, _ := io.ReadAll(files[0])
		writeJSON(w, 200, AddResult{HostIfName: string(b), Trace: []TraceStep{{Step: "x", Micros: 1}}})
	})
	c := NewClient(serve(t, mux))
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil || !st.Ready || st.NodeName != "n1" {
		t.Fatalf("Status: %+v %v", st, err)
	}
	if st.BPFRoot == "" {
		t.Errorf("no %s header sent", SentHeader)
	}
	eps, err := c.ListEndpoints(ctx)
	if err != nil || len(eps) != len(many) || eps[299].ContainerID != "c299" {
		t.Fatalf("ListEndpoints: %d endpoints, %v", len(eps), err)
	}
	_, err = c.GetEndpoint(ctx, Attachment{Network: "anet", ContainerID: "c1", IfName: "eth0"})
	var se *StatusError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &se) || se.Message != "endpoint c1 in anet" {
		t.Fatalf("GetEndpoint: %v", err)
	}
	if err := c.DeleteEndpoint(ctx, Attachment{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatalf("DeleteEndpoint: %v", err)
	}
	if _, err := c.GC(ctx, GCRequest{}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("GC: %v, want ErrNotReady", err)
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pw.WriteString("anet0123456789a"); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	res, err := c.Add(ctx, AddRequest{Attachment: Attachment{ContainerID: "c1", IfName: "eth0"}}, pr)
	pr.Close()
	if err != nil || res.HostIfName != "anet0123456789a" || len(res.Trace) != 1 {
		t.Fatalf("Add: %+v %v", res, err)
	}

	_, err = NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(ctx)
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Status of no anetd: %v, want UnavailableError", err)
	}
}

// A request that anetd does not answer ends with its context: at its
// deadline, or when it is cancelled.
func TestClientGivesUp(t *testing.T) {
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	})
	c := NewClient(serve(t, mux))

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Status(ctx)
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("Status past its deadline: %v after %v", err, time.Since(start))
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start = time.Now()
	_, err = c.Status(ctx)
	if !errors.As(err, &ue) || !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("Status cancelled: %v after %v", err, time.Since(start))
	}
}

func TestReadAnswer(t *testing.T) {
	good := map[string]struct {
		code int
		body string
	}{
		"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}":          {200, "{}"},
		"HTTP/1.1 204 No Content\r\n\r\n":                         {204, ""},
		"HTTP/1.0 404 Not Found\r\nX: y\r\n\r\n{\"error\":\"x\"}": {404, `{"error":"x"}`},
	}
	for in, want := range good {
		a, err := readAnswer(bufio.NewReader(strings.NewReader(in)))
		if err != nil || a.code != want.code || string(a.body) != want.body {
			t.Errorf("%q: %+v %v", in, a, err)
		}
	}
	for _, in := range []string{
		"", "SMTP 220 hi\r\n\r\n", "HTTP/1.0 abc OK\r\n\r\n", "HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
	} {
		if a, err := readAnswer(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("%q accepted: %+v", in, a)
		}
	}
}
