package datapath

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/service/lb"
)

// Socket load-balancing tests: the real hooks attached at a cgroup of a
// cgroup2 hierarchy mounted by the test, a client process (this test
// binary, re-executed as sockHelper) placed in a child cgroup and in a
// client netns, and backends listening in another netns behind a veth
// pair. The service addresses are routed nowhere: the client netns has
// only 10.99.0.0/24 on its veth, so a connect() that the hook did not
// translate fails with ENETUNREACH at once, and any bypass shows.

const (
	sockHelperEnv = "ANET_SOCK_HELPER_NETNS"
	tcpPort       = 8080
	udpPort       = 5353
)

var (
	clientIP = netip.MustParseAddr("10.99.0.1")
	// Three backend addresses in the server netns.
	backendIPs = []netip.Addr{netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.3"), netip.MustParseAddr("10.99.0.4")}
	vip        = netip.MustParseAddr("10.96.0.10")
)

func init() {
	if path := os.Getenv(sockHelperEnv); path != "" {
		sockHelper(path)
		os.Exit(0)
	}
}

// sockReq is one request to the helper: N operations (or as many as fit
// in Duration) of Op ("tcp", "udp": unconnected sendto/recvfrom,
// "udpconn": connected UDP) to Addr.
type sockReq struct {
	Op       string
	Addr     string
	N        int
	Duration time.Duration
	// KeepSocket: a "udpsame" request leaves its socket open for the
	// next request.
	KeepSocket bool
	ID         int // a held socket (sockterm_linux_test.go)
}

// sockResp counts what the operations saw.
type sockResp struct {
	Count    int
	Backends map[string]int // who answered (the server writes its own address)
	Peers    map[string]int // getpeername() of the socket
	From     map[string]int // recvfrom()'s source address (UDP)
	Errors   map[string]int // failed operations, by step and errno
	MedianNs int64          // connect() (or sendto()) latency
	Order    []string       // backends in order, for the first 64 operations
	ID       int            // a held socket, made by a hold op
}

// sockHelper runs in the client process: its main thread enters the client
// netns and does every socket call itself (raw syscalls, so that each
// socket is made on this thread, in that netns).
func sockHelper(netnsPath string) {
	runtime.LockOSThread()
	fd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Setns(fd, unix.CLONE_NEWNET)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: entering netns:", err)
		os.Exit(2)
	}
	dec := json.NewDecoder(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for {
		var req sockReq
		if err := dec.Decode(&req); err != nil {
			return
		}
		_ = enc.Encode(runOps(req))
	}
}

func runOps(req sockReq) sockResp {
	if r, ok := heldOp(req); ok {
		return r
	}
	r := sockResp{Backends: map[string]int{}, Peers: map[string]int{}, From: map[string]int{}, Errors: map[string]int{}}
	if req.Op == "udpsame" && !req.KeepSocket {
		defer func() {
			if sameFd >= 0 {
				unix.Close(sameFd)
				sameFd = -1
			}
		}()
	}
	ap := netip.MustParseAddrPort(req.Addr)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	var lats []int64
	start := time.Now()
	for i := 0; req.Duration > 0 && time.Since(start) < req.Duration || req.Duration == 0 && i < req.N; i++ {
		backend, peer, from, lat, err := sockOp(req.Op, sa)
		r.Count++
		if err != "" {
			r.Errors[err]++
			continue
		}
		lats = append(lats, lat.Nanoseconds())
		r.Backends[backend]++
		if peer != "" {
			r.Peers[peer]++
		}
		if from != "" {
			r.From[from]++
		}
		if len(r.Order) < 64 {
			r.Order = append(r.Order, backend)
		}
	}
	if len(lats) > 0 {
		slices.Sort(lats)
		r.MedianNs = lats[len(lats)/2]
	}
	return r
}

func errnoName(step string, err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		return step + ": " + unix.ErrnoName(en)
	}
	return step + ": " + err.Error()
}

func sockaddrString(sa unix.Sockaddr) string {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port)).String()
	}
	return fmt.Sprintf("%v", sa)
}

