package datapath

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/internal/testpkt"
)

// NetworkPolicy in the pod programs (bpf/lib/policy.h), run in the kernel
// with BPF_PROG_TEST_RUN: two endpoints of this node, A (on lo of the
// test's netns) and B (on a veth of it: a test run needs a real device),
// and peers elsewhere known to the ipcache.

const (
	idA      = 1000
	idB      = 1001
	idRemote = 1002
	protoTCP = 6
	protoUDP = 17
	protoSCT = 132
)

var (
	remoteIP = netip.MustParseAddr("10.244.2.9") // a pod of another node
	worldIP  = netip.MustParseAddr("203.0.113.7")
)

type polEnv struct {
	t    testing.TB
	dp   *Datapath
	a, b uint32 // the endpoints' ifindexes
	port uint16 // the next source port: every connection a fresh one
}

func newPolEnv(t testing.TB) *polEnv {
	t.Helper()
	needRoot(t)
	enterNewNetns(t)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pola"}, PeerName: "polb"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	e := &polEnv{t: t, a: loIfindex, b: uint32(mustLink(t, "pola").Attrs().Index), port: 30000}
	dp, err := LoadUnpinned()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	for _, ep := range []Endpoint{
		{IP: podIP, Ifindex: e.a, PodMAC: podMAC, HostMAC: hostMAC},
		{IP: peerIP, Ifindex: e.b, PodMAC: peerMAC, HostMAC: peerHst},
	} {
		if err := dp.UpsertEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	for a, id := range map[netip.Addr]uint32{podIP: idA, peerIP: idB, remoteIP: idRemote, nodeIP: IdentityHost} {
		if err := dp.SetIPCache(netip.PrefixFrom(a, 32), id); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *polEnv) next() uint16 { e.port++; return e.port }

func (e *polEnv) runOn(p *ebpf.Program, ifindex uint32, pkt []byte) uint32 {
	e.t.Helper()
	ret, _ := runProg(e.t, p, ifindex, pkt)
	return ret
}

// from runs anet_from_container for a packet the endpoint ifindex sends;
// to runs anet_to_container for one the host stack delivers to it.
func (e *polEnv) from(ifindex uint32, pkt []byte) uint32 {
	e.t.Helper()
	return e.runOn(e.dp.objs.AnetFromContainer, ifindex, pkt)
}

func (e *polEnv) to(ifindex uint32, pkt []byte) uint32 {
	e.t.Helper()
	return e.runOn(e.dp.objs.AnetToContainer, ifindex, pkt)
}

func (e *polEnv) set(ifindex uint32, ingEnf, egEnf bool, ing, eg []PolicyRule) {
	e.t.Helper()
	if err := e.dp.SetEndpointPolicy(ifindex, ingEnf, egEnf, ing, eg); err != nil {
		e.t.Fatal(err)
	}
}

func tcpPkt(src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
	return testpkt.TCP{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: sport, DstPort: dport, Flags: flags}.Frame()
}

func udpPkt(src, dst netip.Addr, sport, dport uint16) []byte {
	return testpkt.UDP{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: sport, DstPort: dport, Payload: []byte("x")}.Frame()
}

func sctpPkt(src, dst netip.Addr, sport, dport uint16) []byte {
	return testpkt.IPv4{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, Proto: protoSCT, Payload: testpkt.SCTPHeader(sport, dport, 7, 1)}.Frame()
}

func icmpPkt(src, dst netip.Addr, reply bool) []byte {
	return testpkt.IPv4{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, Proto: 1, Payload: testpkt.ICMPEcho(reply, 1, 1)}.Frame()
}

func port(p uint16) PolicyRule { return PolicyRule{Proto: protoTCP, Port: p, PortPrefixLen: 16} }

func wantVerdict(t *testing.T, what string, got, want uint32) {
	t.Helper()
	if got != want {
		t.Errorf("%s: verdict %d, want %d", what, got, want)
	}
}

// Nothing is enforced until a direction is isolated, whatever the rules.
func TestPolicyDefaultAllow(t *testing.T) {
	e := newPolEnv(t)
	wantVerdict(t, "A→B unenforced", e.from(e.a, udpPkt(podIP, peerIP, e.next(), 53)), tcActRedirect)
	wantVerdict(t, "remote→A unenforced", e.to(e.a, tcpPkt(remoteIP, podIP, e.next(), 80, testpkt.TCPSyn)), tcActOK)
	// Rules without isolation change nothing.
	e.set(e.a, false, false, []PolicyRule{port(1)}, []PolicyRule{port(1)})
	e.set(e.b, false, false, []PolicyRule{port(1)}, nil)
	wantVerdict(t, "A→B rules, not isolated", e.from(e.a, udpPkt(podIP, peerIP, e.next(), 53)), tcActRedirect)
	wantVerdict(t, "A→world rules, not isolated", e.from(e.a, tcpPkt(podIP, worldIP, e.next(), 443, testpkt.TCPSyn)), tcActOK)
	wantVerdict(t, "remote→A rules, not isolated", e.to(e.a, tcpPkt(remoteIP, podIP, e.next(), 80, testpkt.TCPSyn)), tcActOK)
	for _, r := range []Reason{DropPolicyEgress, DropPolicyIngress} {
		for _, ifi := range []uint32{e.a, e.b} {
			for _, d := range []Dir{DirEgress, DirIngress} {
				if n := counter(t, e.dp, ifi, d, r); n != 0 {
					t.Errorf("%d %s %s = %d", ifi, d, r, n)
				}
			}
		}
	}
}

// Egress of A: by identity and port, by port range block, by any identity,
// by any port; everything else denied and counted.
func TestPolicyEgress(t *testing.T) {
	e := newPolEnv(t)
	e.set(e.a, false, true, nil, []PolicyRule{
		{Identity: idB, Proto: protoUDP, Port: 53, PortPrefixLen: 16},
		{Identity: idRemote, Proto: protoTCP, Port: 8080, PortPrefixLen: 13}, // 8080-8087
		{Identity: IdentityAny, Proto: protoTCP, Port: 443, PortPrefixLen: 16},
		{Identity: idB, Proto: protoTCP}, // any TCP port of B
	})
	cases := []struct {
		name string
		pkt  []byte
		want uint32
	}{
		{"B udp/53", udpPkt(podIP, peerIP, e.next(), 53), tcActRedirect},
		{"B udp/54", udpPkt(podIP, peerIP, e.next(), 54), tcActShot},
		{"B tcp/any", tcpPkt(podIP, peerIP, e.next(), 9999, testpkt.TCPSyn), tcActRedirect},
		{"B sctp/53 (not udp)", sctpPkt(podIP, peerIP, e.next(), 53), tcActShot},
		{"remote tcp/8079", tcpPkt(podIP, remoteIP, e.next(), 8079, testpkt.TCPSyn), tcActShot},
		{"remote tcp/8080", tcpPkt(podIP, remoteIP, e.next(), 8080, testpkt.TCPSyn), tcActOK},
		{"remote tcp/8087", tcpPkt(podIP, remoteIP, e.next(), 8087, testpkt.TCPSyn), tcActOK},
		{"remote tcp/8088", tcpPkt(podIP, remoteIP, e.next(), 8088, testpkt.TCPSyn), tcActShot},
		{"remote udp/8080", udpPkt(podIP, remoteIP, e.next(), 8080), tcActShot},
		{"world tcp/443 (any identity)", tcpPkt(podIP, worldIP, e.next(), 443, testpkt.TCPSyn), tcActOK},
		{"remote tcp/443 (any identity)", tcpPkt(podIP, remoteIP, e.next(), 443, testpkt.TCPSyn), tcActOK},
		{"world tcp/444", tcpPkt(podIP, worldIP, e.next(), 444, testpkt.TCPSyn), tcActShot},
		{"host tcp/10250 (egress to the host is judged)", tcpPkt(podIP, nodeIP, e.next(), 10250, testpkt.TCPSyn), tcActShot},
		{"B icmp (port rules only)", icmpPkt(podIP, peerIP, false), tcActShot},
	}
	denied := 0
	for _, c := range cases {
		wantVerdict(t, c.name, e.from(e.a, c.pkt), c.want)
		if c.want == tcActShot {
			denied++
		}
	}
	if n := counter(t, e.dp, e.a, DirEgress, DropPolicyEgress); n != uint64(denied) {
		t.Errorf("A egress policy drops = %d, want %d", n, denied)
	}
	if n := counter(t, e.dp, e.b, DirIngress, DropPolicyIngress); n != 0 {
		t.Errorf("B ingress policy drops = %d, want 0", n)
	}
	// Any protocol lets ICMP through.
	e.set(e.a, false, true, nil, []PolicyRule{{Identity: idB}})
	wantVerdict(t, "B icmp (any protocol)", e.from(e.a, icmpPkt(podIP, peerIP, false)), tcActRedirect)
	wantVerdict(t, "B udp/1 (any protocol)", e.from(e.a, udpPkt(podIP, peerIP, e.next(), 1)), tcActRedirect)
	wantVerdict(t, "remote icmp", e.from(e.a, icmpPkt(podIP, remoteIP, false)), tcActShot)
}

// Ingress of B on the same-node path (judged in A's program before the
// redirect) and of A from the host stack (anet_to_container).
func TestPolicyIngress(t *testing.T) {
	e := newPolEnv(t)
	e.set(e.b, true, false, []PolicyRule{
		{Identity: idA, Proto: protoTCP, Port: 80, PortPrefixLen: 16},
		{Identity: IdentityAny, Proto: protoUDP, Port: 5000, PortPrefixLen: 14}, // 5000-5003
	}, nil)
	wantVerdict(t, "A→B tcp/80", e.from(e.a, tcpPkt(podIP, peerIP, e.next(), 80, testpkt.TCPSyn)), tcActRedirect)
	wantVerdict(t, "A→B tcp/81", e.from(e.a, tcpPkt(podIP, peerIP, e.next(), 81, testpkt.TCPSyn)), tcActShot)
	wantVerdict(t, "A→B udp/5003", e.from(e.a, udpPkt(podIP, peerIP, e.next(), 5003)), tcActRedirect)
	wantVerdict(t, "A→B udp/5004", e.from(e.a, udpPkt(podIP, peerIP, e.next(), 5004)), tcActShot)
	// The drops are B's ingress, not A's egress.
	if n := counter(t, e.dp, e.b, DirIngress, DropPolicyIngress); n != 2 {
		t.Errorf("B ingress policy drops = %d, want 2", n)
	}
	if n := counter(t, e.dp, e.a, DirEgress, DropPolicyEgress) + counter(t, e.dp, e.a, DirEgress, DropPolicyIngress); n != 0 {
		t.Errorf("A egress counted %d policy drops", n)
	}
	if n := counter(t, e.dp, e.a, DirEgress, ReasonForwarded); n != 2 {
		t.Errorf("A egress forwarded = %d, want 2", n)
	}

	e.set(e.a, true, false, []PolicyRule{{Identity: idRemote, Proto: protoTCP, Port: 8080, PortPrefixLen: 16}}, nil)
	wantVerdict(t, "remote→A tcp/8080", e.to(e.a, tcpPkt(remoteIP, podIP, e.next(), 8080, testpkt.TCPSyn)), tcActOK)
	wantVerdict(t, "remote→A tcp/8081", e.to(e.a, tcpPkt(remoteIP, podIP, e.next(), 8081, testpkt.TCPSyn)), tcActShot)
	wantVerdict(t, "world→A tcp/8080", e.to(e.a, tcpPkt(worldIP, podIP, e.next(), 8080, testpkt.TCPSyn)), tcActShot)
	// The host is always allowed in: kubelet probes.
	wantVerdict(t, "host→A tcp/8081", e.to(e.a, tcpPkt(nodeIP, podIP, e.next(), 8081, testpkt.TCPSyn)), tcActOK)
	wantVerdict(t, "host→A icmp", e.to(e.a, icmpPkt(nodeIP, podIP, false)), tcActOK)
	if n := counter(t, e.dp, e.a, DirIngress, DropPolicyIngress); n != 2 {
		t.Errorf("A ingress policy drops = %d, want 2", n)
	}
	// Non-IPv4 from the host stack (ARP) is not policy's.
	wantVerdict(t, "ARP to A", e.to(e.a, testpkt.WhoHas(hostMAC, gwIP, podIP)), tcActOK)
}

// Replies of an allowed connection pass both ways, however isolated the
// replying side and the initiator's ingress are.
func TestPolicyReplies(t *testing.T) {
	e := newPolEnv(t)
	// A may only reach B:80; B only takes A on 80; nothing else anywhere.
	e.set(e.a, true, true, nil, []PolicyRule{port(80)})
	e.set(e.b, true, true, []PolicyRule{{Identity: idA, Proto: protoTCP, Port: 80, PortPrefixLen: 16}}, nil)
	e.set(e.a, true, true, nil, []PolicyRule{{Identity: idB, Proto: protoTCP, Port: 80, PortPrefixLen: 16}})
	sp := e.next()
	wantVerdict(t, "A→B SYN", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPSyn)), tcActRedirect)
	wantVerdict(t, "B→A SYN-ACK", e.from(e.b, tcpPkt(peerIP, podIP, 80, sp, testpkt.TCPSyn|testpkt.TCPAck)), tcActRedirect)
	wantVerdict(t, "A→B ACK", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPAck)), tcActRedirect)
	wantVerdict(t, "B→A data", e.from(e.b, tcpPkt(peerIP, podIP, 80, sp, testpkt.TCPAck)), tcActRedirect)
	// B cannot open a connection to A on the same ports the other way.
	wantVerdict(t, "B→A new SYN", e.from(e.b, tcpPkt(peerIP, podIP, e.next(), sp, testpkt.TCPSyn)), tcActShot)

	// Across the host stack: A's connection out, its reply in; a remote
	// peer's connection in, A's reply out.
	e.set(e.a, true, true, []PolicyRule{{Identity: idRemote, Proto: protoUDP, Port: 7000, PortPrefixLen: 16}},
		[]PolicyRule{{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16}})
	sp = e.next()
	wantVerdict(t, "A→remote udp/53", e.from(e.a, udpPkt(podIP, remoteIP, sp, 53)), tcActOK)
	wantVerdict(t, "remote→A reply", e.to(e.a, udpPkt(remoteIP, podIP, 53, sp)), tcActOK)
	wantVerdict(t, "remote→A not a reply", e.to(e.a, udpPkt(remoteIP, podIP, 53, e.next())), tcActShot)
	sp = e.next()
	wantVerdict(t, "remote→A udp/7000", e.to(e.a, udpPkt(remoteIP, podIP, sp, 7000)), tcActOK)
	wantVerdict(t, "A→remote reply", e.from(e.a, udpPkt(podIP, remoteIP, 7000, sp)), tcActOK)
	wantVerdict(t, "A→remote not a reply", e.from(e.a, udpPkt(podIP, remoteIP, 7000, e.next())), tcActShot)
	// The host's probe: A's reply goes though A's egress allows nothing
	// to the host.
	sp = e.next()
	wantVerdict(t, "host→A probe", e.to(e.a, tcpPkt(nodeIP, podIP, sp, 8080, testpkt.TCPSyn)), tcActOK)
	wantVerdict(t, "A→host probe reply", e.from(e.a, tcpPkt(podIP, nodeIP, 8080, sp, testpkt.TCPSyn|testpkt.TCPAck)), tcActOK)
	wantVerdict(t, "A→host new", e.from(e.a, tcpPkt(podIP, nodeIP, e.next(), 8080, testpkt.TCPSyn)), tcActShot)
	// ICMP echo: the reply of an allowed request.
	e.set(e.a, true, true, nil, []PolicyRule{{Identity: idRemote}})
	wantVerdict(t, "A→remote ping", e.from(e.a, icmpPkt(podIP, remoteIP, false)), tcActOK)
	wantVerdict(t, "remote→A pong", e.to(e.a, icmpPkt(remoteIP, podIP, true)), tcActOK)
}

