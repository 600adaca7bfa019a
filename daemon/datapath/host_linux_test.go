package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/daemon/service/lb"
	"github.com/anet-dev/anet/internal/testns"
	"github.com/anet-dev/anet/internal/testpkt"
)

// The underlay programs (bpf/host.c) run here with BPF_PROG_TEST_RUN in a
// network namespace of their own, whose routes the FIB lookups of the
// translated packets see: bytes in, verdict, rewritten bytes and
// conntrack entries out.

var (
	hClient   = netip.MustParseAddr("192.168.50.1")    // outside the cluster
	hNode     = netip.MustParseAddr("192.168.50.10")   // this node, on ul0
	hNode2    = netip.MustParseAddr("192.168.50.11")   // another node
	hLocalBE  = netip.MustParseAddr("10.244.1.5")      // a pod of this node
	hRemoteBE = netip.MustParseAddr("10.244.2.7")      // a pod of the other node
	hVIP      = netip.MustParseAddr("198.51.100.7")    // a LoadBalancer IP
	hULMAC    = net.HardwareAddr{2, 0, 0, 0, 0x50, 10} // ul0's
	hCliMAC   = net.HardwareAddr{2, 0, 0, 0, 0x50, 1}
)

const (
	snatMin, snatMax = 61000, 61999
	revNatNP         = 7
)

type hostDP struct {
	dp      *Datapath
	objs    *bpf.HostObjects
	sm      *ServiceMaps
	nextID  uint32
	ifindex int
}

// loadHost loads the underlay programs with fresh maps in a new network
// namespace holding ul0 (a veth with hNode/24, a route to the other node's
// pods via hNode2), and locks the test's goroutine into it.
func loadHost(t *testing.T) *hostDP { return loadHostFwd(t, false) }

// loadHostFwd is loadHost with IP forwarding on or off in the namespace.
func loadHostFwd(t *testing.T, forwarding bool) *hostDP {
	t.Helper()
	needRoot(t)
	enterNewNetns(t)
	ul := addUnderlay(t)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: ul.Attrs().Index, Dst: &net.IPNet{IP: net.IP{10, 244, 2, 0}, Mask: net.CIDRMask(24, 32)}, Gw: hNode2.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	// The client's neighbour entry is known; the other node's is not (the
	// program then leaves resolution to bpf_redirect_neigh).
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: ul.Attrs().Index, IP: hClient.AsSlice(), HardwareAddr: hCliMAC, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}); err != nil {
		t.Fatal(err)
	}

	if forwarding {
		// /proc/sys/net is the namespace of the thread that opens it.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dp, err := LoadUnpinned()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	sm, err := dp.ServiceMaps()
	if err != nil {
		t.Fatal(err)
	}
	h := &hostDP{dp: dp, objs: &dp.host, sm: sm, ifindex: ul.Attrs().Index}
	if err := dp.SetNodeConfig(hNode, snatMin, snatMax); err != nil {
		t.Fatal(err)
	}
	// hLocalBE is an endpoint of this node.
	if err := dp.UpsertEndpoint(Endpoint{IP: hLocalBE, Ifindex: 99, PodMAC: podMAC, HostMAC: hostMAC}); err != nil {
		t.Fatal(err)
	}
	return h
}