// retry retries a socket call interrupted by a signal: with a timeout set
// (SO_RCVTIMEO, SO_SNDTIMEO) the kernel does not restart it.
func retry(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// connectFd connects fd; a connect() interrupted by a signal goes on in
// the kernel, and is waited for.
func connectFd(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	for err == unix.EINTR {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, perr := unix.Poll(fds, 2000)
		switch {
		case perr == unix.EINTR:
			continue
		case perr != nil:
			return perr
		case n == 0:
			return unix.ETIMEDOUT
		}
		v, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if gerr != nil {
			return gerr
		}
		if v != 0 {
			return unix.Errno(v)
		}
		return nil
	}
	return err
}

// sameFd is the one socket of "udpsame" requests (unconnected UDP, every
// datagram of the request from the same socket), or -1; runOps closes it
// at the end of the request unless the request says to keep it
// (KeepSocket), so that a later request goes on with the same socket.
var sameFd = -1

// sockOp does one operation; err is "" or "step: ERRNO". An IPv6 address
// takes an IPv6 socket.
func sockOp(op string, sa unix.Sockaddr) (backend, peer, from string, lat time.Duration, err string) {
	typ := unix.SOCK_STREAM
	if op != "tcp" {
		typ = unix.SOCK_DGRAM
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	var fd int
	if op == "udpsame" && sameFd >= 0 {
		fd, op = sameFd, "udp"
	} else {
		var e error
		fd, e = unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
		if e != nil {
			return "", "", "", 0, errnoName("socket", e)
		}
		if op == "udpsame" {
			sameFd, op = fd, "udp"
		} else {
			defer unix.Close(fd)
		}
		tv := unix.Timeval{Sec: 2}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
	buf := make([]byte, 64)
	t0 := time.Now()
	switch op {
	case "tcp", "udpconn":
		if e := connectFd(fd, sa); e != nil {
			return "", "", "", 0, errnoName("connect", e)
		}
		lat = time.Since(t0)
		p, e := unix.Getpeername(fd)
		if e != nil {
			return "", "", "", 0, errnoName("getpeername", e)
		}
		peer = sockaddrString(p)
		if op == "tcp" {
			var got []byte
			for !strings.Contains(string(got), "\n") {
				n, e := retry(func() (int, error) { return unix.Read(fd, buf) })
				if e != nil || n == 0 {
					return "", "", "", 0, errnoName("read", fmt.Errorf("%w (got %q)", e, got))
				}
				got = append(got, buf[:n]...)
			}
			return strings.TrimSpace(string(got)), peer, "", lat, ""
		}
		if _, e := retry(func() (int, error) { return unix.Write(fd, []byte("q")) }); e != nil {
			return "", "", "", 0, errnoName("send", e)
		}
	case "udp":
		if _, e := retry(func() (int, error) { return 0, unix.Sendto(fd, []byte("q"), 0, sa) }); e != nil {
			return "", "", "", 0, errnoName("sendto", e)
		}
		lat = time.Since(t0)
	}
	var f unix.Sockaddr
	n, e := retry(func() (int, error) {
		n, from, e := unix.Recvfrom(fd, buf, 0)
		f = from
		return n, e
	})
	if e != nil {
		return "", "", "", 0, errnoName("recvfrom", e)
	}
	return string(buf[:n]), peer, sockaddrString(f), lat, ""
}

// sockEnv is one test's world: namespaces, backends, cgroups, a bpffs, the
// datapath with its hooks attached, and the client process.
type sockEnv struct {
	t        *testing.T
	root     string // bpffs
	cgMount  string
	cgRoot   string // where the hooks hang (a node's --cgroup-root)
	cgClient string // the client's cgroup, below cgRoot
	cli, srv ns.NetNS
	dp       *Datapath
	sm       *ServiceMaps

	cmd *exec.Cmd
	in  io.WriteCloser
	out *json.Decoder
}

func newSockEnv(t *testing.T) *sockEnv {
	t.Helper()
	needRoot(t)
	e := &sockEnv{t: t, root: tmpBPFFS(t)}

	e.cgMount = t.TempDir()
	if err := unix.Mount("none", e.cgMount, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mounting cgroup2: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(e.cgMount, unix.MNT_DETACH) })
	// The hierarchy is the machine's: a directory of our own, never its
	// root, holds the hooks.
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	e.cgRoot = filepath.Join(e.cgMount, "anet-socktest-"+hex.EncodeToString(suffix))
	e.cgClient = filepath.Join(e.cgRoot, "client")
	for _, d := range []string{e.cgRoot, e.cgClient} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		// The helper has exited (a later cleanup ran first): the
		// cgroups are empty.
		for _, d := range []string{e.cgClient, e.cgRoot} {
			if err := os.Remove(d); err != nil {
				t.Errorf("removing cgroup %s: %v", d, err)
			}
		}
	})

	var err error
	if e.cli, err = testutils.NewNS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.Close(); _ = testutils.UnmountNS(e.cli) })
	if e.srv, err = testutils.NewNS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.srv.Close(); _ = testutils.UnmountNS(e.srv) })
	e.wire()
	e.serve()

	err = e.cli.Do(func(ns.NetNS) error {
		dp, err := Load(e.root, quiet)
		if err != nil {
			return err
		}
		e.dp = dp
		return dp.Activate()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if e.dp != nil {
			if err := e.dp.DetachSocketLB(); err != nil {
				t.Errorf("detaching: %v", err)
			}
			e.dp.Close()
		}
	})
	if err := e.dp.AttachSocketLB(e.cgRoot); err != nil {
		t.Fatal(err)
	}
	if e.sm, err = e.dp.ServiceMaps(); err != nil {
		t.Fatal(err)
	}
	e.startHelper()
	return e
}