// An allow removed refuses new connections; the established one goes on,
// both ways. A SYN on the tuple of a closed connection is a new one.
func TestPolicyChangeKeepsEstablished(t *testing.T) {
	e := newPolEnv(t)
	allow := []PolicyRule{{Identity: idA, Proto: protoTCP, Port: 80, PortPrefixLen: 16}}
	e.set(e.b, true, false, allow, nil)
	sp := e.next()
	wantVerdict(t, "SYN", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPSyn)), tcActRedirect)
	wantVerdict(t, "SYN-ACK", e.from(e.b, tcpPkt(peerIP, podIP, 80, sp, testpkt.TCPSyn|testpkt.TCPAck)), tcActRedirect)
	e.set(e.b, true, false, []PolicyRule{port(81)}, nil)
	for i := range 3 {
		wantVerdict(t, "established A→B", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPAck)), tcActRedirect)
		wantVerdict(t, "established B→A", e.from(e.b, tcpPkt(peerIP, podIP, 80, sp, testpkt.TCPAck)), tcActRedirect)
		_ = i
	}
	wantVerdict(t, "new connection", e.from(e.a, tcpPkt(podIP, peerIP, e.next(), 80, testpkt.TCPSyn)), tcActShot)
	if n := counter(t, e.dp, e.b, DirIngress, DropPolicyIngress); n != 1 {
		t.Errorf("B ingress policy drops = %d, want 1", n)
	}
	// The connection closes; a new SYN on its tuple is judged.
	wantVerdict(t, "FIN", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPFin|testpkt.TCPAck)), tcActRedirect)
	wantVerdict(t, "SYN on the closed tuple", e.from(e.a, tcpPkt(podIP, peerIP, sp, 80, testpkt.TCPSyn)), tcActShot)
	// Isolation lifted: everything new passes again.
	e.set(e.b, false, false, nil, nil)
	wantVerdict(t, "after the policy is gone", e.from(e.a, tcpPkt(podIP, peerIP, e.next(), 80, testpkt.TCPSyn)), tcActRedirect)
}

