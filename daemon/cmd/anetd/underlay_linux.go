package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/anet-dev/anet/daemon/datapath"
	"github.com/anet-dev/anet/daemon/k8s"
)

// startUnderlay hangs the per-packet service translation (bpf/host.c) on
// the node's underlay device(s): NodePort, ExternalIP and LoadBalancer
// connections from outside the node, which the socket hooks never see. It
// tells the programs the node's address (the source of connections handed
// to a backend on another node) and runs the conntrack collector.
func startUnderlay(ctx context.Context, cfg *config, dp *datapath.Datapath, node k8s.NodeInfo, log *slog.Logger) error {
	var addr netip.Addr
	for _, a := range node.InternalIPs {
		if a.Is4() {
			addr = a
			break
		}
	}
	// Without them the socket hooks still serve every in-cluster client:
	// say what is missing and go on.
	if !addr.IsValid() {
		log.Warn("no per-packet service translation: the node has no IPv4 InternalIP (the SNAT address); NodePort, ExternalIP and LoadBalancer traffic from outside is not served")
		return nil
	}
	devs := cfg.devices
	if len(devs) == 0 {
		d, err := deviceOf(addr)
		if err != nil {
			log.Warn("no per-packet service translation: no underlay device found (pass --devices); NodePort, ExternalIP and LoadBalancer traffic from outside is not served", "err", err)
			return nil
		}
		devs = []string{d}
	}
	if err := dp.SetNodeConfig(addr, cfg.snatMin, cfg.snatMax); err != nil {
		return err
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
