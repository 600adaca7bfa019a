package main

// End-to-end tests of one node: the real anet-cni binary through libcni and
// cnitool, a real anetd, the real eBPF programs in the kernel, pods as
// network namespaces. They need root; CI runs them as root.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/daemon/api"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/endpoint"
	"github.com/anet-dev/anet/internal/testpkt"
	"github.com/anet-dev/anet/lab/testnode"
)

func listEndpoints(t *testing.T, n *testnode.Node) map[string]api.Endpoint {
	t.Helper()
	out, err := n.Anetctl("endpoint", "list", "-o", "json")
	if err != nil {
		t.Fatalf("anetctl endpoint list: %v\n%s", err, out)
	}
	var eps []api.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("anetctl -o json: %v\n%s", err, out)
	}
	m := map[string]api.Endpoint{}
	for _, e := range eps {
		m[e.ContainerID] = e
	}
	return m
}

func count(ep api.Endpoint, dir, reason string) uint64 {
	for _, c := range ep.Counters {
		if c.Dir == dir && c.Reason == reason {
			return c.Packets
		}
	}
	return 0
}

func assertClean(t *testing.T, n *testnode.Node) {
	t.Helper()
	if left := n.Leftovers(); len(left) > 0 {
		t.Fatalf("left behind on the node:\n  %s\nanetd log:\n%s", strings.Join(left, "\n  "), n.Log())
	}
}

// echoTCP serves one-line echo on a pod's listener.
func echoTCP(t *testing.T, p *testnode.Pod, port int) {
	t.Helper()
	l, err := p.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(net.Listener)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

func echoUDP(t *testing.T, p *testnode.Pod, port int) {
	t.Helper()
	l, err := p.Listen("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	pc := l.(net.PacketConn)
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], addr)
		}
	}()
}

func roundTrip(t *testing.T, from *testnode.Pod, network, addr, msg string) {
	t.Helper()
	c, err := from.Dial(network, addr, 2*time.Second)
	if err != nil {
		t.Fatalf("%s dial %s from %s: %v", network, addr, from.Name, err)
	}
	defer c.Close()
	// UDP: a datagram may be lost on a busy machine, and a client sends
	// again; three tries, each with its 2 s. TCP: one.
	tries := 1
	if network == "udp" {
		tries = 3
	}
	buf := make([]byte, len(msg))
	for i := range tries {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, err := io.ReadFull(c, buf)
		if err == nil && string(buf) == msg {
			return
		}
		if i == tries-1 {
			t.Fatalf("%s echo from %s: got %q, %v (%d tries)", network, addr, buf, err, tries)
		}
	}
}

func noBridge(t *testing.T, n *testnode.Node) {
	t.Helper()
	_ = n.NS.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if l.Type() == "bridge" {
				t.Errorf("a bridge exists on the node: %s", l.Attrs().Name)
			}
		}
		return nil
	})
}

// oneQueueEach checks that both ends of a pod's veth pair have one
// transmit and one receive queue (anetd asks for that; the kernel's
// default is one per possible CPU).
func oneQueueEach(t *testing.T, n *testnode.Node, p *testnode.Pod) {
	t.Helper()
	check := func(side string, l netlink.Link) {
		if a := l.Attrs(); a.NumTxQueues != 1 || a.NumRxQueues != 1 {
			t.Errorf("%s side %s: %d tx and %d rx queues, want 1 and 1", side, a.Name, a.NumTxQueues, a.NumRxQueues)
		}
	}
	_ = n.NS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(datapath.HostIfName(p.ContainerID, p.IfName))
		if err != nil {
			t.Fatal(err)
		}
		check("host", l)
		return nil
	})
	_ = p.NS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(p.IfName)
		if err != nil {
			t.Fatal(err)
		}
		check("pod", l)
		return nil
	})
}

