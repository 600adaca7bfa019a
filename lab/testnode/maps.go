//go:build linux

package testnode

import (
	"encoding/binary"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// MapEntries counts the entries of each of anetd's pinned maps that hold
// per-endpoint state.
func (n *Node) MapEntries() (map[string]int, error) { return MapEntries(n.BPFRoot) }

// MapEntries counts the entries of each of the maps that hold per-endpoint
// state pinned by the anetd whose --bpf-root is bpfRoot (the lab's nodes
// too). Node-wide counters (anet_metrics under ifindex 0: unknown devices,
// refused service connections, drops on the underlay) are no endpoint's
// and are not counted.
func MapEntries(bpfRoot string) (map[string]int, error) {
	out := map[string]int{}
	for _, name := range []string{"anet_ep_by_ip", "anet_ep_by_if", "anet_metrics"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(bpfRoot, "maps", name), nil)
		if err != nil {
			return nil, fmt.Errorf("opening pinned map %s: %w", name, err)
		}
		it := m.Iterate()
		var k, v []byte
		count := 0
		if m.Type() == ebpf.PerCPUHash {
			var pv [][]byte
			for it.Next(&k, &pv) {
				if name == "anet_metrics" && len(k) >= 4 && binary.NativeEndian.Uint32(k) == 0 {
					continue // ifindex 0: node-wide
				}
				count++
			}
		} else {
			for it.Next(&k, &v) {
				count++
			}
		}
		err = it.Err()
		m.Close()
		if err != nil {
			return nil, err
		}
		out[name] = count
	}
	return out, nil
}
