//go:build linux

package testnode

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// MapEntries counts the entries of each of anetd's pinned maps that hold
// per-endpoint state.
func (n *Node) MapEntries() (map[string]int, error) { return MapEntries(n.BPFRoot) }

// MapEntries counts the entries of each of the maps that hold per-endpoint
// state pinned by the anetd whose --bpf-root is bpfRoot (the lab's nodes
// too).
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
