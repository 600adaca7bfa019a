package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/anet-dev/anet/bpf"
)

// NetworkPolicy maps (bpf/lib/policy.h): the ipcache (address prefix to
// identity), the endpoints' allow rules, and which directions of each
// endpoint are isolated. The policy model decides what they hold; these
// methods only write it, in an order that never refuses a flow that both
// the old and the new policy allow, and never allows one that neither does.

// Prefix lengths of a policy key (POL_PREFIX_* in policy.h): the bits of
// ifindex, identity and direction; then the protocol; then the port.
const (
	polPrefixAnyProto = 32 + 32 + 8
	polPrefixAnyPort  = polPrefixAnyProto + 8
)

// polEnforced is the bit of a direction in struct policy_ep's flags.
func polEnforced(d Dir) uint32 { return 1 << d }

// policyState is the shadow of anet_policy: the keys of each endpoint, so
// that a change writes only the difference without a walk of the whole
// map. It is read from the map once, at the first change (the map is
// pinned and outlives anetd).
type policyState struct {
	loaded bool
	keys   map[uint32]map[bpf.LxcPolicyKey]struct{}
}

func portProto(proto uint8) bool {
	return proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_SCTP
}

// ruleKey is the anet_policy key of one rule.
func ruleKey(ifindex uint32, d Dir, r PolicyRule) (bpf.LxcPolicyKey, error) {
	k := bpf.LxcPolicyKey{Ifindex: ifindex, Identity: r.Identity, Dir: uint8(d), Proto: r.Proto}
	switch {
	case r.Identity > IdentityMax:
		return k, fmt.Errorf("rule %+v: identity beyond 24 bits", r)
	case r.PortPrefixLen > 16:
		return k, fmt.Errorf("rule %+v: port prefix longer than 16 bits", r)
	case r.PortPrefixLen < 16 && r.Port&(0xffff>>r.PortPrefixLen) != 0:
		return k, fmt.Errorf("rule %+v: port has bits beyond its prefix", r)
	case r.PortPrefixLen > 0 && !portProto(r.Proto):
		return k, fmt.Errorf("rule %+v: a port needs TCP, UDP or SCTP", r)
	}
	if r.Proto == 0 {
		k.Prefixlen = polPrefixAnyProto
		return k, nil
	}
	k.Prefixlen = polPrefixAnyPort + uint32(r.PortPrefixLen)
	k.Dport = be16(r.Port)
	return k, nil
}

// keyRule is ruleKey undone.
func keyRule(k bpf.LxcPolicyKey) PolicyRule {
	r := PolicyRule{Identity: k.Identity, Proto: k.Proto}
	if k.Prefixlen > polPrefixAnyPort {
		r.PortPrefixLen = uint8(k.Prefixlen - polPrefixAnyPort)
		r.Port = be16(k.Dport) & ^uint16(0xffff>>r.PortPrefixLen)
	}
	if k.Prefixlen <= polPrefixAnyProto {
		r.Proto = 0
	}
	return r
}