// addUnderlay makes ul0 (a veth, MAC hULMAC, hNode/24) in the test's
// netns, up with its peer and lo.
func addUnderlay(t *testing.T) netlink.Link {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0", HardwareAddr: hULMAC}, PeerName: "ul0peer"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	ul := mustLink(t, "ul0")
	for _, l := range []netlink.Link{ul, mustLink(t, "ul0peer"), mustLink(t, "lo")} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.AddrAdd(ul, &netlink.Addr{IPNet: &net.IPNet{IP: hNode.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	return ul
}

// enterNewNetns moves the test's goroutine, locked to its thread, into a
// new network namespace until the test ends.
func enterNewNetns(t testing.TB) { testns.EnterNew(t) }

func mustLink(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// frontend programs one frontend with the given backends (all active)
// through ServiceMaps, as the reconciler does.
func (h *hostDP) frontend(t *testing.T, vip netip.Addr, port uint16, proto uint8, flags lb.Flags, backends ...netip.AddrPort) {
	t.Helper()
	h.frontendAff(t, vip, port, proto, flags, 0, backends...)
}

func (h *hostDP) frontendAff(t *testing.T, vip netip.Addr, port uint16, proto uint8, flags lb.Flags, aff time.Duration, backends ...netip.AddrPort) {
	t.Helper()
	f := lb.MapFrontend{
		Key:    lb.FrontendKey{Addr: netip.AddrPortFrom(vip, port), Proto: lb.Proto(proto)},
		RevNat: uint32(port), Flags: flags, Affinity: aff, Active: len(backends),
	}
	for _, b := range backends {
		h.nextID++
		f.Backends = append(f.Backends, lb.MapBackend{ID: h.nextID, Addr: b, State: lb.Ready})
	}
	if err := h.sm.Put(f); err != nil {
		t.Fatal(err)
	}
}

func (h *hostDP) run(t *testing.T, p *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	return runProg(t, p, uint32(h.ifindex), pkt)
}

// tuple reads a frame's addresses and ports, and checks its checksums.
type tuple struct {
	src, dst netip.AddrPort
	ttl      uint8
}

func readTuple(t *testing.T, f []byte) tuple {
	t.Helper()
	ip := f[testpkt.EthLen:]
	if testpkt.Checksum(ip[:testpkt.IPv4Len]) != 0 {
		t.Errorf("bad IPv4 header checksum in % x", ip[:testpkt.IPv4Len])
	}
	var l4sum uint16
	if ip[9] == 17 {
		l4sum = binary.BigEndian.Uint16(ip[testpkt.IPv4Len+6:])
	} else {
		l4sum = binary.BigEndian.Uint16(ip[testpkt.IPv4Len+16:])
	}
	if l4sum != 0 && testpkt.L4Checksum(ip) != 0 {
		t.Errorf("bad L4 checksum %#04x (proto %d)", l4sum, ip[9])
	}
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	sp := binary.BigEndian.Uint16(ip[20:])
	dp := binary.BigEndian.Uint16(ip[22:])
	return tuple{netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp), ip[8]}
}

func tcpFrame(src, dst netip.AddrPort, flags uint8) []byte {
	return testpkt.TCP{DstMAC: hULMAC, SrcMAC: hCliMAC, Src: src.Addr(), Dst: dst.Addr(),
		SrcPort: src.Port(), DstPort: dst.Port(), Flags: flags, Seq: 1, Payload: []byte("hello")}.Frame()
}

func udpFrame(src, dst netip.AddrPort) []byte {
	return testpkt.WithUDPChecksum(testpkt.UDP{DstMAC: hULMAC, SrcMAC: hCliMAC, Src: src.Addr(), Dst: dst.Addr(),
		SrcPort: src.Port(), DstPort: dst.Port(), Payload: []byte("ping")}.Frame())
}

func (h *hostDP) drops(t *testing.T, dir uint8, reason uint8) uint64 {
	t.Helper()
	var vals []bpf.HostMetricsValue
	err := h.objs.AnetMetrics.Lookup(bpf.HostMetricsKey{Ifindex: 0, Dir: dir, Reason: reason}, &vals)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range vals {
		n += v.Packets
	}
	return n
}

// A NodePort connection to a backend on this node: DNAT only (the client
// address is kept), delivered by the host stack; the backend's reply
// leaving through the underlay gets the frontend back as its source.
func TestHostNodePortLocalBackend(t *testing.T) {
	h := loadHost(t)
	fe := netip.AddrPortFrom(hNode, 30080)
	be := netip.AddrPortFrom(hLocalBE, 8080)
	cli := netip.AddrPortFrom(hClient, 40000)
	h.frontend(t, hNode, 30080, 6, 0, be)

	ret, out := h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPSyn))
	if ret != tcActOK {
		t.Fatalf("SYN verdict %d, want TC_ACT_OK", ret)
	}
	if got := readTuple(t, out); got.src != cli || got.dst != be {
		t.Fatalf("SYN became %v -> %v, want %v -> %v", got.src, got.dst, cli, be)
	}
	// Later packets of the connection follow the entry.
	ret, out = h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPAck))
	if got := readTuple(t, out); ret != tcActOK || got.dst != be {
		t.Fatalf("ACK: verdict %d, dst %v", ret, got.dst)
	}
	// The reply, on egress.
	ret, out = h.run(t, h.objs.AnetToNetdev, tcpFrame(be, cli, testpkt.TCPSyn|testpkt.TCPAck))
	if got := readTuple(t, out); ret != tcActOK || got.src != fe || got.dst != cli {
		t.Fatalf("reply: verdict %d, %v -> %v, want %v -> %v", ret, got.src, got.dst, fe, cli)
	}
	// Traffic of no frontend passes untouched.
	other := netip.AddrPortFrom(hNode, 22)
	in := tcpFrame(cli, other, testpkt.TCPSyn)
	ret, out = h.run(t, h.objs.AnetFromNetdev, in)
	if got := readTuple(t, out); ret != tcActOK || got.dst != other {
		t.Fatalf("no frontend: verdict %d, dst %v", ret, got.dst)
	}
}