// SCTP is parsed from its common header: allowed, denied, port ranges, on
// both paths (our kernel has no SCTP sockets: prog.Run only).
func TestPolicySCTP(t *testing.T) {
	e := newPolEnv(t)
	e.set(e.b, true, false, []PolicyRule{
		{Identity: idA, Proto: protoSCT, Port: 3868, PortPrefixLen: 16},
		// [9000, 9011] as policy.PortRanges cuts it: 9000/13, 9008/14.
		{Identity: idA, Proto: protoSCT, Port: 9000, PortPrefixLen: 13},
		{Identity: idA, Proto: protoSCT, Port: 9008, PortPrefixLen: 14},
	}, nil)
	for _, c := range []struct {
		port uint16
		want uint32
	}{{3868, tcActRedirect}, {3869, tcActShot}, {8999, tcActShot}, {9000, tcActRedirect}, {9007, tcActRedirect},
		{9008, tcActRedirect}, {9011, tcActRedirect}, {9012, tcActShot}} {
		wantVerdict(t, "A→B sctp/"+itoa(c.port), e.from(e.a, sctpPkt(podIP, peerIP, e.next(), c.port)), c.want)
	}
	wantVerdict(t, "A→B tcp/3868 (not sctp)", e.from(e.a, tcpPkt(podIP, peerIP, e.next(), 3868, testpkt.TCPSyn)), tcActShot)
	// The association's packets back pass; remote peers are judged in
	// anet_to_container alike.
	sp := e.next()
	wantVerdict(t, "A→B INIT", e.from(e.a, sctpPkt(podIP, peerIP, sp, 3868)), tcActRedirect)
	wantVerdict(t, "B→A INIT-ACK", e.from(e.b, sctpPkt(peerIP, podIP, 3868, sp)), tcActRedirect)
	e.set(e.a, true, false, []PolicyRule{{Identity: idRemote, Proto: protoSCT, Port: 38412, PortPrefixLen: 16}}, nil)
	wantVerdict(t, "remote→A sctp/38412", e.to(e.a, sctpPkt(remoteIP, podIP, e.next(), 38412)), tcActOK)
	wantVerdict(t, "remote→A sctp/38413", e.to(e.a, sctpPkt(remoteIP, podIP, e.next(), 38413)), tcActShot)
	if n := counter(t, e.dp, e.b, DirIngress, DropPolicyIngress); n != 4 {
		t.Errorf("B ingress policy drops = %d, want 4", n)
	}
}

