//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The services section runs this same binary inside lab pods (lab.ExecCmd:
// the pod's netns and cgroup, where the node's socket hooks see it) in one
// of two helper roles, chosen by $ANET_BENCH_HELPER before main runs:
//
//	accept   listen on $ANET_BENCH_LISTEN (":9000") and accept and close
//	         every connection; prints "ready" once it listens.
//	connect  $ANET_BENCH_CONNECTS blocking connect()s, to the addresses of
//	         $ANET_BENCH_TARGETS (comma-separated ip:port) in turn, each
//	         timed alone and closed with an RST (SO_LINGER 0: no TIME_WAIT
//	         piles up in the client over thousands of connects); prints
//	         the durations in ns as JSON, one array per target in the
//	         order given. The first error ends it with exit status 1.
const (
	helperEnv   = "ANET_BENCH_HELPER"
	listenEnv   = "ANET_BENCH_LISTEN"
	targetsEnv  = "ANET_BENCH_TARGETS"
	connectsEnv = "ANET_BENCH_CONNECTS"
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
	case "connect":
		err = connectLoop(os.Getenv(targetsEnv), os.Getenv(connectsEnv))
	default:
		err = fmt.Errorf("unknown %s %q", helperEnv, role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "anet-bench %s: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// acceptLoop serves until killed (SIGTERM's default action ends it).
func acceptLoop(addr string) error {
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
		_ = c.Close()
	}
}

// connectWarmup connects per target are made first and not counted (the
// first to a backend also resolves its neighbour).
const connectWarmup = 5

func connectLoop(targets, count string) error {
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 {
		return fmt.Errorf("%s %q: want a positive count", connectsEnv, count)
	}
	var sas []*unix.SockaddrInet4
	for _, t := range strings.Split(targets, ",") {
		ap, err := netip.ParseAddrPort(strings.TrimSpace(t))
		if err != nil || !ap.Addr().Is4() {
			return fmt.Errorf("target %q: want IPv4 ip:port", t)
		}
		sas = append(sas, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())})
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
		start := time.Now()
		err = unix.Connect(fd, sa)
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
