//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/anet-dev/anet/bench/internal/stats"
	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/internal/testpkt"
)

// The per-packet cost of anet_from_container, measured in the kernel with
// BPF_PROG_TEST_RUN, against an empty SCHED_CLS program.
//
// The kernel runs the program Repeat times on the same skb and does not
// restore it between runs. The pod-to-pod path rewrites the packet (TTL
// decrement), so one run of Repeat=1e6 would leave the redirect path after
// a few hundred runs and measure the TTL drop instead. Every case therefore
// runs in chunks of chunkRepeat (< the 255 hops a TTL allows), interleaved
// case by case, until each has seen the configured number of packets; the
// map counters are then checked against the verdicts expected.

const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
	chunkRepeat   = 250
	loIfindex     = 1 // lo of the fresh netns the runs happen in: the test run's device
	peerIfindex   = 4242
)

var (
	podMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	peerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
	peerHst = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x04}
	podIP   = netip.MustParseAddr("10.244.1.5")
	peerIP  = netip.MustParseAddr("10.244.1.6")
	gwIP    = netip.MustParseAddr("10.244.1.1")
	spoofIP = netip.MustParseAddr("10.244.1.99")
)

// udp4 is an Ethernet/IPv4/UDP frame of payload zero bytes from the pod's
// MAC to its host side, built by the shared builder.
func udp4(src, dst netip.Addr, ttl uint8, payload int) []byte {
	return testpkt.UDP{DstMAC: hostMAC, SrcMAC: podMAC, Src: src, Dst: dst, SrcPort: 40000, DstPort: 8080, TTL: ttl, Payload: make([]byte, payload)}.Frame()
}

type progCase struct {
	name    string
	prog    *ebpf.Program
	pkt     []byte
	verdict uint32
	perPass []float64 // mean ns/packet of each pass
}

type progResult struct {
	packets, passes int
	cases           []*progCase
	checks          []string
}

