//go:build linux

package main

import (
	"math"
	"strings"
	"testing"

	"github.com/anet-dev/anet/internal/testpkt"
)

// What sockperf 3.7 prints for `ping-pong --tcp --full-rtt` (trimmed).
const sockperfOut = "sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n" +
	"sockperf: [Total Run] RunTime=2.001 sec; Warm up time=400 msec; SentMessages=104459; ReceivedMessages=104458\n" +
	"sockperf: ========= Printing statistics for Server No: 0\n" +
	"sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=80769; ReceivedMessages=80769\n" +
	"sockperf: \x1b[2;35m====> avg-latency=9.582 (std-dev=3.484)\x1b[0m\n" +
	"sockperf: ---> percentile 99.000 =   28.909\n" +
	"sockperf: ---> percentile 90.000 =    9.212\n" +
	"sockperf: ---> percentile 50.000 =    8.996\n"

func TestParseSockperf(t *testing.T) {
	r, err := parseSockperf(sockperfOut)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(r.perSec-80769/1.550) > 1e-6 || r.p50 != 8.996 || r.p99 != 28.909 {
		t.Errorf("got %+v", r)
	}
	if _, err := parseSockperf("sockperf: connection refused"); err == nil {
		t.Error("no error for output without results")
	}
}

func TestParseIperf(t *testing.T) {
	r, err := parseIperf([]byte(`{"end":{"sum_sent":{"retransmits":12},"sum_received":{"bits_per_second":8.5e9}}}`))
	if err != nil || r.gbps != 8.5 || r.retrans != 12 {
		t.Errorf("got %+v, %v", r, err)
	}
	if _, err := parseIperf([]byte(`{"error":"unable to connect to server"}`)); err == nil || !strings.Contains(err.Error(), "unable") {
		t.Errorf("iperf3 error not reported: %v", err)
	}
	if _, err := parseIperf([]byte(`not json`)); err == nil {
		t.Error("no error for garbage")
	}
}

func TestFormat(t *testing.T) {
	for x, want := range map[float64]string{46638: "46\u202f638", 123456: "123\u202f456", 111.4: "111", 53.44: "53.4", 0.5: "0.50", math.NaN(): "n/a"} {
		if got := num(x); got != want {
			t.Errorf("num(%v) = %q, want %q", x, got, want)
		}
	}
	if ratio(1, 2) != "0.50×" || ratio(1, 0) != "n/a" {
		t.Error("ratio")
	}
	tb := table([]string{"", "a"}, [][]string{{"x", "1"}})
	if tb != "|  | a |\n| --- | ---: |\n| x | 1 |\n" {
		t.Errorf("table:\n%s", tb)
	}
}

func TestUDPFrame(t *testing.T) {
	f := udp4(podIP, peerIP, 255, 64)
	if len(f) != 106 {
		t.Fatalf("frame is %d bytes, the report says 106", len(f))
	}
	if testpkt.Checksum(f[testpkt.OffIPv4:testpkt.OffUDP]) != 0 || f[testpkt.OffTTL] != 255 {
		t.Errorf("bad IPv4 header: %x", f[testpkt.OffIPv4:testpkt.OffUDP])
	}
}