// A NodePort connection to a backend on another node: DNAT and SNAT to
// the node's address and a port of the SNAT range, routed out by the FIB;
// the reply from the other node is translated back to the client.
func TestHostNodePortRemoteBackendSNAT(t *testing.T) {
	// With forwarding on, the FIB helper gives the next hop (and the MACs
	// when the neighbour is known); with it off, the packet leaves by the
	// underlay through bpf_redirect_neigh. Both must translate the same.
	for _, fwd := range []bool{true, false} {
		t.Run(fmt.Sprintf("forwarding=%v", fwd), func(t *testing.T) { testRemoteSNAT(t, fwd) })
	}
}

func testRemoteSNAT(t *testing.T, forwarding bool) {
	h := loadHostFwd(t, forwarding)
	fe := netip.AddrPortFrom(hNode, 30081)
	be := netip.AddrPortFrom(hRemoteBE, 8080)
	cli := netip.AddrPortFrom(hClient, 40001)
	h.frontend(t, hNode, 30081, 6, 0, be)

	ret, out := h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPSyn))
	if ret != tcActRedirect {
		for r := uint8(1); r < 16; r++ {
			if n := h.drops(t, 1, r); n > 0 {
				t.Logf("drops for reason %d: %d", r, n)
			}
		}
		t.Fatalf("SYN verdict %d, want TC_ACT_REDIRECT (out by the FIB)", ret)
	}
	got := readTuple(t, out)
	if got.dst != be || got.src.Addr() != hNode || got.src.Port() < snatMin || got.src.Port() > snatMax {
		t.Fatalf("SYN became %v -> %v, want %v:[%d-%d] -> %v", got.src, got.dst, hNode, snatMin, snatMax, be)
	}
	if got.ttl != 63 {
		t.Errorf("TTL %d after the hop, want 63", got.ttl)
	}
	snat := got.src
	// The same client again keeps its port and backend.
	_, out = h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPAck))
	if again := readTuple(t, out); again.src != snat || again.dst != be {
		t.Fatalf("ACK became %v -> %v, want %v -> %v", again.src, again.dst, snat, be)
	}
	// The reply comes back from the other node to the SNAT port.
	ret, out = h.run(t, h.objs.AnetFromNetdev, tcpFrame(be, snat, testpkt.TCPSyn|testpkt.TCPAck))
	if ret != tcActRedirect {
		t.Fatalf("reply verdict %d, want TC_ACT_REDIRECT", ret)
	}
	rep := readTuple(t, out)
	if rep.src != fe || rep.dst != cli {
		t.Fatalf("reply became %v -> %v, want %v -> %v", rep.src, rep.dst, fe, cli)
	}
	// The known neighbour's MAC is written by the program (FIB success).
	if forwarding && net.HardwareAddr(out[0:6]).String() != hCliMAC.String() {
		t.Errorf("reply's destination MAC %s, want the client's %s", net.HardwareAddr(out[0:6]), hCliMAC)
	}
	if forwarding && net.HardwareAddr(out[6:12]).String() != hULMAC.String() {
		t.Errorf("reply's source MAC %s, want ul0's %s", net.HardwareAddr(out[6:12]), hULMAC)
	}
	// Two clients get two SNAT ports (or the same port, never the same
	// reply tuple): both replies find their client.
	cli2 := netip.AddrPortFrom(hClient, 40002)
	_, out = h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli2, fe, testpkt.TCPSyn))
	snat2 := readTuple(t, out).src
	if snat2 == snat {
		t.Fatalf("two connections share the SNAT tuple %v", snat)
	}
	_, out = h.run(t, h.objs.AnetFromNetdev, tcpFrame(be, snat2, testpkt.TCPAck))
	if rep := readTuple(t, out); rep.dst != cli2 {
		t.Fatalf("second reply goes to %v, want %v", rep.dst, cli2)
	}
}

