package datapath

import (
	"testing"

	"github.com/anet-dev/anet/bpf"
)

// fillPodConntrack writes n entries into the pod conntrack table.
func fillPodConntrack(t testing.TB, dp *Datapath, n int) {
	t.Helper()
	keys := make([]bpf.LxcCt4Key, n)
	vals := make([]bpf.LxcPolCtEntry, n)
	for i := range keys {
		keys[i] = bpf.LxcCt4Key{Saddr: uint32(i), Daddr: 0x0a000001, Sport: uint16(i), Dport: 80, Proto: 6}
		vals[i].Expires = ^uint64(0)
	}
	if _, err := dp.objs.AnetPolCt4.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
}

// TestConntrackFill: the batch count reads every entry across several
// batches, and the table's size.
func TestConntrackFill(t *testing.T) {
	dp := loadTest(t)
	const n = 3*countBatch + 17
	fillPodConntrack(t, dp, n)
	fills, err := dp.ConntrackFill()
	if err != nil {
		t.Fatal(err)
	}
	want := []MapFill{{ConntrackPod, n, 262144}, {ConntrackService, 0, 262144}}
	if len(fills) != 2 || fills[0] != want[0] || fills[1] != want[1] {
		t.Errorf("fill %+v, want %+v", fills, want)
	}
}

// BenchmarkConntrackFill: what a scrape spends counting a full pod
// conntrack table (262144 entries).
func BenchmarkConntrackFill(b *testing.B) {
	needRoot(b)
	dp, err := LoadUnpinned()
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	fillPodConntrack(b, dp, int(dp.objs.AnetPolCt4.MaxEntries()))
	for b.Loop() {
		if _, err := dp.ConntrackFill(); err != nil {
			b.Fatal(err)
		}
	}
}
