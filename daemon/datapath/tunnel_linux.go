package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/netlinksafe"

	"github.com/anet-dev/anet/bpf"
)

// TunnelOverhead is what Geneve encapsulation adds to a pod's packet: an
// outer IPv4 header, UDP, the Geneve header (no options) and the inner
// Ethernet header (TUNNEL_OVERHEAD in bpf/lib/geneve.h). A pod's MTU in
// tunnel mode leaves this room below the underlay's.
const TunnelOverhead = 20 + 8 + 8 + 14

// The Geneve overlay (bpf/lib/geneve.h), in tunnel mode
// (Options.RoutingMode): the node's underlay (SetUnderlay) and the other
// nodes' pod CIDRs (SetTunnelPeer). The overlay reconciler decides what
// they hold; these methods only write it.

// TunnelPeer is another node of the mesh: a pod CIDR of it and its
// underlay address.
type TunnelPeer struct {
	PodCIDR netip.Prefix
	NodeIP  netip.Addr
}

// SetUnderlay tells the programs the node's device toward the other nodes
// (encapsulated packets leave by it, with its MAC as their outer source)
// and the node's address on it: the outer source of what this node
// encapsulates and the only destination it decapsulates. The address is
// also SetNodeConfig's (the SNAT source): both write the same field.
func (dp *Datapath) SetUnderlay(ifname string, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("underlay address %s: only IPv4 is served", addr)
	}
	lk, err := netlinksafe.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("finding underlay device %s: %w", ifname, err)
	}
	mac := lk.Attrs().HardwareAddr
	if len(mac) != 6 {
		return fmt.Errorf("underlay device %s has no Ethernet address", ifname)
	}
	return dp.updateNodeConfig(func(c *bpf.HostNodeConfig) {
		c.Addr = be32(addr)
		c.TunnelIfindex = uint32(lk.Attrs().Index)
		copy(c.TunnelMac[:], mac)
	})
}

func tunnelKey(p netip.Prefix) (bpf.HostTunnelKey, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return bpf.HostTunnelKey{}, fmt.Errorf("tunnel pod CIDR %s is not IPv4", p)
	}
	p = p.Masked()
	return bpf.HostTunnelKey{Prefixlen: uint32(p.Bits()), Addr: ipKey(p.Addr())}, nil
}

// SetTunnelPeer sends the packets of this node's pods to podCIDR through
// the tunnel to nodeIP (and accepts from nodeIP tunnelled packets whose
// inner source is in podCIDR). It replaces the CIDR's earlier peer.
func (dp *Datapath) SetTunnelPeer(podCIDR netip.Prefix, nodeIP netip.Addr) error {
	k, err := tunnelKey(podCIDR)
	if err != nil {
		return err
	}
	if !nodeIP.Is4() || nodeIP.IsUnspecified() {
		return fmt.Errorf("tunnel peer %s: node address %s is not IPv4", podCIDR, nodeIP)
	}
	m := dp.host.AnetTunnel4
	if err := m.Put(k, bpf.HostTunnelPeer{Node: be32(nodeIP)}); err != nil {
		return fmt.Errorf("tunnel peer %s: %w", podCIDR, mapFull(m, bpf.HostMapAnetTunnel4, err))
	}
	return nil
}

// DeleteTunnelPeer removes a pod CIDR's peer; an absent one is fine.
func (dp *Datapath) DeleteTunnelPeer(podCIDR netip.Prefix) error {
	k, err := tunnelKey(podCIDR)
	if err != nil {
		return err
	}
	if err := dp.host.AnetTunnel4.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("tunnel peer %s: %w", podCIDR, err)
	}
	return nil
}

// TunnelPeers lists the peers, by pod CIDR.
func (dp *Datapath) TunnelPeers() ([]TunnelPeer, error) {
	var (
		out []TunnelPeer
		k   bpf.HostTunnelKey
		v   bpf.HostTunnelPeer
	)
	it := dp.host.AnetTunnel4.Iterate()
	for it.Next(&k, &v) {
		out = append(out, TunnelPeer{PodCIDR: netip.PrefixFrom(keyIP(k.Addr), int(k.Prefixlen)), NodeIP: keyIP(v.Node)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterating %s: %w", bpf.HostMapAnetTunnel4, err)
	}
	slices.SortFunc(out, func(a, b TunnelPeer) int {
		if c := a.PodCIDR.Addr().Compare(b.PodCIDR.Addr()); c != 0 {
			return c
		}
		return a.PodCIDR.Bits() - b.PodCIDR.Bits()
	})
	return out, nil
}
