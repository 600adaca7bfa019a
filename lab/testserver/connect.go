package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// maxBody bounds what the http probe copies to stdout.
const maxBody = 1 << 20

// connectMain runs the connect probe: 0 = reached, 1 = not reached,
// 2 = usage error.
func connectMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	protocol := fs.String("protocol", "tcp", "tcp, udp or http")
	address := fs.String("address", "", "destination HOST:PORT")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	path := fs.String("path", "/", "request path of the http probe")
	hold := fs.Duration("hold", 0, "tcp: keep the connection open this long, echoing a line every 100 ms (the tcp-echo listener answers); any lost or late echo fails. udp: keep a connected socket this long, a datagram every 100 ms; a lost echo is counted, an error on the socket (its backend left: ECONNABORTED) connects again; fails unless the last 5 echoed")
	repeat := fs.Int("repeat", 1, "probe this many times, each with its own --timeout and a new connection; the first failure ends the run")
	interval := fs.Duration("interval", 0, "with --repeat: pause between probes")
	sport := fs.Int("source-port", 0, "connect from this local port (SO_REUSEADDR, so that a port whose last connection is in TIME_WAIT can be bound again); 0: any")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "anet-testserver connect: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() != 0 {
		return usageErr("unexpected arguments %q", fs.Args())
	}
	if _, _, err := net.SplitHostPort(*address); err != nil {
		return usageErr("--address must be HOST:PORT: %v", err)
	}
	if *timeout <= 0 {
		return usageErr("--timeout must be positive")
	}
	if !strings.HasPrefix(*path, "/") {
		return usageErr("--path must start with /")
	}
	if *hold < 0 || (*hold > 0 && *protocol != "tcp" && *protocol != "udp") {
		return usageErr("--hold needs --protocol tcp or udp and a positive duration")
	}
	if *sport < 0 || *sport > 65535 {
		return usageErr("--source-port must be a port number")
	}
	if *repeat < 1 || *interval < 0 {
		return usageErr("--repeat must be at least 1 and --interval not negative")
	}
	switch *protocol {
	case "tcp", "udp", "http":
	default:
		return usageErr("unknown --protocol %q (want tcp, udp or http)", *protocol)
	}

	d := dialer(*sport)
	for i := range *repeat {
		if i > 0 && *interval > 0 {
			time.Sleep(*interval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		var err error
		switch {
		case *hold > 0 && *protocol == "udp":
			err = holdUDP(*address, *hold, *timeout, stdout)
		case *hold > 0:
			err = holdTCP(ctx, d, *address, *hold, *timeout, stdout)
		case *protocol == "tcp":
			err = probeTCP(ctx, d, *address)
		case *protocol == "udp":
			err = probeUDP(ctx, d, *address)
		case *protocol == "http":
			err = probeHTTP(ctx, d, *address, *path, stdout)
		}
		cancel()
		if err != nil {
			if *repeat > 1 {
				fmt.Fprintf(stderr, "anet-testserver connect: %s %s: probe %d of %d: %v\n", *protocol, *address, i+1, *repeat, err)
			} else {
				fmt.Fprintf(stderr, "anet-testserver connect: %s %s: %v\n", *protocol, *address, err)
			}
			return 1
		}
	}
	return 0
}

// dialer makes the probes' dialers, by network ("tcp" or "udp"): from
// local port sport when it is not 0, with SO_REUSEADDR.
func dialer(sport int) func(network string) *net.Dialer {
	return func(network string) *net.Dialer {
		var d net.Dialer
		if sport == 0 {
			return &d
		}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{Port: sport}
		} else {
			d.LocalAddr = &net.TCPAddr{Port: sport}
		}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		}
		return &d
	}
}

