//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The lab sections (services, netpol) run this same binary inside lab
// pods (lab.ExecCmd: the pod's netns and cgroup, where the node's socket
// hooks see it) in a helper role, chosen by $ANET_BENCH_HELPER before
// main runs:
//
//	accept   listen on $ANET_BENCH_LISTEN (":9000") and accept and close
//	         every connection; prints "ready" once it listens.
//	echo     listen on $ANET_BENCH_LISTEN and echo what every connection
//	         sends; prints "ready" once it listens.
//	connect  $ANET_BENCH_CONNECTS blocking connect()s, to the addresses of
//	         $ANET_BENCH_TARGETS (comma-separated ip:port) in turn, each
//	         timed alone and closed with an RST (SO_LINGER 0: no TIME_WAIT
//	         piles up in the client over thousands of connects); prints
//	         the durations in ns as JSON, one array per target in the
//	         order given. With $ANET_BENCH_ROUNDTRIP=1 each timed connect
//	         also sends one byte and reads the echo (a new connection's
//	         first request). The first error ends it with exit status 1.
//	rr       one connection to the one address of $ANET_BENCH_TARGETS,
//	         then one-byte requests, each waiting for its echo, for
//	         $ANET_BENCH_SECONDS; prints {"n": round trips, "ns": time}.
//	watch    probes the address of $ANET_BENCH_TARGETS in a loop, each a
//	         new connection given $ANET_BENCH_TIMEOUT ms; prints "ready",
//	         then a line per change of verdict (watchLine).
const (
	helperEnv    = "ANET_BENCH_HELPER"
	listenEnv    = "ANET_BENCH_LISTEN"
	targetsEnv   = "ANET_BENCH_TARGETS"
	connectsEnv  = "ANET_BENCH_CONNECTS"
	roundtripEnv = "ANET_BENCH_ROUNDTRIP"
	secondsEnv   = "ANET_BENCH_SECONDS"
	timeoutEnv   = "ANET_BENCH_TIMEOUT"
)

func init() {
	role := os.Getenv(helperEnv)
	if role == "" {
		return
	}
	var err error
	switch role {
	case "accept":
		err = acceptLoop(os.Getenv(listenEnv))
	case "echo":
		err = echoLoop(os.Getenv(listenEnv))
	case "connect":
		err = connectLoop(os.Getenv(targetsEnv), os.Getenv(connectsEnv), os.Getenv(roundtripEnv) == "1")
	case "rr":
		err = rrLoop(os.Getenv(targetsEnv), os.Getenv(secondsEnv))
	case "watch":
		err = watchLoop(os.Getenv(targetsEnv), os.Getenv(timeoutEnv))
	default:
		err = fmt.Errorf("unknown %s %q", helperEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "anet-bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// acceptLoop serves until killed (SIGTERM's default action ends it),
// closing every connection at once.
func acceptLoop(addr string) error {
	return serveLoop(addr, func(c net.Conn) { _ = c.Close() })
}

// serveLoop listens on addr, says "ready", and hands every connection to
// handle until killed.
func serveLoop(addr string, handle func(net.Conn)) error {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			// A connection reset before it was accepted; go on.
			continue
		}
		handle(c)
	}
}

// connectWarmup connects per target are made first and not counted (the
// first to a backend also resolves its neighbour).
const connectWarmup = 5

func parseTargets(targets string) ([]*unix.SockaddrInet4, error) {
	var sas []*unix.SockaddrInet4
	for _, t := range strings.Split(targets, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(t))
		if err != nil || !ap.Addr().Is4() {
			return nil, fmt.Errorf("target %q: want IPv4 ip:port", t)
		}
		sas = append(sas, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())})
	}
	return sas, nil
}

