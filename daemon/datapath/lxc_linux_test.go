package datapath

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/internal/testpkt"
)

type metricsKey = bpf.LxcMetricsKey

// These tests run the real programs in the kernel with BPF_PROG_TEST_RUN:
// bytes in, verdict, bytes and counters out.

const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
	loIfindex     = 1 // the test run needs a real device; lo of the test's netns
	peerIfindex   = 4242
)

var (
	podMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	peerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
	peerHst = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x04}
	podIP   = netip.MustParseAddr("10.244.1.5")
	peerIP  = netip.MustParseAddr("10.244.1.6")
	nodeIP  = netip.MustParseAddr("172.18.0.2")
	gwIP    = netip.MustParseAddr("10.244.1.1")
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load eBPF programs (CI runs as root)")
	}
}

// loadTest loads the programs with fresh, unpinned maps.
func loadTest(t *testing.T) *Datapath {
	t.Helper()
	needRoot(t)
	dp, err := LoadUnpinned()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	for _, ep := range []Endpoint{
		{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC},
		{IP: peerIP, Ifindex: peerIfindex, PodMAC: peerMAC, HostMAC: peerHst},
	} {
		if err := dp.UpsertEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	return dp
}

func run(t *testing.T, p *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	return runProg(t, p, loIfindex, pkt)
}

// runProg runs a tc program on pkt as if it arrived on ifindex: verdict
// and the packet as the program left it.
func runProg(t testing.TB, p *ebpf.Program, ifindex uint32, pkt []byte) (uint32, []byte) {
	t.Helper()
	ctx := make([]uint32, 11) // struct __sk_buff up to ifindex
	ctx[10] = ifindex
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out, Context: ctx}
	ret, err := p.Run(opts)
	if err != nil {
		t.Fatalf("prog.Run (%d bytes): %v", len(pkt), err)
	}
	return ret, opts.DataOut
}

// Frames from the test pod to its host side, built by the shared builder.
var (
	eth  = testpkt.Eth
	csum = testpkt.Checksum
)

// udp4 is an Ethernet/IPv4/UDP frame from the pod's MAC to its host side.
func udp4(src, dst netip.Addr, ttl uint8, payload []byte) []byte {
	return testpkt.UDP{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: 40000, DstPort: 8081, TTL: ttl, Payload: payload}.Frame()
}

func arpReq(sender, target netip.Addr) []byte { return testpkt.WhoHas(podMAC, sender, target) }

func counter(t testing.TB, dp *Datapath, ifindex uint32, d Dir, r Reason) uint64 {
	t.Helper()
	all, err := dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return all[ifindex][CounterKey{d, r}].Packets
}

