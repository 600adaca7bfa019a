//go:build linux

package main

import (
	"os"
	"testing"

	"github.com/anet-dev/anet/daemon/datapath"
)

// The policy section's packets get the verdicts the section claims: the
// allowed connection passes with and without policy, its denied variant
// drops under policy with the reason and on the endpoint the report names.
// Not timed. Then a tiny run of the section itself, whose own checks
// (verdicts, conntrack entries, counters) must hold.
func TestPolicyBenchVerdicts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (netns, eBPF)")
	}
	err := inScratchNS(func() error {
		e, err := newPolEnv()
		if err != nil {
			return err
		}
		defer e.close()
		last := polLevels[len(polLevels)-1]
		if err := e.setLevel(last, false); err != nil {
			return err
		}
		want := map[string]struct {
			n       *polNode
			ifindex uint32
			dir     datapath.Dir
			reason  datapath.Reason
		}{
			"egress":  {e.n1, loIfindex, datapath.DirEgress, datapath.DropPolicyEgress},
			"ingress": {e.n2, loIfindex, datapath.DirIngress, datapath.DropPolicyIngress},
			"local":   {e.n1, peerIfindex, datapath.DirIngress, datapath.DropPolicyIngress},
		}
		for _, policed := range []bool{false, true} {
			if err := e.setPoliced(policed); err != nil {
				return err
			}
			for _, p := range e.paths {
				if _, err := p.first(1, nil); err != nil {
					t.Errorf("policed %v: %v", policed, err)
				}
				if _, err := p.established(1); err != nil {
					t.Errorf("policed %v: %v", policed, err)
				}
				w := want[p.key]
				before := polCounter(t, w.n, w.ifindex, w.dir, w.reason)
				if err := p.control(policed); err != nil {
					t.Errorf("policed %v: %v", policed, err)
				}
				got := polCounter(t, w.n, w.ifindex, w.dir, w.reason) - before
				if wantN := map[bool]uint64{false: 0, true: 1}[policed]; got != wantN {
					t.Errorf("%s, policed %v: %s on ifindex %d counted %d, want %d", p.key, policed, w.reason, w.ifindex, got, wantN)
				}
			}
		}
		// The section itself, tiny, on fresh nodes.
		e2, err := newPolEnv()
		if err != nil {
			return err
		}
		defer e2.close()
		res, err := polRuns(e2, polConfig{packets: 2 * chunkRepeat * polRounds, first: 2 * polRounds, passes: 1}, t.Logf)
		if err != nil {
			t.Errorf("polRuns: %v", err)
		} else if len(res.checks) == 0 {
			t.Error("polRuns made no checks")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func polCounter(t *testing.T, n *polNode, ifindex uint32, d datapath.Dir, r datapath.Reason) uint64 {
	t.Helper()
	all, err := n.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return all[ifindex][datapath.CounterKey{Dir: d, Reason: r}].Packets
}
