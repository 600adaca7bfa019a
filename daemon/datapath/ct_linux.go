package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

// The conntrack table of the per-packet service translation (bpf/lib/ct.h)
// is an LRU: a full table evicts its oldest entries rather than refuse a
// connection. Entries carry their expiry on bpf_ktime_get_ns' clock
// (CLOCK_MONOTONIC); the programs ignore expired ones, and GCConntrack
// deletes them, so that the table holds live connections only.

// Monotonic is now on the clock of the programs' expiries.
func Monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ctReply is CT_F_REPLY: the entry of a reply direction, whose address is
// the frontend's (the original direction's entry holds the backend).
const ctReply = 1 << 0

// replyKey is the key of the reply entry of an original entry.
func replyKey(k bpf.HostCt4Key, v bpf.HostCt4Entry) bpf.HostCt4Key {
	r := bpf.HostCt4Key{Saddr: v.Addr, Sport: v.Port, Daddr: k.Saddr, Dport: k.Sport, Proto: k.Proto}
	if v.Flags&ctSNAT != 0 {
		r.Daddr, r.Dport = v.Addr2, v.Port2
	}
	return r
}

// ctSNAT is CT_F_SNAT.
const ctSNAT = 1 << 1

// CTStats is what one collection pass saw.
type CTStats struct {
	Live, Expired, Orphaned int
}

// GCConntrack deletes the expired entries of ct and, when gone is not nil,
// the UDP entries whose backend gone reports gone (a backend removed from
// its Service: its flows start over on a live one; TCP connections keep
// theirs until they end).
func GCConntrack(ct *ebpf.Map, now uint64, gone func(backendID, addr uint32, port uint16) bool) (CTStats, error) {
	var (
		st   CTStats
		key  bpf.HostCt4Key
		val  bpf.HostCt4Entry
		dead []bpf.HostCt4Key
	)
	it := ct.Iterate()
	for it.Next(&key, &val) {
		switch {
		case val.Expires < now:
			st.Expired++
			dead = append(dead, key)
		case gone != nil && key.Proto == unix.IPPROTO_UDP && val.Flags&ctReply == 0 && gone(val.BackendId, val.Addr, val.Port):
			st.Orphaned++
			dead = append(dead, key, replyKey(key, val))
		default:
			st.Live++
		}
	}
	if err := it.Err(); err != nil {
		return st, fmt.Errorf("iterating conntrack: %w", err)
	}
	var errs []error
	for _, k := range dead {
		if err := ct.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return st, fmt.Errorf("deleting %d conntrack entries: %w", len(errs), errors.Join(errs...))
	}
	return st, nil
}
