package datapath

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/internal/testpkt"
)

// Beside a kube-proxy (ANET_HOST_NAT on), a packet between two pods of the
// node whose connection netfilter translated goes to the host stack, which
// undoes the NAT; any other goes straight to the pod as before. The
// connection here is translated for real: a DNAT rule like kube-proxy's,
// and a datagram sent through it, in a namespace of the test's own.
func TestHostNATRepliesGoThroughTheStack(t *testing.T) {
	needRoot(t)
	enterNewNetns(t)
	t.Setenv("XTABLES_LOCKFILE", t.TempDir()+"/xtables.lock")
	lo := mustLink(t, "lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "natv0"}, PeerName: "natv1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"natv0", "natv1"} {
		if err := netlink.LinkSetUp(mustLink(t, n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: podIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, "natv0").Attrs().Index, Dst: &net.IPNet{IP: peerIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	// connect() routes the Service address before the DNAT applies.
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, "natv0").Attrs().Index, Dst: &net.IPNet{IP: net.IP{10, 96, 0, 0}, Mask: net.CIDRMask(16, 32)}}); err != nil {
		t.Fatal(err)
	}
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	// kube-proxy's rule, reduced: the Service address to the backend pod.
	if err := ipt.Append("nat", "OUTPUT", "-d", "10.96.0.50/32", "-p", "udp", "--dport", "53", "-j", "DNAT", "--to-destination", peerIP.String()+":5353"); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: podIP.AsSlice(), Port: 40053}, &net.UDPAddr{IP: net.IP{10, 96, 0, 50}, Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	c.Close()

	for _, on := range []uint32{1, 0} {
		spec, err := bpf.LoadLxc()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		if err := spec.Variables["ANET_HOST_NAT"].Set(on); err != nil {
			t.Fatal(err)
		}
		var objs bpf.LxcObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			t.Fatalf("loading with ANET_HOST_NAT=%d: %v", on, err)
		}
		// The backend (peer) sends from its veth (ifindex peerIfindex)
		// to the client pod (podIP): the reply of the translated flow,
		// then a datagram of a flow netfilter never saw.
		for _, ep := range []bpf.LxcEndpointInfo{
			{Ip: be32(podIP), Ifindex: uint32(lo.Attrs().Index)},
			{Ip: be32(peerIP), Ifindex: loIfindex},
		} {
			key := ep.Ip
			if err := objs.AnetEpByIp.Put(key, ep); err != nil {
				t.Fatal(err)
			}
			if err := objs.AnetEpByIf.Put(ep.Ifindex, ep); err != nil {
				t.Fatal(err)
			}
		}
		reply := testpkt.UDP{DstMAC: hostMAC, SrcMAC: peerMAC, Src: peerIP, Dst: podIP, SrcPort: 5353, DstPort: 40053, Payload: []byte("a")}.Frame()
		other := testpkt.UDP{DstMAC: hostMAC, SrcMAC: peerMAC, Src: peerIP, Dst: podIP, SrcPort: 5353, DstPort: 40054, Payload: []byte("a")}.Frame()
		want := map[string]uint32{"translated": tcActOK, "untranslated": tcActRedirect}
		if on == 0 {
			want["translated"] = tcActRedirect // straight to the pod: what broke beside kube-proxy
		}
		for name, pkt := range map[string][]byte{"translated": reply, "untranslated": other} {
			ret, _ := run(t, objs.AnetFromContainer, pkt)
			if ret != want[name] {
				t.Errorf("ANET_HOST_NAT=%d, %s flow: verdict %d, want %d", on, name, ret, want[name])
			}
		}
		objs.Close()
	}
}

// The pods of TestHostNATClosedEntryIsNotTranslated, their gateway and a
// Service address that a kube-proxy-like DNAT rule sends to the server.
var (
	natClient  = netip.MustParseAddr("10.244.7.5")
	natServer  = netip.MustParseAddr("10.244.7.6")
	natGateway = netip.MustParseAddr("10.244.7.1")
	natVIP     = netip.MustParseAddr("10.96.7.50")
)

