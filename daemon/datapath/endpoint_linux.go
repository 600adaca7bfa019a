package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/anet-dev/anet/bpf"
)

// Endpoint is what the datapath knows of a pod interface on this node.
type Endpoint struct {
	IP       netip.Addr
	Ifindex  uint32 // host-side veth
	PodMAC   net.HardwareAddr
	HostMAC  net.HardwareAddr
	Identity uint32
}

// ipKey is an IPv4 address as the kernel keys it: network byte order in a u32.
func ipKey(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func keyIP(k uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], k)
	return netip.AddrFrom4(b)
}

func (ep Endpoint) info() (bpf.LxcEndpointInfo, error) {
	if !ep.IP.Is4() {
		return bpf.LxcEndpointInfo{}, fmt.Errorf("endpoint address %s is not IPv4", ep.IP)
	}
	if len(ep.PodMAC) != 6 || len(ep.HostMAC) != 6 {
		return bpf.LxcEndpointInfo{}, fmt.Errorf("endpoint MACs must be 6 bytes")
	}
	v := bpf.LxcEndpointInfo{Ip: ipKey(ep.IP), Ifindex: ep.Ifindex, Identity: ep.Identity}
	copy(v.PodMac[:], ep.PodMAC)
	copy(v.HostMac[:], ep.HostMAC)
	return v, nil
}

// UpsertEndpoint writes an endpoint into both endpoint maps.
func (dp *Datapath) UpsertEndpoint(ep Endpoint) error {
	v, err := ep.info()
	if err != nil {
		return err
	}
	if err := dp.objs.AnetEpByIf.Put(ep.Ifindex, v); err != nil {
		return fmt.Errorf("writing endpoint %d: %w", ep.Ifindex, err)
	}
	if err := dp.objs.AnetEpByIp.Put(v.Ip, v); err != nil {
		return fmt.Errorf("writing endpoint %s: %w", ep.IP, err)
	}
	return nil
}

// DeleteEndpoint removes an endpoint and its counters. Entries already
// gone are fine; ifindex 0 (or an invalid ip) skips that key.
//
// The order matters: the endpoint entries go first, then DeleteEndpoint
// waits until no program that may have found them is still running, then
// the counters go. The programs count only registered endpoints (bpf/lxc.c),
// so once the entries are gone and the programs that saw them are done,
// nothing can create a counter of this ifindex again, even with packets
// still arriving on the device (an endpoint collected while its veth is
// still there).
func (dp *Datapath) DeleteEndpoint(ip netip.Addr, ifindex uint32) error {
	err := dp.DeleteEndpointEntries(ip, ifindex)
	if ifindex == IfindexNode {
		return err
	}
	errs := []error{err}
	if err := dp.waitForPrograms(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, dp.DeleteCountersOf(ifindex))
	return errors.Join(errs...)
}

// DeleteEndpointEntries removes an endpoint's entries from the endpoint
// maps, not its counters: a program that looked the endpoint up just before
// may still count for it. The caller deletes the counters once no such
// program can be running (DeleteEndpoint waits for that; deleting the
// endpoint's device does too, as the kernel waits for running programs
// before a device is gone). Entries already gone are fine.
func (dp *Datapath) DeleteEndpointEntries(ip netip.Addr, ifindex uint32) error {
	var errs []error
	if ip.Is4() {
		if err := dp.objs.AnetEpByIp.Delete(ipKey(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if ifindex == IfindexNode {
		return errors.Join(errs...)
	}
	if err := dp.objs.AnetEpByIf.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// MapEndpoints lists what the endpoint maps hold, for reconciliation:
// addresses keyed by IP and ifindexes keyed by device.
func (dp *Datapath) MapEndpoints() (byIP map[netip.Addr]uint32, byIf map[uint32]netip.Addr, err error) {
	byIP, byIf = map[netip.Addr]uint32{}, map[uint32]netip.Addr{}
	var k uint32
	var v bpf.LxcEndpointInfo
	it := dp.objs.AnetEpByIp.Iterate()
	for it.Next(&k, &v) {
		byIP[keyIP(k)] = v.Ifindex
	}
	if err := it.Err(); err != nil {
		return nil, nil, err
	}
	it = dp.objs.AnetEpByIf.Iterate()
	for it.Next(&k, &v) {
		byIf[k] = keyIP(v.Ip)
	}
	return byIP, byIf, it.Err()
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// CounterKey names one counter of an endpoint.
type CounterKey struct {
	Dir    Dir
	Reason Reason
}

// IfindexNode is the counter key of packets that belong to no endpoint
// (ANET_IFINDEX_NODE in bpf/lib/common.h): drops on a device that carries
// anet's programs but is not, or no longer, a registered endpoint. One key
// for all such devices, so the counter map never grows per unknown device.
const IfindexNode = 0

// Counters returns the counters of the endpoints, summed over CPUs,
// grouped by endpoint device ifindex. One pass over the map. The node-wide
// counters (IfindexNode) are in NodeCounters.
func (dp *Datapath) Counters() (map[uint32]map[CounterKey]Counter, error) {
	all, err := dp.allCounters()
	delete(all, IfindexNode)
	return all, err
}

// NodeCounters returns the counters of packets that belonged to no
// endpoint, summed over CPUs.
func (dp *Datapath) NodeCounters() (map[CounterKey]Counter, error) {
	all, err := dp.allCounters()
	if all[IfindexNode] == nil {
		return map[CounterKey]Counter{}, err
	}
	return all[IfindexNode], err
}

func (dp *Datapath) allCounters() (map[uint32]map[CounterKey]Counter, error) {
	out := map[uint32]map[CounterKey]Counter{}
	var k bpf.LxcMetricsKey
	var per []bpf.LxcMetricsValue
	it := dp.objs.AnetMetrics.Iterate()
	for it.Next(&k, &per) {
		var c Counter
		for _, v := range per {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		m := out[k.Ifindex]
		if m == nil {
			m = map[CounterKey]Counter{}
			out[k.Ifindex] = m
		}
		m[CounterKey{Dir(k.Dir), Reason(k.Reason)}] = c
	}
	return out, it.Err()
}

// deleteCounters deletes the counters match selects. Their counts go to
// the node's retired sums first (TrafficCounters), under the same lock as
// a read of the sums, so that a read sees them once: in the map or in the
// sums. (What is counted between its lookup and its delete is lost.)
func (dp *Datapath) deleteCounters(match func(bpf.LxcMetricsKey) bool) error {
	dp.retiredMu.Lock()
	defer dp.retiredMu.Unlock()
	var keys []bpf.LxcMetricsKey
	var k bpf.LxcMetricsKey
	var per []bpf.LxcMetricsValue
	it := dp.objs.AnetMetrics.Iterate()
	for it.Next(&k, &per) {
		if match(k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := dp.objs.AnetMetrics.Lookup(k, &per); err == nil {
			dp.retire(k, per)
		}
		if err := dp.objs.AnetMetrics.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// DeleteCountersOf removes the counters of a device that is not an endpoint.
// The node-wide counters (IfindexNode) are not a device's and stay.
func (dp *Datapath) DeleteCountersOf(ifindex uint32) error {
	if ifindex == IfindexNode {
		return nil
	}
	return dp.deleteCounters(func(k bpf.LxcMetricsKey) bool { return k.Ifindex == ifindex })
}