// wire connects the two netns with a veth pair: the client at 10.99.0.1,
// the backends at 10.99.0.2-4.
func (e *sockEnv) wire() {
	t := e.t
	err := e.cli.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sockc0"}, PeerName: "socks0"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		peer, err := netlink.LinkByName("socks0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(e.srv.Fd())); err != nil {
			return err
		}
		c, err := netlink.LinkByName("sockc0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(clientIP.String() + "/24")
		if err := netlink.AddrAdd(c, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(c)
	})
	if err != nil {
		t.Fatalf("client netns: %v", err)
	}
	err = e.srv.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return err
		}
		s, err := netlink.LinkByName("socks0")
		if err != nil {
			return err
		}
		for _, ip := range backendIPs {
			addr, _ := netlink.ParseAddr(ip.String() + "/24")
			if err := netlink.AddrAdd(s, addr); err != nil {
				return err
			}
		}
		return netlink.LinkSetUp(s)
	})
	if err != nil {
		t.Fatalf("server netns: %v", err)
	}
}

// serve starts a TCP and a UDP server on every backend address: each
// answers with its own address.
func (e *sockEnv) serve() {
	t := e.t
	err := e.srv.Do(func(ns.NetNS) error {
		for _, ip := range backendIPs {
			l, err := net.Listen("tcp4", netip.AddrPortFrom(ip, tcpPort).String())
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
					_, _ = c.Write([]byte(c.LocalAddr().String() + "\n"))
					c.Close()
				}
			}()
			pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(ip, udpPort).String())
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			go func() {
				buf := make([]byte, 64)
				for {
					_, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					_, _ = pc.WriteTo([]byte(pc.LocalAddr().String()), from)
				}
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("backends: %v", err)
	}
}

// startHelper starts the client process in the client cgroup (clone3 into
// the cgroup: it is never anywhere else) and netns.
func (e *sockEnv) startHelper() {
	t := e.t
	cg, err := os.Open(e.cgClient)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0])
	// No preemption signals (SIGURG) to interrupt its socket calls.
	cmd.Env = append(os.Environ(), sockHelperEnv+"="+e.cli.Path(), "GODEBUG=asyncpreemptoff=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the client in its cgroup: %v", err)
	}
	e.cmd, e.in, e.out = cmd, in, json.NewDecoder(bufio.NewReader(out))
	t.Cleanup(func() {
		in.Close() // the helper exits at EOF
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill() // ours, by PID
			<-done
		}
	})
	procs, err := os.ReadFile(filepath.Join(e.cgClient, "cgroup.procs"))
	if err != nil || strings.TrimSpace(string(procs)) != fmt.Sprint(cmd.Process.Pid) {
		t.Fatalf("client cgroup holds %q (%v), want the helper %d", procs, err, cmd.Process.Pid)
	}
}