const (
	natVIPPort    = 80
	natServerPort = 8080
	// enum tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h), as
	// ctnetlink reports an entry's state.
	ctTCPTimeWait = 7
	ctTCPClose    = 8
)

// Beside a kube-proxy, netfilter keeps the entry of a closed connection
// for a while (CLOSE 10 s after an RST, TIME_WAIT 120 s). A pod that
// connected to a Service and then connects straight to the backend from
// the same source port must get a working connection by the eBPF path: the
// backend's SYN-ACK matches the old entry's reply tuple, and the host
// stack would reverse-translate it to the Service address (the bug the
// services benchmark found). Real pods wired by Datapath.Wire in a node
// namespace of the test's own, a real DNAT rule, real TCP connections.
func TestHostNATClosedEntryIsNotTranslated(t *testing.T) {
	for _, c := range []struct {
		name  string
		rst   bool  // the client ends the first connection with an RST
		state uint8 // the old entry's state, as conntrack shows it
	}{
		{"close", true, ctTCPClose},
		{"time-wait", false, ctTCPTimeWait},
	} {
		t.Run(c.name, func(t *testing.T) {
			needRoot(t)
			n := newNATNode(t)
			const port = 40123
			// Through the Service: the DNAT, and every reply of the
			// backend through the host stack (a live entry counts).
			if got := n.connect(t, natVIP, natVIPPort, port, c.rst); got != netip.AddrPortFrom(natClient, port).String() {
				t.Fatalf("through the Service, the backend saw %q", got)
			}
			// The entry stays, closed.
			old := n.flow(t, natClient, natVIP, port, natVIPPort)
			if old == nil {
				t.Fatalf("no conntrack entry of the Service connection")
			}
			st, _ := old.ProtoInfo.(*netlink.ProtoInfoTCP)
			if st == nil || st.State != c.state {
				t.Fatalf("the Service connection's entry: %v, want TCP state %d", old, c.state)
			}
			if old.Reverse.SrcIP.String() != natServer.String() || old.Reverse.SrcPort != natServerPort || old.Reverse.DstPort != port {
				t.Fatalf("the old entry's reply tuple is not the direct connection's reply: %v", old)
			}
			// Straight to the backend, same source port: the SYN-ACK
			// matches the old entry's reply tuple, and must not be
			// handed to netfilter.
			before := n.hostForwarded(t)
			if before == 0 {
				t.Fatal("the Service connection's replies did not go through the host stack")
			}
			if got := n.connect(t, natServer, natServerPort, port, true); got != netip.AddrPortFrom(natClient, port).String() {
				t.Fatalf("straight to the backend, the backend saw %q", got)
			}
			if after := n.hostForwarded(t); after != before {
				t.Errorf("%d packets of the direct connection from the backend went through the host stack, not eBPF", after-before)
			}
			if f := n.flow(t, natClient, natServer, port, natServerPort); f != nil {
				t.Errorf("netfilter saw the direct connection: %v", f)
			}
		})
	}
}

// natNode is a node namespace with anet's programs (ANET_HOST_NAT on), two
// pods wired by Wire, and kube-proxy's DNAT of natVIP:80 to the server pod.
type natNode struct {
	dp             *Datapath
	client, server netns.NsHandle
	ipt            *iptables.IPTables
}