func itoa(p uint16) string { return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[8:] }

// The ipcache's longest prefix wins: an ipBlock 10.50.0.0/24 with an
// except 10.50.0.7/32, each its own CIDR identity.
func TestPolicyIPCacheLongestPrefix(t *testing.T) {
	e := newPolEnv(t)
	block, except := netip.MustParsePrefix("10.50.0.0/24"), netip.MustParsePrefix("10.50.0.7/32")
	const idBlock, idExcept = 0x800001, 0x800002
	if err := e.dp.SetIPCache(block, idBlock); err != nil {
		t.Fatal(err)
	}
	if err := e.dp.SetIPCache(except, idExcept); err != nil {
		t.Fatal(err)
	}
	e.set(e.a, false, true, nil, []PolicyRule{{Identity: idBlock}})
	for _, c := range []struct {
		dst  string
		want uint32
	}{{"10.50.0.5", tcActOK}, {"10.50.0.255", tcActOK}, {"10.50.0.7", tcActShot}, {"10.50.1.1", tcActShot}} {
		wantVerdict(t, "A→"+c.dst, e.from(e.a, udpPkt(podIP, netip.MustParseAddr(c.dst), e.next(), 53)), c.want)
	}
	// Without the except, its address is the block's.
	if err := e.dp.DeleteIPCache(except); err != nil {
		t.Fatal(err)
	}
	wantVerdict(t, "A→10.50.0.7 without the except", e.from(e.a, udpPkt(podIP, netip.MustParseAddr("10.50.0.7"), e.next(), 53)), tcActOK)
	// The host's /32 inside a larger block is still the host.
	if err := e.dp.SetIPCache(netip.MustParsePrefix("172.18.0.0/16"), idBlock); err != nil {
		t.Fatal(err)
	}
	e.set(e.a, true, false, nil, nil)
	wantVerdict(t, "host→A inside a block", e.to(e.a, tcpPkt(nodeIP, podIP, e.next(), 80, testpkt.TCPSyn)), tcActOK)
	wantVerdict(t, "block→A", e.to(e.a, tcpPkt(netip.MustParseAddr("172.18.0.3"), podIP, e.next(), 80, testpkt.TCPSyn)), tcActShot)

	got, err := e.dp.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if got[block] != idBlock || got[netip.MustParsePrefix("172.18.0.0/16")] != idBlock || got[netip.PrefixFrom(nodeIP, 32)] != IdentityHost {
		t.Errorf("IPCache() = %v", got)
	}
	if _, ok := got[except]; ok {
		t.Errorf("deleted except still listed: %v", got)
	}
	if err := e.dp.SetIPCache(netip.MustParsePrefix("10.0.0.0/8"), 0); err == nil {
		t.Error("identity 0 accepted in the ipcache")
	}
	if err := e.dp.SetIPCache(netip.MustParsePrefix("fd00::/64"), 5); err == nil {
		t.Error("an IPv6 prefix accepted")
	}
}