// A frontend with no backend refuses as kube-proxy's REJECT does: a TCP
// SYN gets a reset and a UDP datagram an ICMP port unreachable, back out
// of the device; both counted as no-service-backend. An
// externalTrafficPolicy Local frontend with no local backend drops.
func TestHostNoBackendRefuses(t *testing.T) {
	h := loadHost(t)
	cli := netip.AddrPortFrom(hClient, 40003)
	fe := netip.AddrPortFrom(hVIP, 80)
	h.frontend(t, hVIP, 80, 6, 0)
	syn := tcpFrame(cli, fe, testpkt.TCPSyn) // seq 1, 5 bytes of payload
	ret, out := h.run(t, h.objs.AnetFromNetdev, syn)
	if ret != tcActRedirect {
		t.Fatalf("no backend, TCP SYN: verdict %d, want TC_ACT_REDIRECT (a reset back)", ret)
	}
	out = out[:testpkt.EthLen+testpkt.IPv4Len+20]
	if got := readTuple(t, out); got.src != fe || got.dst != cli {
		t.Fatalf("reset %v -> %v, want %v -> %v", got.src, got.dst, fe, cli)
	}
	tcp := out[testpkt.EthLen+testpkt.IPv4Len:]
	if flags := tcp[13]; flags != testpkt.TCPRst|testpkt.TCPAck {
		t.Errorf("reset flags %#x, want RST|ACK", flags)
	}
	if ack := binary.BigEndian.Uint32(tcp[8:]); ack != 1+1+5 {
		t.Errorf("reset acks %d, want the SYN's seq + 1 + its 5 bytes = 7", ack)
	}
	if !bytesEqual(out[0:6], hCliMAC) || !bytesEqual(out[6:12], hULMAC) {
		t.Errorf("reset MACs %x -> %x, want the SYN's swapped", out[6:12], out[0:6])
	}

	h.frontend(t, hVIP, 53, 17, 0)
	dgram := udpFrame(cli, netip.AddrPortFrom(hVIP, 53))
	ret, out = h.run(t, h.objs.AnetFromNetdev, dgram)
	if ret != tcActRedirect {
		t.Fatalf("no backend, UDP: verdict %d, want TC_ACT_REDIRECT (an ICMP error back)", ret)
	}
	ip := out[testpkt.EthLen:]
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total != 20+8+28 {
		t.Fatalf("ICMP error of %d bytes, want 56", total)
	}
	ip = ip[:total]
	if testpkt.Checksum(ip[:20]) != 0 || ip[9] != 1 {
		t.Errorf("ICMP error's IP header %x: bad checksum or not ICMP", ip[:20])
	}
	if netip.AddrFrom4([4]byte(ip[12:16])) != hVIP || netip.AddrFrom4([4]byte(ip[16:20])) != hClient {
		t.Errorf("ICMP error %x -> %x, want from the frontend to the client", ip[12:16], ip[16:20])
	}
	icmp := ip[20:]
	if icmp[0] != 3 || icmp[1] != 3 || testpkt.Checksum(icmp) != 0 {
		t.Errorf("ICMP type %d code %d (checksum ok: %v), want 3/3 (port unreachable)", icmp[0], icmp[1], testpkt.Checksum(icmp) == 0)
	}
	if !bytesEqual(icmp[8:8+28], dgram[testpkt.EthLen:testpkt.EthLen+28]) {
		t.Errorf("ICMP error quotes %x, want the datagram's IP header and first 8 bytes %x", icmp[8:36], dgram[testpkt.EthLen:testpkt.EthLen+28])
	}
	if n := h.drops(t, 1, 10); n != 2 {
		t.Errorf("no-service-backend count %d, want 2", n)
	}

	// A TCP segment that is no SYN is only dropped.
	ret, _ = h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPAck))
	if ret != tcActShot {
		t.Errorf("no backend, TCP ACK: verdict %d, want TC_ACT_SHOT", ret)
	}
	// externalTrafficPolicy Local with no local backend: dropped, as
	// kube-proxy does.
	h.frontend(t, hVIP, 81, 6, lb.FlagExtLocal)
	ret, _ = h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, netip.AddrPortFrom(hVIP, 81), testpkt.TCPSyn))
	if ret != tcActShot {
		t.Fatalf("local-only frontend without local backends: verdict %d, want TC_ACT_SHOT", ret)
	}
	if n := h.drops(t, 1, 10); n != 4 {
		t.Errorf("no-service-backend count %d, want 4", n)
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// A UDP flow whose backend left its Service moves to a live one.
func TestHostUDPFlowMovesOffRemovedBackend(t *testing.T) {
	h := loadHost(t)
	fe := netip.AddrPortFrom(hVIP, 53)
	old := netip.AddrPortFrom(hLocalBE, 5353)
	cli := netip.AddrPortFrom(hClient, 40004)
	h.frontend(t, hVIP, 53, 17, 0, old)
	_, out := h.run(t, h.objs.AnetFromNetdev, udpFrame(cli, fe))
	if got := readTuple(t, out); got.dst != old {
		t.Fatalf("UDP went to %v, want %v", got.dst, old)
	}
	// The Service's only backend is replaced (a new ID, as the
	// reconciler gives a new backend).
	newBE := netip.AddrPortFrom(netip.MustParseAddr("10.244.1.9"), 5353)
	h.frontend(t, hVIP, 53, 17, 0, newBE)
	_, out = h.run(t, h.objs.AnetFromNetdev, udpFrame(cli, fe))
	if got := readTuple(t, out); got.dst != newBE {
		t.Fatalf("after the backend left, UDP went to %v, want %v", got.dst, newBE)
	}
}

// Garbage never crashes and never passes translated: truncated headers
// are counted drops, other protocols pass untouched.
func TestHostMalformed(t *testing.T) {
	h := loadHost(t)
	h.frontend(t, hNode, 30082, 6, 0, netip.AddrPortFrom(hLocalBE, 8080))
	full := tcpFrame(netip.AddrPortFrom(hClient, 1), netip.AddrPortFrom(hNode, 30082), testpkt.TCPSyn)
	badIHL := append([]byte(nil), full...)
	badIHL[testpkt.OffIPv4] = 0x44
	for _, c := range []struct {
		name string
		pkt  []byte
		want uint32
	}{
		{"truncated TCP header", full[:testpkt.EthLen+testpkt.IPv4Len+10], tcActShot},
		{"IHL below 5", badIHL, tcActShot},
		{"ARP", testpkt.WhoHas(hCliMAC, hClient, hNode), tcActOK},
	} {
		ret, _ := h.run(t, h.objs.AnetFromNetdev, c.pkt)
		if ret != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, ret, c.want)
		}
	}
	if n := h.drops(t, 1, 13); n != 1 {
		t.Errorf("malformed-l4 drops %d, want 1", n)
	}
	if n := h.drops(t, 1, 3); n != 1 {
		t.Errorf("malformed-ip drops %d, want 1", n)
	}
}

