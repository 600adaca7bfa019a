package datapath

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/anet-dev/anet/bpf"
	"github.com/anet-dev/anet/internal/testpkt"
)

func TestConfigHZ(t *testing.T) {
	for in, want := range map[string]int{
		"# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n": 250,
		"CONFIG_HZ=1000": 1000,
		"CONFIG_HZ=0":    0,
		"CONFIG_HZ=x":    0,
		"CONFIG_NO_HZ=y": 0,
	} {
		got, err := configHZ(strings.NewReader(in))
		if got != want || (err == nil) != (want != 0) {
			t.Errorf("configHZ(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// TestPolConntrackClock: the pod programs' conntrack clock, from jiffies
// when the loader measured the tick, agrees with CLOCK_MONOTONIC (where
// anetd collects expired entries) to within a tick: a first SYN's entry
// expires CT_LIFETIME_SYN after the program's now.
func TestPolConntrackClock(t *testing.T) {
	e := newPolEnv(t)
	clk, err := theJiffyClock()
	if err != nil {
		if _, herr := kernelHZ(); herr != nil {
			t.Logf("no kernel config, the programs call bpf_ktime_get_coarse_ns: %v", err)
		} else {
			t.Fatalf("CONFIG_HZ known, jiffies clock not measured: %v", err)
		}
	} else if clk.tickNS == 0 || clk.tickNS > uint64(50*time.Millisecond) {
		t.Fatalf("tick %d ns", clk.tickNS)
	}
	t.Logf("jiffies clock: tick %d ns, base %d", clk.tickNS, clk.base)
	tick := max(clk.tickNS, uint64(10*time.Millisecond)) // the coarse clock's lag too
	const lifetimeSYN = uint64(60 * time.Second)
	for i := range 20 {
		sport := e.next()
		before := Monotonic()
		wantVerdict(t, "A→remote SYN", e.from(e.a, tcpPkt(podIP, remoteIP, sport, 80, testpkt.TCPSyn)), tcActOK)
		after := Monotonic()
		s, d := podIP.As4(), remoteIP.As4()
		be := func(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }
		k := bpf.LxcCt4Key{Saddr: binary.NativeEndian.Uint32(s[:]), Daddr: binary.NativeEndian.Uint32(d[:]), Sport: be(sport), Dport: be(80), Proto: protoTCP}
		var v bpf.LxcPolCtEntry
		if err := e.dp.objs.AnetPolCt4.Lookup(k, &v); err != nil {
			t.Fatalf("conntrack entry of run %d: %v", i, err)
		}
		// A tick's interrupt that came late while the loader measured
		// puts the clock ahead by as much: a tick more either way.
		slack := tick + uint64(time.Millisecond)
		if now := v.Expires - lifetimeSYN; now+tick+slack < before || now > after+slack {
			t.Fatalf("run %d: the program's now is %d, CLOCK_MONOTONIC was %d..%d (tick %d ns)", i, now, before, after, clk.tickNS)
		}
	}
}