// TestFromContainerTTLChecksum: the program updates the IPv4 checksum of
// the TTL decrement itself (no helper call); every TTL it forwards, over
// headers of many checksums, gets the bytes that the kernel's
// csum_replace2 (bpf_l3_csum_replace, used before) would give, and a
// header that verifies.
func TestFromContainerTTLChecksum(t *testing.T) {
	dp := loadTest(t)
	add := func(a, b uint16) uint16 {
		r := a + b
		if r < b {
			r++
		}
		return r
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for ttl := 2; ttl <= 255; ttl++ {
		for range 16 {
			pkt := udp4(podIP, peerIP, uint8(ttl), []byte("hello"))
			ip := pkt[14:34]
			binary.BigEndian.PutUint16(ip[4:], uint16(rng.Uint32())) // IP ID: another checksum
			binary.BigEndian.PutUint16(ip[10:], 0)
			binary.BigEndian.PutUint16(ip[10:], csum(ip))
			old := binary.BigEndian.Uint16(ip[8:])
			want := ^add(add(^binary.BigEndian.Uint16(ip[10:]), ^old), old-0x100)
			ret, out := run(t, dp.objs.AnetFromContainer, pkt)
			if ret != tcActRedirect {
				t.Fatalf("ttl %d: verdict %d, want redirect", ttl, ret)
			}
			oip := out[14:34]
			if int(oip[8]) != ttl-1 || binary.BigEndian.Uint16(oip[10:]) != want || csum(oip) != 0 {
				t.Fatalf("ttl %d id %x: ttl %d checksum %04x, want %d %04x (verifies: %v)", ttl, ip[4:6], oip[8], oip[10:12], ttl-1, want, csum(oip) == 0)
			}
		}
	}
}

func TestFromContainerPodToPod(t *testing.T) {
	dp := loadTest(t)
	pkt := udp4(podIP, peerIP, 64, []byte("hello"))
	ret, out := run(t, dp.objs.AnetFromContainer, pkt)
	if ret != tcActRedirect {
		t.Fatalf("verdict %d, want redirect", ret)
	}
	if !bytes.Equal(out[0:6], peerMAC) || !bytes.Equal(out[6:12], peerHst) {
		t.Errorf("L2 not rewritten: dst %x src %x", out[0:6], out[6:12])
	}
	ip := out[14:34]
	if ip[8] != 63 {
		t.Errorf("TTL %d, want 63", ip[8])
	}
	if csum(ip) != 0 {
		t.Errorf("IPv4 header checksum invalid after TTL decrement")
	}
	if !bytes.Equal(out[34:len(pkt)], pkt[34:]) {
		t.Errorf("payload changed")
	}
	if n := counter(t, dp, loIfindex, DirEgress, ReasonForwarded); n != 1 {
		t.Errorf("source egress forwarded = %d, want 1", n)
	}
	if n := counter(t, dp, peerIfindex, DirIngress, ReasonForwarded); n != 1 {
		t.Errorf("destination ingress forwarded = %d, want 1", n)
	}
}

func TestFromContainerToHostStack(t *testing.T) {
	dp := loadTest(t)
	pkt := udp4(podIP, nodeIP, 64, []byte("x"))
	ret, out := run(t, dp.objs.AnetFromContainer, pkt)
	if ret != tcActOK {
		t.Fatalf("verdict %d, want TC_ACT_OK", ret)
	}
	if !bytes.Equal(out[:len(pkt)], pkt) {
		t.Errorf("packet to the host stack was modified")
	}
}

func TestFromContainerDrops(t *testing.T) {
	good := udp4(podIP, peerIP, 64, []byte("payload"))
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, good...)) }
	cases := []struct {
		name   string
		pkt    []byte
		reason Reason
	}{
		{"spoofed source", udp4(netip.MustParseAddr("10.244.1.99"), peerIP, 64, nil), DropInvalidSource},
		{"spoofed source to host", udp4(netip.MustParseAddr("8.8.8.8"), nodeIP, 64, nil), DropInvalidSource},
		// Frames shorter than an IPv4 header cannot go through
		// BPF_PROG_TEST_RUN (the kernel refuses them); the node tests send
		// them from a pod through a packet socket instead.
		{"total length beyond packet", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 1500); return b }), DropMalformedIP},
		{"total length below header", mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 10); return b }), DropMalformedIP},
		{"ihl below 5", mut(func(b []byte) []byte { b[14] = 0x44; return b }), DropMalformedIP},
		{"version 6 in ipv4 frame", mut(func(b []byte) []byte { b[14] = 0x65; return b }), DropMalformedIP},
		{"ttl 1 between pods", udp4(podIP, peerIP, 1, nil), DropTTLExceeded},
		{"ipv6", append(eth(hostMAC, podMAC, 0x86dd), make([]byte, 40)...), DropUnsupportedL3},
		{"arp truncated", arpReq(podIP, gwIP)[:30], DropMalformedARP},
		{"arp spoofed sender", arpReq(netip.MustParseAddr("10.244.1.77"), gwIP), DropInvalidSource},
		{"arp not ethernet", func() []byte { b := arpReq(podIP, gwIP); b[15] = 6; return b }(), DropMalformedARP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dp := loadTest(t)
			ret, _ := run(t, dp.objs.AnetFromContainer, c.pkt)
			if ret != tcActShot {
				t.Fatalf("verdict %d, want TC_ACT_SHOT", ret)
			}
			if n := counter(t, dp, loIfindex, DirEgress, c.reason); n != 1 {
				all, _ := dp.Counters()
				t.Errorf("%s drops = %d, want 1 (counters %v)", c.reason, n, all[loIfindex])
			}
			if n := counter(t, dp, peerIfindex, DirIngress, ReasonForwarded); n != 0 {
				t.Errorf("peer saw %d packets", n)
			}
		})
	}
}