// mapFull wraps a write's error in ErrMapFull when the map had no room
// (a hash says E2BIG, an LPM trie ENOSPC).
func mapFull(m *ebpf.Map, name string, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%s: %w (%d entries; raise its size): %v", name, ErrMapFull, m.MaxEntries(), err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// loadPolicy fills the shadow from the map, once.
func (dp *Datapath) loadPolicy() error {
	if dp.pol.loaded {
		return nil
	}
	keys := map[uint32]map[bpf.LxcPolicyKey]struct{}{}
	var k bpf.LxcPolicyKey
	var v bpf.LxcPolicyEntry
	it := dp.objs.AnetPolicy.Iterate()
	for it.Next(&k, &v) {
		m := keys[k.Ifindex]
		if m == nil {
			m = map[bpf.LxcPolicyKey]struct{}{}
			keys[k.Ifindex] = m
		}
		m[k] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", bpf.LxcMapAnetPolicy, err)
	}
	dp.pol = policyState{loaded: true, keys: keys}
	return nil
}

// SetEndpointPolicy replaces an endpoint's policy (keyed by the endpoint's
// host-side ifindex, as anet_ep_by_if is). ingressEnforced and
// egressEnforced say whether some NetworkPolicy selects the pod for that
// direction (the pod is isolated); when false, everything is allowed in
// that direction whatever the rules.
//
// It writes only the difference to what the map holds, in three steps: the
// new rules are added, then the isolation flags written, then the rules
// that went are deleted. A packet meets the old policy, the old one with
// some new allows, or the new one: no flow that both allow is ever
// refused in between, and none that neither allows opens. On an error
// (a full map: ErrMapFull) the endpoint is left between the two and the
// call can be repeated. Since adds come first, a change needs room in the
// map for the old and the new rules of the endpoint at once.
func (dp *Datapath) SetEndpointPolicy(ifindex uint32, ingressEnforced, egressEnforced bool, ingress, egress []PolicyRule) error {
	want := map[bpf.LxcPolicyKey]struct{}{}
	for _, s := range []struct {
		d     Dir
		rules []PolicyRule
	}{{DirIngress, ingress}, {DirEgress, egress}} {
		for _, r := range s.rules {
			k, err := ruleKey(ifindex, s.d, r)
			if err != nil {
				return fmt.Errorf("endpoint %d %s: %w", ifindex, s.d, err)
			}
			want[k] = struct{}{}
		}
	}
	var flags uint32
	if ingressEnforced {
		flags |= polEnforced(DirIngress)
	}
	if egressEnforced {
		flags |= polEnforced(DirEgress)
	}

	dp.polMu.Lock()
	defer dp.polMu.Unlock()
	if err := dp.loadPolicy(); err != nil {
		return err
	}
	have := dp.pol.keys[ifindex]
	if have == nil {
		have = map[bpf.LxcPolicyKey]struct{}{}
		dp.pol.keys[ifindex] = have
	}
	for k := range want {
		if _, ok := have[k]; ok {
			continue
		}
		if err := dp.objs.AnetPolicy.Put(k, bpf.LxcPolicyEntry{}); err != nil {
			return fmt.Errorf("endpoint %d: adding rule %+v: %w", ifindex, keyRule(k), mapFull(dp.objs.AnetPolicy, bpf.LxcMapAnetPolicy, err))
		}
		have[k] = struct{}{}
	}
	if err := dp.setPolicyFlags(ifindex, flags); err != nil {
		return err
	}
	var errs []error
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := dp.objs.AnetPolicy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("endpoint %d: deleting rule %+v: %w", ifindex, keyRule(k), err))
			continue
		}
		delete(have, k)
	}
	if len(have) == 0 {
		delete(dp.pol.keys, ifindex)
	}
	return errors.Join(errs...)
}

func (dp *Datapath) setPolicyFlags(ifindex, flags uint32) error {
	if flags == 0 {
		if err := dp.objs.AnetPolEp.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("endpoint %d: clearing isolation: %w", ifindex, err)
		}
		return nil
	}
	if err := dp.objs.AnetPolEp.Put(ifindex, bpf.LxcPolicyEp{Flags: flags}); err != nil {
		return fmt.Errorf("endpoint %d: writing isolation: %w", ifindex, mapFull(dp.objs.AnetPolEp, bpf.LxcMapAnetPolEp, err))
	}
	return nil
}

// DeleteEndpointPolicy removes an endpoint's policy: its isolation first
// (the endpoint is then open), then its rules. Call it when the endpoint
// is deleted, so that a device that later gets the ifindex starts open.
func (dp *Datapath) DeleteEndpointPolicy(ifindex uint32) error {
	dp.polMu.Lock()
	defer dp.polMu.Unlock()
	if err := dp.loadPolicy(); err != nil {
		return err
	}
	if err := dp.setPolicyFlags(ifindex, 0); err != nil {
		return err
	}
	var errs []error
	have := dp.pol.keys[ifindex]
	for k := range have {
		if err := dp.objs.AnetPolicy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(have, k)
	}
	if len(have) == 0 {
		delete(dp.pol.keys, ifindex)
	}
	return errors.Join(errs...)
}