// do runs one request in the client process.
func (e *sockEnv) do(req sockReq) sockResp {
	e.t.Helper()
	if err := json.NewEncoder(e.in).Encode(req); err != nil {
		e.t.Fatalf("helper: %v", err)
	}
	var r sockResp
	if err := e.out.Decode(&r); err != nil {
		e.t.Fatalf("helper: %v", err)
	}
	return r
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// frontend is a frontend of the VIP with the backends at the given indexes
// of backendIPs (IDs 1.. for TCP, 11.. for UDP), all ready.
func frontend(proto lb.Proto, port uint16, idx ...int) lb.MapFrontend {
	f := lb.MapFrontend{Key: lb.FrontendKey{Addr: ap(vip, port), Proto: proto}, RevNat: uint32(port)}
	bport, id := uint16(tcpPort), uint32(1)
	if proto == lb.UDP {
		bport, id = udpPort, 11
	}
	for _, i := range idx {
		f.Backends = append(f.Backends, lb.MapBackend{ID: id + uint32(i), Addr: ap(backendIPs[i], bport), State: lb.Ready})
	}
	f.Active = len(f.Backends)
	return f
}

func (e *sockEnv) put(f lb.MapFrontend) {
	e.t.Helper()
	if err := e.sm.Put(f); err != nil {
		e.t.Fatalf("Put %s: %v", f.Key.Addr, err)
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func wantOnly(t *testing.T, what string, m map[string]int, want string, n int) {
	t.Helper()
	if len(m) != 1 || m[want] != n {
		t.Errorf("%s: %v, want %s x%d", what, m, want, n)
	}
}

// TCP connect to a frontend reaches a backend, getpeername() shows the
// frontend, and new connections spread over the backends.
func TestSockTCP(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0, 1))
	r := e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 64})
	if len(r.Errors) != 0 {
		t.Fatalf("connects failed: %v", r.Errors)
	}
	wantOnly(t, "getpeername", r.Peers, ap(vip, 80).String(), 64)
	a, b := ap(backendIPs[0], tcpPort).String(), ap(backendIPs[1], tcpPort).String()
	if len(r.Backends) != 2 || r.Backends[a] == 0 || r.Backends[b] == 0 {
		t.Errorf("64 connects reached %v, want both %s and %s", r.Backends, a, b)
	}
	t.Logf("spread over 64 connects: %v", r.Backends)
}

// An unconnected UDP socket's datagrams to a frontend stay on one backend
// (as kube-proxy's conntrack keeps a flow on one), while other sockets
// spread; when that backend leaves the frontend, the socket's next
// datagram goes to a live one, and stays there.
func TestSockUDPUnconnectedSticks(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.UDP, 53, 0, 1, 2))
	front := ap(vip, 53).String()
	seen := map[string]bool{}
	for range 8 {
		r := e.do(sockReq{Op: "udpsame", Addr: front, N: 24})
		if len(r.Errors) != 0 {
			t.Fatalf("unconnected UDP failed: %v", r.Errors)
		}
		wantOnly(t, "recvfrom source", r.From, front, 24)
		if len(r.Backends) != 1 {
			t.Fatalf("one socket's 24 datagrams reached %v, want one backend", r.Backends)
		}
		for b := range r.Backends {
			seen[b] = true
		}
	}
	if len(seen) < 2 {
		t.Errorf("8 sockets all reached %v: sockets do not spread", seen)
	}
	// One socket goes on across a change that removes its backend.
	r := e.do(sockReq{Op: "udpsame", Addr: front, N: 8, KeepSocket: true})
	if len(r.Errors) != 0 || len(r.Backends) != 1 {
		t.Fatalf("before the change: %v %v", r.Backends, r.Errors)
	}
	var first string
	for b := range r.Backends {
		first = b
	}
	var keep []int
	for i, ip := range backendIPs {
		if ap(ip, udpPort).String() != first {
			keep = append(keep, i)
		}
	}
	e.put(frontend(lb.UDP, 53, keep...))
	r = e.do(sockReq{Op: "udpsame", Addr: front, N: 24})
	if len(r.Errors) != 0 || len(r.Backends) != 1 || r.Backends[first] != 0 {
		t.Fatalf("after %s left the frontend, the same socket reached %v (errors %v), want one other backend", first, r.Backends, r.Errors)
	}
}