func newNATNode(t *testing.T) *natNode {
	t.Helper()
	enterNewNetns(t) // the node
	t.Setenv("XTABLES_LOCKFILE", t.TempDir()+"/xtables.lock")
	node, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	lo := mustLink(t, "lo")
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: natGateway.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	dp := loadPinned(t, tmpBPFFS(t), Options{HostNAT: true})
	t.Cleanup(func() { dp.Close() })
	n := &natNode{dp: dp}
	pod := func(name string, ip netip.Addr) netns.NsHandle {
		h, err := netns.New() // and switches to it
		if err != nil {
			t.Fatal(err)
		}
		if err := netns.Set(node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		fd, err := unix.Dup(int(h))
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		w, err := dp.Wire(f, WireConfig{HostIfName: "nat" + name, PodIfName: "eth0", IP: ip, Gateway: natGateway})
		if err != nil {
			t.Fatalf("wiring %s: %v", name, err)
		}
		if err := dp.UpsertEndpoint(Endpoint{IP: ip, Ifindex: uint32(w.HostIfindex), PodMAC: w.PodMAC, HostMAC: w.HostMAC}); err != nil {
			t.Fatal(err)
		}
		inNetns(t, h, func() {
			if err := netlink.LinkSetUp(mustLink(t, "lo")); err != nil {
				t.Error(err)
			}
		})
		return h
	}
	n.client = pod("client", natClient)
	n.server = pod("server", natServer)

	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	n.ipt = ipt
	// kube-proxy's rule for a ClusterIP, reduced to its DNAT.
	if err := ipt.Append("nat", "PREROUTING", "-d", natVIP.String()+"/32", "-p", "tcp", "--dport", strconv.Itoa(natVIPPort),
		"-j", "DNAT", "--to-destination", netip.AddrPortFrom(natServer, natServerPort).String()); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Append("filter", "FORWARD", "-s", natServer.String()+"/32", "-d", natClient.String()+"/32", "-p", "tcp",
		"--sport", strconv.Itoa(natServerPort), "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}

	// The server answers each connection with the client's address as
	// it sees it, then waits for the client to close.
	var ln net.Listener
	inNetns(t, n.server, func() {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(natServer, natServerPort).String())
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte(c.RemoteAddr().String() + "\n")); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return n
}

// inNetns runs fn on a thread of its own in the namespace ns; the thread
// is not handed back to the runtime (it ends with its goroutine).
func inNetns(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// connect opens a TCP connection from the client pod, source port sport
// (SO_REUSEADDR, so that a port whose last connection is in TIME_WAIT can
// be bound again), to dst:dport, reads the server's line (the client
// address it saw) and closes: with an RST when rst, else with a FIN, the
// server closing after.
func (n *natNode) connect(t *testing.T, dst netip.Addr, dport, sport uint16, rst bool) string {
	t.Helper()
	var line string
	var err error
	inNetns(t, n.client, func() {
		d := net.Dialer{
			Timeout:   3 * time.Second,
			LocalAddr: &net.TCPAddr{IP: natClient.AsSlice(), Port: int(sport)},
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}); err != nil {
					return err
				}
				return serr
			},
		}
		var c net.Conn
		c, err = d.Dial("tcp4", netip.AddrPortFrom(dst, dport).String())
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		if rst {
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			return
		}
		// FIN first, then wait for the server's: the client's socket
		// and netfilter's entry both end in TIME_WAIT.
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	})
	if err != nil {
		t.Fatalf("client %s:%d -> %s:%d: %v", natClient, sport, dst, dport, err)
	}
	return strings.TrimSpace(line)
}

// flow is the node's conntrack entry whose original direction is
// src:sport -> dst:dport, or nil. An RST or the last ACK may still be on
// its way through the node: a closing entry is waited for briefly.
func (n *natNode) flow(t *testing.T, src, dst netip.Addr, sport, dport uint16) *netlink.ConntrackFlow {
	t.Helper()
	var found *netlink.ConntrackFlow
	for range 20 {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		found = nil
		for _, f := range flows {
			if f.Forward.Protocol == unix.IPPROTO_TCP && f.Forward.SrcIP.String() == src.String() && f.Forward.DstIP.String() == dst.String() &&
				f.Forward.SrcPort == sport && f.Forward.DstPort == dport {
				found = f
			}
		}
		if found == nil {
			return nil
		}
		if st, ok := found.ProtoInfo.(*netlink.ProtoInfoTCP); ok && st.State >= ctTCPTimeWait {
			return found
		}
		time.Sleep(50 * time.Millisecond)
	}
	return found
}

// hostForwarded counts the packets from the server to the client that
// the node's host stack forwarded (a counting rule in FORWARD, which a
// packet that eBPF hands straight to the client's namespace never meets).
func (n *natNode) hostForwarded(t *testing.T) uint64 {
	t.Helper()
	stats, err := n.ipt.StructuredStats("filter", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	var pkts uint64
	for _, s := range stats {
		if s.Source != nil && s.Source.IP.Equal(natServer.AsSlice()) {
			pkts += s.Packets
		}
	}
	return pkts
}