// benchProg loads the datapath's programs with unpinned maps, registers two
// endpoints as anetd would (the pod on lo of a fresh netns, a peer on a
// made-up ifindex), and measures.
func (b *bench) benchProg() *progResult {
	var res *progResult
	err := inScratchNS(func() error {
		var err error
		res, err = b.progRuns()
		return err
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

func (b *bench) progRuns() (*progResult, error) {
	runtime.LockOSThread() // ns.Do already holds the thread; be explicit
	defer runtime.UnlockOSThread()
	dp, err := datapath.LoadUnpinned()
	if err != nil {
		return nil, fmt.Errorf("loading the lxc programs: %w", err)
	}
	defer dp.Close()
	for _, ep := range []datapath.Endpoint{
		{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC},
		{IP: peerIP, Ifindex: peerIfindex, PodMAC: peerMAC, HostMAC: peerHst},
	} {
		if err := dp.UpsertEndpoint(ep); err != nil {
			return nil, err
		}
	}
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_empty", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("loading the empty program: %w", err)
	}
	defer empty.Close()

	const payload = 64
	fc := dp.Program(datapath.ProgFromContainer)
	cases := []*progCase{
		{name: "pod → pod on the node, UDP (redirect_peer)", prog: fc, pkt: udp4(podIP, peerIP, 255, payload), verdict: tcActRedirect},
		{name: "pod → node (to the host stack)", prog: fc, pkt: udp4(podIP, gwIP, 255, payload), verdict: tcActOK},
		{name: "spoofed source (drop)", prog: fc, pkt: udp4(spoofIP, peerIP, 255, payload), verdict: tcActShot},
		{name: "empty program (`r0 = 0; exit`)", prog: empty, pkt: udp4(podIP, peerIP, 255, payload), verdict: tcActOK},
	}
	res := &progResult{packets: b.cfg.progPackets, passes: b.cfg.progPasses, cases: cases}
	chunks := max(1, b.cfg.progPackets/chunkRepeat)
	for pass := range b.cfg.progPasses {
		sums := make([]float64, len(cases))
		for c := range chunks {
			for i := range cases {
				k := (i + c) % len(cases)
				pc := cases[k]
				ret, perRun, err := pc.prog.Benchmark(pc.pkt, chunkRepeat, nil)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", pc.name, err)
				}
				if ret != pc.verdict {
					return nil, fmt.Errorf("%s: verdict %d, want %d (pass %d, chunk %d)", pc.name, ret, pc.verdict, pass, c)
				}
				sums[k] += float64(perRun.Nanoseconds())
			}
		}
		for i, pc := range cases {
			pc.perPass = append(pc.perPass, sums[i]/float64(chunks))
		}
	}

	// Every packet took the path it was meant to: the counters anetd's
	// program keeps say so.
	runs := uint64(chunks * chunkRepeat * b.cfg.progPasses)
	all, err := dp.Counters()
	if err != nil {
		return nil, err
	}
	counts := map[[3]uint32]uint64{}
	for ifindex, m := range all {
		for k, v := range m {
			counts[[3]uint32{ifindex, uint32(k.Dir), uint32(k.Reason)}] = v.Packets
		}
	}
	expect := []struct {
		what    string
		ifindex uint32
		dir     datapath.Dir
		reason  datapath.Reason
		want    uint64
	}{
		{"pod egress forwarded (redirected + to host)", loIfindex, datapath.DirEgress, datapath.ReasonForwarded, 2 * runs},
		{"peer ingress forwarded (redirected)", peerIfindex, datapath.DirIngress, datapath.ReasonForwarded, runs},
		{"pod egress invalid-source drops", loIfindex, datapath.DirEgress, datapath.DropInvalidSource, runs},
	}
	// A test run that a signal interrupts (the Go runtime preempts threads
	// with SIGURG) returns EINTR after some repeats, and cilium/ebpf runs
	// it again from the start: the counters may exceed the runs requested,
	// by a little. The timing is that of the run that completed.
	var bad []string
	var extra uint64
	seen := map[[3]uint32]bool{}
	for _, e := range expect {
		k := [3]uint32{e.ifindex, uint32(e.dir), uint32(e.reason)}
		seen[k] = true
		got := counts[k]
		if got < e.want || got > e.want+e.want/100 {
			bad = append(bad, fmt.Sprintf("%s: %d, want %d (+1%% for restarted runs)", e.what, got, e.want))
		}
		extra = max(extra, got-min(got, e.want))
	}
	for k, v := range counts {
		if !seen[k] && v > 0 {
			bad = append(bad, fmt.Sprintf("unexpected counter ifindex %d dir %d reason %s: %d", k[0], k[1], datapath.Reason(k[2]), v))
		}
	}
	if len(bad) > 0 {
		return nil, errors.New("the datapath counters disagree with the verdicts: " + fmt.Sprint(bad))
	}
	res.checks = append(res.checks, fmt.Sprintf("ok: anet_metrics counted the %d runs of each case on the expected path, no TTL or other drops "+
		"(at most %d more: test runs interrupted by a signal and restarted)", runs, extra))
	return res, nil
}

func (r *progResult) rows() [][]string {
	emptyNs := stats.Median(r.cases[len(r.cases)-1].perPass)
	var out [][]string
	for _, c := range r.cases {
		v := stats.Median(c.perPass)
		verdict := map[uint32]string{tcActOK: "TC_ACT_OK", tcActShot: "TC_ACT_SHOT", tcActRedirect: "TC_ACT_REDIRECT"}[c.verdict]
		out = append(out, []string{c.name, verdict, fmt.Sprintf("%.1f ns", v), fmt.Sprintf("%.1f ns", emptyNs),
			ratio(v, emptyNs), fmt.Sprintf("%+.1f ns", v-emptyNs), spread(c.perPass)})
	}
	return out
}

// spread is "min–max" of the passes.
func spread(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f–%.1f", stats.Percentile(xs, 0), stats.Percentile(xs, 100))
}

// inScratchNS runs fn in a new network namespace, on a thread locked to it
// (ns.Do locks it), and removes the namespace after.
func inScratchNS(fn func() error) error {
	scratch, err := testutils.NewNS()
	if err != nil {
		return err
	}
	defer func() {
		scratch.Close()
		_ = testutils.UnmountNS(scratch)
	}()
	return scratch.Do(func(ns.NetNS) error { return fn() })
}
