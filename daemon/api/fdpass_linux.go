package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// File descriptors over the socket API.
//
// ADD hands anetd the pod's network namespace as an open file descriptor
// (SCM_RIGHTS) rather than as a path: a path names a file in the runtime's
// mount namespace, which anetd (a DaemonSet pod, or a lab process) need not
// share, and it can be unmounted and reused between the plugin's check and
// anetd's open. The descriptor rides on the first bytes of the request; the
// server side reads every segment with recvmsg and keeps what arrives, for
// the handler to take.

// maxFDs bounds how many descriptors one connection may carry.
const maxFDs = 4

// FDConn is an accepted connection that keeps the descriptors its peer sent.
type FDConn struct {
	*net.UnixConn
	mu  sync.Mutex
	fds []int
	oob []byte
	err error
}

func (c *FDConn) Read(b []byte) (int, error) {
	n, oobn, flags, _, err := c.UnixConn.ReadMsgUnix(b, c.oob)
	if oobn > 0 {
		c.keep(c.oob[:oobn], flags)
	}
	return n, err
}

func (c *FDConn) keep(oob []byte, flags int) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.err = fmt.Errorf("parsing control message: %w", err)
		return
	}
	if flags&unix.MSG_CTRUNC != 0 {
		c.err = errors.New("too many file descriptors sent")
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if len(c.fds) >= maxFDs {
				unix.Close(fd)
				c.err = errors.New("too many file descriptors sent")
				continue
			}
			c.fds = append(c.fds, fd)
		}
	}
}

// TakeFDs returns the descriptors received so far as files, which the
// caller now owns.
func (c *FDConn) TakeFDs() ([]*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*os.File, 0, len(c.fds))
	for _, fd := range c.fds {
		out = append(out, os.NewFile(uintptr(fd), "received"))
	}
	c.fds = nil
	return out, c.err
}

// Close closes the connection and every descriptor nobody took.
func (c *FDConn) Close() error {
	c.mu.Lock()
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	c.mu.Unlock()
	return c.UnixConn.Close()
}

// FDListener accepts connections that keep received descriptors.
type FDListener struct{ *net.UnixListener }

// Accept returns an *FDConn.
func (l FDListener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &FDConn{UnixConn: c, oob: make([]byte, unix.CmsgSpace(maxFDs*4))}, nil
}

type connKey struct{}

// WithConn records an accepted connection in a request context
// (http.Server.ConnContext).
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// ReceivedFiles returns the descriptors that arrived on the connection of
// a request, as files the caller owns and must close.
func ReceivedFiles(ctx context.Context) ([]*os.File, error) {
	c, ok := ctx.Value(connKey{}).(*FDConn)
	if !ok {
		return nil, errors.New("connection cannot carry file descriptors")
	}
	return c.TakeFDs()
}

// PeerGone reports whether the client of a request has gone: its context
// is done, or its connection is closed. The second is asked of the socket
// itself (a peek that does not wait), since the server notices a closed
// connection only when its background read gets to run. A client that
// shuts down its writing side after the request looks gone too: anet-cni
// does not, and the API's other clients have no fd to send.
func PeerGone(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	c, ok := ctx.Value(connKey{}).(*FDConn)
	if !ok {
		return false
	}
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		gone = (n == 0 && err == nil) || errors.Is(err, unix.ECONNRESET)
	})
	return gone
}