func connectLoop(targets, count string, roundtrip bool) error {
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return fmt.Errorf("%s %q: want a positive count", connectsEnv, count)
	}
	sas, err := parseTargets(targets)
	if err != nil {
		return err
	}
	// One thread, blocking syscalls: the time is the kernel's connect(),
	// hooks and handshake, and nothing of Go's poller.
	runtime.LockOSThread()
	out := make([][]int64, len(sas))
	for t := range out {
		out[t] = make([]int64, 0, n/len(sas)+1)
	}
	warm := connectWarmup * len(sas)
	for i := range warm + n {
		t := i % len(sas)
		sa := sas[t]
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		// A blocking connect() gives up after SO_SNDTIMEO.
		tv := unix.Timeval{Sec: 2}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			unix.Close(fd)
			return fmt.Errorf("SO_SNDTIMEO: %w", err)
		}
		if roundtrip {
			// The echo's read gives up after SO_RCVTIMEO.
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
				unix.Close(fd)
				return fmt.Errorf("SO_RCVTIMEO: %w", err)
			}
		}
		start := time.Now()
		err = unix.Connect(fd, sa)
		if err == nil && roundtrip {
			err = roundTrip(fd)
		}
		d := time.Since(start)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("connect %s (connect %d): %w", netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), i, err)
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
		if i >= warm {
			out[t] = append(out[t], d.Nanoseconds())
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// roundTrip sends one byte on a blocking socket and reads its echo.
func roundTrip(fd int) error {
	buf := []byte{'x'}
	if _, err := unix.Write(fd, buf); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if n != 1 {
		return errors.New("read: connection closed")
	}
	return nil
}

// echoLoop serves until killed, echoing every connection.
func echoLoop(addr string) error {
	return serveLoop(addr, func(c net.Conn) {
		go func() {
			defer c.Close()
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			_, _ = io.Copy(c, c)
		}()
	})
}

// rrCount is what the rr helper prints.
type rrCount struct {
	N  int64 `json:"n"`  // round trips
	NS int64 `json:"ns"` // over this long
}

// Rate is round trips per second.
func (r rrCount) Rate() float64 {
	if r.NS <= 0 {
		return 0
	}
	return float64(r.N) / (float64(r.NS) / 1e9)
}

// rrWarmup round trips are made first and not counted.
const rrWarmup = 100

// oneTarget is parseTargets for the helpers that take one address.
func oneTarget(target string) ([]*unix.SockaddrInet4, error) {
	sas, err := parseTargets(target)
	if err == nil && len(sas) != 1 {
		err = fmt.Errorf("%s: want one address", targetsEnv)
	}
	return sas, err
}

func rrLoop(target, seconds string) error {
	secs, err := strconv.ParseFloat(seconds, 64)
	if err != nil || secs <= 0 {
		return fmt.Errorf("%s %q: want a positive number of seconds", secondsEnv, seconds)
	}
	sas, err := oneTarget(target)
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 2}
	for _, o := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, o, &tv); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	if err := unix.Connect(fd, sas[0]); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	for i := range rrWarmup {
		if err := roundTrip(fd); err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
	}
	var r rrCount
	start := time.Now()
	end := start.Add(time.Duration(secs * float64(time.Second)))
	for {
		if err := roundTrip(fd); err != nil {
			return fmt.Errorf("round trip %d: %w", rrWarmup+r.N, err)
		}
		r.N++
		// A clock read every 64 round trips.
		if r.N%64 == 0 && !time.Now().Before(end) {
			break
		}
	}
	r.NS = time.Since(start).Nanoseconds()
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	return json.NewEncoder(os.Stdout).Encode(r)
}

// The watch helper's verdicts: a connection established within the
// timeout is "allowed" (the first after anything else is reported at
// once); watchDenied probes in a row that fail are "denied", reported at
// the first of them (a single slow connect on a busy machine is not a
// verdict).
const watchDenied = 10

// watchLine is one report of the watch helper: "allowed|denied <start of
// the probe that first showed it, Unix ns> <start of the probe before it,
// Unix ns>"; the difference is the report's resolution.
func watchLine(verdict string, at, prev time.Time) string {
	return fmt.Sprintf("%s %d %d", verdict, at.UnixNano(), prev.UnixNano())
}

// parseWatchLine reads a watchLine.
func parseWatchLine(s string) (verdict string, at, prev time.Time, err error) {
	f := strings.Fields(s)
	if len(f) != 3 || (f[0] != "allowed" && f[0] != "denied") {
		return "", at, prev, fmt.Errorf("watch helper: bad line %q", s)
	}
	a, err1 := strconv.ParseInt(f[1], 10, 64)
	p, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return "", at, prev, fmt.Errorf("watch helper: bad line %q", s)
	}
	return f[0], time.Unix(0, a), time.Unix(0, p), nil
}

func watchLoop(target, timeout string) error {
	ms, err := strconv.Atoi(timeout)
	if err != nil || ms < 1 {
		return fmt.Errorf("%s %q: want a positive number of ms", timeoutEnv, timeout)
	}
	sas, err := oneTarget(target)
	if err != nil {
		return err
	}
	runtime.LockOSThread()
	tv := unix.NsecToTimeval(int64(ms) * int64(time.Millisecond))
	fmt.Println("ready")
	state := ""
	var prev, streakAt, streakPrev time.Time
	streak := 0
	for {
		start := time.Now()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		err = unix.Connect(fd, sas[0])
		if err == nil {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		}
		unix.Close(fd)
		switch {
		case err == nil:
			streak = 0
			if state != "allowed" {
				state = "allowed"
				fmt.Println(watchLine(state, start, prev))
			}
			// Allowed: no hurry (the change to watch for is to allowed).
			time.Sleep(5 * time.Millisecond)
		default:
			if streak == 0 {
				streakAt, streakPrev = start, prev
			}
			streak++
			if streak >= watchDenied && state != "denied" {
				state = "denied"
				fmt.Println(watchLine(state, streakAt, streakPrev))
			}
			// A refusal (RST) comes at once: do not spin.
			if time.Since(start) < time.Millisecond {
				time.Sleep(time.Millisecond)
			}
		}
		prev = start
	}
}