func TestFromUnknownEndpoint(t *testing.T) {
	dp := loadTest(t)
	if err := dp.DeleteEndpoint(podIP, loIfindex); err != nil {
		t.Fatal(err)
	}
	ret, _ := run(t, dp.objs.AnetFromContainer, udp4(podIP, peerIP, 64, nil))
	if ret != tcActShot {
		t.Fatalf("verdict %d, want TC_ACT_SHOT", ret)
	}
	if n := nodeCounter(t, dp, DirEgress, DropUnknownEndpoint); n != 1 {
		t.Errorf("node-wide unknown-endpoint drops = %d, want 1", n)
	}
	noCountersOf(t, dp, loIfindex)
}

func nodeCounter(t *testing.T, dp *Datapath, d Dir, r Reason) uint64 {
	t.Helper()
	c, err := dp.NodeCounters()
	if err != nil {
		t.Fatal(err)
	}
	return c[CounterKey{d, r}].Packets
}

// noCountersOf fails unless the counter map holds no key of ifindex, read
// from the map itself (not through Counters, which could filter).
func noCountersOf(t *testing.T, dp *Datapath, ifindex uint32) {
	t.Helper()
	var k metricsKey
	var per [][]byte
	it := dp.objs.AnetMetrics.Iterate()
	for it.Next(&k, &per) {
		if k.Ifindex == ifindex {
			t.Errorf("counter %+v of ifindex %d is in the map", k, ifindex)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
}

// The host stack's packets to a device that is no endpoint are dropped and
// counted under the node-wide key, never under the device.
func TestToContainerUnknownEndpoint(t *testing.T) {
	dp := loadTest(t)
	if err := dp.DeleteEndpoint(podIP, loIfindex); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ret, _ := run(t, dp.objs.AnetToContainer, udp4(nodeIP, podIP, 64, nil))
		if ret != tcActShot {
			t.Fatalf("verdict %d, want TC_ACT_SHOT", ret)
		}
	}
	if n := nodeCounter(t, dp, DirIngress, DropUnknownEndpoint); n != 3 {
		t.Errorf("node-wide unknown-endpoint drops = %d, want 3", n)
	}
	noCountersOf(t, dp, loIfindex)
	// Restore's prune deletes the counters of every device that is no
	// endpoint: the node-wide ones are not a device's.
	if err := dp.DeleteCountersOf(IfindexNode); err != nil {
		t.Fatal(err)
	}
	if n := nodeCounter(t, dp, DirIngress, DropUnknownEndpoint); n != 3 {
		t.Errorf("node-wide counters deleted as a device's: %d left", n)
	}
	if all, _ := dp.Counters(); len(all[IfindexNode]) != 0 {
		t.Errorf("Counters (per endpoint) shows the node-wide key: %v", all[IfindexNode])
	}
}

// Packets keep arriving on an endpoint's device while it is deleted (an
// endpoint collected while its veth stays): once DeleteEndpoint returns,
// no counter of that device exists, and none comes back.
func TestDeleteEndpointRacingPackets(t *testing.T) {
	dp := loadTest(t)
	pkt := udp4(nodeIP, podIP, 64, nil)
	if ret, _ := run(t, dp.objs.AnetToContainer, pkt); ret != tcActOK {
		t.Fatalf("verdict %d for a registered endpoint", ret)
	}
	stop := make(chan struct{})
	done := make(chan error, 2)
	for range 2 {
		go func() {
			ctx := make([]uint32, 11)
			ctx[10] = loIfindex
			for {
				select {
				case <-stop:
					done <- nil
					return
				default:
				}
				if _, err := dp.objs.AnetToContainer.Run(&ebpf.RunOptions{Data: pkt, Context: ctx, Repeat: 50}); err != nil {
					done <- err
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := dp.DeleteEndpoint(podIP, loIfindex); err != nil {
		t.Fatal(err)
	}
	noCountersOf(t, dp, loIfindex)
	time.Sleep(50 * time.Millisecond) // the racers go on
	close(stop)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	noCountersOf(t, dp, loIfindex)
	if n := nodeCounter(t, dp, DirIngress, DropUnknownEndpoint); n == 0 {
		t.Error("the racing packets after the delete were not counted as unknown-endpoint drops")
	}
}

func TestARPResponder(t *testing.T) {
	dp := loadTest(t)
	ret, out := run(t, dp.objs.AnetFromContainer, arpReq(podIP, gwIP))
	if ret != tcActRedirect {
		t.Fatalf("verdict %d, want redirect back to the pod", ret)
	}
	gw, pod := gwIP.As4(), podIP.As4()
	want := eth(podMAC, hostMAC, 0x0806)
	want = append(want, 0, 1, 8, 0, 6, 4, 0, 2)
	want = append(append(want, hostMAC...), gw[:]...)
	want = append(append(want, podMAC...), pod[:]...)
	if !bytes.Equal(out[:len(want)], want) {
		t.Errorf("ARP reply\n got %x\nwant %x", out[:len(want)], want)
	}
	// A request for the pod's own address is not ours to answer.
	if ret, _ := run(t, dp.objs.AnetFromContainer, arpReq(podIP, podIP)); ret != tcActOK {
		t.Errorf("self ARP verdict %d, want TC_ACT_OK", ret)
	}
}

func TestToContainerCounts(t *testing.T) {
	dp := loadTest(t)
	ret, _ := run(t, dp.objs.AnetToContainer, udp4(nodeIP, podIP, 64, nil))
	if ret != tcActOK {
		t.Fatalf("verdict %d", ret)
	}
	if n := counter(t, dp, loIfindex, DirIngress, ReasonForwarded); n != 1 {
		t.Errorf("ingress forwarded = %d, want 1", n)
	}
}

// Garbage never leaves toward another pod: random frames that do not carry
// the endpoint's own source address are dropped and counted.
func TestFromContainerGarbage(t *testing.T) {
	dp := loadTest(t)
	rng := rand.New(rand.NewPCG(1, 2))
	src := podIP.As4()
	const n = 2000
	for i := range n {
		pkt := make([]byte, 34+rng.IntN(80))
		for j := range pkt {
			pkt[j] = byte(rng.UintN(256))
		}
		if i%2 == 0 {
			binary.BigEndian.PutUint16(pkt[12:], 0x0800)
		}
		if len(pkt) >= 34 && bytes.Equal(pkt[26:30], src[:]) {
			continue // astronomically unlikely; would be a valid source
		}
		ret, _ := run(t, dp.objs.AnetFromContainer, pkt)
		if ret == tcActRedirect {
			t.Fatalf("garbage frame %x was redirected", pkt)
		}
		if ret != tcActShot && binary.BigEndian.Uint16(pkt[12:]) != 0x0806 {
			t.Fatalf("garbage frame %x: verdict %d", pkt, ret)
		}
	}
	if n := counter(t, dp, peerIfindex, DirIngress, ReasonForwarded); n != 0 {
		t.Errorf("peer received %d garbage packets", n)
	}
}
