package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The client's transport: one HTTP request per connection on the unix
// socket, written and read by the client itself.
//
// anet-cni is a process of a few milliseconds, and an ADD is one request:
// net/http's client (a connection pool, a reader and a writer goroutine
// per connection) and what it links (TLS, HTTP/2, proxies; their package
// initialization runs at every start of the plugin) cost more than the
// request itself: measured in the benchmark's setup, the plugin's ADD took
// 0.3 to 0.9 ms longer with it. The connection is a net.UnixConn, so that
// the wait for anetd's answer parks in the runtime's poller: a blocking
// read(2) instead kept the runtime's sysmon thread polling every 20 µs for
// the whole wait, which cost the plugin 0.6 ms of CPU and as much time per
// ADD on two CPUs. The server is net/http (package apiserver).
//
// The request is HTTP/1.0 with a Content-Length, so that the answer is
// never chunked: its body ends at its Content-Length or, when net/http
// sends none (large bodies), where the server closes the connection.
// Headers are read with net/textproto, which net/http uses too.

// SentHeader carries when the client began a request (Unix time in
// nanoseconds), for anetd's trace of an ADD: the time a request takes to
// reach anetd's handler (connect, send, accept, headers) is the handler's
// start less this, on the clock both processes share.
const SentHeader = "X-Anet-Sent"

// defaultTimeout bounds a request whose context has no deadline.
const defaultTimeout = 30 * time.Second

// maxAnswer bounds the body of an answer.
const maxAnswer = 64 << 20

// answer is an HTTP response as the client needs it.
type answer struct {
	code   int
	status string // e.g. "404 Not Found"
	body   []byte
}

// roundTrip sends one request on a new connection, the descriptors fds
// riding on its first bytes (SCM_RIGHTS), and reads the answer. Any error
// is the transport's: anetd could not be reached or did not answer.
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte, fds []int) (*answer, error) {
	sent := time.Now()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	msg := request(method, path, body, sent) // ready before the connection is
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	dl, _ := ctx.Deadline()
	if err := uc.SetDeadline(dl); err != nil {
		return nil, err
	}
	// A context cancelled before its deadline ends the wait too.
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fail := func(what string, err error) (*answer, error) {
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The connection's deadline is the context's, and may
			// come first.
			err = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := sendRequest(uc, msg, fds); err != nil {
		return fail("sending the request", err)
	}
	a, err := readAnswer(bufio.NewReader(uc))
	if err != nil {
		return fail("reading the answer", err)
	}
	return a, nil
}

// request is the bytes of a request.
func request(method, path string, body []byte, sent time.Time) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.0\r\nHost: anetd\r\n%s: %d\r\n", method, path, SentHeader, sent.UnixNano())
	if body != nil {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// sendRequest writes a request, the descriptors with its first bytes.
func sendRequest(uc *net.UnixConn, msg []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := uc.WriteMsgUnix(msg, oob, nil)
	if err != nil {
		return err
	}
	if n < len(msg) {
		_, err = uc.Write(msg[n:])
	}
	return err
}

// readAnswer reads a status line, headers and a body delimited by its
// Content-Length or by the end of the connection.
func readAnswer(br *bufio.Reader) (*answer, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return nil, err
	}
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return nil, fmt.Errorf("malformed status line %q", line)
	}
	code, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(status, " ", 2)[0]))
	if err != nil || code < 100 || code > 999 {
		return nil, fmt.Errorf("malformed status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	a := &answer{code: code, status: strings.TrimSpace(status)}
	if te := hdr.Get("Transfer-Encoding"); te != "" {
		return nil, fmt.Errorf("unexpected Transfer-Encoding %q", te)
	}
	if cl := hdr.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || n > maxAnswer {
			return nil, fmt.Errorf("bad Content-Length %q", cl)
		}
		a.body = make([]byte, n)
		if _, err := io.ReadFull(br, a.body); err != nil {
			return nil, err
		}
		return a, nil
	}
	a.body, err = io.ReadAll(io.LimitReader(br, maxAnswer+1))
	if err != nil {
		return nil, err
	}
	if len(a.body) > maxAnswer {
		return nil, fmt.Errorf("answer exceeds %d bytes", maxAnswer)
	}
	return a, nil
}
