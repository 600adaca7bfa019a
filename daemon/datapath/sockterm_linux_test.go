package datapath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/anet-dev/anet/daemon/service"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// Termination of connected UDP sockets (bpf/sockterm.c) in the socket
// hooks' world of sock_linux_test.go: the client process holds sockets
// across requests (the hold ops below), a backend leaves the frontend,
// and the terminator walks the client's netns.

const echoPort = 9090 // a TCP server that answers every line, for held TCP connections

// held are the client process's held sockets, by ID.
var held = map[int]int{}

// heldOp runs the ops on held sockets: "hold-udp" and "hold-tcp" connect a
// new socket to Addr and keep it (its ID in the response); "ping" sends
// one message on socket ID and reads the answer (who answered, in
// Backends); "send" and "recv" do one half; "reconnect" connects socket ID
// to Addr again; "close" closes it. Errors are "step: ERRNO".
func heldOp(req sockReq) (sockResp, bool) {
	switch req.Op {
	case "hold-udp", "hold-udp6", "hold-tcp", "ping", "send", "recv", "reconnect", "close":
	default:
		return sockResp{}, false // one of runOps'
	}
	r := sockResp{Backends: map[string]int{}, Peers: map[string]int{}, From: map[string]int{}, Errors: map[string]int{}}
	var sa unix.Sockaddr
	family := unix.AF_INET
	if req.Addr != "" {
		ap := netip.MustParseAddrPort(req.Addr)
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		if req.Op == "hold-udp6" {
			// A dual-stack socket, to the IPv4-mapped address.
			family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
	}
	fail := func(step string, err error) (sockResp, bool) {
		r.Errors[errnoName(step, err)]++
		return r, true
	}
	peer := func(fd int) {
		if p, err := unix.Getpeername(fd); err == nil {
			r.Peers[sockaddrString(p)]++
		} else {
			r.Errors[errnoName("getpeername", err)]++
		}
	}
	fd := held[req.ID]
	buf := make([]byte, 128)
	recv := func() (string, error) {
		var got []byte
		for {
			n, err := retry(func() (int, error) { return unix.Read(fd, buf) })
			if err != nil {
				return "", err
			}
			if n == 0 {
				return "", fmt.Errorf("EOF")
			}
			got = append(got, buf[:n]...)
			if typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); typ == unix.SOCK_DGRAM || strings.Contains(string(got), "\n") {
				return strings.TrimSpace(string(got)), nil
			}
		}
	}
	switch req.Op {
	case "hold-udp", "hold-udp6", "hold-tcp":
		typ := unix.SOCK_DGRAM
		if req.Op == "hold-tcp" {
			typ = unix.SOCK_STREAM
		}
		s, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail("socket", err)
		}
		tv := unix.Timeval{Sec: 2}
		_ = unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		_ = unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		if err := connectFd(s, sa); err != nil {
			unix.Close(s)
			return fail("connect", err)
		}
		r.ID = len(held) + 1
		held[r.ID] = s
		peer(s)
	case "ping", "send":
		if _, err := retry(func() (int, error) { return unix.Write(fd, []byte("q\n")) }); err != nil {
			return fail("send", err)
		}
		if req.Op == "send" {
			break
		}
		fallthrough
	case "recv":
		got, err := recv()
		if err != nil {
			return fail("recv", err)
		}
		r.Backends[got]++
	case "reconnect":
		if err := connectFd(fd, sa); err != nil {
			return fail("connect", err)
		}
		peer(fd)
	case "close":
		unix.Close(fd)
		delete(held, req.ID)
	default:
		return r, false
	}
	r.Count = 1
	return r, true
}

