package metrics

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/internal/testns"
	"github.com/anet-dev/anet/internal/testpkt"
)

// The datapath collector against the real programs and maps: packets run
// through anet_from_container with BPF_PROG_TEST_RUN in a network
// namespace of the test's own, then a scrape of the handler, parsed as a
// scraper would.

var (
	podMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	hostMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	podIP   = netip.MustParseAddr("10.244.1.5")
	peerIP  = netip.MustParseAddr("10.244.1.6")
)

const (
	loIfindex   = 1 // the test run needs a real device: lo of the test's netns
	peerIfindex = 4242
	tcActShot   = 2
	tcActRedir  = 7
)

func TestDatapathCollector(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to load eBPF programs (CI runs as root)")
	}
	testns.EnterNew(t)
	dp, err := datapath.LoadUnpinned()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	for _, ep := range []datapath.Endpoint{
		{IP: podIP, Ifindex: loIfindex, PodMAC: podMAC, HostMAC: hostMAC},
		{IP: peerIP, Ifindex: peerIfindex, PodMAC: podMAC, HostMAC: hostMAC},
	} {
		if err := dp.UpsertEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	m := New()
	m.AddDatapath(dp)
	m.AddEndpoints(func() int { return 2 })

	from := dp.Program(datapath.ProgFromContainer)
	send := func(sport uint16, want uint32) {
		t.Helper()
		pkt := testpkt.UDP{DstMAC: hostMAC, SrcMAC: podMAC, Src: podIP, Dst: peerIP, SrcPort: sport, DstPort: 53, TTL: 64, Payload: []byte("hello")}.Frame()
		ctx := make([]uint32, 11)
		ctx[10] = loIfindex
		ret, err := from.Run(&ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256), Context: ctx})
		if err != nil {
			t.Fatal(err)
		}
		if ret != want {
			t.Fatalf("port %d: verdict %d, want %d", sport, ret, want)
		}
	}
	send(40000, tcActRedir) // forwarded: egress of the pod, ingress of the peer; tracked
	// The pod's egress isolated, nothing allowed: a new connection is
	// denied.
	if err := dp.SetEndpointPolicy(loIfindex, false, true, nil, nil); err != nil {
		t.Fatal(err)
	}
	send(40001, tcActShot)
	send(40002, tcActShot)

	fams := scrape(t, m)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"anet_forwarded_packets_total", []string{"direction", "egress"}, 1},
		{"anet_forwarded_packets_total", []string{"direction", "ingress"}, 1},
		{"anet_dropped_packets_total", []string{"reason", "policy-egress-denied", "direction", "egress"}, 2},
		{"anet_policy_verdicts_total", []string{"direction", "egress", "verdict", "denied"}, 2},
		{"anet_policy_verdicts_total", []string{"direction", "ingress", "verdict", "denied"}, 0},
		// The forwarded datagram's flow, both directions.
		{"anet_conntrack_entries", []string{"map", "pod"}, 2},
		{"anet_conntrack_entries", []string{"map", "service"}, 0},
		{"anet_conntrack_max_entries", []string{"map", "pod"}, float64(262144)},
		{"anet_conntrack_fill_ratio", []string{"map", "pod"}, 2.0 / 262144},
		{"anet_endpoints", nil, 2},
	} {
		got, ok := fams.Value(c.name, c.labels...)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v; series %v", c.name, c.labels, got, ok, c.want, fams.Series(c.name))
		}
	}
	fwdBytes, _ := fams.Value("anet_forwarded_bytes_total", "direction", "egress")
	if fwdBytes == 0 {
		t.Errorf("anet_forwarded_bytes_total{direction=egress} = 0 after a forwarded packet")
	}
	for name, typ := range map[string]string{
		"anet_forwarded_packets_total": "counter", "anet_dropped_bytes_total": "counter",
		"anet_conntrack_fill_ratio": "gauge", "anet_endpoints": "gauge",
	} {
		if got := fams.Type(name); got != typ {
			t.Errorf("%s is a %q, want %q", name, got, typ)
		}
	}

	// The peer goes, and its counters with it: the node's sums stay.
	if err := dp.DeleteEndpoint(peerIP, peerIfindex); err != nil {
		t.Fatal(err)
	}
	fams = scrape(t, m)
	if got, _ := fams.Value("anet_forwarded_packets_total", "direction", "ingress"); got != 1 {
		t.Errorf("after the peer's deletion, anet_forwarded_packets_total{direction=ingress} = %v, want 1 (a counter never goes down)", got)
	}
}