// The collector deletes expired entries and UDP entries of removed
// backends, and keeps the rest.
func TestGCConntrack(t *testing.T) {
	h := loadHost(t)
	now := Monotonic()
	put := func(sport uint16, proto uint8, expires uint64, backend uint32) bpf.HostCt4Key {
		k := bpf.HostCt4Key{Saddr: be32(hClient), Daddr: be32(hNode), Sport: be16(sport), Dport: be16(80), Proto: proto}
		if err := h.objs.AnetCt4.Put(k, bpf.HostCt4Entry{Expires: expires, BackendId: backend}); err != nil {
			t.Fatal(err)
		}
		return k
	}
	live := put(1, 6, now+60e9, 1)
	expired := put(2, 6, now-1, 1)
	udpGone := put(3, 17, now+60e9, 2)
	tcpGone := put(4, 6, now+60e9, 2)
	st, err := GCConntrack(h.objs.AnetCt4, now, func(id, _ uint32, _ uint16) bool { return id == 2 })
	if err != nil {
		t.Fatal(err)
	}
	if st != (CTStats{Live: 2, Expired: 1, Orphaned: 1}) {
		t.Errorf("stats %+v, want 2 live, 1 expired, 1 orphaned", st)
	}
	var v bpf.HostCt4Entry
	for k, want := range map[bpf.HostCt4Key]bool{live: true, expired: false, udpGone: false, tcpGone: true} {
		err := h.objs.AnetCt4.Lookup(k, &v)
		if (err == nil) != want {
			t.Errorf("entry sport %d: present=%v, want %v", k.Sport, err == nil, want)
		}
	}
	// Entries the program wrote expire on the same clock: a fresh one is live.
	h.frontend(t, hNode, 30090, 6, 0, netip.AddrPortFrom(hLocalBE, 8080))
	h.run(t, h.objs.AnetFromNetdev, tcpFrame(netip.AddrPortFrom(hClient, 5), netip.AddrPortFrom(hNode, 30090), testpkt.TCPSyn))
	st, err = h.dp.GCConntrack()
	if err != nil || st.Live != 4 || st.Expired != 0 {
		t.Errorf("after a new connection: %+v %v, want 4 live (2 kept + its 2)", st, err)
	}
}