func TestTwoPodsThroughLibcni(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b := n.NewPod("a"), n.NewPod("b")
	ra, rb := n.MustAdd(a), n.MustAdd(b)
	cidr := netip.MustParsePrefix(n.PodCIDR)
	for _, r := range [...]net.IP{ra.IPs[0].Address.IP, rb.IPs[0].Address.IP} {
		if ip, _ := netip.AddrFromSlice(r.To4()); !cidr.Contains(ip) {
			t.Fatalf("address %s outside %s", r, cidr)
		}
	}
	if a.IP().Equal(b.IP()) {
		t.Fatal("both pods got", a.IP())
	}
	if len(ra.Interfaces) != 2 || ra.Interfaces[1].Sandbox != a.NS.Path() || len(ra.Routes) != 1 {
		t.Fatalf("incomplete result: %+v", ra)
	}
	noBridge(t, n)
	oneQueueEach(t, n, a)

	echoTCP(t, b, 7000)
	echoUDP(t, b, 7001)
	roundTrip(t, a, "tcp", net.JoinHostPort(b.IP().String(), "7000"), "hello over tcp")
	roundTrip(t, a, "udp", net.JoinHostPort(b.IP().String(), "7001"), "hello over udp")
	if err := a.Ping(b.IP().String(), 3); err != nil {
		t.Fatal(err)
	}
	// Node to pod and pod to node (the gateway address is the node's).
	if out, err := n.NSEnter("ping", "-c", "1", "-W", "1", a.IP().String()).CombinedOutput(); err != nil {
		t.Fatalf("node -> pod: %v\n%s", err, out)
	}
	if err := b.Ping(rb.IPs[0].Gateway.String(), 1); err != nil {
		t.Fatal(err)
	}
	// IP forwarding stayed off: the pods were joined by eBPF alone.
	if out, _ := n.NSEnter("cat", "/proc/sys/net/ipv4/ip_forward").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("ip_forward is %q", out)
	}
	for _, p := range []*testnode.Pod{a, b} {
		if err := n.Check(p); err != nil {
			t.Fatalf("CHECK %s: %v", p.Name, err)
		}
	}
	eps := listEndpoints(t, n)
	ea, eb := eps[a.ContainerID], eps[b.ContainerID]
	if ea.Pod.Name != "a" || ea.Pod.Namespace != "default" {
		t.Errorf("endpoint lacks its pod: %+v", ea.Pod)
	}
	// 1 TCP handshake+data, 1 UDP datagram, 3 pings: at least 5 each way.
	if got := count(ea, "egress", "forwarded"); got < 5 {
		t.Errorf("pod a egress forwarded = %d, want >= 5", got)
	}
	if got := count(eb, "ingress", "forwarded"); got < 5 {
		t.Errorf("pod b ingress forwarded = %d, want >= 5", got)
	}
	table, err := n.Anetctl("endpoint", "list")
	if err != nil || !strings.Contains(table, a.IP().String()) || !strings.Contains(table, "TX-PKTS") {
		t.Errorf("anetctl endpoint list table:\n%s %v", table, err)
	}
	for _, p := range []*testnode.Pod{a, b} {
		if err := n.Del(p); err != nil {
			t.Fatalf("DEL %s: %v", p.Name, err)
		}
	}
	assertClean(t, n)
}

// cnitool drives the plugin as an operator would by hand, and the pods it
// wires are checked as the libcni test checks them: TCP, UDP, ICMP, the
// counters, IP forwarding off, no bridge. cnitool has no flag or variable
// for libcni's result cache (always /var/lib/cni), so it runs in a mount
// namespace of its own where the test's directory is mounted on /var/lib:
// the machine's /var/lib/cni is neither created nor written.
func TestCnitool(t *testing.T) {
	const machineCache = "/var/lib/cni"
	_, err := os.Lstat(machineCache)
	machineHadCache := err == nil
	n := testnode.New(t, testnode.Options{})
	a, b := n.NewPod("a"), n.NewPod("b")
	varLib := filepath.Join(n.Dir, "cnitool-var-lib")
	if err := os.MkdirAll(filepath.Join(varLib, "cni"), 0o700); err != nil {
		t.Fatal(err)
	}
	// cnitool's cache key: network, container ID (from the netns path), ifname.
	cacheName := func(p *testnode.Pod) string {
		sum := sha512.Sum512([]byte(p.NS.Path()))
		return fmt.Sprintf("anet-cnitool-%x-eth0", sum[:10])
	}
	inMachineCache := func() {
		t.Helper()
		if !machineHadCache {
			if _, err := os.Lstat(machineCache); err == nil {
				t.Fatalf("%s did not exist before the test and does now", machineCache)
			}
			return
		}
		for _, p := range []*testnode.Pod{a, b} {
			if _, err := os.Lstat(filepath.Join(machineCache, "results", cacheName(p))); err == nil {
				t.Fatalf("cnitool wrote its cache for %s into the machine's %s", p.Name, machineCache)
			}
		}
	}
	run := func(verb string, p *testnode.Pod) string {
		t.Helper()
		cmd := n.NSEnter("unshare", "--mount", "--propagation", "private", "--",
			"sh", "-c", `mount -n --bind "$0" /var/lib && exec "$@"`, varLib,
			filepath.Join(n.Bin, "cnitool"), verb, "anet", p.NS.Path())
		cmd.Env = append(os.Environ(), "CNI_PATH="+n.Bin, "NETCONFPATH="+n.ConfDir, "CNI_IFNAME=eth0",
			"CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+p.Name) // cnitool itself refuses a trailing ";"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cnitool %s %s: %v\n%s\nanetd:\n%s", verb, p.Name, err, out, n.Log())
		}
		return string(out)
	}
	var addrs []string
	for _, p := range []*testnode.Pod{a, b} {
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		out := run("add", p)
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("cnitool add output: %v\n%s", err, out)
		}
		addrs = append(addrs, strings.TrimSuffix(res.IPs[0].Address, "/32"))
		if _, err := os.Stat(filepath.Join(varLib, "cni", "results", cacheName(p))); err != nil {
			t.Fatalf("cnitool's result cache is not in the test's directory: %v", err)
		}
	}
	inMachineCache()
	noBridge(t, n)
	if err := a.Ping(addrs[1], 3); err != nil {
		t.Fatal(err)
	}
	echoTCP(t, a, 7000)
	echoUDP(t, a, 7001)
	roundTrip(t, b, "tcp", net.JoinHostPort(addrs[0], "7000"), "cnitool over tcp")
	roundTrip(t, b, "udp", net.JoinHostPort(addrs[0], "7001"), "cnitool over udp")
	if out, _ := n.NSEnter("cat", "/proc/sys/net/ipv4/ip_forward").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("ip_forward is %q", out)
	}
	eps := listEndpoints(t, n)
	var ea, eb api.Endpoint
	for _, e := range eps {
		switch e.IP.String() {
		case addrs[0]:
			ea = e
		case addrs[1]:
			eb = e
		}
	}
	if ea.Pod.Name != "a" || eb.Pod.Name != "b" || ea.Network != "anet" {
		t.Fatalf("endpoints do not match cnitool's pods: %+v", eps)
	}
	// 3 pings, 1 TCP handshake+data, 1 UDP datagram each way at least.
	if got := count(ea, "egress", "forwarded"); got < 5 {
		t.Errorf("pod a egress forwarded = %d, want >= 5", got)
	}
	if got := count(eb, "ingress", "forwarded"); got < 5 {
		t.Errorf("pod b ingress forwarded = %d, want >= 5", got)
	}
	run("check", a)
	run("check", b)
	run("del", a)
	run("del", b)
	assertClean(t, n)
	inMachineCache()
	if left, _ := os.ReadDir(filepath.Join(varLib, "cni", "results")); len(left) != 0 {
		t.Errorf("cnitool's cache after DEL: %v", left)
	}
}

