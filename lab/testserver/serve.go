package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// shutdownGrace bounds how long serve waits for in-flight HTTP requests
// after SIGTERM before closing everything.
const shutdownGrace = time.Second

// serveMain runs the serve command until ctx is done (then it exits 0) or
// a listener fails (exit 1). stop is called once ctx is done, before the
// shutdown, so that callers can restore default signal handling.
func serveMain(ctx context.Context, stop func(), args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddr := fs.String("http", ":8080", "HTTP listen address (\"\" disables)")
	tcpAddr := fs.String("tcp-echo", ":8081", "TCP echo listen address (\"\" disables)")
	udpAddr := fs.String("udp-echo", ":8081", "UDP echo listen address (\"\" disables)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "anet-testserver serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *httpAddr == "" && *tcpAddr == "" && *udpAddr == "" {
		fmt.Fprintln(stderr, "anet-testserver serve: every listener is disabled")
		return 2
	}
	logger := log.New(stderr, "", 0)

	// Bind everything first, so that a port conflict fails fast and
	// "ready" means every listener accepts.
	var (
		httpLn, tcpLn net.Listener
		udpConn       net.PacketConn
		err           error
	)
	closeAll := func() {
		for _, c := range []io.Closer{httpLn, tcpLn, udpConn} {
			if c != nil {
				c.Close()
			}
		}
	}
	if *httpAddr != "" {
		if httpLn, err = net.Listen("tcp", *httpAddr); err != nil {
			logger.Printf("anet-testserver serve: http: %v", err)
			return 1
		}
	}
	if *tcpAddr != "" {
		if tcpLn, err = net.Listen("tcp", *tcpAddr); err != nil {
			logger.Printf("anet-testserver serve: tcp-echo: %v", err)
			closeAll()
			return 1
		}
	}
	if *udpAddr != "" {
		if udpConn, err = net.ListenPacket("udp", *udpAddr); err != nil {
			logger.Printf("anet-testserver serve: udp-echo: %v", err)
			closeAll()
			return 1
		}
	}

	failed := make(chan error, 3)
	var wg sync.WaitGroup
	var srv *http.Server
	var echo *tcpEcho
	if httpLn != nil {
		srv = newHTTPServer()
		wg.Go(func() {
			if err := srv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("http: %w", err)
			}
		})
		logger.Printf("listening http %s", httpLn.Addr())
	}
	if tcpLn != nil {
		echo = &tcpEcho{ln: tcpLn, conns: map[net.Conn]struct{}{}, logger: logger}
		wg.Go(func() {
			if err := echo.serve(); err != nil {
				failed <- fmt.Errorf("tcp-echo: %w", err)
			}
		})
		logger.Printf("listening tcp-echo %s", tcpLn.Addr())
	}
	if udpConn != nil {
		wg.Go(func() {
			if err := udpEcho(udpConn, logger); err != nil {
				failed <- fmt.Errorf("udp-echo: %w", err)
			}
		})
		logger.Printf("listening udp-echo %s", udpConn.LocalAddr())
	}
	logger.Printf("ready")

	status := 0
	select {
	case <-ctx.Done():
	case err := <-failed:
		logger.Printf("anet-testserver serve: %v", err)
		status = 1
	}
	stop()

	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		cancel()
	}
	if echo != nil {
		echo.close()
	}
	if udpConn != nil {
		udpConn.Close()
	}
	wg.Wait()
	return status
}

type helloResponse struct {
	Pod    string `json:"pod"`
	Client string `json:"client"`
	Host   string `json:"host"`
}

func newHTTPServer() *http.Server {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		pod = host
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(helloResponse{Pod: pod, Client: r.RemoteAddr, Host: host})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
}

// tcpEcho echoes every byte a client sends until the client closes.
type tcpEcho struct {
	ln     net.Listener
	logger *log.Logger

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func (e *tcpEcho) serve() error {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Transient (EMFILE, ECONNABORTED…): back off a little.
			e.logger.Printf("anet-testserver serve: tcp-echo accept: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return nil
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		go func() {
			defer e.wg.Done()
			io.Copy(c, c)
			c.Close()
			e.mu.Lock()
			delete(e.conns, c)
			e.mu.Unlock()
		}()
	}
}

// close stops accepting, closes the open connections and waits for their
// goroutines.
func (e *tcpEcho) close() {
	e.mu.Lock()
	e.closed = true
	e.ln.Close()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// udpEcho sends every datagram back to its sender until pc is closed.
func udpEcho(pc net.PacketConn, logger *log.Logger) error {
	buf := make([]byte, 64*1024)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			logger.Printf("anet-testserver serve: udp-echo read: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if _, err := pc.WriteTo(buf[:n], addr); err != nil {
			logger.Printf("anet-testserver serve: udp-echo reply to %s: %v", addr, err)
		}
	}
}
