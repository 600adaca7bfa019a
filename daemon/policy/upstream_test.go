package policy

import (
	"fmt"
	"testing"

	"github.com/anet-dev/anet/internal/netpolmodel"
)

// The cases of upstream's test/e2e/network/netpol/network_policy.go
// (internal/netpolmodel), evaluated on the compiled state of every node.

// TestUpstreamNetpol runs every case in the literal reading of ipBlock
// (the default, which upstream expects), and every case that has no
// ipBlock in the Cilium reading too (which must not change them).
func TestUpstreamNetpol(t *testing.T) {
	for _, opts := range []Options{{}, {IPBlockExcludesCluster: true}} {
		for _, c := range netpolmodel.All() {
			if opts.IPBlockExcludesCluster && c.IPBlock {
				continue // the Cilium reading of these is in TestIPBlockReadings
			}
			t.Run(fmt.Sprintf("cilium=%v/%s", opts.IPBlockExcludesCluster, c.Name), func(t *testing.T) {
				w := newWorld(t, opts)
				c.Run(w)
				for _, p := range w.problems {
					t.Errorf("unexpected problem: %v", p)
				}
			})
		}
	}
}