func TestSpoofedSourceDropped(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b := n.NewPod("a"), n.NewPod("b")
	ra := n.MustAdd(a)
	n.MustAdd(b)
	l, err := b.Listen("udp", ":7002")
	if err != nil {
		t.Fatal(err)
	}
	pc := l.(net.PacketConn)
	defer pc.Close()
	gwMAC, _ := net.ParseMAC(ra.Interfaces[0].Mac)
	podMAC, _ := net.ParseMAC(ra.Interfaces[1].Mac)
	spoofed := netip.MustParseAddr("10.244.1.200")
	aIP, bIP := netip.AddrFrom4([4]byte(a.IP().To4())), netip.AddrFrom4([4]byte(b.IP().To4()))
	frame := func(src netip.Addr, msg string) []byte {
		return testpkt.UDP{DstMAC: gwMAC, SrcMAC: podMAC, Src: src, Dst: bIP, SrcPort: 40000, DstPort: 7002, Payload: []byte(msg)}.Frame()
	}
	truncated := frame(aIP, "x")[:testpkt.OffSrcIP] // an IPv4 header cut short
	if err := a.SendRaw(frame(spoofed, "spoofed"), frame(spoofed, "spoofed"), truncated, frame(aIP, "genuine")); err != nil {
		t.Fatal(err)
	}
	// The genuine datagram, sent last through the same socket, arrives: the
	// others were dropped, not merely delayed.
	_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	for {
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("genuine datagram never arrived: %v", err)
		}
		if strings.HasPrefix(from.String(), spoofed.String()) || string(buf[:k]) == "spoofed" {
			t.Fatalf("spoofed datagram reached pod b from %s", from)
		}
		if string(buf[:k]) == "genuine" {
			break
		}
	}
	ea := listEndpoints(t, n)[a.ContainerID]
	if got := count(ea, "egress", datapath.DropInvalidSource.String()); got != 2 {
		t.Errorf("invalid-source drops = %d, want 2 (counters %+v)", got, ea.Counters)
	}
	if got := count(ea, "egress", datapath.DropMalformedIP.String()); got != 1 {
		t.Errorf("malformed-ip drops = %d, want 1 (counters %+v)", got, ea.Counters)
	}
	table, _ := n.Anetctl("endpoint", "list")
	if !strings.Contains(table, "egress/invalid-source=2") {
		t.Errorf("anetctl does not show the drops by name:\n%s", table)
	}
}

// stream keeps a TCP stream running from a to b (1 KiB a millisecond),
// counts the bytes b gets and measures the longest wait between two reads
// that got data: a stall (a lost segment waits for a retransmission of at
// least 200 ms) shows there, however short the test's windows.
type stream struct {
	received atomic.Int64
	lastAt   atomic.Int64 // monotonic nanoseconds since start of the last read with data
	maxGap   atomic.Int64
	start    time.Time
	stop     chan struct{}
	wg       sync.WaitGroup
	err      atomic.Value
}