// Fragments: the later ones of a datagram are judged with the first's
// ports; one whose first was never seen has no ports.
func TestPolicyFragments(t *testing.T) {
	e := newPolEnv(t)
	e.set(e.a, false, true, nil, []PolicyRule{{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16}})
	first := testpkt.UDP{DstMAC: hostMAC, SrcMAC: podMAC, Src: podIP, Dst: remoteIP, SrcPort: e.next(), DstPort: 53, Payload: make([]byte, 64)}.Frame()
	// Mark it a first fragment (MF, offset 0) with an ID; fix the checksum.
	setFrag := func(f []byte, id, fragOff uint16) []byte {
		ip := f[testpkt.OffIPv4:]
		ip[4], ip[5] = byte(id>>8), byte(id)
		ip[6], ip[7] = byte(fragOff>>8), byte(fragOff)
		ip[10], ip[11] = 0, 0
		c := testpkt.Checksum(ip[:testpkt.IPv4Len])
		ip[10], ip[11] = byte(c>>8), byte(c)
		return f
	}
	first = setFrag(first, 77, 0x2000)
	later := func(id uint16) []byte {
		return testpkt.IPv4{DstMAC: hostMAC, SrcMAC: podMAC, Src: podIP, Dst: remoteIP, Proto: protoUDP, ID: id, FragOff: 9, Payload: make([]byte, 40)}.Frame()
	}
	wantVerdict(t, "first fragment udp/53", e.from(e.a, first), tcActOK)
	wantVerdict(t, "later fragment", e.from(e.a, later(77)), tcActOK)
	wantVerdict(t, "later fragment without its first", e.from(e.a, later(78)), tcActShot)
	// A rule for any UDP port admits port-less fragments.
	e.set(e.a, false, true, nil, []PolicyRule{{Identity: idRemote, Proto: protoUDP}})
	wantVerdict(t, "later fragment, any port allowed", e.from(e.a, later(79)), tcActOK)
}