// Unconnected UDP (sendto/recvfrom) and connected UDP see the frontend as
// their peer; datagrams spread over the backends.
func TestSockUDP(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.UDP, 53, 0, 1, 2))
	front := ap(vip, 53).String()

	r := e.do(sockReq{Op: "udp", Addr: front, N: 48})
	if len(r.Errors) != 0 {
		t.Fatalf("unconnected UDP failed: %v", r.Errors)
	}
	wantOnly(t, "recvfrom source (unconnected)", r.From, front, 48)
	if len(r.Backends) < 2 {
		t.Errorf("48 datagrams reached only %v", r.Backends)
	}

	r = e.do(sockReq{Op: "udpconn", Addr: front, N: 48})
	if len(r.Errors) != 0 {
		t.Fatalf("connected UDP failed: %v", r.Errors)
	}
	wantOnly(t, "getpeername (connected)", r.Peers, front, 48)
	wantOnly(t, "recvfrom source (connected)", r.From, front, 48)
	if len(r.Backends) < 2 {
		t.Errorf("48 connected sockets reached only %v", r.Backends)
	}
}

// A frontend without an active backend refuses at once: ECONNREFUSED for a
// TCP connect, a connected UDP socket's connect and an unconnected sendto,
// each counted as no-service-backend.
func TestSockRefusesWithoutBackends(t *testing.T) {
	e := newSockEnv(t)
	tf := frontend(lb.TCP, 80, 0)
	tf.Backends[0].State = lb.Terminating
	tf.Active = 0
	e.put(tf)
	uf := frontend(lb.UDP, 53, 0)
	uf.Active = 0
	e.put(uf)

	start := time.Now()
	for _, c := range []struct {
		op, addr, want string
	}{
		{"tcp", ap(vip, 80).String(), "connect: ECONNREFUSED"},
		{"udpconn", ap(vip, 53).String(), "connect: ECONNREFUSED"},
		{"udp", ap(vip, 53).String(), "sendto: ECONNREFUSED"},
	} {
		r := e.do(sockReq{Op: c.op, Addr: c.addr, N: 5})
		wantOnly(t, c.op+" errors", r.Errors, c.want, 5)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("15 refusals took %v: not at once", d)
	}
	c, err := e.dp.NodeCounters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c[CounterKey{DirEgress, DropNoServiceBackend}].Packets; got != 15 {
		t.Errorf("no-service-backend counted %d times, want 15", got)
	}

	// A backend turns ready: served at once.
	tf.Backends[0].State = lb.Ready
	tf.Active = 1
	e.put(tf)
	r := e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 3})
	wantOnly(t, "after a backend came", r.Backends, ap(backendIPs[0], tcpPort).String(), 3)
}

// Addresses that are no frontend pass untouched: a backend's own address
// (TCP and UDP), and the service address on a port that is no frontend.
func TestSockLeavesOtherAddresses(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0, 1))
	direct := ap(backendIPs[2], tcpPort).String()
	r := e.do(sockReq{Op: "tcp", Addr: direct, N: 4})
	wantOnly(t, "direct connect reached", r.Backends, direct, 4)
	wantOnly(t, "direct connect peer", r.Peers, direct, 4)

	udirect := ap(backendIPs[1], udpPort).String()
	r = e.do(sockReq{Op: "udp", Addr: udirect, N: 4})
	wantOnly(t, "direct UDP source", r.From, udirect, 4)

	// Untouched, the service address is unroutable here.
	r = e.do(sockReq{Op: "tcp", Addr: ap(vip, 81).String(), N: 2})
	wantOnly(t, "connect to a port that is no frontend", r.Errors, "connect: ENETUNREACH", 2)
	r = e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 2})
	if len(r.Errors) != 0 {
		t.Errorf("the frontend itself failed: %v", r.Errors)
	}
}