func startStream(t *testing.T, a, b *testnode.Pod) *stream {
	t.Helper()
	l, err := b.Listen("tcp", ":7100")
	if err != nil {
		t.Fatal(err)
	}
	ln := l.(net.Listener)
	s := &stream{stop: make(chan struct{}), start: time.Now()}
	conn, err := a.Dial("tcp", net.JoinHostPort(b.IP().String(), "7100"), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		chunk := bytes.Repeat([]byte("x"), 1024)
		for {
			select {
			case <-s.stop:
				conn.Close()
				return
			default:
			}
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(chunk); err != nil {
				s.err.Store(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		defer s.wg.Done()
		defer srv.Close()
		buf := make([]byte, 64<<10)
		for {
			k, err := srv.Read(buf)
			if k > 0 {
				s.received.Add(int64(k))
				now := int64(time.Since(s.start))
				if gap := now - s.lastAt.Swap(now); gap > s.maxGap.Load() {
					s.maxGap.Store(gap)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { s.Stop() })
	return s
}

func (s *stream) Stop() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
}

// maxStall is the longest wait between two reads of the stream a test
// accepts: well above the scheduling delays of a busy machine, below what a
// lost segment costs twice.
const maxStall = 500 * time.Millisecond

// noStall asserts that the stream never waited longer than maxStall.
func (s *stream) noStall(t *testing.T) {
	t.Helper()
	gap := time.Duration(s.maxGap.Load())
	t.Logf("stream: %d bytes, longest wait between reads %v", s.received.Load(), gap.Round(time.Millisecond))
	if gap > maxStall {
		t.Errorf("stream stalled for %v at a time (bound %v)", gap.Round(time.Millisecond), maxStall)
	}
}

// flowing asserts that the stream moves during d.
func (s *stream) flowing(t *testing.T, what string, d time.Duration) {
	t.Helper()
	before := s.received.Load()
	time.Sleep(d)
	if after := s.received.Load(); after <= before {
		t.Fatalf("%s: stream stalled at %d bytes (err %v)", what, after, s.err.Load())
	}
	if err := s.err.Load(); err != nil {
		t.Fatalf("%s: stream broke: %v", what, err)
	}
}

// attachedProg is the program on an endpoint's host-side veth for the
// pod's egress, by TCX link or tc filter.
func attachedProg(t *testing.T, n *testnode.Node, hostIf string) uint32 {
	t.Helper()
	var id ebpf.ProgramID
	err := n.NS.Do(func(ns.NetNS) error {
		var err error
		id, err = datapath.AttachedProgram(datapath.Layout{Root: n.BPFRoot}, hostIf, datapath.DirEgress)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return uint32(id)
}

func TestAnetdKilledTrafficFlows(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b := n.NewPod("a"), n.NewPod("b")
	ra := n.MustAdd(a)
	n.MustAdd(b)
	s := startStream(t, a, b)
	s.flowing(t, "before the kill", time.Second)
	progBefore := attachedProg(t, n, ra.Interfaces[0].Name)

	n.KillAnetd()
	s.flowing(t, "with anetd dead", time.Second)
	if err := n.Status(); err == nil {
		t.Error("STATUS succeeded with anetd dead")
	} else if code := cniCode(err); code != 50 || !strings.Contains(err.Error(), "not reachable") {
		t.Errorf("STATUS with anetd dead: code %d, %v; want code 50 (plugin not available)", code, err)
	}

	// The restarted anetd loads its programs anew and swaps them into the
	// pinned links while the stream runs (what an upgrade does).
	n.StartAnetd()
	s.flowing(t, "after the restart", time.Second)
	if after := attachedProg(t, n, ra.Interfaces[0].Name); after == progBefore {
		t.Errorf("link still runs program %d after restart; want the new program", after)
	}
	if err := n.Check(a); err != nil {
		t.Errorf("CHECK after restart: %v", err)
	}
	eps := listEndpoints(t, n)
	if len(eps) != 2 {
		t.Fatalf("%d endpoints after restart, want 2", len(eps))
	}
	if got := count(eps[a.ContainerID], "egress", "forwarded"); got < 100 {
		t.Errorf("a's counters after restart: %d packets, want the stream's", got)
	}
	s.Stop()
	s.noStall(t)
	if err := n.Status(); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

// STATUS is code 50 while anetd is up but not ready (held by its test hook
// before it restores its endpoints), ADD is code 11 (try again later), and
// both work once it is ready.
func TestStatusWhileAnetdNotReady(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	n.StopAnetd()
	n.StartAnetdHeld()
	st, err := n.Client().Status(context.Background())
	if err != nil || st.Ready {
		t.Fatalf("held anetd: status %+v, %v; want answering and not ready", st, err)
	}
	err = n.Status()
	if code := cniCode(err); code != 50 || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("STATUS with anetd not ready: code %d, %v; want code 50 and \"not ready\"", code, err)
	}
	p := n.NewPod("early")
	if _, err := n.Add(p); cniCode(err) != 11 {
		t.Fatalf("ADD with anetd not ready: %v; want code 11", err)
	}
	out, err := n.Anetctl("status")
	if err != nil || !strings.Contains(out, "restoring endpoints") {
		t.Errorf("anetctl status with anetd not ready: %v\n%s", err, out)
	}
	n.ReleaseAnetd()
	if err := n.Status(); err != nil {
		t.Fatalf("STATUS once ready: %v", err)
	}
	n.MustAdd(p)
	if err := n.Del(p); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n)
}

// A restart swaps programs with link.Update while datagrams flow: none lost.
func TestProgramSwapLosesNothing(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	a, b := n.NewPod("a"), n.NewPod("b")
	n.MustAdd(a)
	n.MustAdd(b)
	l, err := b.Listen("udp", ":7003")
	if err != nil {
		t.Fatal(err)
	}
	pc := l.(net.PacketConn)
	defer pc.Close()
	// A receive buffer far beyond the default, so that a receiver starved
	// of CPU on a busy machine loses nothing: a loss here is the datapath's.
	raw, err := pc.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
	})
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	c, err := a.Dial("udp", net.JoinHostPort(b.IP().String(), "7003"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Write([]byte("seq")); err == nil {
				sent.Add(1)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	for range 3 {
		n.StopAnetd()
		n.StartAnetd()
	}
	time.Sleep(200 * time.Millisecond)
	// At least 500 datagrams, however slow the machine sends them.
	for deadline := time.Now().Add(10 * time.Second); sent.Load() < 500 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-done
	time.Sleep(300 * time.Millisecond)
	if sent.Load() < 500 || got.Load() != sent.Load() {
		t.Fatalf("sent %d datagrams, received %d", sent.Load(), got.Load())
	}
}

func TestDelIsIdempotent(t *testing.T) {
	n := testnode.New(t, testnode.Options{})

	t.Run("twice", func(t *testing.T) {
		p := n.NewPod("twice")
		n.MustAdd(p)
		for i := range 2 {
			if err := n.Del(p); err != nil {
				t.Fatalf("DEL #%d: %v", i+1, err)
			}
		}
		assertClean(t, n)
	})
	t.Run("netns gone", func(t *testing.T) {
		p := n.NewPod("gone")
		n.MustAdd(p)
		p.NS.Close()
		if err := testutils.UnmountNS(p.NS); err != nil {
			t.Fatal(err)
		}
		if err := n.Del(p); err != nil {
			t.Fatalf("DEL with the netns gone: %v", err)
		}
		assertClean(t, n)
	})
	t.Run("veth gone", func(t *testing.T) {
		p := n.NewPod("veth")
		r := n.MustAdd(p)
		_ = n.NS.Do(func(ns.NetNS) error {
			l, err := netlink.LinkByName(r.Interfaces[0].Name)
			if err == nil {
				err = netlink.LinkDel(l)
			}
			if err != nil {
				t.Fatal(err)
			}
			return nil
		})
		if err := n.Del(p); err != nil {
			t.Fatalf("DEL with the veth gone: %v", err)
		}
		assertClean(t, n)
	})
	t.Run("anetd down", func(t *testing.T) {
		p, q := n.NewPod("down1"), n.NewPod("down2")
		n.MustAdd(p)
		n.MustAdd(q)
		n.KillAnetd()
		for _, x := range []*testnode.Pod{p, q} {
			if err := n.Del(x); err != nil {
				t.Fatalf("DEL with anetd down: %v", err)
			}
		}
		if left := n.Leftovers(); len(left) == 0 {
			t.Fatal("nothing recorded for anetd while it was down")
		}
		n.StartAnetd()
		assertClean(t, n)
	})
}

func TestAddErrors(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	p := n.NewPod("p")
	n.MustAdd(p)
	if _, err := n.Add(p); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second ADD of one attachment: %v", err)
	}
	// The first attachment is untouched.
	if err := n.Check(p); err != nil {
		t.Fatalf("CHECK after the refused ADD: %v", err)
	}
	if err := n.Del(p); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n)

	n.KillAnetd()
	q := n.NewPod("q")
	_, err := n.Add(q)
	if err == nil || !strings.Contains(err.Error(), "anetd is not available") {
		t.Fatalf("ADD with anetd down: %v", err)
	}
	if code := cniCode(err); code != 11 {
		t.Errorf("ADD with anetd down: code %d, want 11", code)
	}
	n.StartAnetd()
	assertClean(t, n)
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func TestStatusAndGC(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	if err := n.Status(); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	keep, drop := n.NewPod("keep"), n.NewPod("drop")
	n.MustAdd(keep)
	rd := n.MustAdd(drop)
	if err := n.GC(keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	eps := listEndpoints(t, n)
	if _, ok := eps[drop.ContainerID]; ok || len(eps) != 1 {
		t.Fatalf("after GC: %v", eps)
	}
	_ = n.NS.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName(rd.Interfaces[0].Name); err == nil {
			t.Error("GC left the collected pod's veth")
		}
		return nil
	})
	if err := n.Check(keep); err != nil {
		t.Fatalf("CHECK of the kept pod after GC: %v", err)
	}
	if err := n.Del(keep); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n)
}

// Both ways of attaching an endpoint's programs: tc clsact filters (the
// default: fast to attach, and what kernels before 6.6 have) and TCX links
// (--endpoint-attach tcx), each through a restart that swaps the programs.
func TestAttachModes(t *testing.T) {
	for _, mode := range []string{datapath.ModeTC, datapath.ModeTCX} {
		t.Run(mode, func(t *testing.T) {
			n := testnode.New(t, testnode.Options{AnetdArgs: []string{"--endpoint-attach", mode}})
			a, b := n.NewPod("a"), n.NewPod("b")
			ra := n.MustAdd(a)
			n.MustAdd(b)
			if err := a.Ping(b.IP().String(), 2); err != nil {
				t.Fatal(err)
			}
			eps := listEndpoints(t, n)
			if eps[a.ContainerID].AttachMode != mode {
				t.Fatalf("attach mode %q, want %q", eps[a.ContainerID].AttachMode, mode)
			}
			pin := datapath.Layout{Root: n.BPFRoot}.LinkPin(ra.Interfaces[0].Name, datapath.DirEgress)
			if _, err := os.Stat(pin); (err == nil) != (mode == datapath.ModeTCX) {
				t.Errorf("link pin %s: %v (mode %s)", pin, err, mode)
			}
			if err := n.Check(a); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			// A restart replaces the programs in place: CHECK compares the
			// attached program with the one anetd pinned.
			before := attachedProg(t, n, ra.Interfaces[0].Name)
			n.StopAnetd()
			n.StartAnetd()
			if after := attachedProg(t, n, ra.Interfaces[0].Name); after == before {
				t.Errorf("still program %d after the restart", after)
			}
			if err := n.Check(a); err != nil {
				t.Fatalf("CHECK after restart: %v", err)
			}
			if err := a.Ping(b.IP().String(), 1); err != nil {
				t.Fatal(err)
			}
			for _, p := range []*testnode.Pod{a, b} {
				if err := n.Del(p); err != nil {
					t.Fatal(err)
				}
			}
			assertClean(t, n)
		})
	}
}

// 200 pods added and deleted, eight at a time.
func TestManyPodsInParallel(t *testing.T) {
	n := testnode.New(t, testnode.Options{PodCIDR: "10.244.0.0/22"})
	const total, par = 200, 8
	pods := make([]*testnode.Pod, total)
	for i := range pods {
		pods[i] = n.NewPod(fmt.Sprintf("p%d", i))
	}
	forAll := func(f func(p *testnode.Pod) error) {
		sem := make(chan struct{}, par)
		var wg sync.WaitGroup
		for _, p := range pods {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := f(p); err != nil {
					t.Errorf("%s: %v", p.Name, err)
				}
			}()
		}
		wg.Wait()
	}
	forAll(func(p *testnode.Pod) error { _, err := n.Add(p); return err })
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]string{}
	for _, p := range pods {
		if other, dup := seen[p.IP().String()]; dup {
			t.Fatalf("%s and %s both got %s", p.Name, other, p.IP())
		}
		seen[p.IP().String()] = p.Name
	}
	if eps := listEndpoints(t, n); len(eps) != total {
		t.Fatalf("%d endpoints, want %d", len(eps), total)
	}
	forAll(func(p *testnode.Pod) error { return n.Del(p) })
	assertClean(t, n)
}

// Each bad config in testdata gets its CNI error code, a message naming the
// problem, nothing but the error object on stdout, and leaves nothing.
func TestBadConfigs(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	p := n.NewPod("bad")
	f, err := os.Open("../../testdata/cni/bad/expect.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	cases := 0
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) != 3 {
			continue
		}
		name, wantCode, substr := fields[0], fields[1], fields[2]
		cases++
		t.Run(name, func(t *testing.T) {
			stdin, err := os.ReadFile("../../testdata/cni/bad/" + name + ".json")
			if err != nil {
				t.Fatal(err)
			}
			for _, verb := range []string{"ADD", "DEL", "CHECK", "STATUS"} {
				cmd := n.NSEnter(filepath.Join(n.Bin, "anet-cni"))
				cmd.Env = append(os.Environ(), "CNI_COMMAND="+verb, "CNI_CONTAINERID="+p.ContainerID,
					"CNI_NETNS="+p.NS.Path(), "CNI_IFNAME=eth0", "CNI_PATH="+n.Bin)
				cmd.Stdin = bytes.NewReader(stdin)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				if err := cmd.Run(); err == nil {
					t.Fatalf("%s accepted the config", verb)
				}
				var e struct {
					Code uint   `json:"code"`
					Msg  string `json:"msg"`
				}
				dec := json.NewDecoder(&stdout)
				if err := dec.Decode(&e); err != nil || dec.More() {
					t.Fatalf("%s: stdout is not one error object: %q (%v)", verb, stdout.String(), err)
				}
				// skel names an old version by the verb it cannot do
				// ("config version does not allow CHECK").
				named := strings.Contains(e.Msg, substr) || (wantCode == "1" && strings.Contains(e.Msg, "version"))
				if fmt.Sprint(e.Code) != wantCode || !named {
					t.Errorf("%s: code %d msg %q; want code %s and %q", verb, e.Code, e.Msg, wantCode, substr)
				}
			}
			assertClean(t, n)
		})
	}
	if cases < 10 {
		t.Fatalf("only %d bad configs found", cases)
	}
}

// Older config versions work, with the result converted to the version
// asked for.
func TestOlderConfigVersions(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	for _, v := range []string{"0.4.0", "1.0.0"} {
		t.Run(v, func(t *testing.T) {
			conf := n.ConflistWithVersion(v)
			p := n.NewPod("v" + strings.ReplaceAll(v, ".", ""))
			res, err := n.AddWith(conf, p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			if err := n.CheckWith(conf, p); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			if err := n.DelWith(conf, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			assertClean(t, n)
		})
	}
}

// A bad environment (interface name, container ID, netns) is code 4.
func TestBadEnvironment(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	p := n.NewPod("env")
	conf, err := os.ReadFile(filepath.Join(n.ConfDir, "10-anet.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &list); err != nil {
		t.Fatal(err)
	}
	stdin := strings.Replace(string(list.Plugins[0]), "{", `{"cniVersion":"1.1.0","name":"anet",`, 1)
	cases := map[string][]string{
		"ifname":      {"CNI_IFNAME=bad/name", "CNI_CONTAINERID=" + p.ContainerID, "CNI_NETNS=" + p.NS.Path()},
		"containerid": {"CNI_IFNAME=eth0", "CNI_CONTAINERID=-bad", "CNI_NETNS=" + p.NS.Path()},
		"netns":       {"CNI_IFNAME=eth0", "CNI_CONTAINERID=" + p.ContainerID, "CNI_NETNS=/nonexistent/netns"},
	}
	for name, env := range cases {
		cmd := n.NSEnter(filepath.Join(n.Bin, "anet-cni"))
		cmd.Env = append(append(os.Environ(), "CNI_COMMAND=ADD", "CNI_PATH="+n.Bin), env...)
		cmd.Stdin = strings.NewReader(stdin)
		out, _ := cmd.Output()
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal(out, &e); err != nil || e.Code != 4 {
			t.Errorf("%s: got %q, want code 4", name, out)
		}
	}
	assertClean(t, n)
}

// linkState reads, in a netns, whether a link is up and whether IPv6 is off
// on it.
func linkState(t *testing.T, netns ns.NetNS, name string) (up, ipv6Off bool) {
	t.Helper()
	err := netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		up = l.Attrs().Flags&net.FlagUp != 0 || l.Attrs().RawFlags&unix.IFF_UP != 0
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6")
		ipv6Off = err == nil && strings.TrimSpace(string(b)) == "1"
		return nil
	})
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return up, ipv6Off
}

// The pod's link comes up only once the programs are attached and IPv6 is
// off on both ends: the pod never sends a packet the datapath does not see.
// The plugin's test hook holds ADD after each step to look.
func TestPodUpOnlyWhenProtected(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	for _, step := range []string{datapath.StepVeth, datapath.StepAttached} {
		t.Run(step, func(t *testing.T) {
			p := n.NewPod("up-" + step)
			hostIf := datapath.HostIfName(p.ContainerID, p.IfName)
			h := n.HoldAdd(p, step)
			for _, end := range []struct {
				netns ns.NetNS
				name  string
			}{{p.NS, p.IfName}, {n.NS, hostIf}} {
				up, off := linkState(t, end.netns, end.name)
				if up {
					t.Errorf("after %s: %s is up before the ADD is done", step, end.name)
				}
				// The pod side's IPv6 goes off just before it comes up,
				// in the same namespace switch.
				if !off && end.name == hostIf {
					t.Errorf("after %s: IPv6 is on on %s", step, end.name)
				}
			}
			if step == datapath.StepAttached {
				if err := n.NS.Do(func(ns.NetNS) error {
					return datapath.CheckEndpoint(datapath.Layout{Root: n.BPFRoot}, hostIf)
				}); err != nil {
					t.Errorf("after attach: programs not attached: %v", err)
				}
			}
			out, err := h.Continue()
			if err != nil {
				t.Fatalf("ADD after the hold: %v", err)
			}
			if up, off := linkState(t, p.NS, p.IfName); !up || !off {
				t.Errorf("%s after ADD: up %v, IPv6 off %v", p.IfName, up, off)
			}
			if up, _ := linkState(t, n.NS, hostIf); !up {
				t.Errorf("%s is down after ADD", hostIf)
			}
			var res struct {
				IPs []struct{ Address string } `json:"ips"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
				t.Fatalf("ADD result: %v\n%s", err, out)
			}
			// No IPv6 address came up on the pod's link, and the pod reaches
			// the node.
			if v6, _ := p.Exec("ip", "-6", "addr", "show", "dev", p.IfName); strings.Contains(v6, "inet6") {
				t.Errorf("the pod has IPv6 addresses:\n%s", v6)
			}
			if err := n.Del(p); err != nil {
				t.Fatal(err)
			}
			assertClean(t, n)
		})
	}
}

// The runtime gives up on an ADD (the plugin is killed) while anetd works
// on it, at each of anetd's steps: anetd sees the request's connection go,
// undoes what it did, and nothing is left, with no restart. (A crash of
// anetd itself at each step: TestAddCrashAtEachStep.)
func TestKilledAddLeavesNothing(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	for _, step := range []string{endpoint.StepReserved, datapath.StepVeth, datapath.StepAttached, datapath.StepPod, datapath.StepHost, endpoint.StepMapped} {
		t.Run(step, func(t *testing.T) {
			p := n.NewPod("kill-" + step)
			h := n.HoldAdd(p, step)
			h.Kill()
			if _, err := h.Release(); err == nil {
				t.Fatal("the killed ADD succeeded")
			}
			// The same anetd, not restarted (a start would clean up by
			// itself): its undo must have left nothing.
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(n.Log(), `msg="ADD undone"`) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			assertClean(t, n)
			h.Restart()
			// The attachment can be added again and works.
			q := n.NewPod("again-" + step)
			n.MustAdd(p)
			n.MustAdd(q)
			// Up to three echo requests: one answered is enough (a busy
			// machine may take longer than one's second to answer it).
			if err := p.Ping(q.IP().String(), 3); err != nil {
				t.Error(err) // and clean up all the same, for the next step
			}
			for _, x := range []*testnode.Pod{p, q} {
				if err := n.Del(x); err != nil {
					t.Fatal(err)
				}
			}
			assertClean(t, n)
		})
	}
}

// Two networks use anet-cni on one node: GC of one removes its own stale
// attachments and never the other's.
func TestGCKeepsOtherNetworks(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	one, two := n.ConflistNamed("anet"), n.ConflistNamed("anet-second")
	a, stale, b := n.NewPod("a"), n.NewPod("stale"), n.NewPod("b")
	for _, x := range []struct {
		list *libcni.NetworkConfigList
		p    *testnode.Pod
	}{{one, a}, {one, stale}, {two, b}} {
		res, err := n.AddWith(x.list, x.p)
		if err != nil {
			t.Fatalf("ADD %s to %s: %v", x.p.Name, x.list.Name, err)
		}
		if x.p.Result, err = current.NewResultFromResult(res); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.GCWith(one, a); err != nil {
		t.Fatalf("GC of %s: %v", one.Name, err)
	}
	eps := listEndpoints(t, n)
	if _, ok := eps[stale.ContainerID]; ok {
		t.Errorf("GC of %s kept its stale attachment", one.Name)
	}
	if len(eps) != 2 || eps[a.ContainerID].Network != one.Name || eps[b.ContainerID].Network != two.Name {
		t.Fatalf("after GC of %s, endpoints %v; want a (%s) and b (%s)", one.Name, eps, one.Name, two.Name)
	}
	if err := n.CheckWith(two, b); err != nil {
		t.Fatalf("CHECK of b after the other network's GC: %v", err)
	}
	if err := a.Ping(b.IP().String(), 1); err != nil {
		t.Fatal(err)
	}
	if err := n.GCWith(two); err != nil {
		t.Fatalf("GC of %s: %v", two.Name, err)
	}
	if eps := listEndpoints(t, n); len(eps) != 1 || eps[a.ContainerID].Network != one.Name {
		t.Fatalf("after GC of %s keeping nothing: %v", two.Name, eps)
	}
	if err := n.DelWith(one, a); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*testnode.Pod{stale, b} {
		_ = n.DelWith(one, p) // already collected: DEL succeeds
	}
	assertClean(t, n)
}

// anetd's socket is mode 0600 in a 0700 directory, and other users cannot
// connect to it; anetctl status reports the node.
func TestSocketModeAndAnetctlStatus(t *testing.T) {
	n := testnode.New(t, testnode.Options{})
	fi, err := os.Lstat(n.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s has mode %v, want a socket of mode 0600", n.Socket, fi.Mode())
	}
	if di, err := os.Stat(filepath.Dir(n.Socket)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v (%v), want 0700", di.Mode(), err)
	}
	// The socket's own mode keeps others out: through a hard link in a
	// directory anyone may enter, a user other than root is refused.
	open, err := os.MkdirTemp("", "anet-t-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(open) })
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	linked := filepath.Join(open, "anetd.sock")
	if err := os.Link(n.Socket, linked); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		filepath.Join(n.Bin, "anetctl"), "--socket", linked, "status").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("anetctl status as nobody: %v\n%s; want permission denied", err, out)
	}

	p := n.NewPod("p")
	n.MustAdd(p)
	st, err := n.Anetctl("status")
	if err != nil {
		t.Fatalf("anetctl status: %v\n%s", err, st)
	}
	for _, want := range []string{"Node:", n.Name, "Ready:", "yes", "Pod CIDR:", n.PodCIDR + " (gateway 10.244.1.1)",
		"Addresses:", "1 of 253 allocated", "Endpoints:", "BPF root:", n.BPFRoot} {
		if !strings.Contains(st, want) {
			t.Errorf("anetctl status lacks %q:\n%s", want, st)
		}
	}
	if err := n.Del(p); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n)
}

// CHECK fails when what ADD made is no longer there: the programs on the
// host side (anetd checks those) or the pod's default route (the plugin
// checks the pod side).
func TestCheckFindsWhatIsWrong(t *testing.T) {
	n := testnode.New(t, testnode.Options{})

	p := n.NewPod("noprog")
	r := n.MustAdd(p)
	if err := n.Check(p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	host := r.Interfaces[0].Name
	if err := n.NS.Do(func(ns.NetNS) error {
		lk, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		fs, err := netlink.FilterList(lk, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if err := netlink.FilterDel(f); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(p); err == nil || !strings.Contains(err.Error(), host) {
		t.Errorf("CHECK with the host side's ingress filter gone: %v, want an error naming %s", err, host)
	}
	if err := n.Del(p); err != nil {
		t.Fatal(err)
	}

	q := n.NewPod("noroute")
	n.MustAdd(q)
	if out, err := q.Exec("ip", "route", "del", "default"); err != nil {
		t.Fatalf("ip route del default: %v\n%s", err, out)
	}
	if err := n.Check(q); err == nil || !strings.Contains(err.Error(), "route 0.0.0.0/0") {
		t.Errorf("CHECK with the pod's default route gone: %v, want an error about it", err)
	}
	if err := n.Del(q); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n)
}