// The Go side: the map holds exactly what was set, after diffs; the shadow
// is rebuilt from the map (a restarted anetd); bad rules are refused
// before anything is written.
func TestSetEndpointPolicyDiff(t *testing.T) {
	e := newPolEnv(t)
	r1 := PolicyRule{Identity: idA, Proto: protoTCP, Port: 80, PortPrefixLen: 16}
	r2 := PolicyRule{Identity: IdentityAny, Proto: protoUDP, Port: 5000, PortPrefixLen: 14}
	r3 := PolicyRule{Identity: idRemote}
	check := func(what string, ifindex uint32, wi, we bool, ing, eg []PolicyRule) {
		t.Helper()
		gi, ge, ri, re, err := e.dp.EndpointPolicy(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if gi != wi || ge != we || !sameRules(ri, ing) || !sameRules(re, eg) {
			t.Errorf("%s: got %v %v %v %v, want %v %v %v %v", what, gi, ge, ri, re, wi, we, ing, eg)
		}
	}
	e.set(e.b, true, true, []PolicyRule{r1, r2, r1}, []PolicyRule{r3})
	check("first", e.b, true, true, []PolicyRule{r1, r2}, []PolicyRule{r3})
	e.set(e.b, true, false, []PolicyRule{r2}, nil)
	check("second", e.b, true, false, []PolicyRule{r2}, nil)
	e.set(e.a, false, true, nil, []PolicyRule{r1})
	// A restarted anetd: the shadow comes from the map.
	e.dp.pol = policyState{}
	e.set(e.b, false, true, nil, []PolicyRule{r3})
	check("after a restart", e.b, false, true, nil, []PolicyRule{r3})
	check("the other endpoint", e.a, false, true, nil, []PolicyRule{r1})
	for _, bad := range []PolicyRule{
		{Identity: 1 << 24, Proto: protoTCP},
		{Proto: protoTCP, Port: 80, PortPrefixLen: 17},
		{Proto: protoTCP, Port: 81, PortPrefixLen: 15},
		{Proto: 0, Port: 80, PortPrefixLen: 16},
		{Proto: 1, Port: 8, PortPrefixLen: 16},
	} {
		if err := e.dp.SetEndpointPolicy(e.b, true, true, []PolicyRule{r1, bad}, nil); err == nil {
			t.Errorf("rule %+v accepted", bad)
		}
	}
	check("after refused rules", e.b, false, true, nil, []PolicyRule{r3})
	if err := e.dp.DeleteEndpointPolicy(e.b); err != nil {
		t.Fatal(err)
	}
	check("deleted", e.b, false, false, nil, nil)
	check("the other endpoint after the delete", e.a, false, true, nil, []PolicyRule{r1})
}

func sameRules(a, b []PolicyRule) bool {
	m := map[PolicyRule]int{}
	for _, r := range a {
		m[r]++
	}
	for _, r := range b {
		m[r]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

// A full map says so: ErrMapFull, naming the map.
func TestPolicyMapsFull(t *testing.T) {
	needRoot(t)
	enterNewNetns(t)
	dp, err := LoadUnpinnedWith(Options{PolicyMapSize: 4, IPCacheMapSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	var rules []PolicyRule
	for i := range 5 {
		rules = append(rules, PolicyRule{Identity: uint32(300 + i)})
	}
	err = dp.SetEndpointPolicy(7, true, false, rules, nil)
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("5 rules into 4 entries: %v, want ErrMapFull", err)
	}
	// Adds come before deletes: a change needs room for the old and the
	// new rules at once. Emptied, the endpoint takes 4.
	if err := dp.DeleteEndpointPolicy(7); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetEndpointPolicy(7, true, false, rules[:4], nil); err != nil {
		t.Errorf("4 rules after the failure: %v", err)
	}
	for i, p := range []string{"10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"} {
		err := dp.SetIPCache(netip.MustParsePrefix(p), 5)
		if i < 2 && err != nil {
			t.Fatal(err)
		}
		if i == 2 && !errors.Is(err, ErrMapFull) {
			t.Errorf("third ipcache entry into 2: %v, want ErrMapFull", err)
		}
	}
}

// While rules come and go, an allow that stays never refuses a new
// connection, and a flow that no version allows never passes. Packets run
// from other threads (prog.Run) against A on lo (the only device there is
// in every netns).
func TestPolicyUpdateNoGap(t *testing.T) {
	e := newPolEnv(t)
	keep := PolicyRule{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16}
	e.set(e.a, true, true, []PolicyRule{keep}, []PolicyRule{keep})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var sent, wrong atomic.Int64
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := make([]uint32, 11)
			ctx[10] = loIfindex
			for i := 0; !stop.Load(); i++ {
				sp := uint16(1024 + (w*30000+i)%30000)
				for _, c := range []struct {
					p    *ebpf.Program
					pkt  []byte
					want uint32
				}{
					{e.dp.objs.AnetFromContainer, udpPkt(podIP, remoteIP, sp, 53), tcActOK},
					{e.dp.objs.AnetToContainer, udpPkt(remoteIP, podIP, sp+1, 53), tcActOK},
					{e.dp.objs.AnetFromContainer, udpPkt(podIP, remoteIP, sp, 54), tcActShot},
				} {
					ret, err := c.p.Run(&ebpf.RunOptions{Data: c.pkt, Context: ctx})
					if err != nil || ret != c.want {
						wrong.Add(1)
					}
					sent.Add(1)
				}
			}
		}()
	}
	for i := range 300 {
		var extra []PolicyRule
		for j := range i % 17 {
			extra = append(extra, PolicyRule{Identity: uint32(2000 + i + j), Proto: protoTCP, Port: uint16(1000 + j), PortPrefixLen: 16})
		}
		ing := append([]PolicyRule{keep}, extra...)
		if i%3 == 0 {
			ing = append(extra, keep)
		}
		e.set(e.a, true, true, ing, append([]PolicyRule{keep}, extra[:len(extra)/2]...))
	}
	stop.Store(true)
	wg.Wait()
	if wrong.Load() != 0 {
		t.Errorf("%d of %d packets got the wrong verdict during the updates", wrong.Load(), sent.Load())
	}
	t.Logf("%d packets during 300 updates", sent.Load())
}

// GCPolicyConntrack deletes expired entries only.
func TestGCPolicyConntrack(t *testing.T) {
	e := newPolEnv(t)
	wantVerdict(t, "udp", e.from(e.a, udpPkt(podIP, remoteIP, e.next(), 53)), tcActOK)
	wantVerdict(t, "tcp", e.from(e.a, tcpPkt(podIP, remoteIP, e.next(), 80, testpkt.TCPSyn)), tcActOK)
	live, expired, err := e.dp.GCPolicyConntrack(Monotonic())
	if err != nil || live != 4 || expired != 0 {
		t.Errorf("now: live %d expired %d (%v), want 4 0", live, expired, err)
	}
	// Two minutes on: the UDP flow and the unanswered SYN have expired.
	live, expired, err = e.dp.GCPolicyConntrack(Monotonic() + uint64(2*time.Minute))
	if err != nil || live != 0 || expired != 4 {
		t.Errorf("later: live %d expired %d (%v), want 0 4", live, expired, err)
	}
}

// Policy lives in pinned maps: a restarted anetd (a new Load of the same
// bpffs) finds it in force and changes it by difference.
func TestPolicySurvivesRestart(t *testing.T) {
	needRoot(t)
	enterNewNetns(t)
	root := tmpBPFFS(t)
	load := func() *Datapath {
		t.Helper()
		dp, err := Load(root, quiet)
		if err != nil {
			t.Fatal(err)
		}
		if err := dp.Activate(); err != nil {
			dp.Close()
			t.Fatal(err)
		}
		return dp
	}
	r1 := PolicyRule{Identity: idA, Proto: protoTCP, Port: 80, PortPrefixLen: 16}
	r2 := PolicyRule{Identity: idB, Proto: protoUDP}
	dp := load()
	if err := dp.SetEndpointPolicy(42, true, false, []PolicyRule{r1, r2}, nil); err != nil {
		t.Fatal(err)
	}
	// 43 isolated with no rules, 44 rules only (not isolated), 45 open.
	if err := dp.SetEndpointPolicy(43, false, true, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetEndpointPolicy(44, false, false, []PolicyRule{r2}, nil); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetEndpointPolicy(45, false, false, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetIPCache(netip.PrefixFrom(podIP, 32), idA); err != nil {
		t.Fatal(err)
	}
	dp.Close()

	dp = load()
	defer dp.Close()
	if got, err := dp.PolicyEndpoints(); err != nil || !slices.Equal(got, []uint32{42, 43, 44}) {
		t.Errorf("PolicyEndpoints after the restart = %v (%v), want [42 43 44]", got, err)
	}
	if err := dp.DeleteEndpointPolicy(43); err != nil {
		t.Fatal(err)
	}
	if got, _ := dp.PolicyEndpoints(); !slices.Equal(got, []uint32{42, 44}) {
		t.Errorf("PolicyEndpoints after deleting 43 = %v, want [42 44]", got)
	}
	ing, eg, ri, re, err := dp.EndpointPolicy(42)
	if err != nil || !ing || eg || !sameRules(ri, []PolicyRule{r1, r2}) || len(re) != 0 {
		t.Fatalf("after the restart: %v %v %v %v (%v)", ing, eg, ri, re, err)
	}
	if got, _ := dp.IPCache(); got[netip.PrefixFrom(podIP, 32)] != idA {
		t.Errorf("ipcache after the restart: %v", got)
	}
	if err := dp.SetEndpointPolicy(42, true, false, []PolicyRule{r2}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, ri, _, _ := dp.EndpointPolicy(42); !sameRules(ri, []PolicyRule{r2}) {
		t.Errorf("the restarted anetd's change left %v, want only %v", ri, r2)
	}
}

// icmpError is an ICMP error of type/code from src to dst quoting the
// first 28 bytes (IPv4 header and 8 bytes) of the datagram orig (a frame).
func icmpError(src, dst netip.Addr, typ, code uint8, orig []byte) []byte {
	msg := append([]byte{typ, code, 0, 0, 0, 0, 0x05, 0xdc}, orig[testpkt.OffIPv4:testpkt.OffIPv4+28]...)
	c := testpkt.Checksum(msg)
	msg[2], msg[3] = byte(c>>8), byte(c)
	return testpkt.IPv4{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, Proto: 1, Payload: msg}.Frame()
}

// An ICMP error about a tracked connection passes into an isolated pod
// (path MTU discovery, port unreachable); one about nothing tracked is
// judged as ICMP, and port rules do not admit it.
func TestPolicyRelatedICMP(t *testing.T) {
	e := newPolEnv(t)
	e.set(e.a, true, true, nil, []PolicyRule{
		{Identity: idRemote, Proto: protoTCP, Port: 443, PortPrefixLen: 16},
		{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16},
	})
	syn := tcpPkt(podIP, remoteIP, e.next(), 443, testpkt.TCPSyn)
	wantVerdict(t, "A→remote SYN", e.from(e.a, syn), tcActOK)
	router := netip.MustParseAddr("192.0.2.1") // world
	wantVerdict(t, "frag needed from a router", e.to(e.a, icmpError(router, podIP, 3, 4, syn)), tcActOK)
	dns := udpPkt(podIP, remoteIP, e.next(), 53)
	wantVerdict(t, "A→remote udp/53", e.from(e.a, dns), tcActOK)
	wantVerdict(t, "port unreachable", e.to(e.a, icmpError(remoteIP, podIP, 3, 3, dns)), tcActOK)
	wantVerdict(t, "time exceeded", e.to(e.a, icmpError(router, podIP, 11, 0, dns)), tcActOK)
	// Untracked: A never sent this.
	other := tcpPkt(podIP, remoteIP, e.next(), 8443, testpkt.TCPSyn)
	wantVerdict(t, "error about nothing tracked", e.to(e.a, icmpError(router, podIP, 3, 4, other)), tcActShot)
	// Not an error: an echo request is no reply of anything.
	wantVerdict(t, "echo request", e.to(e.a, icmpPkt(remoteIP, podIP, false)), tcActShot)
	if n := counter(t, e.dp, e.a, DirIngress, DropPolicyIngress); n != 2 {
		t.Errorf("A ingress policy drops = %d, want 2", n)
	}
	// Same-node: B's error about A's connection to it, B isolated for
	// egress with nothing allowed.
	e.set(e.b, false, true, nil, nil)
	e.set(e.a, false, false, nil, nil)
	u := udpPkt(podIP, peerIP, e.next(), 9)
	wantVerdict(t, "A→B udp/9", e.from(e.a, u), tcActRedirect)
	wantVerdict(t, "B→A port unreachable", e.from(e.b, icmpError(peerIP, podIP, 3, 3, u)), tcActRedirect)
	wantVerdict(t, "B→A unrelated error", e.from(e.b, icmpError(peerIP, podIP, 3, 3, udpPkt(podIP, peerIP, e.next(), 9))), tcActShot)
}