// Session affinity keeps a pod on one backend across connects within its
// timeout, lapses after it, and lets go of a backend that is no longer
// active for the frontend.
func TestSockAffinity(t *testing.T) {
	e := newSockEnv(t)
	f := frontend(lb.TCP, 80, 0, 1, 2)
	f.Affinity = time.Second
	e.put(f)
	front := ap(vip, 80).String()
	r := e.do(sockReq{Op: "tcp", Addr: front, N: 30})
	if len(r.Errors) != 0 || len(r.Backends) != 1 {
		t.Fatalf("30 connects within the timeout reached %v (errors %v), want one backend", r.Backends, r.Errors)
	}
	first := keys(r.Backends)[0]

	// Lapse: after the timeout the choice is random again (each try keeps
	// the same one with probability 1/3).
	lapsed := false
	for i := 0; i < 12 && !lapsed; i++ {
		time.Sleep(1100 * time.Millisecond)
		r = e.do(sockReq{Op: "tcp", Addr: front, N: 1})
		lapsed = len(r.Backends) == 1 && r.Backends[first] == 0
	}
	if !lapsed {
		t.Fatalf("affinity to %s never lapsed", first)
	}

	// The affine backend turns terminating: the next connect goes
	// elsewhere, and sticks there.
	r = e.do(sockReq{Op: "tcp", Addr: front, N: 1})
	cur := keys(r.Backends)[0]
	var rest []lb.MapBackend
	var gone lb.MapBackend
	for _, b := range f.Backends {
		if b.Addr.String() == cur {
			gone = b
		} else {
			rest = append(rest, b)
		}
	}
	gone.State = lb.Terminating
	f.Backends, f.Active = append(rest, gone), len(rest)
	e.put(f)
	r = e.do(sockReq{Op: "tcp", Addr: front, N: 10})
	if len(r.Backends) != 1 || r.Backends[cur] != 0 {
		t.Errorf("after %s turned terminating, affinity gave %v", cur, r.Backends)
	}
}

// IPv6 sockets reaching an IPv4 service by its IPv4-mapped address (what a
// dual-stack socket does) are balanced too, and see the service as their
// peer; other IPv6 addresses pass untouched.
func TestSockMappedIPv6(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0, 1))
	e.put(frontend(lb.UDP, 53, 0, 1))
	refused := frontend(lb.TCP, 81)
	e.put(refused)
	mapped := func(port uint16) string { return netip.AddrPortFrom(netip.AddrFrom16(vip.As16()), port).String() }

	r := e.do(sockReq{Op: "tcp", Addr: mapped(80), N: 32})
	if len(r.Errors) != 0 {
		t.Fatalf("tcp6: %v", r.Errors)
	}
	wantOnly(t, "tcp6 getpeername", r.Peers, mapped(80), 32)
	if len(r.Backends) != 2 {
		t.Errorf("tcp6 reached %v, want both backends", r.Backends)
	}
	r = e.do(sockReq{Op: "udp", Addr: mapped(53), N: 16})
	if len(r.Errors) != 0 {
		t.Fatalf("udp6: %v", r.Errors)
	}
	wantOnly(t, "udp6 recvfrom source", r.From, mapped(53), 16)
	r = e.do(sockReq{Op: "udpconn", Addr: mapped(53), N: 16})
	if len(r.Errors) != 0 {
		t.Fatalf("connected udp6: %v", r.Errors)
	}
	wantOnly(t, "connected udp6 getpeername", r.Peers, mapped(53), 16)
	wantOnly(t, "connected udp6 recvfrom source", r.From, mapped(53), 16)

	r = e.do(sockReq{Op: "tcp", Addr: mapped(81), N: 2})
	wantOnly(t, "tcp6 to a frontend without backends", r.Errors, "connect: ECONNREFUSED", 2)
	r = e.do(sockReq{Op: "tcp", Addr: "[fd00:96::10]:80", N: 1})
	wantOnly(t, "tcp6 to an IPv6 address", r.Errors, "connect: ENETUNREACH", 1)
}