// holdTCP connects, prints "connected <local> <peer>" (the peer as
// getpeername shows it), then for d sends a numbered line every 100 ms and
// reads it back from the echo server: an open connection that keeps
// working, for tests of what must not break it. Each echo must come within
// timeout of its line.
func holdTCP(ctx context.Context, dialer func(string) *net.Dialer, address string, d, timeout time.Duration, stdout io.Writer) error {
	c, err := dialer("tcp").DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "connected %s %s\n", c.LocalAddr(), c.RemoteAddr())
	buf := make([]byte, 64)
	end := time.Now().Add(d)
	n := 0
	for time.Now().Before(end) {
		line := fmt.Sprintf("line %d\n", n)
		if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
			return err
		}
		if _, err := io.WriteString(c, line); err != nil {
			return fmt.Errorf("after %d echoes: send: %w", n, err)
		}
		if _, err := io.ReadFull(c, buf[:len(line)]); err != nil {
			return fmt.Errorf("after %d echoes: receive: %w", n, err)
		}
		if string(buf[:len(line)]) != line {
			return fmt.Errorf("after %d echoes: got %q back for %q", n, buf[:len(line)], line)
		}
		n++
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(stdout, "held %s with %d echoes\n", d, n)
	return nil
}

// holdUDP keeps a connected UDP socket to address for d, sending a
// numbered datagram every 100 ms and waiting up to 300 ms for its echo. A
// datagram without an echo is counted as lost; an error of the socket
// itself (ECONNABORTED when anet destroyed it because its backend left the
// Service, ECONNREFUSED for an ICMP port unreachable) is printed as
// "reconnect after N echoes: ERR" and the socket is connected again, as a
// client that handles errors would. It fails unless the last 5 datagrams
// were echoed. Dialing is bounded by timeout.
func holdUDP(address string, d, timeout time.Duration, stdout io.Writer) error {
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", address)
	}
	c, err := dial()
	if err != nil {
		return err
	}
	defer func() { c.Close() }()
	fmt.Fprintf(stdout, "connected %s %s\n", c.LocalAddr(), c.RemoteAddr())
	var echoes, lost, reconnects, streak int
	buf := make([]byte, 64)
	begin := time.Now()
	end := begin.Add(d)
	for n := 0; time.Now().Before(end); n++ {
		msg := fmt.Sprintf("datagram %d", n)
		err := c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if err == nil {
			_, err = io.WriteString(c, msg)
		}
		for err == nil {
			var k int
			if k, err = c.Read(buf); err == nil && string(buf[:k]) == msg {
				break
			}
		}
		var ne net.Error
		switch {
		case err == nil:
			echoes++
			streak++
		case errors.As(err, &ne) && ne.Timeout():
			lost++
			streak = 0
		default:
			reconnects++
			streak = 0
			fmt.Fprintf(stdout, "reconnect at %.1fs after %d echoes: %v\n", time.Since(begin).Seconds(), echoes, err)
			c.Close()
			if c, err = dial(); err != nil {
				return fmt.Errorf("connecting again: %w", err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(stdout, "held %s: %d echoes, %d lost, %d reconnects, %d echoed in a row at the end\n", d, echoes, lost, reconnects, streak)
	if streak < 5 {
		return fmt.Errorf("not answering at the end: %d echoed in a row (%d echoes, %d lost, %d reconnects)", streak, echoes, lost, reconnects)
	}
	return nil
}

func probeTCP(ctx context.Context, dialer func(string) *net.Dialer, address string) error {
	c, err := dialer("tcp").DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	return c.Close()
}

// probeUDP sends one datagram carrying a random token on a connected socket
// and waits for the same bytes to come back. A connected socket also
// reports an ICMP port unreachable as "connection refused".
func probeUDP(ctx context.Context, dialer func(string) *net.Dialer, address string) error {
	c, err := dialer("udp").DialContext(ctx, "udp", address)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	var token [16]byte
	rand.Read(token[:])
	payload := []byte("anet-testserver probe " + hex.EncodeToString(token[:]))
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return errors.New("no echo before the timeout")
			case errors.Is(err, syscall.ECONNREFUSED):
				return errors.New("connection refused (ICMP port unreachable)")
			}
			return fmt.Errorf("receive: %w", err)
		}
		if string(buf[:n]) == string(payload) {
			return nil
		}
		// Something else (a late echo of an earlier probe from the same
		// port?): keep waiting for ours.
	}
}

func probeHTTP(ctx context.Context, dialer func(string) *net.Dialer, address, path string, stdout io.Writer) error {
	client := &http.Client{Transport: &http.Transport{
		Proxy:             nil, // never send lab traffic to a proxy
		DisableKeepAlives: true,
		DialContext:       dialer("tcp").DialContext,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+address+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s: %.200q", resp.Status, body)
	}
	_, err = stdout.Write(body)
	return err
}
