package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/anet-dev/anet/bpf"
)

// What the metrics read (daemon/metrics): counters summed over the node,
// and how full the conntrack tables are. Both only read the maps: the
// programs never wait for them.

// TrafficCounters returns the counters of every endpoint and of the node
// (IfindexNode) summed by direction and reason, plus the counts of the
// endpoints deleted since this Datapath was loaded (DeleteCountersOf and
// the deletion of an endpoint fold them in first): the sums only grow
// while anetd runs, as Prometheus counters must. One pass over the map.
func (dp *Datapath) TrafficCounters() (map[CounterKey]Counter, error) {
	dp.retiredMu.Lock()
	defer dp.retiredMu.Unlock()
	out := make(map[CounterKey]Counter, len(dp.retired))
	for k, c := range dp.retired {
		out[k] = c
	}
	var k bpf.LxcMetricsKey
	var per []bpf.LxcMetricsValue
	it := dp.objs.AnetMetrics.Iterate()
	for it.Next(&k, &per) {
		ck := CounterKey{Dir(k.Dir), Reason(k.Reason)}
		c := out[ck]
		for _, v := range per {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out[ck] = c
	}
	return out, it.Err()
}

// retire adds the counts of an entry about to be deleted to the retired
// sums. Called with retiredMu held.
func (dp *Datapath) retire(k bpf.LxcMetricsKey, per []bpf.LxcMetricsValue) {
	if dp.retired == nil {
		dp.retired = map[CounterKey]Counter{}
	}
	ck := CounterKey{Dir(k.Dir), Reason(k.Reason)}
	c := dp.retired[ck]
	for _, v := range per {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	dp.retired[ck] = c
}

// Conntrack table names in MapFill.
const (
	ConntrackPod     = "pod"     // anet_pol_ct4: every connection of the pods (policy, replies)
	ConntrackService = "service" // anet_ct4: the per-packet service translation
)

// MapFill is how full a map is.
type MapFill struct {
	Name       string
	Entries    int
	MaxEntries int
}

// ConntrackFill counts the entries of the conntrack tables, expired ones
// included until the collectors delete them (the tables are LRUs: a full
// one evicts its oldest entries).
func (dp *Datapath) ConntrackFill() ([]MapFill, error) {
	pod, err := countBatched[bpf.LxcCt4Key, bpf.LxcPolCtEntry](dp.objs.AnetPolCt4)
	if err != nil {
		return nil, fmt.Errorf("counting %s: %w", bpf.LxcMapAnetPolCt4, err)
	}
	svc, err := countBatched[bpf.HostCt4Key, bpf.HostCt4Entry](dp.host.AnetCt4)
	if err != nil {
		return nil, fmt.Errorf("counting %s: %w", bpf.HostMapAnetCt4, err)
	}
	return []MapFill{
		{Name: ConntrackPod, Entries: pod, MaxEntries: int(dp.objs.AnetPolCt4.MaxEntries())},
		{Name: ConntrackService, Entries: svc, MaxEntries: int(dp.host.AnetCt4.MaxEntries())},
	}, nil
}

// countBatch is how many entries one batch lookup reads: 262144 entries
// are 64 system calls. Far more than any hash bucket holds.
const countBatch = 4096

// countBatched counts the entries of a hash map with batch lookups (one
// system call per countBatch entries, where countEntries' Iterate makes
// one or two per entry: it is for a scrape, which must stay cheap).
// The kernel locks one bucket at a time, briefly.
func countBatched[K, V any](m *ebpf.Map) (int, error) {
	keys := make([]K, countBatch)
	vals := make([]V, countBatch)
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