// With two scopes, in-cluster clients (all of the socket hooks') use the
// internal entry.
func TestSockInternalScope(t *testing.T) {
	e := newSockEnv(t)
	in := frontend(lb.TCP, 80, 2)
	in.Key.Scope = lb.ScopeInternal
	in.Flags = lb.FlagIntLocal
	e.put(in)
	ext := frontend(lb.TCP, 80, 0, 1)
	ext.Flags = lb.FlagTwoScopes
	e.put(ext)
	r := e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 10})
	wantOnly(t, "two scopes", r.Backends, ap(backendIPs[2], tcpPort).String(), 10)
}

// Put swaps backend sets so that a live frontend never has zero backends:
// connects in a loop through the hook while sets are swapped many times
// never fail, and reach only backends of some set.
func TestSockPutNeverOpensAGap(t *testing.T) {
	e := newSockEnv(t)
	sets := [][]int{{0, 1}, {2}, {0, 2}, {1}, {0, 1, 2}, {1, 2}, {0}}
	e.put(frontend(lb.TCP, 80, sets[0]...))
	done := make(chan sockResp)
	go func() { done <- e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), Duration: 3 * time.Second}) }()
	swaps := 0
	var r sockResp
loop:
	for i := 1; ; i++ {
		select {
		case r = <-done:
			break loop
		default:
		}
		if err := e.sm.Put(frontend(lb.TCP, 80, sets[i%len(sets)]...)); err != nil {
			t.Errorf("Put: %v", err)
		}
		swaps++
	}
	t.Logf("%d connects during %d swaps: %v", r.Count, swaps, r.Backends)
	if len(r.Errors) != 0 {
		t.Errorf("connects failed during swaps: %v", r.Errors)
	}
	if swaps < 100 || r.Count < 100 {
		t.Errorf("only %d swaps and %d connects: the test proves little", swaps, r.Count)
	}
	if len(r.Backends) != 3 {
		t.Errorf("backends reached: %v, want all three", r.Backends)
	}
	// What the maps hold is the last set, nothing of the others.
	dump, err := e.sm.Dump()
	if err != nil || len(dump) != 1 {
		t.Fatalf("dump: %v %v", dump, err)
	}
	var bids []uint32
	it := e.dp.shared[bpf.SockMapAnetLb4Backends].Iterate()
	var id uint32
	var b bpf.SockLb4Backend
	for it.Next(&id, &b) {
		bids = append(bids, id)
	}
	if len(bids) != len(dump[0].Backends) {
		t.Errorf("backends map holds %v, the frontend %v", bids, dump[0].Backends)
	}
}

