package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/anet-dev/anet/internal/testpkt"
)

// The Geneve overlay (bpf/lib/geneve.h) run with BPF_PROG_TEST_RUN in a
// network namespace holding the underlay ul0 (hNode/24): this node's pod
// A (podIP, on lo, identity idA) sends to a pod of the other node
// (remoteIP, in 10.244.2.0/24 behind hNode2), and receives from it.

var (
	remoteCIDR = netip.MustParsePrefix("10.244.2.0/24")
	hNode2MAC  = net.HardwareAddr{2, 0, 0, 0, 0x50, 11}
)

type tunEnv struct {
	*polEnv
	ul uint32 // ul0's ifindex
}

// loadTunnel loads the programs in the given routing mode with the
// underlay and one tunnel peer configured.
func loadTunnel(t *testing.T, mode RoutingMode) *tunEnv {
	t.Helper()
	needRoot(t)
	enterNewNetns(t)
	ul := addUnderlay(t)
	dp, err := LoadUnpinnedWith(Options{RoutingMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e := &tunEnv{polEnv: &polEnv{t: t, dp: dp, a: loIfindex, port: 30000}, ul: uint32(ul.Attrs().Index)}
	if err := dp.UpsertEndpoint(Endpoint{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC, Identity: idA}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetNodeConfig(hNode, snatMin, snatMax); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetUnderlay("ul0", hNode); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetTunnelPeer(remoteCIDR, hNode2); err != nil {
		t.Fatal(err)
	}
	for a, id := range map[netip.Addr]uint32{podIP: idA, remoteIP: idRemote} {
		if err := dp.SetIPCache(netip.PrefixFrom(a, 32), id); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// fromPod runs anet_from_container for a frame of pod A.
func (e *tunEnv) fromPod(pkt []byte) (uint32, []byte) {
	e.t.Helper()
	return runProg(e.t, e.dp.objs.AnetFromContainer, loIfindex, pkt)
}

// fromUnderlay runs anet_from_netdev for a frame arriving on ul0.
func (e *tunEnv) fromUnderlay(pkt []byte) (uint32, []byte) {
	e.t.Helper()
	return runProg(e.t, e.dp.host.AnetFromNetdev, e.ul, pkt)
}

// geneveFrom is a tunnelled frame from the other node to this one.
func geneveFrom(vni uint32, inner []byte) testpkt.Geneve {
	return testpkt.Geneve{DstMAC: hULMAC, SrcMAC: hNode2MAC, Src: hNode2, Dst: hNode, SrcPort: 50000, VNI: vni, Inner: inner}
}

// remoteTCP is a frame of the other node's pod to pod A, as the other
// node's pod sent it (to its own gateway's MAC).
func remoteTCP(sport, dport uint16, flags uint8) []byte {
	return testpkt.TCP{DstMAC: peerHst, SrcMAC: peerMAC, Src: remoteIP, Dst: podIP, SrcPort: sport, DstPort: dport,
		Flags: flags, Seq: 7, TTL: 63, Payload: []byte("over the tunnel")}.Frame()
}

// The encapsulated packet, byte for byte: outer Ethernet from ul0's MAC
// (the next hop's is the neighbour subsystem's to write), outer IPv4 from
// this node to the peer's with DF, TTL 64, the inner TOS and a valid
// checksum, UDP to 6081 from a port of 49152-65535 with checksum 0 and the
// right length, Geneve version 0 without options, protocol 0x6558 and the
// sender's identity as VNI, then the pod's frame untouched.
func TestTunnelEncapBytes(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	inner := testpkt.TCP{DstMAC: hostMAC, SrcMAC: podMAC, Src: podIP, Dst: remoteIP, SrcPort: 41000, DstPort: 80,
		Flags: testpkt.TCPSyn, Seq: 1, Payload: []byte("hello, other node")}.Frame()
	inner[15] = 0xb9 // TOS: DSCP 46, ECT(1)
	binary.BigEndian.PutUint16(inner[24:], 0)
	binary.BigEndian.PutUint16(inner[24:], testpkt.Checksum(inner[14:34]))
	sent := bytes.Clone(inner)

	ret, out := e.fromPod(inner)
	if ret != tcActRedirect {
		t.Fatalf("verdict %d, want TC_ACT_REDIRECT (redirect_neigh to ul0)", ret)
	}
	if len(out) != len(sent)+50 {
		t.Fatalf("encapsulated frame is %d bytes, want %d + 50", len(out), len(sent))
	}
	sport := binary.BigEndian.Uint16(out[34:])
	if sport < 49152 {
		t.Errorf("outer source port %d is outside 49152-65535", sport)
	}
	want := testpkt.Geneve{DstMAC: make(net.HardwareAddr, 6), SrcMAC: hULMAC, Src: hNode, Dst: hNode2, SrcPort: sport,
		TOS: 0xb9, VNI: idA, Inner: sent}.Frame()
	if !bytes.Equal(out, want) {
		t.Fatalf("encapsulated frame\n got % x\nwant % x", out, want)
	}
	if testpkt.Checksum(out[14:34]) != 0 {
		t.Errorf("outer IPv4 checksum does not verify")
	}
	if n := counter(t, e.dp, loIfindex, DirEgress, ReasonForwarded); n != 1 {
		t.Errorf("forwarded egress of the sender: %d, want 1", n)
	}
}

// The outer source port follows the inner flow: one flow keeps its port,
// different flows spread over several.
func TestTunnelSourcePortPerFlow(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	sportOf := func(src uint16) uint16 {
		_, out := e.fromPod(udpPkt(podIP, remoteIP, src, 53))
		return binary.BigEndian.Uint16(out[34:])
	}
	seen := map[uint16]bool{}
	for i := range uint16(16) {
		p := sportOf(42000 + i)
		if again := sportOf(42000 + i); again != p {
			t.Fatalf("flow %d: outer source port %d, then %d", i, p, again)
		}
		seen[p] = true
	}
	// 16 flows on 16 384 ports: all on one is a broken hash, not chance.
	if len(seen) < 2 {
		t.Fatalf("16 inner flows all got outer source port %v", seen)
	}
}

// Egress policy is judged before the tunnel: a denied packet is not
// encapsulated.
func TestTunnelEgressPolicyFirst(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	e.set(e.a, false, true, nil, []PolicyRule{{Identity: idRemote, Proto: protoTCP, Port: 80, PortPrefixLen: 16}})
	ret, out := e.fromPod(tcpPkt(podIP, remoteIP, e.next(), 80, testpkt.TCPSyn))
	if ret != tcActRedirect || len(out) < 64 || binary.BigEndian.Uint16(out[36:]) != testpkt.GenevePort {
		t.Fatalf("allowed: verdict %d, not encapsulated", ret)
	}
	ret, _ = e.fromPod(tcpPkt(podIP, remoteIP, e.next(), 81, testpkt.TCPSyn))
	wantVerdict(t, "denied by egress policy", ret, tcActShot)
	if n := counter(t, e.dp, loIfindex, DirEgress, DropPolicyEgress); n != 1 {
		t.Errorf("policy-egress-denied: %d, want 1", n)
	}
}

// A well-formed Geneve packet to this node is stripped to the inner
// frame, which is delivered to its endpoint as a routed hop (TTL - 1, the
// endpoint's MACs; counted as forwarded into it), and its ingress policy
// is judged on the VNI's identity, not on the ipcache's for the source.
func TestTunnelDecapDelivers(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	inner := remoteTCP(e.next(), 80, testpkt.TCPSyn)
	ret, out := e.fromUnderlay(geneveFrom(idRemote, inner).Frame())
	if ret != tcActRedirect {
		t.Fatalf("verdict %d, want TC_ACT_REDIRECT (redirect_peer to the endpoint)", ret)
	}
	want := bytes.Clone(inner)
	copy(want[0:], podMAC)
	copy(want[6:], hostMAC)
	want[22]-- // TTL
	binary.BigEndian.PutUint16(want[24:], 0)
	binary.BigEndian.PutUint16(want[24:], testpkt.Checksum(want[14:34]))
	if !bytes.Equal(out[:len(want)], want) || len(out) != len(want) {
		t.Fatalf("delivered frame\n got % x\nwant % x", out, want)
	}
	if n := counter(t, e.dp, loIfindex, DirIngress, ReasonForwarded); n != 1 {
		t.Errorf("forwarded into the endpoint: %d, want 1", n)
	}

	// Ingress isolated: identity idRemote may reach port 80.
	e.set(e.a, true, false, []PolicyRule{{Identity: idRemote, Proto: protoTCP, Port: 80, PortPrefixLen: 16}}, nil)
	ret, _ = e.fromUnderlay(geneveFrom(idRemote, remoteTCP(e.next(), 80, testpkt.TCPSyn)).Frame())
	wantVerdict(t, "VNI idRemote to port 80", ret, tcActRedirect)
	// The same source address with another identity in the VNI: the
	// ipcache says idRemote, the VNI decides.
	ret, _ = e.fromUnderlay(geneveFrom(idB, remoteTCP(e.next(), 80, testpkt.TCPSyn)).Frame())
	wantVerdict(t, "VNI idB to port 80", ret, tcActShot)
	if n := counter(t, e.dp, loIfindex, DirIngress, DropPolicyIngress); n != 1 {
		t.Errorf("policy-ingress-denied on the endpoint: %d, want 1", n)
	}
	// And the other way: the ipcache's identity of the source is not
	// allowed, the VNI's is.
	if err := e.dp.SetIPCache(netip.PrefixFrom(remoteIP, 32), idB); err != nil {
		t.Fatal(err)
	}
	ret, _ = e.fromUnderlay(geneveFrom(idRemote, remoteTCP(e.next(), 80, testpkt.TCPSyn)).Frame())
	wantVerdict(t, "VNI idRemote, ipcache idB", ret, tcActRedirect)
	ret, _ = e.fromUnderlay(geneveFrom(idRemote, remoteTCP(e.next(), 81, testpkt.TCPSyn)).Frame())
	wantVerdict(t, "VNI idRemote to port 81", ret, tcActShot)
}

// Congestion marked on the outer header (CE) reaches an ECN-capable
// inner packet (RFC 6040), with a checksum that verifies; a not-ECT one
// is left alone.
func TestTunnelDecapECN(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	for _, c := range []struct {
		name        string
		inner, want byte
	}{{"ECT(0)", 0x02, 0x03}, {"ECT(1)", 0x01, 0x03}, {"CE", 0x03, 0x03}, {"not-ECT", 0x00, 0x00}} {
		inner := remoteTCP(e.next(), 80, testpkt.TCPSyn)
		inner[15] = 0xb8 | c.inner
		binary.BigEndian.PutUint16(inner[24:], 0)
		binary.BigEndian.PutUint16(inner[24:], testpkt.Checksum(inner[14:34]))
		g := geneveFrom(idRemote, inner)
		g.TOS = 0xb8 | 0x03 // CE
		ret, out := e.fromUnderlay(g.Frame())
		if ret != tcActRedirect {
			t.Fatalf("%s: verdict %d", c.name, ret)
		}
		if out[15] != 0xb8|c.want || testpkt.Checksum(out[14:34]) != 0 {
			t.Errorf("%s under CE: inner TOS %#02x (checksum verifies: %v), want %#02x", c.name, out[15], testpkt.Checksum(out[14:34]) == 0, 0xb8|c.want)
		}
	}
}

// A reply of a connection the local pod opened through the tunnel comes
// back through it and passes an isolated ingress (the pod conntrack).
func TestTunnelDecapReplyOfTrackedConnection(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	e.set(e.a, true, false, nil, nil) // ingress isolated, nothing allowed
	sport := e.next()
	if ret, _ := e.fromPod(tcpPkt(podIP, remoteIP, sport, 80, testpkt.TCPSyn)); ret != tcActRedirect {
		t.Fatalf("SYN out: verdict %d", ret)
	}
	reply := testpkt.TCP{DstMAC: peerHst, SrcMAC: peerMAC, Src: remoteIP, Dst: podIP, SrcPort: 80, DstPort: sport,
		Flags: testpkt.TCPSyn | testpkt.TCPAck, TTL: 63}.Frame()
	ret, _ := e.fromUnderlay(geneveFrom(idRemote, reply).Frame())
	wantVerdict(t, "SYN-ACK back through the tunnel", ret, tcActRedirect)
	ret, _ = e.fromUnderlay(geneveFrom(idRemote, remoteTCP(e.next(), 80, testpkt.TCPSyn)).Frame())
	wantVerdict(t, "a new connection in", ret, tcActShot)
}

// Malformed Geneve packets to this node are dropped and counted by
// reason, never delivered; packets that are not Geneve to this node pass
// to the rest of the program untouched.
func TestTunnelDecapMalformed(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	good := func() testpkt.Geneve { return geneveFrom(idRemote, remoteTCP(e.next(), 80, testpkt.TCPSyn)) }
	// cut shortens a frame to n bytes, its IPv4 length with it.
	cut := func(f []byte, n int) []byte {
		f = f[:n]
		binary.BigEndian.PutUint16(f[16:], uint16(n-14))
		binary.BigEndian.PutUint16(f[38:], uint16(n-34))
		binary.BigEndian.PutUint16(f[24:], 0)
		binary.BigEndian.PutUint16(f[24:], testpkt.Checksum(f[14:34]))
		return f
	}
	drops := []struct {
		name   string
		frame  []byte
		reason Reason
	}{
		{"half a Geneve header", cut(good().Frame(), 14+20+8+4), DropTunnelTruncated},
		{"inner frame shorter than Ethernet + IPv4", cut(good().Frame(), 14+20+8+8+14+10), DropTunnelTruncated},
		{"outer IPv4 longer than the frame", good().Frame()[:90], DropTunnelTruncated},
		{"version 1", func() []byte { g := good(); g.Version = 1; return g.Frame() }(), DropTunnelBadVersion},
		{"options longer than the packet", func() []byte { g := good(); g.OptLenWords = 63; return g.Frame() }(), DropTunnelBadOptions},
		{"critical options", func() []byte { g := good(); g.Flags = 0x40; g.Options = make([]byte, 8); return g.Frame() }(), DropTunnelBadOptions},
		{"OAM frame", func() []byte { g := good(); g.Flags = 0x80; return g.Frame() }(), DropTunnelBadOptions},
		{"protocol IPv4 (0x0800)", func() []byte { g := good(); g.Proto = 0x0800; return g.Frame() }(), DropTunnelBadProtocol},
		{"inner ARP", geneveFrom(idRemote, testpkt.WhoHas(peerMAC, remoteIP, podIP)).Frame(), DropTunnelBadProtocol},
		{"inner source of no pod of the sender", geneveFrom(idRemote, testpkt.TCP{DstMAC: peerHst, SrcMAC: peerMAC,
			Src: netip.MustParseAddr("10.244.3.3"), Dst: podIP, SrcPort: 1000, DstPort: 80, Flags: testpkt.TCPSyn}.Frame()).Frame(), DropTunnelBadSource},
		{"inner destination not an endpoint here", geneveFrom(idRemote, testpkt.TCP{DstMAC: peerHst, SrcMAC: peerMAC,
			Src: remoteIP, Dst: netip.MustParseAddr("10.244.1.77"), SrcPort: 1000, DstPort: 80, Flags: testpkt.TCPSyn}.Frame()).Frame(), DropTunnelNoEndpoint},
	}
	for _, c := range drops {
		before := nodeCounter(t, e.dp, DirIngress, c.reason)
		ret, _ := e.fromUnderlay(c.frame)
		if ret != tcActShot {
			t.Errorf("%s: verdict %d, want TC_ACT_SHOT", c.name, ret)
		}
		if n := nodeCounter(t, e.dp, DirIngress, c.reason) - before; n != 1 {
			t.Errorf("%s: %s counted %d times, want 1", c.name, c.reason, n)
		}
	}
	// Skipped options that are not critical are fine.
	g := good()
	g.Options = []byte{0x01, 0x02, 0x03, 0x01, 0xaa, 0xbb, 0xcc, 0xdd}
	if ret, _ := e.fromUnderlay(g.Frame()); ret != tcActRedirect {
		t.Errorf("non-critical option: verdict %d, want delivered", ret)
	}
	if n := counter(t, e.dp, loIfindex, DirIngress, ReasonForwarded); n != 1 {
		t.Errorf("delivered: %d, want only the one with a non-critical option", n)
	}

	passes := []struct {
		name  string
		frame []byte
	}{
		{"to another address", func() []byte { g := good(); g.Dst = netip.MustParseAddr("192.168.50.99"); return g.Frame() }()},
		{"to port 6082", func() []byte { g := good(); g.DstPort = 6082; return g.Frame() }()},
	}
	for _, c := range passes {
		ret, out := e.fromUnderlay(c.frame)
		if ret != tcActOK || !bytes.Equal(out, c.frame) {
			t.Errorf("%s: verdict %d (want TC_ACT_OK), bytes changed: %v", c.name, ret, !bytes.Equal(out, c.frame))
		}
	}
}

// Native mode is unchanged: a packet to another node's pod goes to the
// host stack untouched, tunnel peers or not, and Geneve on the underlay
// is not decapsulated.
func TestTunnelNativeModeUnchanged(t *testing.T) {
	for _, mode := range []RoutingMode{"", RoutingNative} {
		e := loadTunnel(t, mode)
		in := tcpPkt(podIP, remoteIP, e.next(), 80, testpkt.TCPSyn)
		ret, out := e.fromPod(in)
		if ret != tcActOK || !bytes.Equal(out, in) {
			t.Errorf("mode %q: to another node's pod: verdict %d, changed %v; want TC_ACT_OK untouched", mode, ret, !bytes.Equal(out, in))
		}
		g := geneveFrom(idRemote, remoteTCP(e.next(), 80, testpkt.TCPSyn)).Frame()
		ret, out = e.fromUnderlay(g)
		if ret != tcActOK || !bytes.Equal(out, g) {
			t.Errorf("mode %q: Geneve on the underlay: verdict %d, changed %v; want TC_ACT_OK untouched", mode, ret, !bytes.Equal(out, g))
		}
	}
}

func TestTunnelPeersAPI(t *testing.T) {
	e := loadTunnel(t, RoutingTunnel)
	other := netip.MustParsePrefix("10.244.3.0/24")
	if err := e.dp.SetTunnelPeer(netip.MustParsePrefix("10.244.3.9/24"), netip.MustParseAddr("192.168.50.12")); err != nil {
		t.Fatal(err)
	}
	got, err := e.dp.TunnelPeers()
	if err != nil {
		t.Fatal(err)
	}
	want := []TunnelPeer{{remoteCIDR, hNode2}, {other, netip.MustParseAddr("192.168.50.12")}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("peers %v, want %v", got, want)
	}
	if err := e.dp.DeleteTunnelPeer(other); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.DeleteTunnelPeer(other); err != nil {
		t.Fatalf("deleting an absent peer: %v", err)
	}
	if got, _ := e.dp.TunnelPeers(); len(got) != 1 {
		t.Fatalf("after delete: %v", got)
	}
	for _, bad := range []func() error{
		func() error { return e.dp.SetTunnelPeer(netip.MustParsePrefix("fd00::/64"), hNode2) },
		func() error { return e.dp.SetTunnelPeer(remoteCIDR, netip.MustParseAddr("fd00::1")) },
		func() error { return e.dp.SetUnderlay("nosuchdev", hNode) },
	} {
		if bad() == nil {
			t.Error("bad input accepted")
		}
	}
	if _, err := ParseRoutingMode("vxlan"); err == nil {
		t.Error(`routing mode "vxlan" accepted`)
	}
	// A peer removed: its pods go to the host stack again.
	if err := e.dp.DeleteTunnelPeer(remoteCIDR); err != nil {
		t.Fatal(err)
	}
	in := tcpPkt(podIP, remoteIP, e.next(), 80, testpkt.TCPSyn)
	if ret, out := e.fromPod(in); ret != tcActOK || !bytes.Equal(out, in) {
		t.Errorf("no peer: verdict %d, want TC_ACT_OK untouched", ret)
	}
}
