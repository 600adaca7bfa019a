package datapath

import (
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/anet-dev/anet/bpf"
)

// BenchmarkPolicyPerPacket measures the pod programs' cost per packet in
// the kernel (BPF_PROG_TEST_RUN with repeat), without and with policy, the
// latter with 10 000 other rules in the map (the cost must not depend on
// them). Endpoint A is on lo (the test run's device). The redirecting
// cases run in chunks of 250 runs: the kernel does not restore the packet
// between repeats, and each run decrements the TTL.
//
// ANET_BENCH_LXC_OBJ=<path of another build's lxc_bpfel.o> adds the same
// unpoliced cases for that build (today's programs, for comparison).
func BenchmarkPolicyPerPacket(b *testing.B) {
	e := newPolEnv(b)
	bulk := make([]PolicyRule, 0, 10000)
	for i := range 10000 {
		bulk = append(bulk, PolicyRule{Identity: uint32(5000 + i), Proto: protoTCP, Port: uint16(1 + i%60000), PortPrefixLen: 16})
	}
	// Unrelated endpoints' rules fill the map.
	for ifi := uint32(100); ifi < 110; ifi++ {
		if err := e.dp.SetEndpointPolicy(ifi, true, true, bulk[:1000], bulk[:1000]); err != nil {
			b.Fatal(err)
		}
	}
	fc, tc := e.dp.objs.AnetFromContainer, e.dp.objs.AnetToContainer
	cases := []struct {
		name   string
		setup  func()
		prog   *ebpf.Program
		pkt    []byte
		want   uint32
		chunks bool
	}{
		{"from/to-host-stack/no-policy", nil, fc, udpPkt(podIP, remoteIP, 40000, 53), tcActOK, false},
		{"from/pod-to-pod/no-policy", nil, fc, udpPkt(podIP, peerIP, 40001, 53), tcActRedirect, true},
		{"to/from-host-stack/no-policy", nil, tc, udpPkt(remoteIP, podIP, 40002, 53), tcActOK, false},
		{"from/to-host-stack/isolated-allowed-tracked", func() {
			e.set(e.a, true, true, bulk, append([]PolicyRule{{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16}}, bulk...))
		}, fc, udpPkt(podIP, remoteIP, 40010, 53), tcActOK, false},
		{"from/to-host-stack/isolated-denied-judged", nil, fc, udpPkt(podIP, remoteIP, 40011, 54), tcActShot, false},
		{"from/pod-to-pod/both-isolated-allowed-tracked", func() {
			e.set(e.a, true, true, bulk, append([]PolicyRule{{Identity: idB, Proto: protoUDP, Port: 53, PortPrefixLen: 16}}, bulk...))
			e.set(e.b, true, true, append([]PolicyRule{{Identity: idA, Proto: protoUDP, Port: 53, PortPrefixLen: 16}}, bulk...), bulk)
		}, fc, udpPkt(podIP, peerIP, 40012, 53), tcActRedirect, true},
		{"from/pod-to-pod/ingress-denied-judged", nil, fc, udpPkt(podIP, peerIP, 40013, 55), tcActShot, false},
		{"to/from-host-stack/isolated-allowed-tracked", func() {
			e.set(e.a, true, true, append([]PolicyRule{{Identity: idRemote, Proto: protoUDP, Port: 53, PortPrefixLen: 16}}, bulk...), bulk)
		}, tc, udpPkt(remoteIP, podIP, 40014, 53), tcActOK, false},
		{"to/from-host-stack/isolated-denied-judged", nil, tc, udpPkt(remoteIP, podIP, 40015, 54), tcActShot, false},
	}
	for _, c := range cases {
		if c.setup != nil {
			c.setup()
		}
		b.Run(c.name, func(b *testing.B) { benchRun(b, c.prog, c.pkt, c.want, c.chunks) })
	}
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	b.Run("empty-program", func(b *testing.B) { benchRun(b, empty, udpPkt(podIP, remoteIP, 1, 1), tcActOK, false) })
	if path := os.Getenv("ANET_BENCH_LXC_OBJ"); path != "" {
		old := loadOtherLxc(b, path)
		b.Run("other-build/from/to-host-stack", func(b *testing.B) {
			benchRun(b, old.Programs[ProgFromContainer], udpPkt(podIP, remoteIP, 40000, 53), tcActOK, false)
		})
		b.Run("other-build/from/pod-to-pod", func(b *testing.B) {
			benchRun(b, old.Programs[ProgFromContainer], udpPkt(podIP, peerIP, 40001, 53), tcActRedirect, true)
		})
		b.Run("other-build/to/from-host-stack", func(b *testing.B) {
			benchRun(b, old.Programs[ProgToContainer], udpPkt(remoteIP, podIP, 40002, 53), tcActOK, false)
		})
	}
}

func benchRun(b *testing.B, p *ebpf.Program, pkt []byte, want uint32, chunks bool) {
	pkt[testpkt_offTTL] = 255
	var total time.Duration
	left := b.N
	b.ResetTimer()
	for left > 0 {
		n := left
		if chunks {
			n = min(n, 250)
		}
		ret, d, err := p.Benchmark(pkt, n, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		total += d * time.Duration(n)
		left -= n
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/packet")
}

// testpkt_offTTL is the TTL's offset; the IPv4 checksum is not checked on
// this path, and a TTL of 255 leaves room for the chunks' decrements.
const testpkt_offTTL = 14 + 8

// loadOtherLxc loads another build's pod programs with maps of their own
// and the same two endpoints.
func loadOtherLxc(b *testing.B, path string) *ebpf.Collection {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(coll.Close)
	for _, ep := range []Endpoint{
		{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC},
		{IP: peerIP, Ifindex: peerIfindex, PodMAC: peerMAC, HostMAC: peerHst},
	} {
		v, _ := ep.info()
		if err := coll.Maps[bpf.LxcMapAnetEpByIf].Put(ep.Ifindex, v); err != nil {
			b.Fatal(err)
		}
		if err := coll.Maps[bpf.LxcMapAnetEpByIp].Put(v.Ip, v); err != nil {
			b.Fatal(err)
		}
	}
	return coll
}