// A restart (a new Load, Activate and AttachSocketLB over the pins, once
// with the same maps and once with resized service maps, which migrates
// them) keeps the hooks: connects in a loop across it never bypass them,
// and each hook runs the new program, once.
func TestSockRestartKeepsHooks(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0, 1))
	linkIDs := func() map[string]link.ID {
		out := map[string]link.ID{}
		for _, h := range sockHooks {
			lk, err := link.LoadPinnedLink(e.dp.Layout.SockLinkPin(h.prog), nil)
			if err != nil {
				t.Fatal(err)
			}
			info, err := lk.Info()
			lk.Close()
			if err != nil {
				t.Fatal(err)
			}
			out[h.prog] = info.ID
		}
		return out
	}
	before := linkIDs()
	done := make(chan sockResp)
	go func() { done <- e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), Duration: 3 * time.Second}) }()

	for i, opts := range []Options{{}, {ServiceMapSize: 4096, BackendMapSize: 2048}} {
		time.Sleep(300 * time.Millisecond)
		e.dp.Close() // the old anetd exits; its pins stay
		e.dp = nil
		var dp *Datapath
		err := e.cli.Do(func(ns.NetNS) error {
			var err error
			if dp, err = LoadWith(e.root, opts, quiet); err != nil {
				return err
			}
			if i == 1 && len(dp.Migrating()) == 0 {
				return errors.New("resized maps are not migrated")
			}
			return dp.Activate()
		})
		if err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
		e.dp = dp
		if err := dp.AttachSocketLB(e.cgRoot); err != nil {
			t.Fatalf("restart %d: %v", i, err)
		}
	}
	r := <-done
	t.Logf("%d connects across two restarts: %v", r.Count, r.Backends)
	if len(r.Errors) != 0 {
		t.Errorf("connects failed across restarts: %v", r.Errors)
	}
	wantOnly(t, "getpeername", r.Peers, ap(vip, 80).String(), r.Count)

	// The migrated maps were copied: the frontend is served from the new
	// maps (the new size is in force), by the new programs, each once.
	if after := linkIDs(); !reflect.DeepEqual(after, before) {
		t.Errorf("links %v after the restarts, %v before: replaced, not updated", after, before)
	}
	m, err := ebpf.LoadPinnedMap(e.dp.Layout.MapPin(bpf.SockMapAnetLb4Services), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.MaxEntries() != 4096 {
		t.Errorf("pinned services map has %d entries, want the new 4096", m.MaxEntries())
	}
	m.Close()
	cg, err := os.Open(e.cgRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	for _, h := range sockHooks {
		q, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: h.attach})
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.dp.Program(h.prog).Info()
		want, _ := info.ID()
		if len(q.Programs) != 1 || q.Programs[0].ID != want {
			t.Errorf("%s: cgroup runs %v, want only program %d", h.prog, q.Programs, want)
		}
	}
	sm, err := e.dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	e.sm = sm
	dump, err := sm.Dump()
	if err != nil || len(dump) != 1 || len(dump[0].Backends) != 2 {
		t.Errorf("after the restarts the maps hold %+v (%v)", dump, err)
	}

	// Detached, the service address is untouched again (unroutable).
	if err := e.dp.DetachSocketLB(); err != nil {
		t.Fatal(err)
	}
	r = e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 1})
	wantOnly(t, "after DetachSocketLB", r.Errors, "connect: ENETUNREACH", 1)
	if _, err := os.Stat(e.dp.Layout.SockLinkPin(ProgSockConnect)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin left after DetachSocketLB: %v", err)
	}
}

// Not a measurement to assert on: connect() latency through the hook and
// direct to the backend, medians of a quick loop.
func TestSockConnectLatency(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0))
	const n = 2000
	var hook, direct []int64
	for round := 0; round < 3; round++ {
		r := e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: n})
		d := e.do(sockReq{Op: "tcp", Addr: ap(backendIPs[0], tcpPort).String(), N: n})
		if len(r.Errors)+len(d.Errors) != 0 {
			t.Fatalf("errors: %v %v", r.Errors, d.Errors)
		}
		hook, direct = append(hook, r.MedianNs), append(direct, d.MedianNs)
	}
	slices.Sort(hook)
	slices.Sort(direct)
	t.Logf("connect() median over %d connects, 3 rounds: through the hook %v (rounds %v), direct %v (rounds %v)",
		n, time.Duration(hook[1]), hook, time.Duration(direct[1]), direct)
}

// The cgroup root must be on cgroup2.
func TestAttachSocketLBNeedsCgroup2(t *testing.T) {
	dp, err := Load(tmpBPFFS(t), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	err = dp.AttachSocketLB(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "not on a cgroup v2 filesystem") || !strings.Contains(err.Error(), "mount -t cgroup2") {
		t.Errorf("AttachSocketLB on a plain directory: %v", err)
	}
}

// A new cgroup root (the flag changed between runs) moves the hooks: the
// new root has them, the old one no longer, and connects go on meeting
// exactly one.
func TestAttachSocketLBMovesRoot(t *testing.T) {
	e := newSockEnv(t)
	e.put(frontend(lb.TCP, 80, 0))
	query := func(dir string) int {
		cg, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		q, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
		if err != nil {
			t.Fatal(err)
		}
		return len(q.Programs)
	}
	if err := e.dp.AttachSocketLB(e.cgClient); err != nil {
		t.Fatal(err)
	}
	if a, b := query(e.cgRoot), query(e.cgClient); a != 0 || b != 1 {
		t.Errorf("after the move: %d programs at the old root, %d at the new, want 0 and 1", a, b)
	}
	r := e.do(sockReq{Op: "tcp", Addr: ap(vip, 80).String(), N: 4})
	wantOnly(t, "through the moved hook", r.Backends, ap(backendIPs[0], tcpPort).String(), 4)
}
