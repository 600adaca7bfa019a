package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/k8s"
	"github.com/anet-dev/anet/daemon/routing"
)

// startUnderlay hangs the per-packet service translation (bpf/host.c) on
// the node's underlay device(s): NodePort, ExternalIP and LoadBalancer
// connections from outside the node, which the socket hooks never see. It
// tells the programs the node's address (the source of connections handed
// to a backend on another node) and runs the conntrack collector.
func startUnderlay(ctx context.Context, cfg *config, dp *datapath.Datapath, node k8s.NodeInfo, log *slog.Logger) error {
	addr, devs, err := underlayOf(cfg, node)
	// Without them the socket hooks still serve every in-cluster client:
	// say what is missing and go on.
	if !addr.IsValid() {
		log.Warn("no per-packet service translation: the node has no IPv4 InternalIP (the SNAT address); NodePort, ExternalIP and LoadBalancer traffic from outside is not served")
		return nil
	}
	if err != nil {
		log.Warn("no per-packet service translation: no underlay device found (pass --devices); NodePort, ExternalIP and LoadBalancer traffic from outside is not served", "err", err)
		return nil
	}
	if err := dp.SetNodeConfig(addr, cfg.snatMin, cfg.snatMax); err != nil {
		return err
	}
	if cfg.routingMode == datapath.RoutingTunnel {
		if err := dp.SetUnderlay(devs[0], addr); err != nil {
			return fmt.Errorf("the tunnel's underlay %s: %w", devs[0], err)
		}
		log.Info("Geneve overlay", "underlay", devs[0], "nodeAddress", addr)
	}
	for _, d := range devs {
		if err := dp.AttachNetdev(d); err != nil {
			return err
		}
	}
	log.Info("per-packet service translation attached", "devices", devs, "nodeAddress", addr,
		"snatPorts", fmt.Sprintf("%d-%d", cfg.snatMin, cfg.snatMax))
	go collectConntrack(ctx, dp, 30*time.Second, log)
	return nil
}

// deviceOf names the link that holds addr.
// underlayOf is the node's address (its first IPv4 InternalIP; invalid when
// it has none) and its underlay devices: --devices, or the device holding
// that address.
func underlayOf(cfg *config, node k8s.NodeInfo) (netip.Addr, []string, error) {
	var addr netip.Addr
	for _, a := range node.InternalIPs {
		if a.Is4() {
			addr = a
			break
		}
	}
	if !addr.IsValid() {
		return addr, nil, nil
	}
	if len(cfg.devices) > 0 {
		return addr, cfg.devices, nil
	}
	d, err := deviceOf(addr)
	if err != nil {
		return addr, nil, err
	}
	return addr, []string{d}, nil
}

// podMTU is the MTU of pod interfaces whose conflist names none: in tunnel
// mode the underlay's less the encapsulation (datapath.TunnelOverhead), so
// that a full-size packet still fits once encapsulated; in native mode 0,
// the kernel's default.
func podMTU(cfg *config, node k8s.NodeInfo) (int, error) {
	if cfg.routingMode != datapath.RoutingTunnel {
		return 0, nil
	}
	addr, devs, err := underlayOf(cfg, node)
	if !addr.IsValid() {
		return 0, errors.New("the node has no IPv4 InternalIP")
	}
	if err != nil {
		return 0, err
	}
	lk, err := netlink.LinkByName(devs[0])
	if err != nil {
		return 0, fmt.Errorf("the underlay %s: %w", devs[0], err)
	}
	mtu := lk.Attrs().MTU - datapath.TunnelOverhead
	if mtu < 68 {
		return 0, fmt.Errorf("the underlay %s has MTU %d: too small for the tunnel's %d bytes", devs[0], lk.Attrs().MTU, datapath.TunnelOverhead)
	}
	return mtu, nil
}

func deviceOf(addr netip.Addr) (string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			lk, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", err
			}
			return lk.Attrs().Name, nil
		}
	}
	return "", fmt.Errorf("no device holds %s", addr)
}

// collectConntrack deletes expired conntrack entries, and those of UDP flows
// whose backend left, every interval.
func collectConntrack(ctx context.Context, dp *datapath.Datapath, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			st, err := dp.GCConntrack()
			if err != nil {
				log.Warn("collecting conntrack entries", "err", err)
				continue
			}
			if st.Expired+st.Orphaned > 0 {
				log.Debug("conntrack collected", "live", st.Live, "expired", st.Expired, "orphaned", st.Orphaned)
			}
		}
	}
}

// parsePortRange parses "MIN-MAX".
func parsePortRange(s string) (uint16, uint16, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("want MIN-MAX, got %q", s)
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || b < a {
		return 0, 0, fmt.Errorf("want MIN-MAX with 1 <= MIN <= MAX <= 65535, got %q", s)
	}
	return uint16(a), uint16(b), nil
}

// tunnelTable is the route table of --routing-mode tunnel: the routes to
// the other nodes' pod CIDRs become the datapath's tunnel peers (pod CIDR
// to node address), and no route of anet's stays in the host's table.
type tunnelTable struct {
	dp     *datapath.Datapath
	native *routing.Table
	log    *slog.Logger
}

// Sync makes the tunnel peers the routes' destinations and gateways.
func (t *tunnelTable) Sync(routes []routing.Route) error {
	if err := t.native.Sync(nil); err != nil { // what native mode left
		return err
	}
	have, err := t.dp.TunnelPeers()
	if err != nil {
		return err
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		want[r.Dst] = r.Gateway
	}
	var errs []error
	for _, p := range have {
		if gw, ok := want[p.PodCIDR]; !ok || gw != p.NodeIP {
			if err := t.dp.DeleteTunnelPeer(p.PodCIDR); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for cidr, gw := range want {
		if err := t.dp.SetTunnelPeer(cidr, gw); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