// serveEcho starts a TCP server on every backend address at echoPort that
// answers each line with its own address, for as long as the connection
// lasts.
func (e *sockEnv) serveEcho() {
	t := e.t
	err := e.srv.Do(func(ns.NetNS) error {
		for _, ip := range backendIPs {
			l, err := net.Listen("tcp4", netip.AddrPortFrom(ip, echoPort).String())
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					t.Cleanup(func() { c.Close() })
					go func() {
						b := make([]byte, 64)
						for {
							if _, err := c.Read(b); err != nil {
								c.Close()
								return
							}
							_, _ = c.Write([]byte(c.LocalAddr().String() + "\n"))
						}
					}()
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("echo servers: %v", err)
	}
}

// hold makes a held socket and returns its ID.
func (e *sockEnv) hold(op string, to netip.AddrPort) int {
	e.t.Helper()
	r := e.do(sockReq{Op: op, Addr: to.String()})
	if len(r.Errors) != 0 || r.ID == 0 {
		e.t.Fatalf("%s to %s: %v", op, to, r.Errors)
	}
	return r.ID
}

// answers runs op on held socket id and returns who answered, or the error.
func (e *sockEnv) answers(op string, id int) string {
	e.t.Helper()
	r := e.do(sockReq{Op: op, ID: id})
	for k := range r.Errors {
		return k
	}
	for k := range r.Backends {
		return k
	}
	return ""
}

// A UDP socket connected to the frontend (IPv4, or IPv6 to the
// IPv4-mapped address), whose backend A then leaves it, is destroyed by the terminator: its next recv() fails with
// ECONNABORTED, its next send() with EDESTADDRREQ (it is disconnected),
// and a new connect() to the frontend reaches B. A UDP socket connected to
// A directly and a TCP connection through a frontend to A are left alone.
func TestSockTermUDP(t *testing.T) {
	e := newSockEnv(t)
	if err := e.dp.CanTerminateUDP(); err != nil {
		t.Fatal(err)
	}
	e.serveEcho()
	udpFront := ap(vip, 53)
	a, b := ap(backendIPs[0], udpPort).String(), ap(backendIPs[1], udpPort).String()
	udpA := frontend(lb.UDP, 53, 0)
	e.put(udpA)
	tcpFront := lb.MapFrontend{Key: lb.FrontendKey{Addr: ap(vip, 90), Proto: lb.TCP}, RevNat: 90, Active: 1,
		Backends: []lb.MapBackend{{ID: 5, Addr: ap(backendIPs[0], echoPort), State: lb.Ready}}}
	e.put(tcpFront)

	recvSock := e.hold("hold-udp", udpFront)
	sendSock := e.hold("hold-udp", udpFront)
	mapped := e.hold("hold-udp6", udpFront)
	direct := e.hold("hold-udp", ap(backendIPs[0], udpPort))
	tcp := e.hold("hold-tcp", ap(vip, 90))
	for _, id := range []int{recvSock, sendSock, mapped, direct} {
		if got := e.answers("ping", id); got != a {
			t.Fatalf("socket %d: answered by %q, want %s", id, got, a)
		}
	}
	if got, want := e.answers("ping", tcp), ap(backendIPs[0], echoPort).String(); got != want {
		t.Fatalf("tcp: answered by %q, want %s", got, want)
	}

	// A leaves both frontends; B takes the UDP one.
	e.put(frontend(lb.UDP, 53, 1))
	e.put(lb.MapFrontend{Key: tcpFront.Key, RevNat: 90})
	// Without the terminator, the connected sockets still reach A.
	if got := e.answers("ping", recvSock); got != a {
		t.Fatalf("before termination: answered by %q, want %s", got, a)
	}

	cliIno := netnsInode(t, e.cli.Path())
	// The node's namespace of this test is the server's (never the
	// machine's): it holds no socket the hooks connected.
	var term *SocketTerminator
	err := e.srv.Do(func(ns.NetNS) error {
		var err error
		term, err = e.dp.NewSocketTerminator(func() []NetnsRef {
			return []NetnsRef{{Name: "client", Path: e.cli.Path(), Inode: cliIno}}
		}, quiet)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	passes := make(chan int, 4)
	term.OnPass = func(n int) { passes <- n }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { term.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	// The TCP entry is listed too: TCP sockets are never walked.
	term.TerminateUDP([]lb.GoneBackend{
		{RevNat: udpA.RevNat, Addr: udpA.Backends[0].Addr},
		{RevNat: tcpFront.RevNat, Addr: tcpFront.Backends[0].Addr},
	})
	if n := <-passes; n != 3 {
		t.Errorf("destroyed %d sockets, want 3 (those connected through the frontend)", n)
	}
	if got := term.Destroyed.Load(); got != 3 {
		t.Errorf("Destroyed = %d, want 3", got)
	}
	if got := e.answers("recv", mapped); got != "recv: ECONNABORTED" {
		t.Errorf("recv on a destroyed IPv6 socket (IPv4-mapped): %q, want recv: ECONNABORTED", got)
	}

	if got := e.answers("recv", recvSock); got != "recv: ECONNABORTED" {
		t.Errorf("recv on a destroyed socket: %q, want recv: ECONNABORTED", got)
	}
	if got := e.answers("send", sendSock); got != "send: EDESTADDRREQ" {
		t.Errorf("send on a destroyed socket: %q, want send: EDESTADDRREQ", got)
	}
	// The error is reported once; then the socket is a disconnected one.
	if got := e.answers("recv", sendSock); got != "recv: ECONNABORTED" {
		t.Errorf("recv after send on a destroyed socket: %q, want recv: ECONNABORTED", got)
	}
	for _, id := range []int{recvSock, sendSock} {
		r := e.do(sockReq{Op: "reconnect", ID: id, Addr: udpFront.String()})
		if len(r.Errors) != 0 {
			t.Fatalf("reconnect of socket %d: %v", id, r.Errors)
		}
		wantOnly(t, "getpeername after reconnect", r.Peers, udpFront.String(), 1)
		if got := e.answers("ping", id); got != b {
			t.Errorf("socket %d after reconnect: answered by %q, want %s", id, got, b)
		}
	}
	if got := e.answers("ping", direct); got != a {
		t.Errorf("socket connected to A directly: %q, want an answer from %s (not destroyed)", got, a)
	}
	if got, want := e.answers("ping", tcp), ap(backendIPs[0], echoPort).String(); got != want {
		t.Errorf("tcp connection through the frontend: %q, want an answer from %s (not destroyed)", got, want)
	}
	// A new socket to the frontend reaches B.
	if id := e.hold("hold-udp", udpFront); e.answers("ping", id) != b {
		t.Errorf("a new socket does not reach %s", b)
	}

	// A second pass for A finds nothing left to destroy.
	term.TerminateUDP([]lb.GoneBackend{{RevNat: udpA.RevNat, Addr: udpA.Backends[0].Addr}})
	if n := <-passes; n != 0 {
		t.Errorf("second pass destroyed %d sockets, want 0", n)
	}
}

// Only sockets connected through the frontend that lost the backend go:
// the same backend still in another frontend keeps that frontend's sockets.
func TestSockTermOtherFrontend(t *testing.T) {
	e := newSockEnv(t)
	a := ap(backendIPs[0], udpPort)
	one := frontend(lb.UDP, 53, 0)
	two := frontend(lb.UDP, 54, 0) // RevNat 54, the same backend
	e.put(one)
	e.put(two)
	s1 := e.hold("hold-udp", ap(vip, 53))
	s2 := e.hold("hold-udp", ap(vip, 54))
	e.put(frontend(lb.UDP, 53, 1))

	var byNS map[uint64]int
	err := e.cli.Do(func(ns.NetNS) error {
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		defer self.Close()
		byNS, err = e.dp.DestroyUDPSockets([]lb.GoneBackend{{RevNat: one.RevNat, Addr: a}}, map[uint64]*os.File{1: self})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if byNS[1] != 1 {
		t.Errorf("destroyed %v, want 1 in the client's netns", byNS)
	}
	if got := e.answers("recv", s1); got != "recv: ECONNABORTED" {
		t.Errorf("socket of the frontend that lost A: %q, want recv: ECONNABORTED", got)
	}
	if got := e.answers("ping", s2); got != a.String() {
		t.Errorf("socket of the frontend that kept A: %q, want an answer from %s", got, a)
	}
}

// OpenNetns finds a namespace by its inode through a process in it when
// the recorded path is gone, and refuses a path that is now another
// namespace.
func TestOpenNetns(t *testing.T) {
	e := newSockEnv(t) // its client process lives in the client netns
	other, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close(); _ = testutils.UnmountNS(other) })
	cliIno := netnsInode(t, e.cli.Path())
	srvIno := netnsInode(t, e.srv.Path())

	nets, missing := OpenNetns([]NetnsRef{
		{Name: "moved", Path: "/nonexistent/netns", Inode: cliIno},               // found through the helper's /proc/<pid>/ns/net
		{Name: "same", Path: e.cli.Path(), Inode: cliIno},                        // the same namespace again: one descriptor
		{Name: "path only", Path: e.srv.Path()},                                  // no inode: the path is taken as it is
		{Name: "reused path", Path: other.Path(), Inode: srvIno + 1_000_000_000}, // another namespace at the path, and no process in the recorded one
		{Name: "gone", Path: "/nonexistent/netns"},                               // nothing to go by
	})
	defer func() {
		for _, f := range nets {
			f.Close()
		}
	}()
	if len(nets) != 2 || nets[cliIno] == nil || nets[srvIno] == nil {
		t.Errorf("opened %v, want the client's (%d) and the server's (%d)", keysOf(nets), cliIno, srvIno)
	}
	for ino, f := range nets {
		if got, err := NetnsInode(f); err != nil || got != ino {
			t.Errorf("descriptor for %d is namespace %d (%v)", ino, got, err)
		}
	}
	var names []string
	for _, r := range missing {
		names = append(names, r.Name)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "gone,reused path" {
		t.Errorf("missing %v, want [reused path gone]", names)
	}
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func keysOf(m map[uint64]*os.File) []uint64 {
	var out []uint64
	for k := range m {
		out = append(out, k)
	}
	return out
}

// The whole chain: the service reconciler over the real maps, with the
// real terminator. The EndpointSlice loses backend A; the socket that a
// pod-like client connected to the ClusterIP fails its next recv() with
// ECONNABORTED and, connected again, reaches B.
func TestSockTermFromReconciler(t *testing.T) {
	e := newSockEnv(t)
	var term *SocketTerminator
	cliIno := netnsInode(t, e.cli.Path())
	err := e.srv.Do(func(ns.NetNS) error {
		var err error
		term, err = e.dp.NewSocketTerminator(func() []NetnsRef {
			return []NetnsRef{{Name: "default/client", Path: e.cli.Path(), Inode: cliIno}}
		}, quiet)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	passes := make(chan int, 4)
	term.OnPass = func(n int) { passes <- n }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { term.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	rec := service.NewReconciler(e.sm, service.Node{Name: "n1"}, service.Options{Terminator: term}, quiet)
	if err := rec.Adopt(); err != nil {
		t.Fatal(err)
	}

	proto, port, bport, name := corev1.ProtocolUDP, int32(53), int32(udpPort), "dns"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "dns"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: vip.String(), ClusterIPs: []string{vip.String()},
			Ports: []corev1.ServicePort{{Name: name, Protocol: proto, Port: port}}},
	}
	slice := func(ips ...netip.Addr) []*discoveryv1.EndpointSlice {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "dns-a", Labels: map[string]string{discoveryv1.LabelServiceName: "dns"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &bport}},
		}
		for _, ip := range ips {
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()}})
		}
		return []*discoveryv1.EndpointSlice{s}
	}
	if !rec.Update("default/dns", svc, slice(backendIPs[0])) {
		t.Fatal("update failed")
	}
	front := ap(vip, 53)
	a, b := ap(backendIPs[0], udpPort).String(), ap(backendIPs[1], udpPort).String()
	sock := e.hold("hold-udp", front)
	if got := e.answers("ping", sock); got != a {
		t.Fatalf("answered by %q, want %s", got, a)
	}
	if !rec.Update("default/dns", svc, slice(backendIPs[1])) {
		t.Fatal("update failed")
	}
	if n := <-passes; n != 1 {
		t.Errorf("destroyed %d sockets, want 1", n)
	}
	if got := e.answers("recv", sock); got != "recv: ECONNABORTED" {
		t.Errorf("recv after A left: %q, want recv: ECONNABORTED", got)
	}
	if r := e.do(sockReq{Op: "reconnect", ID: sock, Addr: front.String()}); len(r.Errors) != 0 {
		t.Fatalf("reconnect: %v", r.Errors)
	}
	if got := e.answers("ping", sock); got != b {
		t.Errorf("after reconnect: answered by %q, want %s", got, b)
	}
}