// PolicyEndpoints lists the endpoints (host-side ifindexes) the policy
// maps hold state for, isolation or rules, sorted: anetd reads it once at
// start to drop the state of endpoints that went while it was down (the
// maps are pinned and outlive it).
func (dp *Datapath) PolicyEndpoints() ([]uint32, error) {
	dp.polMu.Lock()
	defer dp.polMu.Unlock()
	if err := dp.loadPolicy(); err != nil {
		return nil, err
	}
	set := map[uint32]bool{}
	for ifindex := range dp.pol.keys {
		set[ifindex] = true
	}
	var ifindex uint32
	var ep bpf.LxcPolicyEp
	it := dp.objs.AnetPolEp.Iterate()
	for it.Next(&ifindex, &ep) {
		if ep.Flags != 0 {
			set[ifindex] = true
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", bpf.LxcMapAnetPolEp, err)
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// EndpointPolicy reads an endpoint's policy back from the maps (for
// anetctl and tests), rules sorted.
func (dp *Datapath) EndpointPolicy(ifindex uint32) (ingressEnforced, egressEnforced bool, ingress, egress []PolicyRule, err error) {
	var ep bpf.LxcPolicyEp
	if err := dp.objs.AnetPolEp.Lookup(ifindex, &ep); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, false, nil, nil, err
	}
	var k bpf.LxcPolicyKey
	var v bpf.LxcPolicyEntry
	it := dp.objs.AnetPolicy.Iterate()
	for it.Next(&k, &v) {
		if k.Ifindex != ifindex {
			continue
		}
		if Dir(k.Dir) == DirIngress {
			ingress = append(ingress, keyRule(k))
		} else {
			egress = append(egress, keyRule(k))
		}
	}
	for _, rs := range [][]PolicyRule{ingress, egress} {
		sort.Slice(rs, func(i, j int) bool {
			a, b := rs[i], rs[j]
			if a.Identity != b.Identity {
				return a.Identity < b.Identity
			}
			if a.Proto != b.Proto {
				return a.Proto < b.Proto
			}
			if a.Port != b.Port {
				return a.Port < b.Port
			}
			return a.PortPrefixLen < b.PortPrefixLen
		})
	}
	return ep.Flags&polEnforced(DirIngress) != 0, ep.Flags&polEnforced(DirEgress) != 0, ingress, egress, it.Err()
}

func ipcacheKey(p netip.Prefix) (bpf.LxcIpcacheKey, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return bpf.LxcIpcacheKey{}, fmt.Errorf("ipcache prefix %s is not IPv4", p)
	}
	p = p.Masked()
	return bpf.LxcIpcacheKey{Prefixlen: uint32(p.Bits()), Addr: ipKey(p.Addr())}, nil
}

// SetIPCache maps an address prefix to an identity: a pod's or a node's
// address (/32), an ipBlock CIDR or except CIDR. A packet's address takes
// the identity of the longest prefix that holds it; none is world.
func (dp *Datapath) SetIPCache(p netip.Prefix, identity uint32) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if identity == IdentityAny || identity > IdentityMax {
		return fmt.Errorf("ipcache %s: identity %d is not a peer's (1..%d)", p, identity, IdentityMax)
	}
	if err := dp.objs.AnetIpcache4.Put(k, bpf.LxcIpcacheEntry{Identity: identity}); err != nil {
		return fmt.Errorf("ipcache %s: %w", p, mapFull(dp.objs.AnetIpcache4, bpf.LxcMapAnetIpcache4, err))
	}
	return nil
}

// DeleteIPCache removes a prefix's entry; an absent one is fine.
func (dp *Datapath) DeleteIPCache(p netip.Prefix) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if err := dp.objs.AnetIpcache4.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache %s: %w", p, err)
	}
	return nil
}

// IPCache lists the ipcache's entries.
func (dp *Datapath) IPCache() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var k bpf.LxcIpcacheKey
	var v bpf.LxcIpcacheEntry
	it := dp.objs.AnetIpcache4.Iterate()
	for it.Next(&k, &v) {
		out[netip.PrefixFrom(keyIP(k.Addr), int(k.Prefixlen))] = v.Identity
	}
	return out, it.Err()
}

// GCPolicyConntrack deletes the expired entries of the pod conntrack (the
// programs ignore them already; the LRU would evict them in time) and
// returns how many were live and how many went.
func (dp *Datapath) GCPolicyConntrack(now uint64) (live, expired int, err error) {
	var (
		k    bpf.LxcCt4Key
		v    bpf.LxcPolCtEntry
		dead []bpf.LxcCt4Key
	)
	it := dp.objs.AnetPolCt4.Iterate()
	for it.Next(&k, &v) {
		if v.Expires < now {
			dead = append(dead, k)
		} else {
			live++
		}
	}
	if err := it.Err(); err != nil {
		return live, 0, fmt.Errorf("iterating %s: %w", bpf.LxcMapAnetPolCt4, err)
	}
	for _, k := range dead {
		if err := dp.objs.AnetPolCt4.Delete(k); err == nil {
			expired++
		}
	}
	return live, expired, nil
}