// Session affinity from outside: new connections of one client address go
// to the backend of its first, whatever their source ports.
func TestHostAffinityByClientAddress(t *testing.T) {
	h := loadHost(t)
	bes := []netip.AddrPort{netip.AddrPortFrom(hLocalBE, 8080), netip.AddrPortFrom(netip.MustParseAddr("10.244.1.6"), 8080)}
	h.frontendAff(t, hNode, 30100, 6, 0, 10*time.Second, bes...)
	fe := netip.AddrPortFrom(hNode, 30100)
	seen := map[netip.AddrPort]int{}
	for port := uint16(41000); port < 41020; port++ {
		_, out := h.run(t, h.objs.AnetFromNetdev, tcpFrame(netip.AddrPortFrom(hClient, port), fe, testpkt.TCPSyn))
		seen[readTuple(t, out).dst]++
	}
	if len(seen) != 1 {
		t.Errorf("one client with affinity reached %v, want one backend", seen)
	}
	// Another client may land elsewhere, but sticks too.
	other := netip.MustParseAddr("192.168.50.2")
	seen2 := map[netip.AddrPort]int{}
	for port := uint16(41000); port < 41010; port++ {
		_, out := h.run(t, h.objs.AnetFromNetdev, tcpFrame(netip.AddrPortFrom(other, port), fe, testpkt.TCPSyn))
		seen2[readTuple(t, out).dst]++
	}
	if len(seen2) != 1 {
		t.Errorf("second client reached %v, want one backend", seen2)
	}
}

// A connection's entries live as long as its state says: a minute while
// only a SYN went, hours once established (refreshed by its packets),
// seconds after a FIN.
func TestHostConntrackLifetimes(t *testing.T) {
	h := loadHost(t)
	fe := netip.AddrPortFrom(hNode, 30110)
	cli := netip.AddrPortFrom(hClient, 42000)
	h.frontend(t, hNode, 30110, 6, 0, netip.AddrPortFrom(hLocalBE, 8080))
	key := bpf.HostCt4Key{Saddr: be32(hClient), Daddr: be32(hNode), Sport: be16(42000), Dport: be16(30110), Proto: 6}
	left := func() time.Duration {
		t.Helper()
		var e bpf.HostCt4Entry
		if err := h.objs.AnetCt4.Lookup(key, &e); err != nil {
			t.Fatal(err)
		}
		return time.Duration(e.Expires - Monotonic())
	}
	h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPSyn))
	if d := left(); d <= 50*time.Second || d > 61*time.Second {
		t.Errorf("after the SYN: %s to live, want about a minute", d)
	}
	for range 2 { // established, and still so at the next packet
		h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPAck))
		if d := left(); d < 5*time.Hour {
			t.Errorf("established: %s to live, want hours", d)
		}
	}
	h.run(t, h.objs.AnetFromNetdev, tcpFrame(cli, fe, testpkt.TCPFin|testpkt.TCPAck))
	if d := left(); d > 11*time.Second {
		t.Errorf("after a FIN: %s to live, want seconds", d)
	}
}
