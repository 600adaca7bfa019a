package main

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"

	"github.com/anet-dev/anet/daemon/k8s"
)

func netipToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// nodeCache is what anetd learnt of its Node, kept for a start while the
// API server is away.
type nodeCache struct {
	PodCIDR     netip.Prefix `json:"podCIDR"`
	InternalIPs []netip.Addr `json:"internalIPs,omitempty"`
}

func readNodeCache(path string) k8s.NodeInfo {
	var c nodeCache
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &c) != nil || !c.PodCIDR.IsValid() {
		return k8s.NodeInfo{}
	}
	return k8s.NodeInfo{PodCIDR: c.PodCIDR, PodCIDRs: []netip.Prefix{c.PodCIDR}, InternalIPs: c.InternalIPs}
}

func writeNodeCache(path string, info k8s.NodeInfo) error {
	b, err := json.Marshal(nodeCache{PodCIDR: info.PodCIDR, InternalIPs: info.InternalIPs})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return renameio.WriteFile(path, b, 0o600)
}
